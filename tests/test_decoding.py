"""Tests of seqtrain.decoding: greedy/beam search, forced decoding, hard alignments."""

import dataclasses
import itertools

import numpy as np
import pytest
import tensorflow as tf

from seqtrain.config import ModelConfig
from seqtrain.decoding import (
    BOS_ID,
    EOS_ID,
    beam_search,
    compile_search,
    forced_decoding,
    hard_alignments,
)
from seqtrain.errors import SeqtrainError
from seqtrain.model import Transformer

VOCAB = 20
CONFIG = ModelConfig(num_layers=2, num_units=16, num_heads=4, ffn_inner_dim=32)
SOURCE = [[4, 5, 6, 7, 8], [9, 10, 11, 0, 0], [12, 13, 0, 0, 0]]
SOURCE_LENGTH = [5, 3, 2]


def make_model(eos_bias=0.45, **overrides):
    """Tiny random Transformer; ``eos_bias`` on the </s> logit makes hypotheses end at various
    lengths (greedy: 2, 1 and none within 12 tokens for ``sources()``)."""
    model = Transformer(dataclasses.replace(CONFIG, **overrides), VOCAB, VOCAB, seed=7)
    bias = np.zeros(VOCAB, np.float32)
    bias[EOS_ID] = eos_bias
    model.output.bias.assign(bias)
    return model


def sources(rows=(0, 1, 2)):
    ids = tf.constant([SOURCE[r] for r in rows], tf.int32)
    return ids, tf.constant([SOURCE_LENGTH[r] for r in rows], tf.int32)


def beam_function(model, beam_width, alpha=0.0, n_best=1):
    return tf.function(
        lambda ids, lengths, max_len: beam_search(
            model, ids, lengths, beam_width, alpha, max_len, n_best
        )
    )


def log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_beam_width_one_equals_greedy():
    model = make_model()
    ids, lengths = sources()
    greedy = compile_search(model)(ids, lengths, tf.constant(12))
    beam = beam_function(model, 1)(ids, lengths, tf.constant(12))
    assert greedy.ids.shape[:2] == (3, 1) and greedy.attention.shape[:2] == (3, 1)
    assert greedy.attention.shape[3] == 5
    np.testing.assert_array_equal(greedy.ids, beam.ids)
    np.testing.assert_array_equal(greedy.lengths, beam.lengths)
    np.testing.assert_allclose(greedy.scores, beam.scores, atol=1e-6)
    np.testing.assert_allclose(greedy.attention, beam.attention, atol=1e-6)
    assert len(set(greedy.lengths.numpy()[:, 0])) > 1  # the test covers early </s>


def test_greedy_matches_forced_decoding_of_its_output():
    """Incremental search and teacher forcing agree on the hypothesis: scores and attention."""
    model = make_model(alignment_layer=0, alignment_heads=2)
    ids, lengths = sources()
    result = compile_search(model)(ids, lengths, tf.constant(12))
    n = result.lengths.numpy()[:, 0]
    # The decoder steps of each hypothesis: its tokens, then </s> unless cut at 12 tokens.
    steps = [list(result.ids.numpy()[b, 0, : n[b]]) + [EOS_ID] * int(n[b] < 12) for b in range(3)]
    assert sorted(len(s) for s in steps) == [2, 3, 12]
    width = max(len(s) for s in steps)
    batch = {
        "source_ids": ids,
        "source_length": lengths,
        "target_in": tf.constant([[BOS_ID] + s[:-1] + [0] * (width - len(s)) for s in steps]),
        "target_out": tf.constant([s + [0] * (width - len(s)) for s in steps]),
        "target_length": tf.constant([len(s) for s in steps]),
    }
    log_probs, attention = forced_decoding(model, batch)
    np.testing.assert_allclose(tf.reduce_sum(log_probs, 1), result.scores[:, 0], atol=1e-5)
    for b in range(3):
        np.testing.assert_allclose(attention[b, : n[b]], result.attention[b, 0, : n[b]], atol=1e-5)
        assert not np.any(result.attention.numpy()[b, 0, n[b] :])
        assert not np.any(result.ids.numpy()[b, 0, n[b] :])


def test_beam_scores_sorted_and_better_than_greedy():
    model = make_model()
    ids, lengths = sources()
    result = beam_function(model, 4, alpha=0.0, n_best=4)(ids, lengths, tf.constant(10))
    assert result.ids.shape[:2] == (3, 4) and result.scores.shape == (3, 4)
    scores = result.scores.numpy()
    assert np.all(np.diff(scores, axis=1) <= 0)
    greedy = compile_search(model)(ids, lengths, tf.constant(10))
    assert np.all(scores[:, 0] >= greedy.scores.numpy()[:, 0] - 1e-6)


@pytest.mark.parametrize("beam_width", [1, 3])
def test_maximum_length_and_eos(beam_width):
    ids, lengths = sources()
    search = compile_search(make_model(eos_bias=-100.0), beam_width=beam_width)
    never = search(ids, lengths, tf.constant(6))
    assert never.ids.shape[2] == 6
    np.testing.assert_array_equal(never.lengths, np.full((3, 1), 6))
    assert not np.any(never.ids.numpy() == EOS_ID)
    immediately = compile_search(make_model(eos_bias=100.0), beam_width=beam_width)
    result = immediately(ids, lengths, tf.constant(6))
    # Both stop after one step: the best hypothesis is "</s>"; the beam's other K-1 first-step
    # hypotheses (still open) cannot overtake it and are not extended.
    assert result.ids.shape[2] == 1
    np.testing.assert_array_equal(result.lengths, np.zeros((3, 1)))
    np.testing.assert_allclose(result.scores, np.zeros((3, 1)), atol=1e-5)


@pytest.mark.parametrize("beam_width,alpha", [(1, 0.0), (4, 0.6)])
def test_batch_equals_sentences_alone(beam_width, alpha):
    model = make_model()
    search = compile_search(model, beam_width=beam_width, length_penalty=alpha)
    ids, lengths = sources()
    batched = search(ids, lengths, tf.constant(10))
    for b in range(3):
        s_len = SOURCE_LENGTH[b]
        alone = search(tf.constant([SOURCE[b][:s_len]]), tf.constant([s_len]), tf.constant(10))
        t_len = alone.ids.shape[2]
        np.testing.assert_array_equal(batched.ids[b, :, :t_len], alone.ids[0])
        assert not np.any(batched.ids.numpy()[b, :, t_len:])
        np.testing.assert_array_equal(batched.lengths[b], alone.lengths[0])
        np.testing.assert_allclose(batched.scores[b], alone.scores[0], atol=1e-5)
        np.testing.assert_allclose(
            batched.attention[b, :, :t_len, :s_len], alone.attention[0], atol=1e-5
        )
        assert np.all(batched.attention.numpy()[b, :, :, s_len:] < 1e-9)
    assert search.experimental_get_tracing_count() == 1


def test_forced_decoding_equals_training_forward():
    model = make_model()
    ids, lengths = sources((0, 1))
    batch = {
        "source_ids": ids,
        "source_length": lengths,
        "target_in": tf.constant([[1, 14, 15, 16], [1, 17, 0, 0]]),
        "target_out": tf.constant([[14, 15, 16, 2], [17, 2, 0, 0]]),
        "target_length": tf.constant([4, 2]),
    }
    log_probs, attention = forced_decoding(model, batch)
    logits, reference = model(batch, training=False)
    expected = log_softmax(logits.numpy())
    for b, n in enumerate([4, 2]):
        labels = batch["target_out"].numpy()[b, :n]
        np.testing.assert_allclose(log_probs[b, :n], expected[b, np.arange(n), labels], atol=1e-5)
        np.testing.assert_allclose(attention[b, :n], reference[b, :n], atol=1e-7)
        assert not np.any(log_probs.numpy()[b, n:]) and not np.any(attention.numpy()[b, n:])


class TableModel:
    """Scripted incremental model: logits and attention are read from tables indexed by
    (sentence, step, previous token); source_ids[:, 0] is the sentence index."""

    incremental_alignment = True  # OpenNMT-tf's rows: the search's own steps

    def __init__(self, logits, attention):
        self.logits = tf.constant(logits, tf.float32)  # [N, L, V, V]
        self.attention = tf.constant(attention, tf.float32)  # [N, L, V, S]

    def encode(self, source_ids, source_length):
        return source_ids[:, 0], tf.sequence_mask(source_length, tf.shape(source_ids)[1])

    def initial_cache(self, memory, memory_mask):
        return {"logits": tf.gather(self.logits, memory), "att": tf.gather(self.attention, memory)}

    def cache_shape_invariants(self, cache):
        return {k: tf.TensorShape([None] + v.shape[1:]) for k, v in cache.items()}

    def decode_step(self, ids, step, cache):
        logits = tf.gather(cache["logits"][:, step], ids, batch_dims=1)
        attention = tf.gather(cache["att"][:, step], ids, batch_dims=1)
        return logits, attention, cache


def exhaustive(logits, attention, max_len, alpha):
    """Every hypothesis of one sentence with (score, tokens, attention rows), best first."""
    vocab = logits.shape[-1]
    hypotheses = []
    for n in range(1, max_len + 1):
        for seq in itertools.product(range(vocab), repeat=n):
            if EOS_ID in seq[:-1] or (n < max_len and seq[-1] != EOS_ID):
                continue
            prev = (BOS_ID,) + seq[:-1]
            total = sum(log_softmax(logits[t, prev[t]])[seq[t]] for t in range(n))
            tokens = list(seq[:-1]) if seq[-1] == EOS_ID else list(seq)
            rows = np.stack(
                [attention[t, prev[t]] for t in range(len(tokens))] or [attention[0, 0] * 0]
            )
            hypotheses.append((total / ((5.0 + n) / 6.0) ** alpha, tokens, rows))
    return sorted(hypotheses, key=lambda h: -h[0])


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_beam_search_exhaustive_on_scripted_model(alpha):
    """With a beam as wide as the whole search space, beam search returns the exact n best
    hypotheses, their scores, and the attention rows of their own steps (back-pointers).

    The stopping rule cannot cut this search short, whatever alpha: only 5 hypotheses can end
    before step 3 ("</s>" and "x </s>"), fewer than the 10 best that must have ended."""
    rng = np.random.default_rng(0)
    vocab, max_len, source_len = 5, 3, 4
    logits = rng.normal(scale=2.0, size=(2, max_len, vocab, vocab))
    attention = rng.uniform(size=(2, max_len, vocab, source_len))
    model = TableModel(logits, attention)
    ids = tf.constant([[0, 1, 1, 1], [1, 1, 0, 0]], tf.int32)  # sentence index in column 0
    search = compile_search(model, beam_width=85, length_penalty=alpha, n_best=10)
    result = search(ids, tf.constant([4, 2]), tf.constant(max_len))
    for b in range(2):
        expected = exhaustive(logits[b], attention[b], max_len, alpha)[:10]
        np.testing.assert_allclose(result.scores[b], [h[0] for h in expected], atol=1e-5)
        for n, (_, tokens, rows) in enumerate(expected):
            assert result.lengths[b, n] == len(tokens)
            assert list(result.ids.numpy()[b, n, : len(tokens)]) == tokens
            np.testing.assert_allclose(result.attention[b, n, : len(tokens)], rows[: len(tokens)])


def stop_step(logits, max_len, n_best):
    """The step after which the stopping rule ends the search of one sentence (alpha 0): the
    first t at which the n_best best of {hypotheses ended by step t} + {open prefixes of t
    tokens} have all ended; max_len if none."""
    vocab = logits.shape[-1]
    for t in range(1, max_len):
        candidates = []  # (score, ended)
        for n in range(1, t + 1):
            for seq in itertools.product(range(vocab), repeat=n):
                if EOS_ID in seq[:-1] or (n < t and seq[-1] != EOS_ID):
                    continue
                prev = (BOS_ID,) + seq[:-1]
                total = sum(log_softmax(logits[i, prev[i]])[seq[i]] for i in range(n))
                candidates.append((total, seq[-1] == EOS_ID))
        if all(ended for _, ended in sorted(candidates, key=lambda c: -c[0])[:n_best]):
            return t
    return max_len


def test_beam_search_stops_early_and_stays_exact_without_length_penalty():
    """alpha 0: an open hypothesis' score only falls as it grows, so stopping once the n best
    beams have ended changes nothing. Sentence 0 favours </s> at the first two steps and stops
    early; sentence 1 runs longer and sentence 0's frozen result must not change meanwhile."""
    rng = np.random.default_rng(1)
    vocab, max_len, source_len, n_best = 5, 4, 3, 2
    logits = rng.normal(scale=1.0, size=(2, max_len, vocab, vocab))
    logits[0, :2, :, EOS_ID] += 4.0
    attention = rng.uniform(size=(2, max_len, vocab, source_len))
    steps = [stop_step(logits[b], max_len, n_best) for b in range(2)]
    assert steps == [2, 4]  # the scenario: one sentence stops early, the other does not
    search = compile_search(TableModel(logits, attention), beam_width=85, n_best=n_best)
    for rows in ([0], [0, 1]):
        ids = tf.constant([[r, 1, 1] for r in rows], tf.int32)
        result = search(ids, tf.constant([3] * len(rows)), tf.constant(max_len))
        assert result.ids.shape[2] == max(steps[r] for r in rows)
        for b, r in enumerate(rows):
            expected = exhaustive(logits[r], attention[r], max_len, 0.0)[:n_best]
            np.testing.assert_allclose(result.scores[b], [h[0] for h in expected], atol=1e-5)
            for n, (_, tokens, _) in enumerate(expected):
                assert result.lengths[b, n] == len(tokens)
                assert list(result.ids.numpy()[b, n, : len(tokens)]) == tokens
                assert not np.any(result.ids.numpy()[b, n, len(tokens) :])


def test_beam_search_stops_when_best_ended_while_others_ramble():
    """A scripted model whose best hypothesis "3 </s>" ends at step 2 while every other beam
    could only ramble (</s> impossible) up to maximum_length: the search stops after 2 steps,
    with the GNMT penalty too, whatever the length cap."""
    vocab, max_len, beam = 6, 30, 3
    logits = np.zeros((1, max_len, vocab, vocab))
    logits[0, :, :, EOS_ID] = -30.0  # </s> (nearly) impossible ...
    logits[0, 0, BOS_ID, 3:5] = [2.0, 1.0]  # ... except after a first token 3
    logits[0, 1, 3, EOS_ID] = 5.0
    model = TableModel(logits, np.ones((1, max_len, vocab, 2)))
    search = compile_search(model, beam_width=beam, length_penalty=0.6)
    probs = [log_softmax(logits[0, 0, BOS_ID])[3], log_softmax(logits[0, 1, 3])[EOS_ID]]
    for cap in (10, max_len):
        result = search(tf.constant([[0, 1]]), tf.constant([2]), tf.constant(cap))
        assert result.ids.shape[2] == 2
        assert result.ids.numpy()[0, 0].tolist() == [3, 0] and result.lengths[0, 0] == 1
        np.testing.assert_allclose(result.scores[0, 0], sum(probs) / (7 / 6) ** 0.6, rtol=1e-5)


def test_n_best_cannot_exceed_beam_width():
    with pytest.raises(SeqtrainError, match="n_best"):
        beam_search(make_model(), *sources(), 2, 0.0, 5, n_best=3)


def test_hard_alignments():
    attention = np.array([[0.1, 0.7, 0.2, 0.9], [0.5, 0.3, 0.2, 0.0], [0.2, 0.2, 0.6, 0.0]])
    # column 3 is padding: ignored although it is the maximum of row 0
    assert hard_alignments(attention, 2, 3) == [(1, 0), (0, 1)]
    assert hard_alignments(attention, 3, 3) == [(1, 0), (0, 1), (2, 2)]
    assert hard_alignments(attention, 0, 3) == []


def test_hard_alignments_intersection_keeps_mutual_best_links():
    # Rows are target tokens; row 3 and column 3 are padding (their 0.9s must not count).
    attention = np.array(
        [
            [0.1, 0.7, 0.2, 0.9],
            [0.5, 0.3, 0.2, 0.9],
            [0.2, 0.6, 0.2, 0.9],
            [0.9, 0.9, 0.9, 0.9],
        ]
    )
    # argmax rows: t0->s1, t1->s0, t2->s1; argmax columns: s0->t1, s1->t0 (0.7 > 0.6).
    assert hard_alignments(attention, 3, 3) == [(1, 0), (0, 1), (1, 2)]
    assert hard_alignments(attention, 3, 3, "intersection") == [(1, 0), (0, 1)]
    assert hard_alignments(attention, 0, 3, "intersection") == []
