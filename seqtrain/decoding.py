"""Greedy and beam search on the model's incremental API, forced decoding, hard alignments.

The searches are graph code (``tf.while_loop``) on any object with the incremental API of
``seqtrain.model.Transformer`` (``encode``, ``initial_cache``, ``cache_shape_invariants``,
``decode_step``). ``compile_search`` wraps one in a ``tf.function`` whose input signature has
``None`` batch and length dimensions, so it is traced once for all batch shapes.

Conventions (both searches):
  * decoding starts from ``<s>`` and runs at most ``maximum_length`` steps; ``</s>`` ends a
    hypothesis; a hypothesis that never emits it is cut at ``maximum_length`` tokens; greedy
    search stops when every hypothesis has ended, beam search when every sentence's n best
    beams have (see ``beam_search``);
  * ``maximum_length`` is an int32 scalar, or an int32 [B] limit per sentence (``length_limits``:
    the relative cap of params.maximum_decoding_length_factor/offset); a hypothesis was cut at
    its limit exactly when its length equals the limit (``cut_at_limit``): one that ends emits
    ``</s>`` within the limit, so it has fewer tokens;
  * ``ids`` hold the output tokens without ``<s>`` and without ``</s>``, then PAD (0);
    ``lengths`` count those tokens;
  * a score is the sum of the token log-probabilities, ``</s>``'s included; beam search divides
    it by the GNMT length penalty ((5 + |Y|) / 6)^alpha, |Y| = generated tokens including
    ``</s>`` when emitted;
  * ``attention[b, n, t]`` is the alignment attention (model.alignment_layer/heads) of token t
    of hypothesis n, over the source positions (rows >= length are 0), read from the decoder
    step the model was trained to align it with: with ``model.incremental_alignment`` (OpenNMT-tf's
    convention: the step that produced token t) the search's own steps; otherwise a
    teacher-forced pass over the finished hypotheses (``model.decode``), which serves every
    convention exactly, including the last token of a hypothesis cut at the maximum length;
  * ``options`` (``search_rules.SearchOptions``): minimum length (both searches), random sampling
    (greedy search), coverage penalty (beam search); see ``seqtrain.search_rules``.
"""

from typing import NamedTuple

import numpy as np
import tensorflow as tf

from seqtrain.errors import SeqtrainError
from seqtrain.search_rules import PLAIN, coverage_penalty, forbid_token, sample_tokens

# Vocabulary ids fixed by the data contract (see CONTRACT / seqtrain.data).
BOS_ID = 1
EOS_ID = 2
# Score of impossible candidates; finite so no inf - inf NaN can appear.
NEG_INF = -1e9


class DecodingResult(NamedTuple):
    ids: tf.Tensor  # int32 [B, N, L] tokens, no <s>/</s>, PAD after the length
    lengths: tf.Tensor  # int32 [B, N]
    scores: tf.Tensor  # float32 [B, N], best first
    attention: tf.Tensor  # float32 [B, N, L, S]


def length_limits(source_length, maximum_length, factor=None, offset=0):
    """Per-sentence output limits: min(maximum_length, floor(factor * S) + offset), at least 1.

    Args:
      source_length: int32 [B] source tokens S; maximum_length: the hard cap (int);
      factor: float, or None for the hard cap alone; offset: int added to factor * S.

    Returns:
      int32 [B].
    """
    hard = tf.fill(tf.shape(source_length), tf.cast(maximum_length, tf.int32))
    if factor is None:
        return hard
    relative = tf.cast(tf.math.floor(factor * tf.cast(source_length, tf.float32)), tf.int32)
    return tf.maximum(tf.minimum(hard, relative + offset), 1)


def cut_at_limit(lengths, maximum_length):
    """bool [B, N]: hypotheses (``DecodingResult.lengths`` [B, N]) cut at their length limit
    (``maximum_length`` scalar or [B]) instead of ending with ``</s>``."""
    limits = tf.cast(maximum_length, tf.int32)
    if limits.shape.rank:
        limits = limits[:, tf.newaxis]
    return lengths >= limits


def greedy_search(model, source_ids, source_length, maximum_length, options=PLAIN):
    """Greedy decoding: the argmax (or a sampled) token at each step.

    Args:
      model: incremental decoding API (see the module docstring).
      source_ids: int32 [B, S]; source_length: int32 [B]; maximum_length: int32 scalar or [B];
      options: minimum length and sampling (``SearchOptions``; coverage_penalty is ignored).

    Returns:
      ``DecodingResult`` with N = 1; scores are plain sums of log-probabilities.
    """
    batch, source_len = tf.shape(source_ids)[0], tf.shape(source_ids)[1]
    limits = tf.broadcast_to(tf.cast(maximum_length, tf.int32), [batch])
    memory, memory_mask = model.encode(source_ids, source_length)
    cache = model.initial_cache(memory, memory_mask)
    state = {
        "step": tf.constant(0),
        "inputs": tf.fill([batch], BOS_ID),
        "cache": cache,
        "finished": tf.zeros([batch], tf.bool),
        "lengths": tf.zeros([batch], tf.int32),
        "scores": tf.zeros([batch], tf.float32),
        "ids": tf.zeros([batch, 0], tf.int32),
        "attention": tf.zeros([batch, 0, source_len]),
    }

    def step_fn(state):
        logits, attention, cache = model.decode_step(state["inputs"], state["step"], state["cache"])
        log_probs = tf.nn.log_softmax(logits)
        if options.minimum_length:
            log_probs = forbid_token(log_probs, EOS_ID, state["step"] < options.minimum_length)
        tokens = sample_tokens(log_probs, options.sampling_topk, options.sampling_temperature)
        token_scores = tf.gather(log_probs, tokens, batch_dims=1)
        ended = tf.logical_or(state["finished"], tf.equal(tokens, EOS_ID))
        # A sentence whose limit is reached is finished too (cut; this token counts).
        finished = tf.logical_or(ended, state["step"] + 1 >= limits)
        history = state["attention"]
        if model.incremental_alignment:  # else forced_alignment gives the rows after the search
            history = tf.concat([history, attention[:, tf.newaxis]], axis=1)
        return {
            "step": state["step"] + 1,
            "inputs": tokens,
            "cache": cache,
            "finished": finished,
            # A token counts if its sentence was open and it is not </s>.
            "lengths": state["lengths"] + tf.cast(tf.logical_not(ended), tf.int32),
            "scores": state["scores"] + tf.where(state["finished"], 0.0, token_scores),
            "ids": tf.concat([state["ids"], tokens[:, tf.newaxis]], axis=1),
            "attention": history,
        }

    state = _decode_loop(model, state, step_fn, limits)
    ids, lengths = state["ids"][:, tf.newaxis], state["lengths"][:, tf.newaxis]
    attention = state["attention"][:, tf.newaxis]
    if not model.incremental_alignment:
        attention = forced_alignment(model, memory, memory_mask, ids, lengths)
    return _mask_result(ids, lengths, state["scores"][:, tf.newaxis], attention)


def length_penalty_factor(length, alpha):
    """GNMT length penalty ((5 + length) / 6)^alpha (1 when alpha = 0); float32 like length."""
    if alpha == 0:
        return tf.ones_like(length, tf.float32)
    return ((5.0 + tf.cast(length, tf.float32)) / 6.0) ** alpha


def beam_search(
    model,
    source_ids,
    source_length,
    beam_width,
    length_penalty,
    maximum_length,
    n_best=1,
    options=PLAIN,
):
    """Beam search with the GNMT length penalty (and coverage penalty, ``options``).

    A finished beam stays in the beam: it can only be extended by ``</s>`` at log-probability 0
    (its length and score frozen), competing with the open ones.

    Stopping rule (the usual heuristic, as fairseq and Marian): a sentence is done once its top
    ``n_best`` beams by current length-penalized score have all finished; from then on its beams
    are frozen (no longer extended) so its result does not depend on the rest of the batch. The
    search ends when every sentence is done, or after ``maximum_length`` steps. With
    ``length_penalty`` 0 this is exact (an open hypothesis' score only falls as it grows); with a
    GNMT penalty an open hypothesis could in theory still overtake a finished one, since the
    penalty's divisor grows with the length.

    Args:
      model: incremental decoding API; source_ids int32 [B, S]; source_length int32 [B].
      beam_width: K (python int); length_penalty: alpha (python float); maximum_length: int32
        scalar or [B] (a sentence is done, its beams frozen, once its limit is reached);
      n_best: N <= K hypotheses returned per sentence;
      options: minimum length and coverage penalty (``SearchOptions``; no sampling here). The
        coverage penalty is part of the score of every finished hypothesis, from the step that
        emits its ``</s>`` on.

    Returns:
      ``DecodingResult``: N best hypotheses per sentence by length-penalized score, descending.
      L (the time dimension) is the number of steps the search ran.
    """
    if n_best > beam_width:
        raise SeqtrainError(
            f"infer.n_best ({n_best}) cannot exceed params.beam_width ({beam_width}); "
            "lower n_best or raise beam_width"
        )
    batch, source_len, k = tf.shape(source_ids)[0], tf.shape(source_ids)[1], beam_width
    limits = tf.broadcast_to(tf.cast(maximum_length, tf.int32), [batch])
    memory, memory_mask = model.encode(source_ids, source_length)
    cache = model.initial_cache(memory, memory_mask)
    # Beams are rows b*K .. b*K+K-1 of the flattened [B*K] batch.
    cache = tf.nest.map_structure(lambda x: tf.repeat(x, k, axis=0), cache)
    # Only beam 0 is alive at the start, so the first step does not pick K copies of one token.
    first = tf.constant([0.0] + [NEG_INF] * (k - 1))
    state = {
        "step": tf.constant(0),
        "inputs": tf.fill([batch * k], BOS_ID),
        "cache": cache,
        "log_probs": tf.tile(first[tf.newaxis], [batch, 1]),  # cumulative, [B, K]
        "finished": tf.zeros([batch, k], tf.bool),
        "generated": tf.zeros([batch, k], tf.int32),  # tokens incl. </s> once emitted
        "done": tf.zeros([batch], tf.bool),  # sentence finished searching (stopping rule)
        "ids": tf.zeros([batch, k, 0], tf.int32),
        "attention": tf.zeros([batch, k, 0, source_len]),
    }
    if options.coverage_penalty:
        state["coverage"] = tf.zeros([batch, k, source_len])  # attention summed over steps
    state = _decode_loop(
        model,
        state,
        lambda state: _beam_step(model, state, (batch, k, n_best, limits), length_penalty, options),
        limits,
        done_key="done",
    )
    scores = state["log_probs"] / length_penalty_factor(state["generated"], length_penalty)
    if options.coverage_penalty:
        finished = tf.cast(state["finished"], tf.float32)
        scores += options.coverage_penalty * coverage_penalty(state["coverage"]) * finished
    scores, best = tf.math.top_k(scores, k=n_best)
    lengths = state["generated"] - tf.cast(state["finished"], tf.int32)
    ids = tf.gather(state["ids"], best, batch_dims=1)
    lengths = tf.gather(lengths, best, batch_dims=1)
    if model.incremental_alignment:
        attention = tf.gather(state["attention"], best, batch_dims=1)
    else:
        attention = forced_alignment(model, memory, memory_mask, ids, lengths)
    return _mask_result(ids, lengths, scores, attention)


def forced_alignment(model, memory, memory_mask, ids, lengths):
    """Alignment rows of finished hypotheses by one teacher-forced decoder pass.

    Args:
      memory: [B, S, d] and memory_mask: bool [B, S] from ``model.encode``;
      ids: int32 [B, N, L] hypotheses (no ``<s>``/``</s>``); lengths: int32 [B, N].

    Returns:
      float32 [B, N, L, S]: row t belongs to token t (the model's convention applied).
    """
    shape = tf.shape(ids)
    batch, n, length = shape[0], shape[1], shape[2]
    flat = tf.reshape(ids, [batch * n, length])
    target_in = tf.concat([tf.fill([batch * n, 1], BOS_ID), flat], axis=1)  # [BN, L + 1]
    # <s> + the tokens: step t + 1 reads token t, so every token has its reading row too.
    target_length = tf.reshape(lengths, [-1]) + 1
    _, attention = model.decode(
        target_in, target_length, tf.repeat(memory, n, axis=0), tf.repeat(memory_mask, n, axis=0)
    )
    return tf.reshape(attention[:, :length], [batch, n, length, tf.shape(memory)[1]])


def _beam_step(model, state, shape, alpha, options):
    """One beam-search step on the loop state (see ``beam_search``).

    Beams of finished hypotheses and all beams of done sentences are frozen: their only
    candidate is ``</s>`` at log-probability 0 with the length unchanged, so they keep their
    score (and, being sorted already, their order). shape: (B, K, n_best, limits int32 [B]
    output length limits).
    """
    batch, k, n_best, limits = shape
    step, finished = state["step"], state["finished"]
    frozen = tf.logical_or(finished, state["done"][:, tf.newaxis])  # [B, K]
    logits, attention, cache = model.decode_step(state["inputs"], step, state["cache"])
    vocab = tf.shape(logits)[-1]
    log_probs = tf.reshape(tf.nn.log_softmax(logits), [batch, k, vocab])
    if options.minimum_length:
        log_probs = forbid_token(log_probs, EOS_ID, step < options.minimum_length)
    eos_only = tf.one_hot(EOS_ID, vocab, on_value=0.0, off_value=NEG_INF)
    log_probs = tf.where(frozen[:, :, tf.newaxis], eos_only, log_probs)
    total = state["log_probs"][:, :, tf.newaxis] + log_probs  # [B, K, V]
    generated = tf.where(frozen, state["generated"], step + 1)
    scores = total / length_penalty_factor(generated, alpha)[:, :, tf.newaxis]
    extra = {}
    if options.coverage_penalty:
        open_rows = tf.reshape(attention, [batch, k, -1]) * tf.cast(~frozen, tf.float32)[..., None]
        coverage = state["coverage"] + open_rows  # [B, K, S]
        # Finished candidates: the frozen beams' and every open beam's </s>.
        ends = tf.logical_or(frozen[:, :, tf.newaxis], tf.equal(tf.range(vocab), EOS_ID))
        penalty = options.coverage_penalty * coverage_penalty(coverage)[:, :, tf.newaxis]
        scores += tf.where(ends, penalty, 0.0)
        extra["coverage"] = coverage
    # Sorted, so the first n_best beams are the sentence's best by current score.
    _, top = tf.math.top_k(tf.reshape(scores, [batch, k * vocab]), k=k)  # [B, K]
    parent, tokens = top // vocab, top % vocab
    flat_parent = tf.reshape(parent + tf.range(batch)[:, tf.newaxis] * k, [-1])
    history = state["attention"]
    if model.incremental_alignment:  # else forced_alignment gives the rows after the search
        rows = tf.gather(tf.reshape(attention, [batch, k, -1]), parent, batch_dims=1)
        history = tf.gather(history, parent, batch_dims=1)
        history = tf.concat([history, rows[:, :, tf.newaxis]], axis=2)
    # The </s> that extends a frozen beam ends nothing new (an open beam of a done sentence
    # stays open, its length unchanged; its ids past the length are masked at the end).
    opens_eos = tf.logical_and(
        tf.equal(tokens, EOS_ID), tf.logical_not(tf.gather(frozen, parent, batch_dims=1))
    )
    finished = tf.logical_or(tf.gather(finished, parent, batch_dims=1), opens_eos)
    return {
        "step": step + 1,
        "inputs": tf.reshape(tokens, [-1]),
        "cache": tf.nest.map_structure(lambda x: tf.gather(x, flat_parent), cache),
        "log_probs": tf.gather(tf.reshape(total, [batch, k * vocab]), top, batch_dims=1),
        "finished": finished,
        "generated": tf.gather(generated, parent, batch_dims=1),
        "done": tf.reduce_any(
            [state["done"], tf.reduce_all(finished[:, :n_best], axis=1), step + 1 >= limits],
            axis=0,
        ),
        "ids": tf.concat(
            [tf.gather(state["ids"], parent, batch_dims=1), tokens[:, :, tf.newaxis]], axis=2
        ),
        "attention": history,
        **{key: tf.gather(value, parent, batch_dims=1) for key, value in extra.items()},
    }


def _decode_loop(model, state, step_fn, limits, done_key="finished"):
    """Apply ``step_fn`` to the state dict until ``state[done_key]`` (bool, any shape) is all
    true or after max(``limits``) steps (int32 [B]); a ``tf.while_loop`` in graph mode.

    Shape invariants: the cache's come from the model; every other entry may change any
    dimension (batch, beams, and the time axis of ids/attention that grow by one per step).
    """
    invariants = {
        key: tf.TensorShape([None] * value.shape.rank)
        for key, value in state.items()
        if key != "cache"
    }
    invariants["cache"] = model.cache_shape_invariants(state["cache"])

    def cond(state):
        alive = tf.logical_not(tf.reduce_all(state[done_key]))
        return tf.logical_and(state["step"] < tf.reduce_max(limits), alive)

    # The loop variables are a 1-tuple holding the state dict (tf.while_loop wants a sequence).
    (state,) = tf.while_loop(
        cond, lambda state: (step_fn(state),), (state,), shape_invariants=(invariants,)
    )
    return state


def _mask_result(ids, lengths, scores, attention):
    """Zero the ids and attention rows at positions >= length (the </s> step and after)."""
    mask = tf.sequence_mask(lengths, maxlen=tf.shape(ids)[2])
    ids = tf.where(mask, ids, tf.zeros_like(ids))
    attention = attention * tf.cast(mask, tf.float32)[..., tf.newaxis]
    return DecodingResult(ids, lengths, scores, attention)


def compile_search(model, beam_width=1, length_penalty=0.0, n_best=1, options=PLAIN):
    """A ``tf.function`` f(source_ids int32 [B, S], source_length int32 [B], maximum_length
    int32 scalar or [B]) -> ``DecodingResult``, traced once for any B and S.

    beam_width 1 runs ``greedy_search`` (its scores carry no length penalty; with one beam the
    penalty changes no choice). options: ``search_rules.SearchOptions``.
    """
    signature = [
        tf.TensorSpec([None, None], tf.int32),
        tf.TensorSpec([None], tf.int32),
        tf.TensorSpec(None, tf.int32),
    ]

    @tf.function(input_signature=signature)
    def search(source_ids, source_length, maximum_length):
        if beam_width == 1 and n_best == 1:
            return greedy_search(model, source_ids, source_length, maximum_length, options)
        return beam_search(
            model, source_ids, source_length, beam_width, length_penalty, maximum_length, n_best,
            options,
        )  # fmt: skip

    return search


def compile_on_batches(fn):
    """``fn(batch)`` as a tf.function of the five int32 batch tensors, any batch shape:
    source_ids [B, S], source_length [B], target_in [B, T], target_out [B, T], target_length [B]
    (the batch contract's keys, in that order)."""
    matrix, vector = tf.TensorSpec([None, None], tf.int32), tf.TensorSpec([None], tf.int32)

    @tf.function(input_signature=[matrix, vector, matrix, matrix, vector])
    def compiled(source_ids, source_length, target_in, target_out, target_length):
        return fn(
            {
                "source_ids": source_ids,
                "source_length": source_length,
                "target_in": target_in,
                "target_out": target_out,
                "target_length": target_length,
            }
        )

    return compiled


def forced_decoding(model, batch):
    """Score a reference translation with teacher forcing (no dropout).

    Args:
      batch: the batch contract dict (source_ids, source_length, target_in, target_out,
        target_length).

    Returns:
      (log-probability of each reference token float32 [B, T], alignment attention float32
      [B, T, S]); positions t >= target_length are 0. Row t belongs to target_out[t].
    """
    logits, attention = model(batch, training=False)
    log_probs = -tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=batch["target_out"], logits=logits
    )
    mask = tf.sequence_mask(batch["target_length"], maxlen=tf.shape(logits)[1], dtype=tf.float32)
    return log_probs * mask, attention * mask[:, :, tf.newaxis]


def hard_alignments(attention, target_len, source_len, extraction="argmax"):
    """Hard alignment of one hypothesis.

    ``argmax`` (OpenNMT-tf's ``hard`` alignments): each target token t is aligned to its
    most-attended source token s (argmax over the real source columns). ``intersection``: only
    the links (s, t) where t is also the real target row that attends most to s (the argmax of
    column s), as the intersection of two directions: fewer links, more precise; target tokens
    may stay unaligned, as in gold alignments. Ties go to the lowest index.

    Args:
      attention: [L, S] array-like (one hypothesis' ``attention``).
      target_len, source_len: real target tokens (no </s>) and source tokens.
      extraction: "argmax" or "intersection" (params.alignment_extraction).

    Returns:
      list of (source index, target index) pairs, 0-based, in target order (Pharaoh ``s-t``).
    """
    if target_len == 0 or source_len == 0:
        return []
    attention = np.asarray(attention)[:target_len, :source_len]
    pairs = [(int(s), t) for t, s in enumerate(np.argmax(attention, axis=-1))]
    if extraction == "intersection":
        best_target = np.argmax(attention, axis=0)  # [S]
        pairs = [(s, t) for s, t in pairs if best_target[s] == t]
    return pairs
