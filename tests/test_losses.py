"""Tests of seqtrain.losses against independent numpy computations (loops, explicit one-hots)."""

import types

import numpy as np
import pytest
import tensorflow as tf

from seqtrain import losses

OPENNMT_LOGITS = [
    [[0.1, 0.2, 0.9], [-1.2, 2.1, 0.0], [0.6, 0.3, 0.4]],
    [[-2.2, -0.2, -1.2], [2.3, 0.2, -0.1], [0.0, 0.1, 0.7]],
]
OPENNMT_LABELS = [[2, 1, 0], [1, 0, 2]]
BATCH_KEYS = ("source_length", "target_out", "target_length", "alignment")


def make_params(**overrides):
    values = {
        "label_smoothing": 0.0,
        "average_loss_in_time": True,
        "guided_alignment_type": None,
        "guided_alignment_weight": 1.0,
        "guided_alignment_normalization": "opennmt",
    }
    values.update(overrides)
    return types.SimpleNamespace(**values)


def floats(values):
    return {k: float(v) for k, v in values.items()}


def make_batch(source_length, target_out, target_length, alignment):
    """The batch dict of seqtrain.data (the keys the losses read), as tensors."""
    values = (source_length, target_out, target_length, alignment)
    return {k: tf.constant(v) for k, v in zip(BATCH_KEYS, values)}


def np_log_softmax(x):
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def np_masked_softmax(x, source_length):
    """Softmax over the real source positions of each sentence, 0 on padding. x: [B, T, S]."""
    out = np.zeros_like(x)
    for b, n in enumerate(source_length):
        e = np.exp(x[b, :, :n] - x[b, :, :n].max(axis=-1, keepdims=True))
        out[b, :, :n] = e / e.sum(axis=-1, keepdims=True)
    return out


def np_row_cost(g, row, cost_type, m):
    """One row's cost: cross-entropy against the renormalized, clipped row, or the mean of the
    squared errors over the first m source positions."""
    row = row.astype(np.float64)
    if cost_type == "ce":
        p = np.clip(row / row.sum(), 1e-7, 1 - 1e-7)
        return -sum(g[s] * np.log(p[s]) for s in range(len(row)))
    return sum((g[s] - row[s]) ** 2 for s in range(m)) / m


def np_ga_cost(attention, gold, len_t, cost_type, weight):
    """The opennmt cost, one row at a time; mse averages over the padded source length."""
    total, count = 0.0, sum(max(n, 0) for n in len_t)
    for b, n in enumerate(len_t):
        for t in range(min(n, attention.shape[1] - 1)):
            total += np_row_cost(gold[b, t], attention[b, t], cost_type, attention.shape[2])
    return weight * total / count if count else 0.0


def np_ga_sum(attention, gold, len_t, source_length, cost_type):
    """The aligned_tokens sum and count, one row at a time, gold rows normalized."""
    total, aligned = 0.0, 0
    for b, n in enumerate(len_t):
        for t in range(min(n, attention.shape[1] - 1)):
            links = gold[b, t].sum()
            if links > 0:
                aligned += 1
                g = gold[b, t] / links
                total += np_row_cost(g, attention[b, t], cost_type, source_length[b])
    return total, aligned


def ga_example(rng):
    """3 sentences, T=5, S=4: a one-link row, a many-link row, an unaligned row, padded
    sentences, an unused padded time step and an unused source column."""
    target_length = np.array([4, 2, 3], np.int32)  # len_t = 3, 1, 2
    source_length = np.array([3, 2, 1], np.int32)
    gold = np.zeros([3, 5, 4], np.float32)
    gold[0, 0, 0] = 1  # y_0 <- x_0
    gold[0, 1, 1] = gold[0, 1, 2] = 1  # y_1 <- x_1 and x_2; row 2 of sentence 0 unaligned
    gold[1, 0, 1] = 1
    gold[2, 0, 0] = gold[2, 1, 0] = 1  # two target tokens from one source token
    attention = np_masked_softmax(rng.normal(size=[3, 5, 4]), source_length).astype(np.float32)
    return attention, gold, target_length, source_length


@pytest.mark.parametrize(
    "lengths,average,expected",
    [
        (None, False, (3.06985, 2.0, 6.0)),
        (None, True, (3.06985, 6.0, 6.0)),
        ([2, 1], False, (1.22118, 2.0, 3.0)),
    ],
)
def test_cross_entropy_opennmt_reference_values(lengths, average, expected):
    out = losses.cross_entropy_sequence_loss(
        tf.constant(OPENNMT_LOGITS), tf.constant(OPENNMT_LABELS), lengths, average_in_time=average
    )
    np.testing.assert_allclose([float(x) for x in out], expected, atol=1e-5)


def test_label_smoothing_matches_explicit_one_hot():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=[2, 4, 7]).astype(np.float16)  # half precision in: cast to float32
    labels = rng.integers(0, 7, size=[2, 4])
    eps, lengths = 0.1, [4, 2]
    one_hot = np.eye(7)[labels]
    target = one_hot * (1 - eps) + (1 - one_hot) * eps / 6
    log_p = np_log_softmax(logits.astype(np.float64))
    mask = np.arange(4)[None, :] < np.array(lengths)[:, None]
    expected = (-(target * log_p).sum(-1) * mask).sum()
    loss_sum, normalizer, tokens = losses.cross_entropy_sequence_loss(
        tf.constant(logits), labels, lengths, label_smoothing=eps
    )
    assert loss_sum.dtype == tf.float32
    np.testing.assert_allclose(float(loss_sum), expected, rtol=1e-6)
    assert (float(normalizer), float(tokens)) == (2.0, 6.0)
    # Evaluation: unsmoothed, normalized per token.
    loss_sum, normalizer, _ = losses.cross_entropy_sequence_loss(
        logits, labels, lengths, label_smoothing=eps, training=False
    )
    unsmoothed = (-(one_hot * log_p).sum(-1) * mask).sum()
    np.testing.assert_allclose(float(loss_sum), unsmoothed, rtol=1e-6)
    assert float(normalizer) == 6.0
    assert abs(expected - unsmoothed) > 0.01  # smoothing did change the value


@pytest.mark.parametrize("eps", [0.0, 0.2])
def test_cross_entropy_gradient_is_softmax_minus_target(eps):
    rng = np.random.default_rng(1)
    logits = tf.Variable(rng.normal(size=[3, 5, 6]).astype(np.float32))
    labels = rng.integers(0, 6, size=[3, 5])
    lengths = [5, 3, 1]
    with tf.GradientTape() as tape:
        loss_sum, _, _ = losses.cross_entropy_sequence_loss(
            logits, labels, lengths, label_smoothing=eps
        )
    grad = tape.gradient(loss_sum, logits).numpy()
    one_hot = np.eye(6)[labels]
    target = one_hot * (1 - eps) + (1 - one_hot) * eps / 5
    probs = np.exp(np_log_softmax(logits.numpy().astype(np.float64)))
    mask = (np.arange(5)[None, :] < np.array(lengths)[:, None])[..., None]
    np.testing.assert_allclose(grad, (probs - target) * mask, atol=1e-6)


def test_smoothed_cross_entropy_matches_autodiff_of_the_formula():
    """The hand-written gradient against autodiff of the textbook form, on a real vocab size."""
    rng = np.random.default_rng(7)
    logits = tf.constant(rng.normal(scale=3.0, size=[2, 9, 1000]).astype(np.float32))
    labels = tf.constant(rng.integers(0, 1000, size=[2, 9]).astype(np.int32))
    eps = 0.1
    target = tf.one_hot(labels, 1000) * (1 - eps - eps / 999) + eps / 999
    upstream = tf.constant(rng.normal(size=[2, 9]).astype(np.float32))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(logits)
        fused = losses.smoothed_cross_entropy(logits, labels, eps)
        textbook = -tf.reduce_sum(target * tf.nn.log_softmax(logits), axis=-1)
        fused_total, textbook_total = (tf.reduce_sum(x * upstream) for x in (fused, textbook))
    assert fused.shape == (2, 9)
    np.testing.assert_allclose(fused.numpy(), textbook.numpy(), rtol=1e-5)
    np.testing.assert_allclose(
        tape.gradient(fused_total, logits).numpy(),
        tape.gradient(textbook_total, logits).numpy(),
        atol=1e-6,
    )


def test_cross_entropy_padding_invariance():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=[2, 3, 5]).astype(np.float32)
    labels = rng.integers(0, 5, size=[2, 3])
    # Two more time steps and a third, empty sentence, all filled with garbage.
    padded_logits = rng.normal(size=[3, 5, 5]).astype(np.float32) * 10
    padded_logits[:2, :3] = logits
    padded_labels = rng.integers(0, 5, size=[3, 5])
    padded_labels[:2, :3] = labels
    for eps in (0.0, 0.1):
        base = losses.cross_entropy_sequence_loss(logits, labels, [3, 2], eps, average_in_time=True)
        padded = losses.cross_entropy_sequence_loss(
            padded_logits, padded_labels, [3, 2, 0], eps, average_in_time=True
        )
        np.testing.assert_allclose([float(x) for x in padded], [float(x) for x in base], atol=1e-6)


@pytest.mark.parametrize("cost_type", ["ce", "mse"])
def test_guided_alignment_cost_matches_loop(cost_type):
    rng = np.random.default_rng(3)
    attention, gold, target_length, _ = ga_example(rng)
    attention *= rng.uniform(0.5, 1.0, size=[3, 5, 1]).astype(np.float32)  # rows sum to < 1
    cost = losses.guided_alignment_cost(attention, gold, target_length - 1, cost_type, weight=0.5)
    expected = np_ga_cost(attention, gold, target_length - 1, cost_type, 0.5)
    assert cost.shape == ()
    np.testing.assert_allclose(float(cost), expected, atol=1e-6)
    if cost_type == "ce":  # by hand: rows (0,0), (0,1) twice, (1,0), (2,0), (2,1); Σ len_t = 6
        a = attention.astype(np.float64) / attention.sum(-1, keepdims=True)
        by_hand = -np.log([a[0, 0, 0], a[0, 1, 1], a[0, 1, 2], a[1, 0, 1], 1 - 1e-7, 1 - 1e-7])
        np.testing.assert_allclose(float(cost), 0.5 * by_hand.sum() / 6, atol=1e-6)


@pytest.mark.parametrize("cost_type", ["ce", "mse"])
def test_guided_alignment_sum_matches_loop(cost_type):
    rng = np.random.default_rng(4)
    attention, gold, target_length, source_length = ga_example(rng)
    attention *= rng.uniform(0.5, 1.0, size=[3, 5, 1]).astype(np.float32)
    ga_sum, aligned = losses.guided_alignment_sum(
        attention, gold, target_length - 1, source_length, cost_type
    )
    expected_sum, expected_aligned = np_ga_sum(
        attention, gold, target_length - 1, source_length, cost_type
    )
    assert expected_aligned == 5  # rows (0,0), (0,1), (1,0), (2,0), (2,1)
    assert float(aligned) == 5.0
    np.testing.assert_allclose(float(ga_sum), expected_sum, atol=1e-6)


def test_guided_alignment_padding_invariance():
    attention, gold, target_length, source_length = ga_example(np.random.default_rng(5))
    rng = np.random.default_rng(6)
    # Two more time steps (garbage attention), one more source column, an empty 4th sentence.
    big_attention = np.zeros([4, 7, 5], np.float32)
    big_attention[:, 5:] = rng.uniform(size=[4, 2, 5])
    big_attention[3] = 0.2
    big_attention[:3, :5, :4] = attention
    big_gold = np.zeros([4, 7, 5], np.float32)
    big_gold[:3, :5, :4] = gold
    big_gold[1, 3, 0] = big_gold[3, 0, 0] = 1  # links beyond len_t (invalid data) are ignored
    big_target_length = np.append(target_length, 0)
    big_source_length = np.append(source_length, 0)
    for cost_type in ("ce", "mse"):
        base = losses.guided_alignment_cost(attention, gold, target_length - 1, cost_type)
        big = losses.guided_alignment_cost(
            big_attention, big_gold, big_target_length - 1, cost_type
        )
        # mse averages over the padded source length (reference semantics): 4 columns, now 5.
        scale = 4 / 5 if cost_type == "mse" else 1.0
        np.testing.assert_allclose(float(big), float(base) * scale, atol=1e-6)
        base_sum = losses.guided_alignment_sum(
            attention, gold, target_length - 1, source_length, cost_type
        )
        big_sum = losses.guided_alignment_sum(
            big_attention, big_gold, big_target_length - 1, big_source_length, cost_type
        )
        np.testing.assert_allclose([float(x) for x in big_sum], [float(x) for x in base_sum], 1e-6)


def test_guided_alignment_cost_is_zero_without_target_tokens():
    cost = losses.guided_alignment_cost(tf.fill([2, 3, 2], 0.5), tf.zeros([2, 3, 2]), [0, 0])
    assert float(cost) == 0.0


def ga_batch(rng, vocab_size=6):
    attention, gold, target_length, source_length = ga_example(rng)
    target_out = rng.integers(0, vocab_size, size=[3, 5]).astype(np.int32)
    return make_batch(source_length, target_out, target_length, gold), attention


def test_batch_normalizers_counts():
    batch, _ = ga_batch(np.random.default_rng(7))
    on = make_params(guided_alignment_type="ce")
    assert floats(losses.batch_normalizers(batch, on)) == {
        "tokens": 9.0,
        "loss_normalizer": 9.0,
        "aligned_tokens": 5.0,
    }
    per_sentence = make_params(guided_alignment_type="mse", average_loss_in_time=False)
    assert floats(losses.batch_normalizers(batch, per_sentence))["loss_normalizer"] == 3.0
    assert floats(losses.batch_normalizers(batch, make_params()))["aligned_tokens"] == 0.0
    no_gold = {k: v for k, v in batch.items() if k != "alignment"}
    assert floats(losses.batch_normalizers(no_gold, on))["aligned_tokens"] == 0.0


def test_loss_terms_agree_with_parts_and_batch_normalizers():
    rng = np.random.default_rng(8)
    batch, attention = ga_batch(rng)
    logits = rng.normal(size=[3, 5, 6]).astype(np.float32)
    params = make_params(
        label_smoothing=0.1,
        guided_alignment_type="ce",
        guided_alignment_normalization="aligned_tokens",
    )
    terms = losses.loss_terms(logits, attention, batch, params, training=True)
    assert sorted(terms) == ["aligned_tokens", "ce_sum", "ga_sum", "loss_normalizer", "tokens"]
    ce_sum, _, _ = losses.cross_entropy_sequence_loss(
        logits, batch["target_out"], batch["target_length"], 0.1
    )
    np.testing.assert_allclose(float(terms["ce_sum"]), float(ce_sum), rtol=1e-7)
    normalizers = losses.batch_normalizers(batch, params)
    for key in ("tokens", "loss_normalizer", "aligned_tokens"):
        assert float(terms[key]) == float(normalizers[key])
    eval_terms = losses.loss_terms(logits, attention, batch, make_params(), training=False)
    assert sorted(eval_terms) == ["ce_sum", "loss_normalizer", "tokens"]
    nll = -np.take_along_axis(np_log_softmax(logits), batch["target_out"].numpy()[..., None], -1)
    mask = np.arange(5)[None, :] < batch["target_length"].numpy()[:, None]
    np.testing.assert_allclose(float(eval_terms["ce_sum"]), (nll[..., 0] * mask).sum(), rtol=1e-6)


def test_design_worked_example():
    """3 sentences of 3 tokens + </s>: every token's CE is 39.6399841/12 and every gold row
    (one link each) gets attention exp(-9.00836372/9), so ga_cost = 9.00836372/9."""
    ce_token, ga_row = 39.6399841 / 12, 9.00836372 / 9
    # V = 2, label 1, logits [x, 0]: -log p_1 = log(1 + e^x).
    x = np.log(np.expm1(ce_token))
    logits = np.tile(np.array([x, 0.0], np.float32), [3, 4, 1])
    a = np.exp(-ga_row)
    attention = np.tile(np.array([a, 1 - a], np.float32), [3, 4, 1])
    gold = np.zeros([3, 4, 2], np.float32)
    gold[:, :3, 0] = 1
    batch = make_batch([2, 2, 2], np.ones([3, 4], np.int32), [4, 4, 4], gold)
    params = make_params(guided_alignment_type="ce", guided_alignment_weight=1.0)
    terms = losses.loss_terms(logits, attention, batch, params, training=True)
    np.testing.assert_allclose(float(terms["ce_sum"]), 39.6399841, rtol=1e-6)
    np.testing.assert_allclose(float(terms["ga_cost"]), ga_row, rtol=1e-6)
    figures = losses.report(terms, 1, params)
    expected = {"loss": "3.386743", "ce": "3.303332", "alignment": "1.000929"}
    assert {k: f"{float(v):.6f}" for k, v in figures.items()} == expected
    # Python numbers work too: the DESIGN figures from its own sums.
    sums = {"ce_sum": 39.6399841, "tokens": 12, "loss_normalizer": 12, "ga_cost": 9.00836372 / 9}
    figures = losses.report(sums, 1, params)
    assert {k: f"{v:.6f}" for k, v in figures.items()} == expected


def test_report_modes():
    weight = make_params(guided_alignment_weight=0.5)
    sums = {"ce_sum": 30.0, "tokens": 12.0, "loss_normalizer": 3.0, "ga_cost": 4.0}
    assert losses.report(sums, 4, weight) == {"loss": 34 / 12, "ce": 2.5, "alignment": 1.0}
    sums = {
        "ce_sum": 30.0,
        "tokens": 12.0,
        "loss_normalizer": 3.0,
        "ga_sum": 6.0,
        "aligned_tokens": 4.0,
    }
    figures = losses.report({k: np.float32(v) for k, v in sums.items()}, 2, weight)
    assert figures == {"loss": 2.5 + 0.75, "ce": 2.5, "alignment": 0.75}
    tensor_figures = losses.report({k: tf.constant(v) for k, v in sums.items()}, 2, weight)
    assert floats(tensor_figures) == figures
    no_links = dict(sums, ga_sum=0.0, aligned_tokens=0.0)
    assert losses.report(no_links, 2, weight)["alignment"] == 0.0
    plain = {"ce_sum": 6.0, "tokens": 4.0, "loss_normalizer": 4.0}
    assert losses.report(plain, 1, weight) == {"loss": 1.5, "ce": 1.5}


def test_objective_values():
    terms = {"ce_sum": 12.0, "tokens": 8.0, "loss_normalizer": 2.0, "ga_cost": 3.0}
    normalizers = {"tokens": 20.0, "loss_normalizer": 5.0, "aligned_tokens": 4.0}
    params = make_params(guided_alignment_weight=0.5, average_loss_in_time=False)
    assert float(losses.objective(terms, normalizers, params)) == 3.0  # (12 + 3) / 5
    terms = {"ce_sum": 12.0, "tokens": 8.0, "loss_normalizer": 8.0, "ga_sum": 6.0}
    assert float(losses.objective(terms, normalizers, params)) == pytest.approx(3.15, abs=1e-6)
    no_links = dict(normalizers, aligned_tokens=0.0)
    assert float(losses.objective(terms, no_links, params)) == pytest.approx(5.4, abs=1e-6)


def split_case(rng):
    """4 sentences, split into halves of 8 and 4 target tokens."""
    target_length = np.array([6, 2, 3, 1], np.int32)
    source_length = np.array([4, 2, 3, 1], np.int32)
    gold = np.zeros([4, 6, 4], np.float32)
    for b in range(4):
        n, m = target_length[b] - 1, source_length[b]
        gold[b, :n, :m] = rng.uniform(size=[n, m]) < 0.4
        gold[b, :n, b % m] = 1  # every real row aligned but the unaligned one below
    gold[0, 2] = 0
    target_out = rng.integers(0, 7, size=[4, 6]).astype(np.int32)
    return dict(zip(BATCH_KEYS, (source_length, target_out, target_length, gold)))


def sub_batch(batch, rows):
    t = int(batch["target_length"][rows].max())
    s = int(batch["source_length"][rows].max())
    trimmed = make_batch(
        batch["source_length"][rows],
        batch["target_out"][rows, :t],
        batch["target_length"][rows],
        batch["alignment"][rows, :t, :s],
    )
    return trimmed, t, s


def attention_of(scores, source_length, t, s):
    """Guided-head attention: softmax over the real source positions. scores: [B, T, S]."""
    mask = tf.sequence_mask(source_length, s)[:, tf.newaxis, :]
    return tf.nn.softmax(tf.where(mask, scores[:, :t, :s], -1e9), axis=-1)


def split_gradients(params, batch, logits, scores, parts):
    """Σ over parts of ∇objective(part) with normalizers summed over the parts first."""
    subs = [sub_batch(batch, rows) + (rows,) for rows in parts]
    normalizers = [losses.batch_normalizers(sub, params) for sub, _, _, _ in subs]
    global_normalizers = {k: sum(n[k] for n in normalizers) for k in normalizers[0]}
    with tf.GradientTape() as tape:
        total = 0.0
        for sub, t, s, rows in subs:
            part_logits = tf.gather(logits, rows)[:, :t]
            attention = attention_of(tf.gather(scores, rows), sub["source_length"], t, s)
            terms = losses.loss_terms(part_logits, attention, sub, params, training=True)
            total += losses.objective(terms, global_normalizers, params)
    grads = tape.gradient(total, [logits, scores])  # gather gives IndexedSlices: densify
    return [None if g is None else tf.convert_to_tensor(g) for g in grads], subs


@pytest.mark.parametrize("average_in_time", [True, False])
@pytest.mark.parametrize(
    "normalization,cost_type",
    [("opennmt", None), ("aligned_tokens", "ce"), ("aligned_tokens", "mse")],
)
def test_objective_split_gradient_equals_whole_batch(normalization, cost_type, average_in_time):
    rng = np.random.default_rng(9)
    batch = split_case(rng)
    params = make_params(
        label_smoothing=0.1,
        average_loss_in_time=average_in_time,
        guided_alignment_type=cost_type,
        guided_alignment_weight=0.7,
        guided_alignment_normalization=normalization,
    )
    logits = tf.Variable(rng.normal(size=[4, 6, 7]).astype(np.float32))
    scores = tf.Variable(rng.normal(size=[4, 6, 4]).astype(np.float32))
    whole, _ = split_gradients(params, batch, logits, scores, [np.arange(4)])
    halves, subs = split_gradients(params, batch, logits, scores, [np.array([0, 1]), [2, 3]])
    counts = [floats(losses.batch_normalizers(sub, params)) for sub, _, _, _ in subs]
    assert [c["tokens"] for c in counts] == [8.0, 4.0]
    if cost_type:
        assert [c["aligned_tokens"] for c in counts] == [5.0, 2.0]
    for g_whole, g_halves in zip(whole, halves):
        if cost_type is None and g_whole is None:  # attention unused without guided alignment
            assert g_halves is None
            continue
        assert float(tf.reduce_max(tf.abs(g_whole))) > 1e-3
        np.testing.assert_allclose(g_halves.numpy(), g_whole.numpy(), atol=1e-6)


@pytest.mark.parametrize("cost_type", ["ce", "mse"])
def test_objective_opennmt_alignment_follows_design_per_micro_batch(cost_type):
    """opennmt mode: ∇ Σ_parts (ce_sum + ga_cost_part) / Σ tokens, so the alignment term depends
    on the split (the reason for aligned_tokens); the CE part does not."""
    rng = np.random.default_rng(10)
    batch = split_case(rng)
    params = make_params(label_smoothing=0.1, guided_alignment_type=cost_type)
    logits = tf.Variable(rng.normal(size=[4, 6, 7]).astype(np.float32))
    scores = tf.Variable(rng.normal(size=[4, 6, 4]).astype(np.float32))
    parts = [np.array([0, 1]), np.array([2, 3])]
    halves, subs = split_gradients(params, batch, logits, scores, parts)
    with tf.GradientTape() as tape:
        ce_sum, _, tokens = losses.cross_entropy_sequence_loss(
            logits, batch["target_out"], batch["target_length"], 0.1
        )
        costs = [
            losses.guided_alignment_cost(
                attention_of(tf.gather(scores, rows), sub["source_length"], t, s),
                sub["alignment"],
                sub["target_length"] - 1,
                cost_type,
            )
            for sub, t, s, rows in subs
        ]
        reference = (ce_sum + tf.add_n(costs)) / tokens
    expected = tape.gradient(reference, [logits, scores])
    for got, want in zip(halves, expected):
        np.testing.assert_allclose(got.numpy(), tf.convert_to_tensor(want).numpy(), atol=1e-6)
    whole, _ = split_gradients(params, batch, logits, scores, [np.arange(4)])
    np.testing.assert_allclose(halves[0].numpy(), whole[0].numpy(), atol=1e-6)
    assert float(tf.reduce_max(tf.abs(halves[1] - whole[1]))) > 1e-4
