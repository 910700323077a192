"""Both directions' guided heads combined: ``seqtrain score --reverse_config rev.yml``.

The forward model (``--config``, source S -> target T) and a reverse model (``--reverse_config``,
a run trained T -> S) are each run teacher-forced by ``score.teacher_forced``, the forward one on
(S, T) and the reverse one on the swapped pairs (T, S), each reading its guided head in its own
trained convention. Per pair the reverse matrix [S units, T units] is transposed onto the forward
axes [T units, S units], the two are averaged, and the mean is printed as soft rows or extracted
with the forward config's ``params.alignment_extraction`` (``intersection``: mutual best links).

Units: model pieces when the two models cut every line of both files into the same pieces and
``data.alignment_level`` is ``tokens``; otherwise whitespace words, each matrix first merged by
``alignment_plot.merge_matrix`` (sum over a source word's pieces, mean over a target word's), and
the output is then at the words level (word links or rows, TARGET the line itself,
TOKEN_SCORES per word); soft rows are refused when the tokenizations differ. SCORE and
TOKEN_SCORES are the forward model's. The combination helps only when both heads were trained
with guided alignment; a reverse model without one still runs (its attention rows are averaged).
"""

from __future__ import annotations

import logging

import numpy as np

from seqtrain import alignment, decoding, score
from seqtrain.alignment_plot import merge_matrix
from seqtrain.errors import SeqtrainError
from seqtrain.translate import format_links, format_soft, tokenize_lines
from seqtrain.vocab import read_text_lines

logger = logging.getLogger(__name__)


def combine(forward, reverse) -> np.ndarray:
    """Mean of forward [T, S] and reverse [S, T] transposed: float32 [T, S]."""
    forward, reverse = np.asarray(forward, np.float32), np.asarray(reverse, np.float32)
    if forward.shape != reverse.T.shape:
        raise ValueError(f"forward {forward.shape} and reverse {reverse.shape} do not mirror")
    return 0.5 * (forward + reverse.T)


def combine_words(forward, reverse, s_words_of, t_words_of, s_count: int, t_count: int):
    """forward [T pieces, S pieces] (its own pieces), reverse [S pieces', T pieces'] (the reverse
    model's pieces): each merged to words by ``merge_matrix``, then ``combine``d: [t_count,
    s_count]. s_words_of/t_words_of: (forward's, reverse's) word index of each piece of S/T."""
    forward_words = merge_matrix(forward, s_words_of[0], t_words_of[0], s_count, t_count)
    reverse_words = merge_matrix(reverse, t_words_of[1], s_words_of[1], t_count, s_count)
    return combine(forward_words, reverse_words)


def _first_difference(file: str, forward_pieces, reverse_pieces):
    """'FILE line N: A vs B' for the first line the two tokenizers cut differently, or None."""
    for number, (a, b) in enumerate(zip(forward_pieces, reverse_pieces), 1):
        if list(a) != list(b):
            return f"{file} line {number}: {' '.join(a)!r} vs {' '.join(b)!r}"
    return None


def tokenization_difference(config, reverse_config, features_file, predictions_file):
    """None when the reverse model's target tokenizer cuts every line of features_file as the
    forward model's source tokenizer does, and its source tokenizer every line of
    predictions_file as the forward target tokenizer; else where they first differ."""
    forward_src, forward_tgt, _, _ = alignment.load_tokenizers_and_vocabs(config)
    reverse_src, reverse_tgt, _, _ = alignment.load_tokenizers_and_vocabs(reverse_config)
    for file, ours, theirs in (
        (features_file, forward_src, reverse_tgt),
        (predictions_file, forward_tgt, reverse_src),
    ):
        lines = list(read_text_lines(file))
        pieces = [tokenize_lines(lines, tok, False, file)[0] for tok in (ours, theirs)]
        difference = _first_difference(file, *pieces)
        if difference:
            return difference
    return None


def bidir_score_command(
    config,
    reverse_config,
    features_file: str,
    predictions_file: str,
    output_file: str | None = None,
    checkpoint_path: str | None = None,
    reverse_checkpoint_path: str | None = None,
    with_alignments: str | None = None,
    with_token_level: bool = False,
) -> None:
    """``seqtrain score --reverse_config``: see the module docstring; unset options fall back to
    the forward ``config.score``."""
    with_alignments = with_alignments or config.score.with_alignments
    with_token_level = with_token_level or config.score.with_token_level
    if not with_alignments:
        raise SeqtrainError(
            "--reverse_config combines the two models' alignments: give --with_alignments hard "
            "or soft (or set score.with_alignments)"
        )
    difference = tokenization_difference(config, reverse_config, features_file, predictions_file)
    if difference and with_alignments == "soft":
        raise SeqtrainError(
            f"--with_alignments soft with --reverse_config: the two models tokenize {difference}; "
            "soft rows can only be averaged over the same tokens: use --with_alignments hard "
            "(word links)"
        )
    if difference:
        logger.info("The two models tokenize %s: combining at the word level", difference)
    words = bool(difference) or config.data.alignment_level == "words"
    forward = score.teacher_forced(config, features_file, predictions_file, checkpoint_path, words)
    reverse = score.teacher_forced(
        reverse_config, predictions_file, features_file, reverse_checkpoint_path, words
    )
    extraction = config.params.alignment_extraction
    alignments = []
    for i in range(len(forward.scored)):
        matrix = _combined(forward, reverse, i, words)
        if with_alignments == "soft":
            alignments.append(format_soft(matrix))
        else:
            links = decoding.hard_alignments(matrix, *matrix.shape, extraction)
            alignments.append(format_links(links))
    score.write_output(
        score.output_lines(forward, words, with_token_level, alignments), output_file
    )
    forward.log()
    reverse.log()


def _combined(forward, reverse, i: int, words: bool) -> np.ndarray:
    """The combined matrix of pair i of two ``score.ForcedRun``s: [T units, S units]."""
    ours, theirs = forward.scored[i].attention, reverse.scored[i].attention
    if not words:
        return combine(ours, theirs)
    return combine_words(
        ours,
        theirs,
        (forward.source_words[i], reverse.target_words[i]),
        (forward.target_words[i], reverse.source_words[i]),
        len(reverse.targets[i].split()),  # the reverse model's targets are the S lines
        len(forward.targets[i].split()),
    )
