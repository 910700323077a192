"""Several training corpora (train_files_weights), example_weights: loading, sampling, losses."""

import os

import numpy as np
import pytest
import tensorflow as tf

from seqtrain import corpus as corpus_module
from seqtrain import data, losses
from seqtrain.config import Config, ParamsConfig, TrainConfig, build
from seqtrain.config_checks import check
from seqtrain.errors import SeqtrainError


@pytest.fixture
def two_corpora(tmp_path):
    """Corpus A (3 lines, tokens a b c / x y z) and corpus B (2 lines), with weights files."""
    files = {
        "a.src": "a b c\nb c\nc a b a\n",
        "a.tgt": "x y\ny\nz x y\n",
        "a.align": "0-0 1-1\n0-0\n0-0 2-1 3-2\n",
        "a.w": "1\n0.5\n2\n",
        "b.src": "c c\na\n",
        "b.tgt": "z\nx y\n",
        "b.align": "1-0\n0-1\n",
        "b.w": "0\n3\n",
        "src.vocab": "<blank>\n<s>\n</s>\n<unk>\na\nb\nc\n",
        "tgt.vocab": "<blank>\n<s>\n</s>\n<unk>\nx\ny\nz\n",
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    p = {name: str(tmp_path / name) for name in files}
    raw = {
        "model_dir": str(tmp_path / "run"),
        "data": {
            "train_features_file": [p["a.src"], p["b.src"]],
            "train_labels_file": [p["a.tgt"], p["b.tgt"]],
            "train_alignments": [p["a.align"], p["b.align"]],
            "example_weights": [p["a.w"], p["b.w"]],
            "train_files_weights": [3, 1],
            "source_vocabulary": p["src.vocab"],
            "target_vocabulary": p["tgt.vocab"],
        },
    }
    return tmp_path, raw


def test_corpora_concatenated_and_cached_one_by_one(two_corpora):
    tmp_path, raw = two_corpora
    config = build(raw, "test.yml")
    check(config)
    encoded = data.load_corpus(config)
    assert len(encoded) == 5
    np.testing.assert_array_equal(encoded.parts, [0, 3, 5])
    np.testing.assert_array_equal(encoded.source_splits, [0, 3, 5, 9, 11, 12])
    np.testing.assert_array_equal(encoded.source_ids[9:], [6, 6, 4])
    np.testing.assert_array_equal(encoded.target_splits, [0, 2, 3, 6, 7, 9])
    np.testing.assert_array_equal(encoded.lines, [1, 2, 3, 1, 2])
    # Corpus B's links (t, s): line 1 "1-0" -> (0, 1); line 2 "0-1" -> (1, 0).
    np.testing.assert_array_equal(encoded.links[-2:], [[0, 1], [1, 0]])
    np.testing.assert_array_equal(encoded.links_splits, [0, 2, 3, 6, 7, 8])
    np.testing.assert_array_equal(encoded.weights, [1, 0.5, 2, 0, 3])
    caches = sorted(name.split(".")[0] for name in os.listdir(tmp_path / "run" / "cache"))
    assert caches == ["train", "train1"]
    again = data.load_corpus(config)  # from the two caches
    for name in ("source_ids", "target_ids", "links", "weights", "parts"):
        np.testing.assert_array_equal(getattr(again, name), getattr(encoded, name))


def test_each_corpus_validated_with_line_numbers(two_corpora):
    tmp_path, raw = two_corpora
    (tmp_path / "b.align").write_text("1-0\n0-5\n", encoding="utf-8")
    with pytest.raises(SeqtrainError, match=r"b.align line 2: link '0-5': target index 5"):
        data.load_corpus(build(raw, "test.yml"))


@pytest.mark.parametrize(
    "text, message",
    [
        ("1\nx\n", r"b.w line 2: 'x' is not an example weight"),
        ("1\n-2\n", r"b.w line 2: '-2' is not an example weight"),
        ("1\nnan\n", r"b.w line 2: 'nan' is not an example weight"),
        ("1\n", r"b.w has 1 lines but .*b.src has 2"),
    ],
)
def test_bad_example_weights(two_corpora, text, message):
    tmp_path, raw = two_corpora
    (tmp_path / "b.w").write_text(text, encoding="utf-8")
    with pytest.raises(SeqtrainError, match=message):
        data.load_corpus(build(raw, "test.yml"))


def test_lists_must_be_parallel(two_corpora):
    _, raw = two_corpora
    raw["data"]["train_files_weights"] = [1]
    with pytest.raises(SeqtrainError, match="train_files_weights has 1 entries but"):
        check(build(raw, "x.yml"), "x.yml")
    raw["data"]["train_files_weights"] = [0, 0]
    with pytest.raises(SeqtrainError, match="not all 0"):
        check(build(raw, "x.yml"), "x.yml")


def test_mixture_probabilities_as_opennmt_tf():
    # weight_k * size_k / total, renormalized: 3*100/400 = 0.75 and 1*300/400 = 0.75 -> 1/2 each.
    np.testing.assert_allclose(data.mixture_probabilities([100, 300], [3, 1]), [0.5, 0.5])
    np.testing.assert_allclose(data.mixture_probabilities([100, 300]), [0.25, 0.75])
    np.testing.assert_allclose(data.mixture_probabilities([100, 300], [1, 0]), [1.0, 0.0])


def _sampled_sources(corpus, train, weights, batches):
    dataset = data.train_dataset(corpus, train, files_weights=weights)
    return [b for b in dataset.take(batches)]


def test_weighted_sampling_follows_the_probabilities():
    """Corpus A: 100 examples whose first source id is 4; B: 300 with 5. Per-example draws."""
    a = [(i + 1, [4, 6], [7], None) for i in range(100)]
    b = [(i + 1, [5, 6], [7], None) for i in range(300)]
    parts = [corpus_module.EncodedCorpus.from_examples(
        [corpus_module.alignment.Example(line, np.array(s), np.array(t), None, 2, 1)
         for line, s, t, _ in group], with_links=False)
        for group in (a, b)]  # fmt: skip
    corpus = corpus_module.concatenate(parts)
    train = TrainConfig(batch_size=40, batch_type="examples", length_bucket_width=0, seed=3)
    for weights, expected in (([3, 1], 0.5), (None, 0.25), ([1, 0], 1.0)):
        batches = _sampled_sources(corpus, train, weights, 100)
        first = np.concatenate([b["source_ids"].numpy()[:, 0] for b in batches])
        assert len(first) == 4000
        assert abs(np.mean(first == 4) - expected) < 0.03, weights


def test_batches_carry_example_weights(two_corpora):
    _, raw = two_corpora
    config = build(raw, "test.yml")
    encoded = data.load_corpus(config)
    train = TrainConfig(batch_size=1, batch_type="examples", length_bucket_width=0)
    for batch in data.train_dataset(encoded, train, files_weights=[1, 1]).take(20):
        first_source = batch["source_ids"].numpy()[0].tolist()
        # Each example's source ids identify it: its weight must come with it.
        expected = {
            (4, 5, 6): 1.0, (5, 6): 0.5, (6, 4, 5, 4): 2.0, (6, 6): 0.0, (4,): 3.0
        }[tuple(i for i in first_source if i)]  # fmt: skip
        assert batch["weight"].numpy().tolist() == [expected]


# ---------------------------------------------------------------- losses with example weights

# B = 2, T = 3 decoder steps (the last one is dropped), S = 2. Example 0: len_t 2, weight 2;
# example 1: len_t 1, weight 0.5.
ATTENTION = [
    [[0.5, 0.5], [0.25, 0.75], [0.5, 0.5]],
    [[0.8, 0.2], [0.1, 0.9], [0.5, 0.5]],
]
GOLD = [[[1, 0], [0, 1], [0, 0]], [[1, 0], [1, 0], [0, 0]]]  # ex 1 row 1 is padding
WEIGHTS = [2.0, 0.5]
ROWS = [-np.log(0.5), -np.log(0.75), -np.log(0.8)]  # ce row costs of the 3 real rows


def test_guided_alignment_cost_with_example_weights():
    args = (tf.constant(ATTENTION), tf.constant(GOLD, tf.float32), tf.constant([2, 1]))
    weighted = losses.guided_alignment_cost(*args, "ce", 1.0, tf.constant(WEIGHTS))
    # (2·(0.693147 + 0.287682) + 0.5·0.223144) / (2·2 + 0.5·1) = 2.073230 / 4.5
    expected = (2 * (ROWS[0] + ROWS[1]) + 0.5 * ROWS[2]) / 4.5
    assert float(weighted) == pytest.approx(expected, abs=1e-6)
    assert float(weighted) == pytest.approx(0.4607178, abs=1e-6)
    plain = losses.guided_alignment_cost(*args, "ce", 1.0)
    assert float(plain) == pytest.approx(sum(ROWS) / 3, abs=1e-6)
    ones = losses.guided_alignment_cost(*args, "ce", 1.0, tf.constant([1.0, 1.0]))
    assert float(ones) == float(plain)
    ga_sum, aligned = losses.guided_alignment_sum(
        *args, tf.constant([2, 2]), "ce", tf.constant(WEIGHTS)
    )
    assert float(ga_sum) == pytest.approx(2 * (ROWS[0] + ROWS[1]) + 0.5 * ROWS[2], abs=1e-6)
    assert float(aligned) == pytest.approx(4.5)


def test_loss_terms_and_normalizers_with_example_weights():
    """Uniform logits over V = 6: each token's CE is log 6; target lengths 3 and 2 (</s> in)."""
    batch = {
        "target_out": tf.constant([[4, 5, 2], [4, 2, 0]]),
        "target_length": tf.constant([3, 2]),
        "source_length": tf.constant([2, 2]),
        "alignment": tf.constant(GOLD, tf.float32),
        "weight": tf.constant(WEIGHTS),
    }
    logits = tf.zeros([2, 3, 6])
    params = ParamsConfig(
        label_smoothing=0.0, guided_alignment_type="ce", average_loss_in_time=True
    )
    terms = losses.loss_terms(logits, tf.constant(ATTENTION), batch, params, training=True)
    weighted_tokens = 2 * 3 + 0.5 * 2  # 7
    assert float(terms["ce_sum"]) == pytest.approx(weighted_tokens * np.log(6), abs=1e-5)
    assert float(terms["tokens"]) == weighted_tokens
    assert float(terms["ga_cost"]) == pytest.approx(0.4607178, abs=1e-6)
    normalizers = losses.batch_normalizers(batch, params)
    assert float(normalizers["tokens"]) == weighted_tokens
    assert float(normalizers["aligned_tokens"]) == 4.5
    # Loss = (Σ w·ce + cost) / Σ w·tokens = (7·log 6 + 0.4607178) / 7.
    objective = losses.objective(terms, normalizers, params)
    assert float(objective) == pytest.approx(np.log(6) + 0.4607178 / 7, abs=1e-6)
    by_sentence = ParamsConfig(label_smoothing=0.0, average_loss_in_time=False)
    assert float(losses.batch_normalizers(batch, by_sentence)["loss_normalizer"]) == 2.5


def test_zero_weight_example_changes_nothing():
    """An example of weight 0 contributes neither to the terms nor to the counts."""
    params = ParamsConfig(label_smoothing=0.1, guided_alignment_type="ce")
    rng = np.random.default_rng(0)
    logits = tf.constant(rng.normal(size=(2, 3, 6)), tf.float32)
    batch = {
        "target_out": tf.constant([[4, 5, 2], [4, 2, 0]]),
        "target_length": tf.constant([3, 2]),
        "source_length": tf.constant([2, 2]),
        "alignment": tf.constant(GOLD, tf.float32),
    }
    zero = losses.loss_terms(
        logits, tf.constant(ATTENTION), {**batch, "weight": tf.constant([1.0, 0.0])}, params, True
    )
    alone = {k: v[:1] for k, v in batch.items()}
    first = losses.loss_terms(logits[:1], tf.constant(ATTENTION[:1]), alone, params, True)
    for key in ("ce_sum", "tokens", "ga_cost"):
        assert float(zero[key]) == pytest.approx(float(first[key]), abs=1e-6), key


def test_config_defaults_keep_one_corpus():
    config = Config()
    assert config.data.train_files_weights is None and config.data.example_weights is None


def test_weighted_aligned_tokens_objective_is_split_invariant():
    """aligned_tokens mode with example weights: the objective of a batch equals the sum of its
    two halves' objectives under the summed (all-reduced) normalizers."""
    rng = np.random.default_rng(1)
    b, t, s, v = 4, 5, 3, 7
    attention = rng.dirichlet(np.ones(s), size=(b, t)).astype(np.float32)
    batch = {
        "target_out": tf.constant(rng.integers(3, v, (b, t)), tf.int32),
        "target_length": tf.constant([5, 3, 4, 2]),
        "source_length": tf.constant([3, 2, 3, 1]),
        "alignment": tf.constant(rng.integers(0, 2, (b, t, s)), tf.float32),
        "weight": tf.constant([0.5, 2.0, 0.0, 1.5]),
    }
    logits = tf.constant(rng.normal(size=(b, t, v)), tf.float32)
    params = ParamsConfig(
        guided_alignment_type="ce", guided_alignment_normalization="aligned_tokens"
    )

    def half(k):
        rows = slice(2 * k, 2 * k + 2)
        return {key: value[rows] for key, value in batch.items()}, logits[rows], attention[rows]

    whole_norm = losses.batch_normalizers(batch, params)
    whole = losses.objective(
        losses.loss_terms(logits, attention, batch, params, True), whole_norm, params
    )
    parts = [half(0), half(1)]
    summed = {
        key: sum(float(losses.batch_normalizers(p[0], params)[key]) for p in parts)
        for key in whole_norm
    }
    split = sum(
        float(losses.objective(losses.loss_terms(lg, at, bt, params, True), summed, params))
        for bt, lg, at in parts
    )
    assert split == pytest.approx(float(whole), abs=1e-6)
    assert summed["tokens"] == pytest.approx(0.5 * 5 + 2 * 3 + 0 * 4 + 1.5 * 2)
