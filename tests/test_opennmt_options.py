"""OpenNMT-tf options with numbers to check: the learning-rate schedules against their formulas
worked out by hand, clipnorm / global_clipnorm through ``Trainer.step``, the wer scorer, the
eval/infer batching keys and train.single_pass."""

import math

import numpy as np
import pytest
import tensorflow as tf
from conftest import tiny_config

from seqtrain import batching, data, scorers
from seqtrain import config as cfg
from seqtrain.data import batch_from_examples
from seqtrain.model import Transformer
from seqtrain.optim import clip_by_norm, learning_rate_schedule
from seqtrain.trainer import Trainer, make_optimizer

# ---------------------------------------------------------------- schedules


def lr_at(decay_type, decay_params, steps, learning_rate=1.0, **wrapper):
    schedule = learning_rate_schedule(learning_rate, decay_type, decay_params, **wrapper)
    return [float(schedule(s)) for s in steps]


def test_rsqrt_decay():
    # scale / sqrt(max(step, warmup)); scale = learning_rate 2.0, warmup 100
    got = lr_at("RsqrtDecay", {"warmup_steps": 100}, [0, 99, 400], learning_rate=2.0)
    np.testing.assert_allclose(got, [2 / 10, 2 / 10, 2 / 20], rtol=1e-6)
    # decay_params' scale wins over learning_rate (OpenNMT-tf fills it only when absent)
    got = lr_at("RsqrtDecay", {"warmup_steps": 100, "scale": 4.0}, [0], learning_rate=2.0)
    np.testing.assert_allclose(got, [0.4], rtol=1e-6)


def test_inv_sqrt_decay():
    # s = step + 1; s <= 4: 1e-4 + (1e-3 - 1e-4) * s / 4; then 1e-3 * sqrt(4 / s)
    params = {"warmup_steps": 4, "initial_learning_rate": 1e-4}
    got = lr_at("InvSqrtDecay", params, [0, 3, 4, 15], learning_rate=1e-3)
    want = [1e-4 + 9e-4 / 4, 1e-3, 1e-3 * math.sqrt(4 / 5), 1e-3 * 0.5]
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_cosine_annealing():
    # warm-up: 1.0 * step / 10; then 0.1 + 0.45 * (1 + cos(pi * step / 100))
    params = {"eta_min": 0.1, "max_step": 100, "warmup_steps": 10}
    got = lr_at("CosineAnnealing", params, [5, 10, 50, 100])
    want = [0.5, 0.1 + 0.45 * (1 + math.cos(math.pi / 10)), 0.55, 0.1]
    np.testing.assert_allclose(got, want, rtol=1e-6)
    no_warmup = lr_at("CosineAnnealing", {"max_step": 100}, [0, 50])  # eta_min 0
    np.testing.assert_allclose(no_warmup, [1.0, 0.5], rtol=1e-6, atol=1e-7)


def test_rnmt_plus_decay():
    # n = 4, p = 500, s = 600000, e = 1200000: min(1 + 3t/2000, 4, 4 * 8^((600000 - 4t)/600000))
    params = {"num_replicas": 4}
    got = lr_at("RNMTPlusDecay", params, [0, 250, 1000, 150000, 300000])
    np.testing.assert_allclose(got, [1.0, 1.375, 2.5, 4.0, 0.5], rtol=1e-5)


def test_schedule_through_the_wrapper_and_the_config():
    """start_decay_steps 50, decay_step_duration 2, minimum 0.09 around RsqrtDecay, from YAML
    keys to the optimizer's learning rate at each step."""
    params = cfg.ParamsConfig(
        learning_rate=2.0,
        decay_type="RsqrtDecay",
        decay_params=cfg.DecayParams(warmup_steps=100),
        start_decay_steps=50,
        decay_step_duration=2,
        minimum_learning_rate=0.09,
    )
    optimizer = make_optimizer(params)
    got = [float(optimizer.learning_rate_at(s)) for s in [0, 850, 851, 1650]]
    # steps -> schedule steps 0, 400, 400, 800: 0.2, 0.1, 0.1, max(2/sqrt(800), 0.09)
    np.testing.assert_allclose(got, [0.2, 0.1, 0.1, 0.09], rtol=1e-6)


# ---------------------------------------------------------------- clipping


def test_clip_by_norm_each_gradient_on_its_own():
    sparse = tf.IndexedSlices(
        tf.constant([[3.0, 0.0], [1.0, 0.0], [0.0, 3.0]]), tf.constant([2, 2, 0]), [4, 2]
    )  # dense form: row 2 = (4, 0), row 0 = (0, 3): norm 5
    dense = tf.constant([[12.0]])
    kept, clipped = clip_by_norm([sparse, dense, None], 6.0)[:2]
    np.testing.assert_allclose(kept.values.numpy(), sparse.values.numpy())
    np.testing.assert_allclose(clipped.numpy(), [[6.0]])
    halved = clip_by_norm([sparse], 2.5)[0]
    assert isinstance(halved, tf.IndexedSlices)
    np.testing.assert_allclose(halved.values.numpy(), [[1.5, 0.0], [0.5, 0.0], [0.0, 1.5]])


MODEL = cfg.ModelConfig(
    num_layers=1, num_units=16, num_heads=2, ffn_inner_dim=32,
    dropout=0.0, attention_dropout=0.0, ffn_dropout=0.0,
)  # fmt: skip
LR, EPS, B2 = 1e6, 1e6, 0.998


def _update(clipnorm=None, global_clipnorm=None, clip_gradients=None):
    """One Adam update of a fresh model on a fixed batch -> (weight deltas, gradient norm).

    ε = 1e6 ≫ |g|: each delta is lr·√(1-β2)·g/ε (Adam's first step, linear in g), so the
    deltas show the clipped gradients."""
    params = cfg.ParamsConfig(
        optimizer="Adam",
        optimizer_params=cfg.OptimizerParams(
            beta_2=B2, epsilon=EPS, clipnorm=clipnorm, global_clipnorm=global_clipnorm
        ),
        learning_rate=LR,
        decay_type=None,
        clip_gradients=clip_gradients,
    )
    model = Transformer(MODEL, 30, 30, seed=3)
    optimizer = make_optimizer(params)
    optimizer.build(model.trainable_variables)
    trainer = Trainer(model, optimizer, params, tf.distribute.get_strategy(), seed=5)
    rng = np.random.RandomState(0)
    batch = batch_from_examples(
        [(rng.randint(4, 30, n), rng.randint(4, 30, n + 1), None) for n in (3, 5, 6)]
    )
    before = [v.numpy().copy() for v in model.trainable_variables]
    out = trainer.step([batch])
    assert bool(out["finite"])
    return [b - v.numpy() for b, v in zip(before, model.trainable_variables)], float(
        out["grad_norm"]
    )


@pytest.fixture
def eager():
    """The four one-step trainers run eagerly: tracing each would take most of the test."""
    tf.config.run_functions_eagerly(True)
    yield
    tf.config.run_functions_eagerly(False)


def test_clipnorm_and_global_clipnorm_through_the_trainer(eager):
    k = LR * math.sqrt(1 - B2) / EPS  # delta = k * gradient
    free, grad_norm = _update()
    norms = np.array([np.linalg.norm(d) / k for d in free])  # each variable's gradient norm
    np.testing.assert_allclose(np.sqrt((norms**2).sum()), grad_norm, rtol=1e-4)
    limit = float(np.median(norms))
    assert (norms > 1.5 * limit).any() and (norms < limit / 1.5).any()
    # Deltas are differences of float32 weights: compare to 1e-3 of each matrix's largest.
    per_variable, _ = _update(clipnorm=limit)
    for delta, clipped, norm in zip(free, per_variable, norms):
        want = delta * min(1.0, limit / norm)
        np.testing.assert_allclose(clipped, want, atol=1e-3 * np.abs(want).max())
    together, _ = _update(global_clipnorm=limit)
    for delta, clipped in zip(free, together):
        want = delta * limit / grad_norm
        np.testing.assert_allclose(clipped, want, atol=1e-3 * np.abs(want).max())
    same, _ = _update(clip_gradients=limit)  # seqtrain's key: the same global clip
    for a, b in zip(together, same):
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------- scorers


def test_wer_as_opennmt_tf():
    # a b c d -> a x c: one substitution, one deletion = 2/4; exact = 0; empty reference = 1
    refs, hyps = ["a b c d", "a b", ""], ["a x c", "a b", "z"]
    assert scorers.sentence_wer("a b c d".split(), "a x c".split()) == 0.5
    assert scorers.corpus_wer(hyps, refs) == pytest.approx((0.5 + 0.0 + 1.0) / 3)
    got = scorers.score_translations(hyps, refs, {"wer", "ter", "chrf++"})
    assert got["wer"] == pytest.approx(0.5)
    assert set(got) == {"wer", "ter", "chrf++"}


def test_ter_and_chrf_plus_plus_are_sacrebleus():
    import sacrebleu

    refs = ["the cat sat on the mat", "a dog barked"]
    hyps = ["the cat sat on a mat", "the dog barked loudly"]
    got = scorers.score_translations(hyps, refs, {"ter", "chrf++"})
    # TER: 1 substitution (6 words) + 1 substitution, 1 insertion (3 words) = 3 edits / 9 words
    assert got["ter"] == pytest.approx(100 * 3 / 9)
    want = sacrebleu.CHRF(word_order=2).corpus_score(hyps, [refs]).score
    assert got["chrf++"] == pytest.approx(want)
    assert got["chrf++"] != pytest.approx(sacrebleu.corpus_chrf(hyps, [refs]).score)


# ---------------------------------------------------------------- batching, single pass


def test_batch_groups_by_examples_tokens_and_buckets():
    lengths = [5, 1, 3, 8, 2, 2]
    groups = lambda *a: [g.tolist() for g in batching.batch_groups(lengths, *a)]  # noqa: E731
    assert groups(2, "examples", 0) == [[0, 1], [2, 3], [4, 5]]
    # buckets of width 2: keys (length - 1) // 2 = 2, 0, 1, 3, 0, 0
    assert groups(2, "examples", 2) == [[1, 4], [5], [2], [0], [3]]
    # tokens: batch x longest <= 6 (one example alone may exceed it)
    assert groups(6, "tokens", 0) == [[0], [1, 2], [3], [4, 5]]


def test_inference_batches_in_tokens_keep_the_order_recoverable():
    sources = [[4] * n for n in (5, 1, 3, 8, 2, 2)]
    batches = list(data.inference_dataset(sources, 6, "tokens", 0).as_numpy_iterator())
    assert [b["index"].tolist() for b in batches] == [[0], [1, 2], [3], [4, 5]]
    for batch in batches:
        assert batch["source_ids"].size <= 6 or len(batch["index"]) == 1


def test_single_pass_dataset_yields_each_example_once(corpus, tmp_path):
    config = cfg.build(tiny_config(corpus, tmp_path / "run", train={"single_pass": True}), "t")
    loaded = data.load_corpus(config, "train")
    rows = []
    for batch in data.train_dataset(loaded, config.train, with_alignment=False):
        for ids, n in zip(batch["source_ids"].numpy(), batch["source_length"].numpy()):
            rows.append(tuple(ids[:n]))
    with open(corpus["train.src"], encoding="utf-8") as f:
        lines = [line.split() for line in f]
    assert len(rows) == len(lines) == 240  # no line is too long for the tiny config
    vocab = ["<blank>", "<s>", "</s>", "<unk>"] + [f"s{i}" for i in range(24)]
    assert sorted(rows) == sorted(tuple(vocab.index(w) for w in line) for line in lines)
