"""Per-step rules of the searches (OpenNMT-tf's decoding keys, same names and meaning).

* ``params.minimum_decoding_length`` N: ``</s>`` is forbidden at the steps 0 .. N-1, so an
  output has at least N tokens (unless the length limit cuts it first).
* ``params.sampling_topk`` / ``sampling_temperature`` (greedy search, for back-translation as in
  Edunov et al. 2018): 1 takes the argmax; k > 1 samples among the k most likely tokens, 0 from
  the whole distribution, with probabilities proportional to exp(log p / temperature). The
  token's score is its untempered log-probability.
* ``params.coverage_penalty`` beta (beam search; GNMT, Wu et al. 2016, as OpenNMT-tf applies it):
  a finished hypothesis whose guided head attended A[s] in total to source token s over its
  decoding steps gains beta * sum_s log(min(A[s], 1)) (<= 0: uncovered source is penalized).
  Columns with A[s] = 0 (padding) count as covered.
"""

from typing import NamedTuple

import tensorflow as tf

# Added to a forbidden token's log-probability; finite so no inf - inf NaN can appear.
FORBIDDEN = -1e9


def forbid_token(log_probs, token_id, forbidden):
    """log_probs float32 [..., V]; forbidden: bool broadcastable to [...] -> token_id's
    log-probability set to ``FORBIDDEN`` where forbidden."""
    hit = tf.one_hot(token_id, tf.shape(log_probs)[-1], on_value=True, off_value=False)
    mask = tf.logical_and(hit, tf.convert_to_tensor(forbidden)[..., tf.newaxis])
    return tf.where(mask, tf.cast(FORBIDDEN, log_probs.dtype), log_probs)


def before_minimum_length(step, minimum_length):
    """Whether ``</s>`` is forbidden at this 0-based step: bool scalar."""
    return tf.less(step, minimum_length)


def sample_tokens(log_probs, topk, temperature, seed=None):
    """One token per row: int32 [B] from log_probs float32 [B, V].

    topk 1: argmax; k > 1: among the k most likely tokens; 0: any token (see module docstring).
    """
    if topk == 1:
        return tf.argmax(log_probs, axis=-1, output_type=tf.int32)
    logits = log_probs / temperature
    if topk > 1:
        top_logits, top_ids = tf.math.top_k(logits, k=topk)
        picks = tf.random.categorical(top_logits, 1, dtype=tf.int32, seed=seed)[:, 0]
        return tf.gather(top_ids, picks, batch_dims=1)
    return tf.random.categorical(logits, 1, dtype=tf.int32, seed=seed)[:, 0]


def coverage_penalty(accumulated):
    """GNMT coverage term sum_s log(min(A[s], 1)), A[s] = 0 counting as 1.

    accumulated: float32 [..., S] attention summed over the decoding steps -> float32 [...].
    """
    covered = tf.where(tf.equal(accumulated, 0.0), tf.ones_like(accumulated), accumulated)
    return tf.reduce_sum(tf.math.log(tf.minimum(covered, 1.0)), axis=-1)


class SearchOptions(NamedTuple):
    """The decoding keys above, as the searches take them (python values)."""

    minimum_length: int = 0  # params.minimum_decoding_length
    sampling_topk: int = 1  # params.sampling_topk
    sampling_temperature: float = 1.0  # params.sampling_temperature
    coverage_penalty: float = 0.0  # params.coverage_penalty (beta)

    @classmethod
    def from_params(cls, params) -> "SearchOptions":
        """From ``config.params`` (``ParamsConfig``)."""
        return cls(
            params.minimum_decoding_length,
            params.sampling_topk,
            params.sampling_temperature,
            params.coverage_penalty,
        )


PLAIN = SearchOptions()  # no minimum length, argmax, no coverage penalty (the defaults)
