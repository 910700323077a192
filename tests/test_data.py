"""seqtrain.data: batch contract, token budget, filtering, shuffling, sharding, caches."""

import dataclasses
import os
from typing import NamedTuple

import numpy as np
import pytest
import tensorflow as tf

from seqtrain import data
from seqtrain.config import Config, DataConfig, TrainConfig
from seqtrain.errors import SeqtrainError

BOS, EOS = 1, 2
KEYS = {"source_ids", "source_length", "target_in", "target_out", "target_length"}


class Ex(NamedTuple):
    line: int
    source_ids: np.ndarray
    target_ids: np.ndarray
    links: np.ndarray | None


def random_corpus(n=300, seed=0, max_len=40, with_links=True, min_len=1):
    """Example i has source[0] = 4 + i (so a batch row tells which example it is)."""
    rng = np.random.default_rng(seed)
    examples = []
    for i in range(n):
        s, t = rng.integers(min_len, max_len + 1), rng.integers(min_len - 1, max_len + 1)
        source = np.concatenate([[4 + i], rng.integers(4, 50, s - 1)]).astype(np.int32)
        target = rng.integers(4, 50, t).astype(np.int32)
        links = None
        if with_links:
            k = rng.integers(0, 2 * min(s, t) + 1) if t else 0
            links = np.stack([rng.integers(0, max(t, 1), k), rng.integers(0, s, k)], 1)
        examples.append(Ex(i + 1, source, target, links))
    return data.EncodedCorpus.from_examples(examples, with_links=with_links), examples


def train_config(**kw):
    base = {
        "batch_size": 200,
        "batch_type": "tokens",
        "length_bucket_width": 4,
        "sample_buffer_size": -1,
        "maximum_features_length": None,
        "maximum_labels_length": None,
        "seed": 7,
    }
    return TrainConfig(**{**base, **kw})


def take(dataset, count):
    return [{k: v.numpy() for k, v in b.items()} for b in dataset.take(count)]


def expected_row(example, width_s, width_t):
    """numpy reference of one example's padded batch row."""
    src, tgt = example.source_ids, example.target_ids
    n = len(tgt)
    row = {
        "source_ids": np.pad(src, (0, width_s - len(src))),
        "source_length": len(src),
        "target_in": np.pad(np.concatenate([[BOS], tgt]), (0, width_t - n - 1)),
        "target_out": np.pad(np.concatenate([tgt, [EOS]]), (0, width_t - n - 1)),
        "target_length": n + 1,
    }
    gold = np.zeros((width_t, width_s), np.float32)
    for t, s in example.links if example.links is not None else []:
        gold[t, s] = 1.0
    row["alignment"] = gold
    return row


def check_rows(batch, examples):
    """Every row equals its example (found by source[0]); returns the example ids."""
    ids = []
    for b in range(len(batch["source_length"])):
        example = examples[batch["source_ids"][b, 0] - 4]
        want = expected_row(example, batch["source_ids"].shape[1], batch["target_in"].shape[1])
        for key, value in want.items():
            if key in batch:
                np.testing.assert_array_equal(batch[key][b], value, err_msg=key)
        ids.append(example.line - 1)
    return ids


def test_batch_from_examples_exact():
    batch = data.batch_from_examples([([5, 6, 7], [8, 9], None), ([10], [11, 12, 13], None)])
    assert set(batch) == KEYS
    dtypes = {k: v.dtype for k, v in batch.items()}
    assert dtypes == {k: tf.int32 for k in KEYS}
    np.testing.assert_array_equal(batch["source_ids"], [[5, 6, 7], [10, 0, 0]])
    np.testing.assert_array_equal(batch["source_length"], [3, 1])
    np.testing.assert_array_equal(batch["target_in"], [[1, 8, 9, 0], [1, 11, 12, 13]])
    np.testing.assert_array_equal(batch["target_out"], [[8, 9, 2, 0], [11, 12, 13, 2]])
    np.testing.assert_array_equal(batch["target_length"], [3, 4])


def test_alignment_rows_are_target_tokens():
    links = np.array([[0, 0], [2, 1], [3, 1], [1, 2]])  # (t, s)
    batch = data.batch_from_examples([([5, 6, 7], [8, 9, 10, 11], links)])
    gold = batch["alignment"]
    assert gold.dtype == tf.float32 and gold.shape == (1, 5, 3)
    expected = [[[1, 0, 0], [0, 0, 1], [0, 1, 0], [0, 1, 0], [0, 0, 0]]]
    np.testing.assert_array_equal(gold, expected)
    # Row t predicts target_out[t] = y_t, reading target_in[t].
    np.testing.assert_array_equal(batch["target_out"][0, :4], [8, 9, 10, 11])
    np.testing.assert_array_equal(batch["target_in"][0, 1:], [8, 9, 10, 11])


def test_alignment_padding_and_missing_links():
    batch = data.batch_from_examples([([5], [6], np.array([[0, 0]])), ([5, 6, 7], [8, 9], None)])
    expected = np.zeros((2, 3, 3), np.float32)
    expected[0, 0, 0] = 1.0
    np.testing.assert_array_equal(batch["alignment"], expected)


@pytest.mark.parametrize(
    "width,batch_type,size",
    [(4, "tokens", 200), (1, "tokens", 150), (0, "tokens", 200), (3, "examples", 7)],
)
def test_train_batches_budget_and_content(width, batch_type, size):
    # Lengths >= 20: a bucket with few examples but a big batch size fills only every few epochs.
    corpus, examples = random_corpus(min_len=20)
    config = train_config(length_bucket_width=width, batch_type=batch_type, batch_size=size)
    cap = max(max(len(e.source_ids), len(e.target_ids) + 1) for e in examples)
    seen, shapes = [], set()
    # Keep reading until every example came twice (rare buckets fill slowly): > 1 epoch.
    for batch in take(data.train_dataset(corpus, config), 600):
        if np.bincount(seen, minlength=len(examples)).min() >= 2:
            break
        assert set(batch) == KEYS | {"alignment"}
        rows, s_pad = batch["source_ids"].shape
        t_pad = batch["target_in"].shape[1]
        assert batch["alignment"].shape == (rows, t_pad, s_pad)
        if batch_type == "tokens":
            assert max(s_pad, t_pad) * rows <= size
        else:
            assert rows <= size
        longest = np.maximum(batch["source_length"], batch["target_length"])
        if width:  # one bucket per batch; both sides padded to the bucket's upper bound
            (key,) = set((longest - 1) // width)
            assert s_pad == t_pad == min((key + 1) * width, cap)
        else:
            assert s_pad == batch["source_length"].max()
            assert t_pad == batch["target_length"].max()
        shapes.add((s_pad, t_pad))
        seen += check_rows(batch, examples)
    assert np.bincount(seen, minlength=len(examples)).min() >= 2  # all examples came
    if width:
        assert len(shapes) <= -(-41 // width)


def test_filter_counts_and_summary():
    lengths = [(0, 3), (5, 5), (6, 2), (2, 9), (9, 9), (4, 4), (3, 0)]  # (S, n)
    examples = [
        Ex(i + 1, np.full(s, 4, np.int32), np.full(t, 5, np.int32), None)
        for i, (s, t) in enumerate(lengths)
    ]
    corpus = data.EncodedCorpus.from_examples(examples, with_links=False)
    config = train_config(maximum_features_length=5, maximum_labels_length=5, batch_size=9)
    stats = data.filter_stats(corpus, config)
    # kept: (5,5)? n+1 = 6 > 5 -> no. (4,4) yes, (3,0) yes.  source>5: (6,2),(9,9).
    # target n+1>5: (5,5),(2,9),(9,9). empty: (0,3). longest side (n+1 = 10) > 9: (2,9),(9,9).
    assert (stats.total, stats.kept, stats.dropped) == (7, 2, 5)
    assert (stats.source_too_long, stats.target_too_long) == (2, 3)
    assert (stats.empty_source, stats.longer_than_batch) == (1, 2)
    assert str(stats).startswith("kept 2 of 7, dropped 5")
    batches = take(data.train_dataset(corpus, config), 6)
    assert set(np.concatenate([b["source_length"] for b in batches])) == {3, 4}  # the kept two


def test_everything_filtered_is_an_error():
    corpus, _ = random_corpus(n=20, max_len=10)
    config = train_config(maximum_features_length=1, maximum_labels_length=1)
    with pytest.raises(SeqtrainError, match="maximum_features_length"):
        data.train_dataset(corpus, config)


def example_ids(dataset, count):
    return [tuple(b["source_ids"][:, 0] - 4) for b in take(dataset, count)]


def test_seeded_shuffle_is_deterministic_and_reshuffles():
    corpus, _ = random_corpus(n=50, with_links=False)
    config = train_config(batch_type="examples", batch_size=1, length_bucket_width=0)
    first = example_ids(data.train_dataset(corpus, config), 100)
    again = example_ids(data.train_dataset(corpus, config), 100)
    other = example_ids(data.train_dataset(corpus, dataclasses.replace(config, seed=8)), 100)
    assert first == again and first != other
    epoch1, epoch2 = first[:50], first[50:]
    assert sorted(epoch1) == sorted(epoch2) == [(i,) for i in range(50)]
    assert epoch1 != epoch2


def test_pipelines_do_not_autotune():
    """With tf.data autotuning on, TF 2.21 blocks in an iterator's destructor until its tuning
    thread wakes up (18 s after a 23 s translation): every pipeline must have it off."""
    corpus, _ = random_corpus(n=20, with_links=False)
    config = train_config(batch_type="examples", batch_size=4, length_bucket_width=0)
    for dataset in (
        data.train_dataset(corpus, config),
        data.eval_dataset(corpus, batch_size=4),
        data.inference_dataset([[4, 5], [6]], batch_size=2),
    ):
        assert dataset.options().autotune.enabled is False


def test_sharding_gives_disjoint_examples():
    corpus, _ = random_corpus(n=60, with_links=False)
    config = train_config(batch_type="examples", batch_size=4, length_bucket_width=0)
    shards = []
    for worker in range(2):
        context = tf.distribute.InputContext(2, worker, 2)
        ids = example_ids(data.train_dataset(corpus, config, input_context=context), 30)
        shards.append({i for batch in ids for i in batch})
    assert not shards[0] & shards[1]
    assert shards[0] | shards[1] == set(range(60))


def test_without_alignment_flag():
    corpus, _ = random_corpus(n=30)
    (batch,) = take(data.train_dataset(corpus, train_config(), with_alignment=False), 1)
    assert set(batch) == KEYS


def test_eval_dataset_order_and_index():
    corpus, examples = random_corpus(n=23, max_len=120)  # longer than any training limit
    batches = take(data.eval_dataset(corpus, batch_size=5), 100)
    assert [len(b["index"]) for b in batches] == [5, 5, 5, 5, 3]
    indices = np.concatenate([b["index"] for b in batches])
    np.testing.assert_array_equal(indices, np.arange(23))
    assert batches[0]["index"].dtype == np.int32
    for batch in batches:
        assert check_rows(batch, examples) == list(batch["index"])
        assert batch["source_ids"].shape[1] == batch["source_length"].max()
        assert batch["target_in"].shape[1] == batch["target_length"].max()


def test_inference_dataset_sorted_with_index():
    sources = [[4, 5, 6], [7], [8, 9], [], [10, 11, 12, 13]]
    batches = take(data.inference_dataset(sources, batch_size=2), 10)
    assert set(batches[0]) == {"source_ids", "source_length", "index"}
    order = np.concatenate([b["index"] for b in batches])
    np.testing.assert_array_equal(order, [3, 1, 2, 0, 4])  # by length
    for batch in batches:
        for row, index in enumerate(batch["index"]):
            n = len(sources[index])
            assert batch["source_length"][row] == n
            np.testing.assert_array_equal(batch["source_ids"][row, :n], sources[index])
            assert not batch["source_ids"][row, n:].any()
    unsorted = take(data.inference_dataset(sources, batch_size=2, length_bucket_width=0), 10)
    np.testing.assert_array_equal(np.concatenate([b["index"] for b in unsorted]), range(5))


# ---------------------------------------------------------------- cache (real read_parallel)


@pytest.fixture
def files(tmp_path):
    if not hasattr(data.alignment, "read_parallel"):
        pytest.skip("seqtrain.alignment.read_parallel is not available yet")
    (tmp_path / "train.src").write_text("a b c\nb c\nc a b a\n", encoding="utf-8")
    (tmp_path / "train.tgt").write_text("x y\ny\nz x y\n", encoding="utf-8")
    (tmp_path / "train.align").write_text("0-0 1-1\n0-0\n0-0 2-1 3-2\n", encoding="utf-8")
    (tmp_path / "src.vocab").write_text("<blank>\n<s>\n</s>\n<unk>\na\nb\nc\n", encoding="utf-8")
    (tmp_path / "tgt.vocab").write_text("<blank>\n<s>\n</s>\n<unk>\nx\ny\nz\n", encoding="utf-8")
    config = Config(
        model_dir=str(tmp_path / "run"),
        data=DataConfig(
            train_features_file=str(tmp_path / "train.src"),
            train_labels_file=str(tmp_path / "train.tgt"),
            train_alignments=str(tmp_path / "train.align"),
            source_vocabulary=str(tmp_path / "src.vocab"),
            target_vocabulary=str(tmp_path / "tgt.vocab"),
        ),
    )
    return tmp_path, config


def counting_reader(monkeypatch):
    calls = []
    real = data.alignment.read_parallel

    def reader(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(data.alignment, "read_parallel", reader)
    return calls


def test_cache_reuse_and_invalidation(files, monkeypatch):
    tmp_path, config = files
    calls = counting_reader(monkeypatch)
    corpus = data.load_corpus(config)
    assert len(calls) == 1 and len(corpus) == 3
    np.testing.assert_array_equal(corpus.source_ids, [4, 5, 6, 5, 6, 6, 4, 5, 4])
    np.testing.assert_array_equal(corpus.source_splits, [0, 3, 5, 9])
    np.testing.assert_array_equal(corpus.target_ids, [4, 5, 5, 6, 4, 5])
    np.testing.assert_array_equal(corpus.links, [[0, 0], [1, 1], [0, 0], [0, 0], [1, 2], [2, 3]])
    np.testing.assert_array_equal(corpus.lines, [1, 2, 3])
    cached = data.load_corpus(config)
    assert len(calls) == 1
    for field in dataclasses.fields(corpus):
        np.testing.assert_array_equal(getattr(cached, field.name), getattr(corpus, field.name))
    stat = os.stat(tmp_path / "train.tgt")  # same content, new mtime: rebuild
    os.utime(tmp_path / "train.tgt", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    data.load_corpus(config)
    assert len(calls) == 2
    (tmp_path / "train.tgt").write_text("x y\ny z\nz x y\n", encoding="utf-8")
    changed = data.load_corpus(config)
    assert len(calls) == 3 and changed.target_lengths.tolist() == [2, 2, 3]
    assert len(os.listdir(tmp_path / "run" / "cache")) == 1  # stale caches removed


def test_cache_rebuilds_on_vocab_change_and_corruption(files, monkeypatch):
    tmp_path, config = files
    calls = counting_reader(monkeypatch)
    data.load_corpus(config)
    (tmp_path / "src.vocab").write_text("<blank>\n<s>\n</s>\n<unk>\nc\nb\na\n", encoding="utf-8")
    corpus = data.load_corpus(config)
    assert len(calls) == 2 and corpus.source_ids[:3].tolist() == [6, 5, 4]
    (cache,) = os.listdir(tmp_path / "run" / "cache")
    (tmp_path / "run" / "cache" / cache).write_bytes(b"not a zip file")
    data.load_corpus(config)
    assert len(calls) == 3


def test_cache_without_alignments(files, monkeypatch):
    _, config = files
    config = dataclasses.replace(
        config, data=dataclasses.replace(config.data, train_alignments=None)
    )
    corpus = data.load_corpus(config)
    assert not corpus.has_links and corpus.links is None
    assert not data.load_corpus(config).has_links


def test_eval_split_keeps_possible_links(files):
    tmp_path, config = files
    (tmp_path / "dev.src").write_text("a b\nc\n", encoding="utf-8")
    (tmp_path / "dev.tgt").write_text("x y z\ny\n", encoding="utf-8")
    (tmp_path / "dev.align").write_text("0-0 1p2\n0p0\n", encoding="utf-8")
    config = dataclasses.replace(
        config,
        data=dataclasses.replace(
            config.data,
            eval_features_file=str(tmp_path / "dev.src"),
            eval_labels_file=str(tmp_path / "dev.tgt"),
            eval_alignments=str(tmp_path / "dev.align"),
        ),
    )
    corpus = data.load_corpus(config, split="eval")
    np.testing.assert_array_equal(corpus.links, [[0, 0], [2, 1], [0, 0]])  # (t, s)
    np.testing.assert_array_equal(corpus.sure, [True, False, False])
    np.testing.assert_array_equal(data.load_corpus(config, split="eval").sure, corpus.sure)
    (batch,) = take(data.eval_dataset(corpus, batch_size=2), 1)
    np.testing.assert_array_equal(batch["alignment"][0, :, :], [[1, 0], [0, 0], [0, 1], [0, 0]])
