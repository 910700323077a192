"""Scoring and forced alignment of given translations: the ``seqtrain score`` command.

``seqtrain score --features_file S --predictions_file T`` runs the model teacher-forced on each
pair (line k of S, line k of T) and writes one line per pair, in input order, in OpenNMT-tf's
score format:

    SCORE ||| TARGET[ ||| TOKEN_SCORES][ ||| ALIGNMENT]

* SCORE: ``%f`` of the pair's negative log-likelihood, -sum_t log p(y_t | y_<t, x) over the
  target tokens and ``</s>`` (OpenNMT-tf's score: lower is better; not translate's log-probability).
* TARGET: the target tokens the model sees, joined by spaces (OpenNMT-tf); with
  ``data.alignment_level: words`` the target line itself, whose whitespace words the indices count.
* TOKEN_SCORES (``--with_token_level`` / ``score.with_token_level``): ``%f`` of -log p of each
  target token, ``</s>`` excluded; at the words level, of each word (the sum over its pieces).
* ALIGNMENT (``--with_alignments`` / ``score.with_alignments``): the guided head read in the
  convention the model was trained with (``model.alignment_row``/``alignment_context``, the
  teacher-forced pass that ``eval`` uses for AER and ``translate`` for its rows), formatted as
  ``translate`` does: hard links by ``params.alignment_extraction``, merged to words with
  ``data.alignment_level: words``; soft rows over model tokens.

With ``--reverse_config`` a second model trained in the other direction is run on the swapped
pairs by the same ``teacher_forced`` and the two heads are averaged: ``seqtrain.score_bidir``.

Pairs are scored in length-sorted batches (``score.batch_size``/``batch_type``, no batch crossing
a ``score.length_bucket_width`` bucket). Both files are read and checked first: a line-count
mismatch or an empty line is an error naming the file and line, and nothing is written.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from dataclasses import dataclass

import numpy as np

from seqtrain import alignment, data, decoding
from seqtrain.errors import SeqtrainError
from seqtrain.export import restore_model
from seqtrain.translate import format_links, format_soft, merge_to_words, tokenize_lines
from seqtrain.vocab import read_text_lines

logger = logging.getLogger(__name__)


@dataclass
class ScoredPair:
    nll: np.ndarray  # float32 [n + 1]: -log p of each target token, </s> last
    attention: np.ndarray  # float32 [n, S]: guided-head row of each target token, real columns


def sorted_batches(lengths, batch_size: int, batch_type: str = "examples", bucket_width=None):
    """Indices of pairs grouped in batches of similar length, shortest first.

    Args:
      lengths: int [N] padded size of each pair (max of source tokens and target tokens + 1);
      batch_size: pairs per batch (``examples``), or most padded positions, B x longest
        (``tokens``; a longer pair still gets a batch of its own);
      bucket_width: no batch holds pairs of two buckets (length - 1) // width; None = any.

    Returns:
      list of int64 arrays, every index once.
    """
    lengths = np.asarray(lengths, np.int64)
    order = np.argsort(lengths, kind="stable")
    batches, current = [], []
    for index in order:
        length = lengths[index]
        if current:
            full = len(current) + 1 > batch_size
            if batch_type == "tokens":  # sorted: this pair is the longest so far
                full = (len(current) + 1) * length > batch_size
            if bucket_width:
                full = full or (length - 1) // bucket_width != (lengths[current[0]] - 1) // (
                    bucket_width
                )
            if full:
                batches.append(np.asarray(current, np.int64))
                current = []
        current.append(index)
    if current:
        batches.append(np.asarray(current, np.int64))
    return batches


class Scorer:
    """Teacher-forced scoring of (source ids, target ids) pairs; results in input order."""

    def __init__(self, model, score_config):
        """score_config: ``config.score`` (batch_size, batch_type, length_bucket_width)."""
        self.config = score_config
        self._forward = decoding.compile_on_batches(
            lambda batch: decoding.forced_decoding(model, batch)
        )

    def __call__(self, pairs) -> list[ScoredPair]:
        """pairs: (source ids, target ids) sequences, both non-empty, no BOS/EOS."""
        lengths = [max(len(s), len(t) + 1) for s, t in pairs]
        c = self.config
        results: list = [None] * len(pairs)
        for indices in sorted_batches(lengths, c.batch_size, c.batch_type, c.length_bucket_width):
            batch = data.batch_from_examples([(*pairs[i], None) for i in indices])
            keys = ("source_ids", "source_length", "target_in", "target_out", "target_length")
            log_probs, attention = (x.numpy() for x in self._forward(*(batch[k] for k in keys)))
            for row, i in enumerate(indices):
                source_len, target_len = len(pairs[i][0]), len(pairs[i][1])
                results[i] = ScoredPair(
                    -log_probs[row, : target_len + 1],
                    attention[row, :target_len, :source_len],
                )
        return results


def format_score_line(pair: ScoredPair, text: str, token_scores=None, alignment=None) -> str:
    """``SCORE ||| TARGET[ ||| TOKEN_SCORES][ ||| ALIGNMENT]``; token_scores: floats or None."""
    parts = [f"{float(np.sum(pair.nll)):f}", text]
    if token_scores is not None:
        parts.append(" ".join(f"{score:f}" for score in token_scores))
    if alignment is not None:
        parts.append(alignment)
    return " ||| ".join(parts)


def _check_line_counts(features_file: str, predictions_file: str, sources, targets) -> None:
    if len(sources) != len(targets):
        shorter, longer = sorted(
            [(len(sources), features_file), (len(targets), predictions_file)]
        )  # fmt: skip
        raise SeqtrainError(
            f"{longer[1]} line {shorter[0] + 1}: no matching line in {shorter[1]} ({shorter[0]} "
            f"lines against {longer[0]}); score needs one translation per source line"
        )


@dataclass
class ForcedRun:
    """One model run teacher-forced on the pairs of two files; per-line lists in input order.

    source_pieces/target_pieces: the tokenizer's pieces of each line; source_words/target_words:
    the word index of each piece (``tokenize_with_words``), or None unless asked for.
    """

    targets: list[str]
    pairs: list  # (source ids, target ids) of each line
    scored: list[ScoredPair]
    source_pieces: list
    target_pieces: list
    source_words: list | None
    target_words: list | None
    target_vocab: object
    path: str
    elapsed: float

    def log(self) -> None:
        tokens = sum(len(t) + 1 for _, t in self.pairs)
        logger.info(
            "Scored %d pairs with %s in %.1f s (%.0f target tokens/s)",
            len(self.pairs), self.path, self.elapsed, tokens / max(self.elapsed, 1e-9),
        )  # fmt: skip


def teacher_forced(
    config, features_file: str, predictions_file: str, checkpoint_path=None, with_words=False
) -> ForcedRun:
    """Reads and checks both files (nothing run on a bad line), then runs the model of
    ``config`` teacher-forced on every (line k of features_file, line k of predictions_file);
    the same path for ``score``'s model and for ``--reverse_config``'s on the swapped files."""
    src_tok, tgt_tok, src_vocab, tgt_vocab = alignment.load_tokenizers_and_vocabs(config)
    sources, targets = list(read_text_lines(features_file)), list(read_text_lines(predictions_file))
    _check_line_counts(features_file, predictions_file, sources, targets)
    examples = alignment.read_parallel(
        features_file, predictions_file, None, src_tok, tgt_tok, src_vocab, tgt_vocab
    )  # validates: empty lines are errors naming the file and line
    pairs = [(ex.source_ids, ex.target_ids) for ex in examples]
    source_pieces, source_words = tokenize_lines(sources, src_tok, with_words, features_file)
    target_pieces, target_words = tokenize_lines(targets, tgt_tok, with_words, predictions_file)
    model, path = restore_model(config, checkpoint_path)
    start = time.time()
    scored = Scorer(model, config.score)(pairs)
    return ForcedRun(
        targets, pairs, scored, source_pieces, target_pieces, source_words, target_words,
        tgt_vocab, path, time.time() - start,
    )  # fmt: skip


def output_lines(run: ForcedRun, words: bool, with_token_level: bool, alignments) -> list[str]:
    """The score lines of a run; alignments: the ALIGNMENT field of each line, or None each.

    words: TARGET is the line itself and TOKEN_SCORES are per word (run.target_words needed).
    """
    lines = []
    for i, pair in enumerate(run.scored):
        text = run.targets[i] if words else " ".join(run.target_vocab.tokens(run.pairs[i][1]))
        token_scores = pair.nll[:-1] if with_token_level else None
        if with_token_level and words:
            token_scores = np.bincount(run.target_words[i], weights=pair.nll[:-1])
        lines.append(format_score_line(pair, text, token_scores, alignments[i]))
    return lines


def score_command(
    config,
    features_file: str,
    predictions_file: str,
    output_file: str | None = None,
    checkpoint_path: str | None = None,
    with_alignments: str | None = None,
    with_token_level: bool = False,
) -> None:
    """``seqtrain score``: see the module docstring; unset options fall back to ``config.score``."""
    with_alignments = with_alignments or config.score.with_alignments
    with_token_level = with_token_level or config.score.with_token_level
    words = config.data.alignment_level == "words"
    run = teacher_forced(config, features_file, predictions_file, checkpoint_path, words)
    extraction = config.params.alignment_extraction
    alignments = []
    for i, pair in enumerate(run.scored):
        links = None
        if with_alignments == "soft":
            links = format_soft(pair.attention)
        elif with_alignments == "hard":
            links = decoding.hard_alignments(pair.attention, *pair.attention.shape, extraction)
            if words:
                links = merge_to_words(links, run.source_words[i], run.target_words[i])
            links = format_links(links)
        alignments.append(links)
    write_output(output_lines(run, words, with_token_level, alignments), output_file)
    run.log()


def write_output(lines, output_file: str | None) -> None:
    """To output_file (whole or nothing: a temporary file renamed) or standard output."""
    if not output_file:
        stream = contextlib.nullcontext(sys.stdout)
    else:
        stream = open(f"{output_file}.tmp", "w", encoding="utf-8")  # noqa: SIM115
    with stream as out:
        for line in lines:
            out.write(line + "\n")
    if output_file:
        os.replace(f"{output_file}.tmp", output_file)
