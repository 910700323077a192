"""Alignment pictures: the guided head's attention as a heatmap, with hard and gold links.

Two layers: ``alignment_pictures`` computes the data behind each picture (matrix, labels, link
marks) from a model and raw sentence pairs, with no plotting library; ``render`` draws one as a
PNG with matplotlib (the optional extra ``plot``, imported only there). ``plot_command`` is
``seqtrain plot-alignment``; the evaluator uses ``read_pairs``/``alignment_pictures``/``render``
for the TensorBoard images of a few fixed dev sentences.

Gold links are classified as in AER (A = model links, S = sure, P = possible ⊇ S): a *hit* is a
model link in P, a *false link* a model link not in P, a *miss* a sure link the model does not
make; possible links the model does not make are drawn apart (AER does not count them).
"""

from __future__ import annotations

import io
import logging
import os
from dataclasses import dataclass

import numpy as np

from seqtrain import aer, alignment, data, decoding
from seqtrain.errors import SeqtrainError
from seqtrain.export import restore_model
from seqtrain.translate import merge_to_words
from seqtrain.vocab import read_text_lines

logger = logging.getLogger(__name__)

INSTALL_HINT = 'pip install -e ".[plot]"'
DPI = 100
CELL_INCHES = 0.3  # side of one matrix cell: room for a marker and a label's line height
CHAR_INCHES = 0.08  # width of one label character at the tick font size (8 pt)
# Marks drawn over the heatmap: legend name -> matplotlib marker style.
MARK_STYLES = {
    "model link": dict(marker="o", markerfacecolor="none", markeredgecolor="#d62728", mew=2),
    "hit": dict(marker="o", markerfacecolor="#2ca02c", markeredgecolor="black", mew=0.5),
    "false link": dict(marker="x", color="#d62728", mew=2.5),
    "miss": dict(marker="s", markerfacecolor="none", markeredgecolor="#ff7f0e", mew=2),
    "possible, not linked": dict(marker="s", markerfacecolor="none", markeredgecolor="#7f7f7f"),
}


@dataclass
class AlignmentPicture:
    """The data behind one picture; links are (source index, target index), 0-based.

    matrix: float32 [target units, source units]; row t is target unit t (no </s> row, no
    padding). Units are model tokens, or raw words when data.alignment_level is words.
    links: the model's hard links; sure/possible: gold links (possible ⊇ sure) or None.
    """

    matrix: np.ndarray
    source_labels: list[str]
    target_labels: list[str]
    links: set
    sure: set | None = None
    possible: set | None = None

    def marks(self) -> dict[str, list[tuple[int, int]]]:
        """Legend name -> sorted links drawn with that mark (see the module docstring)."""
        if self.sure is None:
            return {"model link": sorted(self.links)}
        possible = self.possible | self.sure
        return {
            "hit": sorted(self.links & possible),
            "false link": sorted(self.links - possible),
            "miss": sorted(self.sure - self.links),
            "possible, not linked": sorted(possible - self.sure - self.links),
        }


def merge_matrix(
    matrix, source_word_of_piece, target_word_of_piece, source_words=None, target_words=None
) -> np.ndarray:
    """Piece attention [n, m] -> word attention [target words, source words].

    The columns of a source word's pieces are *summed* (the attention mass on the word) and the
    rows of a target word's pieces *averaged*, so each row stays a distribution over the words.
    source_words/target_words: word counts (default: the largest word index + 1); a word
    without pieces gets a zero row/column.
    """
    matrix = np.asarray(matrix, np.float32)
    source_words = source_words or max(source_word_of_piece) + 1
    target_words = target_words or max(target_word_of_piece) + 1
    source_one_hot = np.eye(source_words, dtype=np.float32)[source_word_of_piece]  # [m, I]
    target_one_hot = np.eye(target_words, dtype=np.float32)[target_word_of_piece]  # [n, J]
    summed = target_one_hot.T @ (matrix @ source_one_hot)  # [J, I]
    return summed / np.maximum(target_one_hot.sum(axis=0), 1.0)[:, None]


def alignment_pictures(
    config, model, pairs, gold=None, batch_size: int = 32, line_numbers=None
) -> list:
    """``AlignmentPicture`` of each (source line, target line) pair of raw text.

    The attention is ``decoding.forced_decoding``'s (the reference teacher-forced, no dropout);
    the links are ``decoding.hard_alignments`` of it. With data.alignment_level words, labels
    are the whitespace words, the matrix is merged by ``merge_matrix`` and the links by
    ``translate.merge_to_words`` (as translate and the dev AER do). gold: (sure, possible) link
    sets per pair at that level, or None. Raises SeqtrainError for an empty side or a gold link
    out of range, before any picture is returned; line_numbers (default 1, 2, …) name the
    pairs in its message.
    """
    words = config.data.alignment_level == "words"
    extraction = config.params.alignment_extraction
    lines = line_numbers or range(1, len(pairs) + 1)
    src_tok, tgt_tok, src_vocab, tgt_vocab = alignment.load_tokenizers_and_vocabs(config)
    units = []
    for k, (source, target) in enumerate(pairs):
        try:
            source_side = _split(src_tok, source, words)
            target_side = _split(tgt_tok, target, words)
        except ValueError as e:
            raise SeqtrainError(f"line {lines[k]}: {e}") from e
        if not (source_side[0] and target_side[0]):
            raise SeqtrainError(f"line {lines[k]}: empty source or target; nothing to draw")
        units.append((source_side, target_side))
    pictures = []
    for start in range(0, len(units), batch_size):
        chunk = units[start : start + batch_size]
        examples = [(src_vocab.ids(s[0]), tgt_vocab.ids(t[0]), None) for s, t in chunk]
        _, attention = decoding.forced_decoding(model, data.batch_from_examples(examples))
        for row, (source_side, target_side) in enumerate(chunk):
            k = start + row
            picture = _picture(
                attention[row].numpy(), source_side, target_side, pairs[k], words, extraction
            )
            if gold is not None:
                picture.sure, picture.possible = _checked_gold(gold[k], picture, lines[k])
            pictures.append(picture)
    return pictures


def _split(tokenizer, line: str, words: bool):
    """(pieces, word of each piece or None)."""
    return tokenizer.tokenize_with_words(line) if words else (tokenizer.tokenize(line), None)


def _picture(
    attention, source_side, target_side, pair, words: bool, extraction="argmax"
) -> AlignmentPicture:
    """attention [T, S] of one padded batch row -> the picture of its real tokens."""
    (source_pieces, source_words), (target_pieces, target_words) = source_side, target_side
    n, m = len(target_pieces), len(source_pieces)
    matrix = attention[:n, :m]
    links = set(decoding.hard_alignments(attention, n, m, extraction))
    if not words:
        return AlignmentPicture(matrix, list(source_pieces), list(target_pieces), links)
    source_labels, target_labels = pair[0].split(), pair[1].split()
    return AlignmentPicture(
        merge_matrix(matrix, source_words, target_words, len(source_labels), len(target_labels)),
        source_labels,
        target_labels,
        merge_to_words(links, source_words, target_words),
    )


def _checked_gold(gold, picture: AlignmentPicture, line: int):
    sure, possible = (set(links) for links in gold)
    size = (len(picture.source_labels), len(picture.target_labels))
    for s, t in sorted(sure | possible):
        if s >= size[0] or t >= size[1]:
            raise SeqtrainError(
                f"gold links of line {line}: {s}-{t} is out of range for {size[0]} source and "
                f"{size[1]} target units; is the gold file for these sentences and this "
                "data.alignment_level?"
            )
    return sure, possible | sure


def read_pairs(features_file, labels_file, alignments_file=None, first: int | None = None):
    """(line numbers, (source, target) pairs, gold (sure, possible) per pair or None).

    The first ``first`` lines (all when None); lines with an empty side are skipped (logged).
    """
    sources, targets = read_text_lines(features_file), read_text_lines(labels_file)
    golds = aer.read_links(alignments_file) if alignments_file else None
    numbers, pairs, gold = [], [], [] if golds is not None else None
    for number, source in enumerate(sources, 1):
        if first is not None and number > first:
            break
        target = next(targets, None)
        links = next(golds, None) if golds is not None else ()
        if target is None or links is None:
            short = labels_file if target is None else alignments_file
            raise SeqtrainError(f"{short} has fewer lines than {features_file} ({number - 1})")
        if not (source.strip() and target.strip()):
            logger.warning("%s line %d: empty source or target, no picture", features_file, number)
            continue
        numbers.append(number)
        pairs.append((source, target))
        if gold is not None:
            gold.append(links)
    return numbers, pairs, gold


# ---------------------------------------------------------------- drawing


def require_matplotlib():
    """(Figure class) without pyplot's global state; SeqtrainError when not installed."""
    try:
        from matplotlib.figure import Figure
    except ImportError as e:
        raise SeqtrainError(f"alignment pictures need matplotlib: {INSTALL_HINT}") from e
    return Figure


def figure_inches(picture: AlignmentPicture) -> tuple[float, float]:
    """(width, height): a CELL_INCHES square per cell, plus room for the labels, the colorbar
    (right) and the legend (bottom)."""
    rows, columns = picture.matrix.shape
    source_chars = max(map(len, picture.source_labels), default=1)
    target_chars = max(map(len, picture.target_labels), default=1)
    width = CELL_INCHES * columns + CHAR_INCHES * target_chars + 1.6
    height = CELL_INCHES * rows + CHAR_INCHES * source_chars + 1.4
    return max(width, 4.0), max(height, 3.0)


def render(picture: AlignmentPicture, path: str | None = None, title: str = "") -> bytes:
    """The picture as PNG bytes (DPI dots per inch, ``figure_inches``); also written to path
    (atomically) when given."""
    Figure = require_matplotlib()
    fig = Figure(figsize=figure_inches(picture), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(picture.matrix, cmap="Blues", vmin=0.0, vmax=1.0, aspect="equal")
    ax.set_xticks(range(len(picture.source_labels)), picture.source_labels, rotation=90)
    ax.set_yticks(range(len(picture.target_labels)), picture.target_labels)
    ax.tick_params(labelsize=8, top=True, labeltop=True, bottom=False, labelbottom=False)
    ax.set_xlabel("source")
    ax.xaxis.set_label_position("top")
    ax.set_ylabel("target")
    for name, links in picture.marks().items():
        if links:
            xs, ys = zip(*links)
            style = MARK_STYLES[name]
            ax.plot(xs, ys, ls="none", ms=9, label=f"{name} ({len(links)})", **style)
    fig.colorbar(image, ax=ax, shrink=0.6, label="attention")
    if ax.get_legend_handles_labels()[0]:
        fig.legend(loc="outside lower center", ncols=2, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    png = buffer.getvalue()
    if path:
        with open(f"{path}.tmp", "wb") as f:
            f.write(png)
        os.replace(f"{path}.tmp", path)
    return png


def plot_command(
    config,
    output_dir: str,
    features_file: str | None = None,
    labels_file: str | None = None,
    alignments_file: str | None = None,
    first: int | None = 10,
    checkpoint_path: str | None = None,
) -> list[str]:
    """``seqtrain plot-alignment``: OUTPUT_DIR/0001.png … (numbered by line) for the first
    lines of the given files, or of the dev set (data.eval_*) by default. Returns the paths."""
    d = config.data
    if first is not None and first < 1:
        raise SeqtrainError(f"--first {first}: give a positive number of lines (0 = all)")
    if bool(features_file) != bool(labels_file):
        raise SeqtrainError("give both --features_file and --labels_file (or neither: dev set)")
    if not features_file:
        features_file, labels_file = d.eval_features_file, d.eval_labels_file
        alignments_file = alignments_file or d.eval_alignments
        if not (features_file and labels_file):
            raise SeqtrainError(
                "plot-alignment needs --features_file and --labels_file, or "
                "data.eval_features_file and data.eval_labels_file in the configuration"
            )
    require_matplotlib()  # fail before the model is loaded
    numbers, pairs, gold = read_pairs(features_file, labels_file, alignments_file, first)
    model, path = restore_model(config, checkpoint_path)
    pictures = alignment_pictures(config, model, pairs, gold, config.infer.batch_size, numbers)
    os.makedirs(output_dir, exist_ok=True)
    written = []
    for number, picture in zip(numbers, pictures):
        written.append(os.path.join(output_dir, f"{number:04d}.png"))
        render(picture, written[-1], title=f"{os.path.basename(features_file)} line {number}")
    logger.info("Drew %d alignment pictures of %s in %s", len(written), path, output_dir)
    return written
