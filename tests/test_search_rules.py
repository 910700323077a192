"""OpenNMT-tf's decoding keys: minimum length, random sampling, coverage penalty (search_rules)."""

import itertools
import math

import numpy as np
import pytest
import tensorflow as tf
from test_decoding import TableModel, log_softmax

from seqtrain import config as cfg
from seqtrain import config_checks
from seqtrain.decoding import BOS_ID, EOS_ID, compile_search
from seqtrain.errors import SeqtrainError
from seqtrain.search_rules import SearchOptions, coverage_penalty


@pytest.mark.parametrize("beam_width", [1, 3])
def test_minimum_length_forbids_eos_before_n_tokens(beam_width):
    """A scripted model whose argmax is </s> at every step (+5 over random logits) stops at
    once; with minimum_decoding_length N every output has exactly N tokens, then </s>."""
    rng = np.random.default_rng(2)
    steps, vocab = 12, 6
    logits = rng.normal(size=(2, steps, vocab, vocab)).astype(np.float32)
    logits[..., EOS_ID] += 5.0
    model = TableModel(logits, np.ones((2, steps, vocab, 3), np.float32) / 3)
    ids, lengths = tf.constant([[0, 1, 1], [1, 1, 1]]), tf.constant([3, 2])
    for minimum, limit, expected in ((0, 12, 0), (4, 12, 4), (8, 3, 3)):  # the limit wins
        options = SearchOptions(minimum_length=minimum)
        result = compile_search(model, beam_width=beam_width, options=options)(
            ids, lengths, tf.constant(limit)
        )
        assert result.lengths.numpy().ravel().tolist() == [expected] * 2
        assert EOS_ID not in result.ids.numpy()[:, 0, :expected]
        # The forced tokens are the best non-</s> ones: greedy's first is the argmax without it.
        if beam_width == 1 and expected:
            first = np.argmax(np.delete(logits[:, 0, BOS_ID], EOS_ID, axis=1), axis=1)
            first += first >= EOS_ID
            assert result.ids.numpy()[:, 0, 0].tolist() == first.tolist()


def one_step_model(row):
    """TableModel of one sentence and one step whose logits from <s> are ``row`` [V]."""
    vocab = len(row)
    logits = np.full((1, 1, vocab, vocab), -20.0, np.float32)
    logits[0, 0, BOS_ID] = row
    return TableModel(logits, np.ones((1, 1, vocab, 3), np.float32) / 3)


def sample(model, count, options):
    """count draws of the one-step model -> (token ids [count], scores [count])."""
    ids = tf.constant([[0, 1, 1]] * count, tf.int32)
    result = compile_search(model, options=options)(ids, tf.constant([3] * count), tf.constant(1))
    return result.ids.numpy()[:, 0, 0], result.scores.numpy()[:, 0]


def test_topk_sampling_emits_only_the_k_best_with_their_log_probabilities():
    row = np.array([-20.0, -20.0, -20.0, 2.0, 2.0, 1.5], np.float32)  # top 2: ids 3 and 4
    model = one_step_model(row)
    tf.random.set_seed(3)
    tokens, scores = sample(model, 400, SearchOptions(sampling_topk=2))
    assert set(tokens.tolist()) == {3, 4}  # each has p = 1/2 among the top 2
    # The score is the token's (untempered) log-probability under the full distribution.
    np.testing.assert_allclose(scores, log_softmax(row)[tokens], rtol=1e-5)
    tokens, _ = sample(model, 400, SearchOptions(sampling_topk=0))
    assert set(tokens.tolist()) == {3, 4, 5}  # 5 has p = 0.23; the -20 ids p < 1e-9
    # A low temperature sharpens the distribution to the argmax (ids 3/4 tie: both stay).
    tokens, _ = sample(model, 400, SearchOptions(sampling_topk=0, sampling_temperature=0.01))
    assert set(tokens.tolist()) == {3, 4}
    # sampling_topk 1 is the plain argmax (the lowest id among ties).
    tokens, _ = sample(model, 5, SearchOptions(sampling_topk=1))
    assert tokens.tolist() == [3] * 5


def test_sampling_needs_greedy_search():
    params = cfg.ParamsConfig(sampling_topk=0, beam_width=4)
    with pytest.raises(SeqtrainError, match="beam_width"):
        config_checks.check_decoding(params)
    with pytest.raises(SeqtrainError, match="sampling_temperature"):
        config_checks.check_decoding(cfg.ParamsConfig(sampling_temperature=0.0))
    config_checks.check_decoding(cfg.ParamsConfig(sampling_topk=0, beam_width=1))


def test_coverage_penalty_by_hand():
    accumulated = tf.constant([[0.5, 1.5, 0.0], [0.2, 0.2, 0.6]])
    # log(min(A, 1)), A = 0 (padding) counting as covered.
    expected = [math.log(0.5), 2 * math.log(0.2) + math.log(0.6)]
    np.testing.assert_allclose(coverage_penalty(accumulated).numpy(), expected, rtol=1e-6)


def exhaustive_with_coverage(logits, attention, max_len, alpha, beta):
    """Every hypothesis (score, tokens) of one sentence, best first: GNMT length penalty and,
    for those that end with </s>, beta * sum_s log(min(sum of their steps' rows, 1))."""
    vocab = logits.shape[-1]
    hypotheses = []
    for n in range(1, max_len + 1):
        for seq in itertools.product(range(vocab), repeat=n):
            if EOS_ID in seq[:-1] or (n < max_len and seq[-1] != EOS_ID):
                continue
            prev = (BOS_ID,) + seq[:-1]
            total = sum(log_softmax(logits[t, prev[t]])[seq[t]] for t in range(n))
            score = total / ((5.0 + n) / 6.0) ** alpha
            if seq[-1] == EOS_ID:
                covered = sum(attention[t, prev[t]] for t in range(n))  # </s> step included
                score += beta * np.sum(np.log(np.minimum(covered, 1.0)))
            tokens = list(seq[:-1]) if seq[-1] == EOS_ID else list(seq)
            hypotheses.append((score, tokens))
    return sorted(hypotheses, key=lambda h: -h[0])


@pytest.mark.parametrize("alpha", [0.0, 0.6])
def test_beam_search_with_coverage_penalty_is_exact_on_a_scripted_model(alpha):
    """A beam as wide as the search space returns the exact 10 best under the penalized score.
    The attention is small (sums stay < 1 over short hypotheses), so beta 2 reorders them."""
    rng = np.random.default_rng(5)
    vocab, max_len, source_len, beta = 4, 3, 3, 2.0
    logits = rng.normal(size=(1, max_len, vocab, vocab)).astype(np.float32)
    attention = rng.uniform(0.05, 0.5, size=(1, max_len, vocab, source_len)).astype(np.float32)
    expected = exhaustive_with_coverage(logits[0], attention[0], max_len, alpha, beta)[:10]
    plain = exhaustive_with_coverage(logits[0], attention[0], max_len, alpha, 0.0)[:10]
    assert [h[1] for h in expected] != [h[1] for h in plain]  # the penalty changes the order
    search = compile_search(
        TableModel(logits, attention), beam_width=64, length_penalty=alpha, n_best=10,
        options=SearchOptions(coverage_penalty=beta),
    )  # fmt: skip
    result = search(tf.constant([[0, 1, 1]]), tf.constant([3]), tf.constant(max_len))
    np.testing.assert_allclose(result.scores[0], [h[0] for h in expected], atol=1e-5)
    for n, (_, tokens) in enumerate(expected):
        assert list(result.ids.numpy()[0, n, : len(tokens)]) == tokens
