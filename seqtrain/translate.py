"""Translation with alignments: the ``seqtrain translate`` command and its output lines.

``seqtrain translate`` writes one line per hypothesis, in OpenNMT-tf's format:

    [SCORE ||| ]TRANSLATION[ ||| ALIGNMENT]

* SCORE (``--with_scores``): ``%f`` of the decoding score (beam search: sum of the token
  log-probabilities, ``</s>`` included, divided by the GNMT length penalty; greedy: the plain sum).
* hard ALIGNMENT: Pharaoh pairs ``s-t`` (0-based source index, dash, 0-based target index),
  space-separated, sorted by target then source index. Target token t (``</s>`` excluded) is
  linked to the source token the guided head attends to most (argmax over the real source
  tokens). With ``data.alignment_level: words`` the indices count whitespace words instead:
  words of the raw input line and of the printed translation; two words are linked if any of
  their pieces are (source words of pieces: ``tokenize_with_words``; target words:
  ``word_of_pieces`` of the target tokenizer, see seqtrain/tokenizers.py).
* soft ALIGNMENT: the guided head's attention, one row per target token (``</s>`` excluded),
  each row S source-token probabilities ``%.6f`` separated by spaces, rows separated by `` ; ``.
  Always over model tokens, whatever ``alignment_level``.
* ``n_best`` N: N consecutive lines per input, best first. An empty input line is not decoded:
  its N lines are empty translations with score 0 and no links.

``params.replace_unknown_target``: each ``<unk>`` of an output is replaced by the source piece its
alignment row attends to most (argmax, the guided head in the convention the model was trained
with), before detokenization and word merging.

Inputs are decoded in batches of similar length (less padding); outputs keep the input order.
``Translator``, ``TargetText``, ``tokenize_lines`` and ``merge_to_words`` also serve
``seqtrain.evaluate`` (BLEU/chrF of the dev translations, word-level AER).
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from dataclasses import dataclass

import numpy as np

from seqtrain import alignment, data, decoding
from seqtrain.errors import SeqtrainError
from seqtrain.export import restore_model
from seqtrain.search_rules import SearchOptions
from seqtrain.vocab import SP_MARKER, UNK, marker_words, read_text_lines

logger = logging.getLogger(__name__)


@dataclass
class Hypothesis:
    ids: np.ndarray  # int32 [n]: target ids without </s>
    score: float
    attention: np.ndarray  # float32 [n, S]: guided-head rows of the n tokens, real source columns
    cut: bool = False  # stopped by the length limit instead of ending with </s>


class Translator:
    """Decodes lists of source ids in length-sorted batches; results come back in input order."""

    def __init__(
        self, model, params, batch_size: int, n_best: int = 1, beam_width=None, batching=None
    ):
        """params: ``config.params`` (beam_width, length_penalty, maximum_decoding_length and its
        relative cap maximum_decoding_length_factor/offset). batching: the ``infer`` or ``eval``
        section (batch_type, length_bucket_width); None: examples with length_bucket_width 1,
        i.e. each batch holds sources of one length (OpenNMT-tf's bucketing at width 1)."""
        beam_width = params.beam_width if beam_width is None else beam_width
        if n_best > beam_width:
            raise SeqtrainError(
                f"n_best ({n_best}) cannot exceed params.beam_width ({beam_width}); lower "
                "--n_best / infer.n_best or raise params.beam_width"
            )
        self.n_best, self.batch_size = n_best, batch_size
        self.batch_type = batching.batch_type if batching else "examples"
        self.length_bucket_width = batching.length_bucket_width if batching else 1
        self.maximum_length = params.maximum_decoding_length
        self.factor = params.maximum_decoding_length_factor
        self.offset = params.maximum_decoding_length_offset
        options = SearchOptions.from_params(params)
        self._search = decoding.compile_search(
            model, beam_width, params.length_penalty, n_best, options
        )

    def __call__(self, source_id_lists) -> list[list[Hypothesis]]:
        """source_id_lists: int sequences (no BOS/EOS) -> n_best Hypothesis per input."""
        results: list = [None] * len(source_id_lists)
        nonempty = [i for i, ids in enumerate(source_id_lists) if len(ids)]
        for i in set(range(len(source_id_lists))) - set(nonempty):
            results[i] = [Hypothesis(np.zeros(0, np.int32), 0.0, np.zeros((0, 0), np.float32))]
            results[i] *= self.n_best
        dataset = data.inference_dataset(
            [source_id_lists[i] for i in nonempty],
            self.batch_size,
            self.batch_type,
            self.length_bucket_width,
        )
        for batch in dataset:
            limits = decoding.length_limits(
                batch["source_length"], self.maximum_length, self.factor, self.offset
            )
            out = self._search(batch["source_ids"], batch["source_length"], limits)
            cut = decoding.cut_at_limit(out.lengths, limits).numpy()
            ids, lengths, scores, attention = (x.numpy() for x in out)
            source_lengths = batch["source_length"].numpy()
            for row, k in enumerate(batch["index"].numpy()):
                results[nonempty[k]] = [
                    Hypothesis(
                        ids[row, j, : lengths[row, j]],
                        float(scores[row, j]),
                        attention[row, j, : lengths[row, j], : source_lengths[row]],
                        bool(cut[row, j]),
                    )
                    for j in range(self.n_best)
                ]
        return results


def count_cut(hypotheses, params, what: str = "outputs") -> int:
    """Number of hypotheses cut at the length limit; logs a warning naming the limit if any.

    hypotheses: ``Translator`` results (lists of n_best Hypothesis per input).
    """
    flat = [hyp for hyps in hypotheses for hyp in hyps]
    cut = sum(hyp.cut for hyp in flat)
    if cut:
        limit = f"params.maximum_decoding_length = {params.maximum_decoding_length}"
        if params.maximum_decoding_length_factor is not None:
            limit = (
                f"the smaller of {limit} and params.maximum_decoding_length_factor "
                f"{params.maximum_decoding_length_factor:g} x source tokens + "
                f"params.maximum_decoding_length_offset {params.maximum_decoding_length_offset}"
            )
        logger.warning(
            "%d of %d %s were cut at the length limit (%s) without ending with </s>; their "
            "text is incomplete (a model that has not learned to stop, or a limit too low)",
            cut, len(flat), what, limit,
        )  # fmt: skip
    return cut


def target_word_of_piece(pieces, is_subword: bool) -> list[int]:
    """Word index of each output piece: "▁" opens a word (SentencePiece), else one word each.

    A first piece without "▁" still belongs to word 0. (Other tokenizers: ``word_of_pieces``.)
    """
    return marker_words(pieces, is_subword)


def merge_to_words(links, source_word_of_piece, target_word_of_piece) -> set[tuple[int, int]]:
    """Piece links (s, t) -> word links (i, j): words i and j are linked if any pieces are."""
    return {(source_word_of_piece[s], target_word_of_piece[t]) for s, t in links}


def format_links(links) -> str:
    """(s, t) links -> ``"s-t s-t"`` sorted by target then source index."""
    return " ".join(f"{s}-{t}" for s, t in sorted(links, key=lambda link: (link[1], link[0])))


def format_soft(attention) -> str:
    """[n, S] probabilities -> rows of ``%.6f`` separated by spaces, rows joined by `` ; ``."""
    return " ; ".join(" ".join(f"{p:.6f}" for p in row) for row in attention)


def format_line(translation: str, score: float | None = None, alignment: str | None = None):
    """``[SCORE ||| ]TRANSLATION[ ||| ALIGNMENT]`` (OpenNMT-tf's translate output)."""
    line = translation if score is None else f"{score:f} ||| {translation}"
    return line if alignment is None else f"{line} ||| {alignment}"


class TargetText:
    """Target vocabulary + tokenizer: ids -> pieces -> text, and word indices of pieces."""

    def __init__(self, tokenizer, vocab):
        self.tokenizer, self.vocab = tokenizer, vocab

    def pieces(self, ids) -> list[str]:
        return self.vocab.tokens(ids)

    def text(self, ids) -> str:
        return self.tokenizer.detokenize(self.pieces(ids))

    def detokenize(self, pieces, copied: bool = False) -> str:
        """Text of pieces; copied: some are source pieces (replace_unknown_target), which
        SentencePiece's decoder would not map back (its "▁" stays), so "▁" becomes a space here
        and the leading ones vanish, as the decoder does for its own pieces."""
        if not (copied and self.tokenizer.kind == "sentencepiece"):  # joiners detokenize as is
            return self.tokenizer.detokenize(pieces)
        return "".join(pieces).lstrip(SP_MARKER).replace(SP_MARKER, " ")


def replace_unknowns(ids, pieces, attention, source_pieces) -> tuple[list[str], bool]:
    """params.replace_unknown_target: each ``<unk>`` piece -> the source piece its alignment row
    (``attention`` [n, S], the guided head in the trained convention) attends to most.

    Returns (pieces, whether any was replaced).
    """
    out, replaced = list(pieces), False
    for t, token in enumerate(ids):
        if token == UNK and len(source_pieces):
            out[t], replaced = source_pieces[int(np.argmax(attention[t]))], True
    return out, replaced


def _render(
    hyp, target, with_alignments, with_scores, source_words=None, extraction="argmax", copy=None
) -> str:
    """One output line of ``hyp``; source_words: word of each source piece (words level);
    extraction: params.alignment_extraction; copy: the source pieces whose aligned one replaces
    each ``<unk>`` (params.replace_unknown_target), None = no replacement."""
    pieces, copied = target.pieces(hyp.ids), False
    if copy is not None:
        pieces, copied = replace_unknowns(hyp.ids, pieces, hyp.attention, copy)
    text = target.detokenize(pieces, copied)
    links = None
    if with_alignments == "soft":
        links = format_soft(hyp.attention)
    elif with_alignments == "hard":
        pairs = decoding.hard_alignments(hyp.attention, *hyp.attention.shape, extraction)
        if source_words is not None:
            tgt_words = target.tokenizer.word_of_pieces(pieces)
            pairs = merge_to_words(pairs, source_words, tgt_words)
        links = format_links(pairs)
    return format_line(text, hyp.score if with_scores else None, links)


def write_lines(
    hypotheses, pieces, source_words, target, params, predictions_file, with_alignments, with_scores
) -> None:
    """The output lines of every engine: n_best lines per input, in input order, to
    predictions_file (None: standard output). pieces: the source pieces of each input (the
    copies of params.replace_unknown_target); source_words: word of each piece, or None."""
    if predictions_file:
        out = open(predictions_file, "w", encoding="utf-8")  # noqa: SIM115 (closed below)
    else:
        out = contextlib.nullcontext(sys.stdout)
    extraction, copy = params.alignment_extraction, params.replace_unknown_target
    with out as stream:
        for i, hyps in enumerate(hypotheses):
            words = source_words[i] if source_words is not None else None
            copy_from = pieces[i] if copy else None
            for hyp in hyps:
                line = _render(
                    hyp, target, with_alignments, with_scores, words, extraction, copy_from
                )
                stream.write(line + "\n")


def tokenize_lines(lines, tokenizer, with_words: bool, path: str):
    """Raw lines -> (pieces per line, word_of_piece per line or None)."""
    if not with_words:
        return [tokenizer.tokenize(line) for line in lines], None
    pieces, words = [], []
    for number, line in enumerate(lines, 1):
        try:
            line_pieces, word_of_piece = tokenizer.tokenize_with_words(line)
        except ValueError as e:
            raise SeqtrainError(f"{path} line {number}: {e}") from e
        pieces.append(line_pieces)
        words.append(word_of_piece)
    return pieces, words


def translate_command(
    config,
    features_file: str,
    predictions_file: str | None = None,
    checkpoint_path: str | None = None,
    with_alignments: str | None = None,
    with_scores: bool = False,
    n_best: int | None = None,
) -> None:
    """``seqtrain translate``: see the module docstring for the output format.

    Unset options fall back to ``config.infer`` (with_alignments, with_scores, n_best,
    batch_size) and ``config.params`` (beam_width, length_penalty, maximum_decoding_length and
    its relative cap); outputs cut at the length limit are counted in a warning.
    """
    infer = config.infer
    with_alignments = with_alignments or infer.with_alignments
    with_scores = with_scores or infer.with_scores
    n_best = n_best or infer.n_best
    model, path = restore_model(config, checkpoint_path)
    src_tok, tgt_tok, src_vocab, tgt_vocab = alignment.load_tokenizers_and_vocabs(config)
    word_level = with_alignments == "hard" and config.data.alignment_level == "words"
    lines = list(read_text_lines(features_file))
    pieces, source_words = tokenize_lines(lines, src_tok, word_level, features_file)
    translator = Translator(model, config.params, infer.batch_size, n_best, batching=infer)
    start = time.time()
    hypotheses = translator([src_vocab.ids(p) for p in pieces])
    elapsed = time.time() - start
    count_cut(hypotheses, config.params)
    target = TargetText(tgt_tok, tgt_vocab)
    write_lines(hypotheses, pieces, source_words, target, config.params, predictions_file,
                with_alignments, with_scores)  # fmt: skip
    tokens = sum(len(hyps[0].ids) for hyps in hypotheses)
    logger.info(
        "Translated %d lines with %s in %.1f s (%.0f target tokens/s)",
        len(lines), path, elapsed, tokens / max(elapsed, 1e-9),
    )  # fmt: skip
