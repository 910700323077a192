"""Encoded corpora: text + alignments (+ example weights) -> flat id arrays, cached per corpus.

No TensorFlow here. ``load_corpus`` encodes each file set once through
``alignment.read_parallel`` (which validates it, line-numbered errors) and caches the arrays as
one .npz per corpus under ``model_dir/cache``. Several training corpora
(``data.train_features_file`` as a list) are encoded and cached one by one, then concatenated;
``EncodedCorpus.parts`` keeps each corpus' example range for weighted sampling
(``data.train_files_weights``, see ``seqtrain.data.train_dataset``).

``data.example_weights``: one file per corpus, one non-negative number per line (line n weighs
example n). A weight scales every loss term of its example: its tokens' cross-entropy and their
count in the token normalizer (as OpenNMT-tf), and its guided-alignment rows and their count in
the alignment normalizer (OpenNMT-tf leaves the alignment term unweighted); see
``seqtrain.losses``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from seqtrain import alignment
from seqtrain.config import Config
from seqtrain.config_checks import check_corpora
from seqtrain.errors import SeqtrainError
from seqtrain.vocab import read_text_lines

logger = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = 1  # bump when the encoding or the .npz layout changes
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
    sure bool [sum L]: eval split only (gold files), True for sure and False for possible links;
    weights float32 [N]: data.example_weights (None without); parts int64 [K+1]: corpus k holds
    examples parts[k]:parts[k + 1] (None: one corpus).
    """

    source_ids: np.ndarray
    source_splits: np.ndarray
    target_ids: np.ndarray
    target_splits: np.ndarray
    lines: np.ndarray
    links: np.ndarray | None = None
    links_splits: np.ndarray | None = None
    sure: np.ndarray | None = None
    weights: np.ndarray | None = None
    parts: np.ndarray | None = None

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
    """Encodes the split's files once (``alignment.read_parallel``), cached as one .npz each.

    train: every corpus of ``data.train_corpora()`` (caches ``train``, ``train1``, ...),
    concatenated in order. The cache (default ``model_dir/cache``) is keyed by the input files
    (absolute path, size, mtime), the tokenizers, the vocabulary contents and
    ``alignment_level``: any change rebuilds. The eval alignments are a gold file: possible links
    (``ipj``) are links too, and ``corpus.sure`` tells them apart.
    """
    d = config.data
    if split == "train":
        check_corpora(d)
        corpora = d.train_corpora() or [(None, None, None, None)]
    else:
        corpora = [(d.eval_features_file, d.eval_labels_file, d.eval_alignments, None)]
    required = (*zip(SPLIT_FILES[split], corpora[0][:2]), *_vocabularies(d))
    for key, path in required:
        if not path:
            raise SeqtrainError(f"data.{key} is required to build the {split} data")
    tokenizers_vocabs = alignment.load_tokenizers_and_vocabs(config)
    parts = [
        _load_one(config, split if k == 0 else f"{split}{k}", files, tokenizers_vocabs, cache_dir)
        for k, files in enumerate(corpora)
    ]
    return parts[0] if len(parts) == 1 else concatenate(parts)


def _vocabularies(d):
    return (("source_vocabulary", d.source_vocabulary), ("target_vocabulary", d.target_vocabulary))


def _load_one(config, name: str, files, tokenizers_vocabs, cache_dir) -> EncodedCorpus:
    """One corpus; files: (features, labels, alignments or None, example weights or None)."""
    src_tok, tgt_tok, src_vocab, tgt_vocab = tokenizers_vocabs
    key = _cache_key(config, name, files, (src_tok, tgt_tok))
    cache_dir = cache_dir if cache_dir is not None else os.path.join(config.model_dir, "cache")
    path = os.path.join(cache_dir, f"{name}.{key[:24]}.npz")
    corpus = _read_cache(path, key)
    if corpus is not None:
        logger.info("%s data: reusing cache %s (%d examples)", name, path, len(corpus))
        return corpus
    start = time.time()
    level, gold = config.data.alignment_level, name == "eval"
    examples = alignment.read_parallel(
        *files[:3], src_tok, tgt_tok, src_vocab, tgt_vocab, level, allow_possible=gold
    )
    corpus = EncodedCorpus.from_examples(examples, with_links=files[2] is not None)
    if files[3]:
        corpus.weights = read_example_weights(files[3], files[0], len(corpus))
    elapsed = time.time() - start
    logger.info("%s data: encoded %d lines in %.1f s", name, len(corpus), elapsed)
    _write_cache(path, key, corpus)
    return corpus


def read_example_weights(path: str, features_path: str, count: int) -> np.ndarray:
    """float32 [count]: one finite number >= 0 per line (SeqtrainError naming the line)."""
    weights = []
    for number, line in enumerate(read_text_lines(path), 1):
        try:
            value = float(line)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and value >= 0):
            raise SeqtrainError(
                f"{path} line {number}: {line.strip()!r} is not an example weight; write one "
                "finite number >= 0 per line (line n weighs example n)"
            )
        weights.append(value)
    if len(weights) != count:
        raise SeqtrainError(
            f"line-count mismatch: {path} has {len(weights)} lines but {features_path} has "
            f"{count}; data.example_weights needs one weight per training example"
        )
    return np.asarray(weights, np.float32)


def concatenate(corpora: Sequence[EncodedCorpus]) -> EncodedCorpus:
    """The corpora one after the other (``parts`` records where each starts); all or none must
    have links and weights (a corpus without weights gets weight 1)."""

    def joined(name, splits=None):
        arrays = [getattr(c, name) for c in corpora]
        if splits is None:
            return np.concatenate(arrays)
        offsets = np.cumsum([0] + [a[-1] for a in arrays[:-1]])
        return np.concatenate([arrays[0]] + [a[1:] + o for a, o in zip(arrays[1:], offsets[1:])])

    with_links = {c.has_links for c in corpora}
    if len(with_links) > 1:
        raise SeqtrainError("data.train_alignments: give one alignment file per training corpus")
    out = EncodedCorpus(
        joined("source_ids"), joined("source_splits", True),
        joined("target_ids"), joined("target_splits", True), joined("lines"),
    )  # fmt: skip
    if corpora[0].has_links:
        out.links, out.links_splits = joined("links"), joined("links_splits", True)
    if any(c.weights is not None for c in corpora):
        out.weights = np.concatenate(
            [c.weights if c.weights is not None else np.ones(len(c), np.float32) for c in corpora]
        )
    out.parts = np.cumsum([0] + [len(c) for c in corpora]).astype(np.int64)
    return out


def _cache_key(config: Config, split: str, paths: Sequence, tokenizers) -> str:
    """sha256 of what the corpus' arrays depend on; paths: its text, alignment, weight files."""
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
