"""Data: text + alignments -> ids (cached once) -> length-bucketed batches (tf.data).

Batch contract (a dict of tensors; every other module reads batches through these keys only):

| key | shape | meaning |
|---|---|---|
| source_ids | int32 [B, S] | source ids, no BOS/EOS, PAD = 0 |
| source_length | int32 [B] | real source tokens |
| target_in | int32 [B, T] | `<s> y_0 … y_(n-1)` then PAD |
| target_out | int32 [B, T] | `y_0 … y_(n-1) </s>` then PAD |
| target_length | int32 [B] | n + 1 (includes `</s>`) |
| alignment | float32 [B, T, S] | with alignments only: 1.0 at [b, t, s] iff gold link (s, t) |
| index | int32 [B] | eval/inference batches only: 0-based line of the example in its file |

The row offset: decoder step t reads target_in[t] (`<s>` when t = 0, else y_(t-1)) and predicts
target_out[t] = y_t. A Pharaoh link `s-t` says target token y_t translates source token x_s, so it
constrains the attention of the step that predicts y_t: row t, column s. No link can reach row n,
the step that predicts `</s>`.

Padding: training batches pad both sides to the bucket's upper length (few distinct shapes, good
for XLA); other batches pad each side to its longest sequence. ``train.batch_size`` is per replica,
as in OpenNMT-tf: with ``batch_type: tokens`` a batch of B examples padded to length L (the longer
of source and target incl. `</s>`) satisfies B × L <= batch_size.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from seqtrain import alignment
from seqtrain.batching import batch_groups
from seqtrain.config import Config, TrainConfig
from seqtrain.errors import SeqtrainError
from seqtrain.vocab import BOS, EOS

logger = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = 1  # bump when the encoding or the .npz layout changes
# Batches built in parallel and kept ready. A fixed small number, not tf.data.AUTOTUNE: a batch
# costs ~1 ms against a train step's ~0.5 s, and with autotuning TF 2.21 blocks in an iterator's
# destructor until its tuning thread wakes up (18 s after a 23 s translation of 500 lines).
PARALLEL_BATCHES = 2
SPLIT_FILES = {
    "train": ("train_features_file", "train_labels_file", "train_alignments"),
    "eval": ("eval_features_file", "eval_labels_file", "eval_alignments"),
}


@dataclass
class EncodedCorpus:
    """A parallel corpus as flat numpy arrays; example i is ``x[splits[i]:splits[i + 1]]``.

    source_ids int32 [sum S], source_splits int64 [N+1]; target_ids int32 [sum n] (no BOS/EOS),
    target_splits int64 [N+1]; links int32 [sum L, 2] of (t, s) and links_splits int64 [N+1],
    both None without an alignment file; lines int32 [N]: 1-based line numbers in the files;
    sure bool [sum L]: eval split only (gold files), True for sure and False for possible links.
    """

    source_ids: np.ndarray
    source_splits: np.ndarray
    target_ids: np.ndarray
    target_splits: np.ndarray
    lines: np.ndarray
    links: np.ndarray | None = None
    links_splits: np.ndarray | None = None
    sure: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.lines)

    @property
    def source_lengths(self) -> np.ndarray:
        """int64 [N]: source tokens per example."""
        return np.diff(self.source_splits)

    @property
    def target_lengths(self) -> np.ndarray:
        """int64 [N]: target tokens per example, without `</s>`."""
        return np.diff(self.target_splits)

    @property
    def has_links(self) -> bool:
        return self.links is not None

    @classmethod
    def from_examples(cls, examples: Iterable, with_links: bool) -> EncodedCorpus:
        """Packs ``alignment.Example``-like items (line, source_ids, target_ids, links, sure)."""
        source, target, links, sure, lines = _Packer(), _Packer(), _Packer(2), _Packer(), []
        with_sure = None
        for example in examples:
            source.add(example.source_ids)
            target.add(example.target_ids)
            if with_links:
                pairs = example.links if example.links is not None else np.zeros((0, 2))
                links.add(pairs)
                flags = getattr(example, "sure", None)
                with_sure = flags is not None if with_sure is None else with_sure
                if with_sure:
                    sure.add(flags if flags is not None else np.ones(len(pairs)))
            lines.append(example.line)
        link_arrays = links.finish() if with_links else (None, None)
        sure_flags = sure.finish()[0].astype(bool) if with_sure else None
        lines = np.asarray(lines, np.int32)
        return cls(*source.finish(), *target.finish(), lines, *link_arrays, sure_flags)


class _Packer:
    """Concatenates many small int32 arrays; consolidates in chunks to bound Python overhead."""

    def __init__(self, width: int = 0, chunk: int = 65536):
        self.width, self.chunk = width, chunk
        self.pending, self.values, self.lengths = [], [], []

    def add(self, array) -> None:
        array = np.asarray(array, np.int32)
        self.pending.append(array.reshape(-1, self.width) if self.width else array.reshape(-1))
        if len(self.pending) >= self.chunk:
            self._flush()

    def _flush(self) -> None:
        if self.pending:
            self.lengths.append(np.fromiter(map(len, self.pending), np.int64, len(self.pending)))
            self.values.append(np.concatenate(self.pending))
            self.pending = []

    def finish(self) -> tuple[np.ndarray, np.ndarray]:
        self._flush()
        empty = np.zeros((0, self.width) if self.width else 0, np.int32)
        values = np.concatenate(self.values) if self.values else empty
        lengths = np.concatenate(self.lengths) if self.lengths else np.zeros(0, np.int64)
        return values, np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)


# ---------------------------------------------------------------- encoding and its cache


def load_corpus(
    config: Config, split: str = "train", cache_dir: str | None = None
) -> EncodedCorpus:
    """Encodes the split's files once (``alignment.read_parallel``), cached as one .npz.

    The cache (default ``model_dir/cache``) is keyed by the input files (absolute path, size,
    mtime), the tokenizers, the vocabulary contents and ``alignment_level``: any change rebuilds.
    The eval alignments are a gold file: possible links (``ipj``) are links too, and
    ``corpus.sure`` tells them apart.
    """
    keys = SPLIT_FILES[split] + ("source_vocabulary", "target_vocabulary")
    paths = [getattr(config.data, key) for key in keys]
    for key, path in zip(keys, paths):
        if not path and key != keys[2]:
            raise SeqtrainError(f"data.{key} is required to build the {split} data")
    src_tok, tgt_tok, src_vocab, tgt_vocab = alignment.load_tokenizers_and_vocabs(config)
    key = _cache_key(config, split, paths[:3], (src_tok, tgt_tok))
    cache_dir = cache_dir if cache_dir is not None else os.path.join(config.model_dir, "cache")
    path = os.path.join(cache_dir, f"{split}.{key[:24]}.npz")
    corpus = _read_cache(path, key)
    if corpus is not None:
        logger.info("%s data: reusing cache %s (%d examples)", split, path, len(corpus))
        return corpus
    start = time.time()
    level, gold = config.data.alignment_level, split == "eval"
    examples = alignment.read_parallel(
        *paths[:3], src_tok, tgt_tok, src_vocab, tgt_vocab, level, allow_possible=gold
    )
    corpus = EncodedCorpus.from_examples(examples, with_links=paths[2] is not None)
    elapsed = time.time() - start
    logger.info("%s data: encoded %d lines in %.1f s", split, len(corpus), elapsed)
    _write_cache(path, key, corpus)
    return corpus


def _cache_key(config: Config, split: str, paths: Sequence, tokenizers) -> str:
    files = []
    for path in paths:
        if path:
            if not os.path.isfile(path):
                raise SeqtrainError(f"{path}: file not found (check the data section)")
            stat = os.stat(path)
            files.append([os.path.abspath(path), stat.st_size, stat.st_mtime_ns])
    data = config.data
    description = {
        "version": CACHE_FORMAT_VERSION,
        "split": split,
        "files": files,
        "tokenizers": [tok.identity() for tok in tokenizers],  # hashes SentencePiece models
        "vocabularies": [_file_hash(p) for p in (data.source_vocabulary, data.target_vocabulary)],
        "alignment_level": data.alignment_level,
    }
    return hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()


def _file_hash(path: str | None) -> str | None:
    if not path:
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_cache(path: str, key: str) -> EncodedCorpus | None:
    if not os.path.exists(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            if str(npz["key"]) != key:
                return None
            names = [f.name for f in dataclasses.fields(EncodedCorpus)]
            fields = {name: npz[name] if name in npz.files else None for name in names}
        return EncodedCorpus(**fields)
    except (OSError, ValueError, KeyError, EOFError) as e:  # truncated or foreign file
        logger.warning("ignoring unreadable cache %s (%s); encoding again", path, e)
        return None


def _write_cache(path: str, key: str, corpus: EncodedCorpus) -> None:
    """Atomic (tmp + os.replace); removes the split's caches of older inputs."""
    directory, name = os.path.split(path)
    os.makedirs(directory or ".", exist_ok=True)
    arrays = {k: v for k, v in dataclasses.asdict(corpus).items() if v is not None}
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        np.savez(f, key=np.array(key), **arrays)
    os.replace(tmp, path)
    split = name.split(".")[0]
    for other in os.listdir(directory or "."):
        if other != name and other.startswith(f"{split}.") and other.endswith(".npz"):
            try:
                os.remove(os.path.join(directory, other))
            except FileNotFoundError:  # another worker removed it first
                pass
    logger.info("cache written: %s", path)


# ---------------------------------------------------------------- length filter


@dataclass(frozen=True)
class FilterStats:
    """Training-example counts. An example dropped for two reasons counts under both."""

    total: int
    kept: int
    empty_source: int
    source_too_long: int  # source tokens > maximum_features_length
    target_too_long: int  # target tokens + 1 (`</s>`) > maximum_labels_length
    longer_than_batch: int  # batch_type tokens: longest side > batch_size

    @property
    def dropped(self) -> int:
        return self.total - self.kept

    def __str__(self) -> str:
        reasons = [
            f"{self.source_too_long} source > train.maximum_features_length",
            f"{self.target_too_long} target (with </s>) > train.maximum_labels_length",
            f"{self.empty_source} empty source",
            f"{self.longer_than_batch} longer than train.batch_size tokens",
        ]
        return f"kept {self.kept} of {self.total}, dropped {self.dropped}: " + ", ".join(reasons)


def _filter(corpus: EncodedCorpus, train: TrainConfig) -> tuple[np.ndarray, FilterStats]:
    """Kept example indices (int64, corpus order) and the counts, computed in numpy."""
    src, tgt_out = corpus.source_lengths, corpus.target_lengths + 1
    empty = src == 0
    never = np.zeros_like(empty)
    src_long = src > train.maximum_features_length if train.maximum_features_length else never
    tgt_long = tgt_out > train.maximum_labels_length if train.maximum_labels_length else never
    too_big = np.maximum(src, tgt_out) > train.batch_size
    if train.batch_type != "tokens":
        too_big = never
    keep = ~(empty | src_long | tgt_long | too_big)
    stats = FilterStats(
        len(corpus), *(int(m.sum()) for m in (keep, empty, src_long, tgt_long, too_big))
    )
    return np.flatnonzero(keep).astype(np.int64), stats


def filter_stats(corpus: EncodedCorpus, train: TrainConfig) -> FilterStats:
    """What ``train_dataset`` keeps and drops; ``str()`` gives a one-line summary."""
    return _filter(corpus, train)[1]


# ---------------------------------------------------------------- datasets


class _RaggedCorpus:
    """The corpus as constant RaggedTensors, built once; gather(indices) -> batch contract."""

    def __init__(self, corpus: EncodedCorpus, with_alignment: bool):
        def ragged(values, splits):
            return tf.RaggedTensor.from_row_splits(values, splits, validate=False)

        self.source = ragged(corpus.source_ids, corpus.source_splits)
        self.target = ragged(corpus.target_ids, corpus.target_splits)
        self.links = None
        if with_alignment and corpus.has_links:
            self.links = ragged(corpus.links, corpus.links_splits)

    def batch(self, indices, length=None) -> dict:
        """indices int64 [B]; length: pad both sides to it (scalar), or None = longest."""
        links = tf.gather(self.links, indices) if self.links is not None else None
        return _assemble(
            tf.gather(self.source, indices), tf.gather(self.target, indices), links, length
        )


def _assemble(source, target, links=None, length=None) -> dict:
    """Ragged source [B, (S)], target [B, (n)], links [B, (L), 2] of (t, s) -> batch dict."""
    batch_size = source.nrows()
    bos = tf.fill([batch_size, 1], tf.constant(BOS, source.dtype))
    eos = tf.fill([batch_size, 1], tf.constant(EOS, source.dtype))
    target_in = tf.concat([bos, target], axis=1)
    target_out = tf.concat([target, eos], axis=1)

    def dense(ragged):
        shape = None if length is None else tf.stack([batch_size, tf.cast(length, tf.int64)])
        return tf.cast(ragged.to_tensor(0, shape=shape), tf.int32)

    batch = {
        "source_ids": dense(source),
        "source_length": tf.cast(source.row_lengths(), tf.int32),
        "target_in": dense(target_in),
        "target_out": dense(target_out),
        "target_length": tf.cast(target_out.row_lengths(), tf.int32),
    }
    if links is not None:
        pairs = tf.cast(links.flat_values, tf.int32)  # [K, 2] of (t, s)
        rows = tf.cast(links.value_rowids(), tf.int32)  # [K]: the batch row of each link
        indices = tf.concat([rows[:, None], pairs], axis=1)
        shape = tf.concat([tf.shape(batch["target_in"]), tf.shape(batch["source_ids"])[1:]], 0)
        gold = tf.scatter_nd(indices, tf.ones_like(rows, tf.float32), shape)
        batch["alignment"] = tf.minimum(gold, 1.0)  # duplicate links would add up
    return batch


def _bucketing(lengths: np.ndarray, train: TrainConfig):
    """lengths [N] = max(S, n + 1) -> (bucket key [N], bucket pad length [K], batch size [K])."""
    width = train.length_bucket_width
    longest = int(lengths.max())
    if width:
        keys = (lengths - 1) // width
        bounds = np.minimum((np.arange(keys.max() + 1) + 1) * width, longest)
    else:  # one bucket: batches pad to their own longest side
        keys, bounds = np.zeros_like(lengths), np.array([longest])
    if train.batch_type == "tokens":
        sizes = train.batch_size // bounds  # >= 1: longer examples were filtered out
    else:
        sizes = np.full_like(bounds, train.batch_size)
    return keys.astype(np.int64), bounds.astype(np.int64), sizes.astype(np.int64)


def train_dataset(
    corpus: EncodedCorpus,
    train: TrainConfig,
    input_context: tf.distribute.InputContext | None = None,
    with_alignment: bool = True,
) -> tf.data.Dataset:
    """Endless shuffled, length-bucketed training batches (batch contract), for one replica.

    ``train.batch_size`` is per replica. Filter (see ``filter_stats``) -> shard by input pipeline
    -> shuffle (seeded, reshuffled every epoch) -> repeat -> bucket by max(S, n + 1) rounded up to
    ``length_bucket_width`` -> batch -> gather and pad -> prefetch. The order depends on
    ``train.seed`` and on TensorFlow's global seed (``tf.random.set_seed``), nothing else.
    A bucket fills only when enough of its examples came: with a small corpus and rare lengths,
    an example may wait a few epochs (as in OpenNMT-tf).
    """
    indices, stats = _filter(corpus, train)
    logger.info("training data: %s", stats)
    if not stats.kept:
        raise SeqtrainError(
            f"all {stats.total} training examples were filtered out ({stats}); raise "
            "train.maximum_features_length / train.maximum_labels_length (or train.batch_size), "
            "or check data.train_features_file and data.train_labels_file"
        )
    lengths = np.maximum(corpus.source_lengths, corpus.target_lengths + 1)[indices]
    keys, bounds, sizes = _bucketing(lengths, train)
    if input_context is not None and input_context.num_input_pipelines > 1:
        shard = slice(input_context.input_pipeline_id, None, input_context.num_input_pipelines)
        indices, keys = indices[shard], keys[shard]
        if not len(indices):
            raise SeqtrainError(
                f"{stats.kept} training examples cannot feed {input_context.num_input_pipelines} "
                "input pipelines; use more data or fewer workers"
            )
    ragged = _RaggedCorpus(corpus, with_alignment)
    bounds_t, sizes_t = tf.constant(bounds), tf.constant(sizes)
    dataset = tf.data.Dataset.from_tensor_slices((indices, keys))
    buffer = len(indices) if train.sample_buffer_size == -1 else train.sample_buffer_size
    if buffer:
        dataset = dataset.shuffle(min(buffer, len(indices)), seed=train.seed)
    if not train.single_pass:  # single_pass: one epoch, then the iterator ends
        dataset = dataset.repeat()
    if train.length_bucket_width:
        dataset = dataset.group_by_window(
            key_func=lambda index, key: key,
            reduce_func=lambda key, window: window.batch(tf.gather(sizes_t, key)),
            window_size_func=lambda key: tf.gather(sizes_t, key),
        )
    else:
        dataset = dataset.batch(int(sizes[0]))

    def make(index, keys):
        # All rows of a batch share one bucket: pad to its bound; no buckets: to the longest.
        return ragged.batch(
            index, tf.gather(bounds_t, keys[0]) if train.length_bucket_width else None
        )

    dataset = dataset.map(make, num_parallel_calls=PARALLEL_BATCHES, deterministic=True)
    return _finish(dataset)


def _finish(dataset: tf.data.Dataset) -> tf.data.Dataset:
    options = tf.data.Options()
    options.deterministic = True
    # No autotuning (see PARALLEL_BATCHES): with it, TF 2.21's iterator destructor waits for the
    # tuning thread's next wake-up, which stalled every translate and every evaluation.
    options.autotune.enabled = False
    # Sharding is done above, by example: tf.distribute must not shard again.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return dataset.prefetch(PARALLEL_BATCHES).with_options(options)


def eval_dataset(
    corpus: EncodedCorpus,
    batch_size: int,
    with_alignment: bool = True,
    batch_type: str = "examples",
    length_bucket_width: int = 0,
) -> tf.data.Dataset:
    """All examples, batched by ``batching.batch_groups`` over max(S, n + 1) (length_bucket_width
    0: file order), each side padded to its longest, plus ``index`` [B] (line - 1)."""
    ragged = _RaggedCorpus(corpus, with_alignment)
    lines = tf.constant(corpus.lines.astype(np.int32) - 1)

    def make(indices):
        return {**ragged.batch(indices), "index": tf.gather(lines, indices)}

    lengths = np.maximum(corpus.source_lengths, corpus.target_lengths + 1)
    dataset = _groups_dataset(lengths, batch_size, batch_type, length_bucket_width)
    return _finish(dataset.map(make, num_parallel_calls=PARALLEL_BATCHES, deterministic=True))


def _groups_dataset(lengths, batch_size, batch_type, length_bucket_width) -> tf.data.Dataset:
    """A dataset of int64 index vectors, one per batch (see ``batching.batch_groups``)."""
    groups = batch_groups(lengths, batch_size, batch_type, length_bucket_width)
    ragged = tf.RaggedTensor.from_row_lengths(
        np.concatenate(groups) if groups else np.zeros(0, np.int64), [len(g) for g in groups]
    )
    return tf.data.Dataset.from_tensor_slices(ragged)


def inference_dataset(
    source_id_lists: Sequence[Sequence[int]],
    batch_size: int,
    batch_type: str = "examples",
    length_bucket_width: int = 1,
) -> tf.data.Dataset:
    """Source-only batches: source_ids int32 [B, S], source_length [B], index [B] (input order).

    Batches as ``batching.batch_groups`` over the source lengths: with length_bucket_width > 0
    they hold sentences of similar length (less padding), 0 keeps the input order; callers put
    the outputs back in order with ``index``.
    """
    packer = _Packer()
    for ids in source_id_lists:
        packer.add(ids)
    values, splits = packer.finish()
    source = tf.RaggedTensor.from_row_splits(values, splits, validate=False)

    def make(indices):
        rows = tf.gather(source, indices)
        return {
            "source_ids": tf.cast(rows.to_tensor(0), tf.int32),
            "source_length": tf.cast(rows.row_lengths(), tf.int32),
            "index": tf.cast(indices, tf.int32),
        }

    dataset = _groups_dataset(np.diff(splits), batch_size, batch_type, length_bucket_width)
    return _finish(dataset.map(make, num_parallel_calls=PARALLEL_BATCHES, deterministic=True))


def batch_from_examples(examples: Sequence[tuple]) -> dict:
    """One batch-contract dict from (source_ids, target_ids, links (t, s) [L, 2] or None) tuples.

    Same rules as the datasets (each side padded to its longest); ``alignment`` is present when
    any example has links (None then counts as no links).
    """
    with_links = any(links is not None for _, _, links in examples)
    corpus = EncodedCorpus.from_examples(
        (_Item(i + 1, s, t, links) for i, (s, t, links) in enumerate(examples)), with_links
    )
    return _RaggedCorpus(corpus, with_alignment=True).batch(tf.range(len(corpus), dtype=tf.int64))


@dataclass(frozen=True)
class _Item:
    line: int
    source_ids: Sequence[int]
    target_ids: Sequence[int]
    links: np.ndarray | None
