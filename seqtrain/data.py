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
| weight | float32 [B] | training batches with data.example_weights only: each example's weight |

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

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from seqtrain import alignment  # noqa: F401 (data.alignment: the reader the tests patch)
from seqtrain.batching import batch_groups
from seqtrain.config import TrainConfig
from seqtrain.corpus import EncodedCorpus, _Packer, load_corpus  # noqa: F401 (data's API)
from seqtrain.errors import SeqtrainError
from seqtrain.vocab import BOS, EOS

logger = logging.getLogger(__name__)

# Batches built in parallel and kept ready. A fixed small number, not tf.data.AUTOTUNE: a batch
# costs ~1 ms against a train step's ~0.5 s, and with autotuning TF 2.21 blocks in an iterator's
# destructor until its tuning thread wakes up (18 s after a 23 s translation of 500 lines).
PARALLEL_BATCHES = 2


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
        self.weights = None if corpus.weights is None else tf.constant(corpus.weights, tf.float32)

    def batch(self, indices, length=None) -> dict:
        """indices int64 [B]; length: pad both sides to it (scalar), or None = longest."""
        links = tf.gather(self.links, indices) if self.links is not None else None
        batch = _assemble(
            tf.gather(self.source, indices), tf.gather(self.target, indices), links, length
        )
        if self.weights is not None:
            batch["weight"] = tf.gather(self.weights, indices)
        return batch


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
    files_weights: Sequence[float] | None = None,
) -> tf.data.Dataset:
    """Endless shuffled, length-bucketed training batches (batch contract), for one replica.

    ``train.batch_size`` is per replica. Filter (see ``filter_stats``) -> shard by input pipeline
    -> shuffle (seeded, reshuffled every epoch) -> repeat -> bucket by max(S, n + 1) rounded up to
    ``length_bucket_width`` -> batch -> gather and pad -> prefetch. The order depends on
    ``train.seed`` and on TensorFlow's global seed (``tf.random.set_seed``), nothing else.
    A bucket fills only when enough of its examples came: with a small corpus and rare lengths,
    an example may wait a few epochs (as in OpenNMT-tf). Several corpora (``corpus.parts``): each
    is shuffled and repeated alone, and examples are drawn from them with
    ``mixture_probabilities(sizes, files_weights)`` (data.train_files_weights) before bucketing.
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
    if corpus.parts is not None and len(corpus.parts) > 2:
        if train.single_pass:  # OpenNMT-tf refuses it too: weighted sampling has no epoch end
            raise SeqtrainError(
                "train.single_pass reads one corpus once; with several training corpora "
                "(weighted sampling) set it to false"
            )
        dataset = _mixture(indices, keys, corpus.parts, files_weights, train)
    else:
        dataset = _shuffled(indices, keys, train, train.seed)
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


def _shuffled(indices: np.ndarray, keys: np.ndarray, train: TrainConfig, seed: int):
    """Endless (index, bucket key) stream, reshuffled every epoch."""
    dataset = tf.data.Dataset.from_tensor_slices((indices, keys))
    buffer = len(indices) if train.sample_buffer_size == -1 else train.sample_buffer_size
    if buffer:
        dataset = dataset.shuffle(min(buffer, len(indices)), seed=seed)
    return dataset if train.single_pass else dataset.repeat()  # single_pass: one epoch


def mixture_probabilities(sizes, files_weights=None) -> np.ndarray:
    """float64 [K]: the probability that the next example comes from corpus k.

    As OpenNMT-tf's ``normalize_weights``: weight_k × size_k / Σ sizes, renormalized to sum 1
    (sizes: lines of each corpus, before length filtering); no weights = weight 1 each, which
    samples in proportion to size.
    """
    sizes = np.asarray(sizes, np.float64)
    weights = np.ones_like(sizes) if files_weights is None else np.asarray(files_weights, float)
    scaled = weights * sizes / sizes.sum()
    return scaled / scaled.sum()


def _mixture(indices, keys, parts, files_weights, train: TrainConfig) -> tf.data.Dataset:
    """Examples drawn one at a time from per-corpus endless shuffled streams, corpus k with
    ``mixture_probabilities`` (tf.data's sample_from_datasets, as OpenNMT-tf); a batch then mixes
    corpora in those proportions on average. parts int64 [K+1]: each corpus' example range."""
    probabilities = mixture_probabilities(np.diff(parts), files_weights)
    owner = np.searchsorted(parts, indices, side="right") - 1
    streams, chances = [], []
    for k, probability in enumerate(probabilities):
        mine = owner == k
        if probability == 0:
            continue
        if not mine.any():
            raise SeqtrainError(
                f"training corpus {k + 1} (entry {k + 1} of data.train_features_file) has no "
                "example left after length filtering; give it weight 0 in "
                "data.train_files_weights, remove it, or raise the length limits"
            )
        streams.append(_shuffled(indices[mine], keys[mine], train, train.seed + k))
        chances.append(probability)
    logger.info("corpus sampling probabilities: %s", ", ".join(f"{p:.4f}" for p in probabilities))
    return tf.data.Dataset.sample_from_datasets(streams, weights=chances, seed=train.seed)


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
