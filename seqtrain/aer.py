"""Alignment error rate (AER), precision and recall of word alignments against a gold standard.

Conventions (Och & Ney 2003, as in the WPT 2003 shared task and awesome-align):

- A gold line holds pairs `i-j` (sure link) and `ipj` or `i?j` (possible link), i = source word
  index, j = target word index. Every sure link is also possible (S ⊆ P).
- A hypothesis line is read the same way; all of its links (sure or possible) form A.
- Counts are summed over the corpus before dividing (micro average):
  precision = |A∩P| / |A|, recall = |A∩S| / |S|, AER = 1 − (|A∩S| + |A∩P|) / (|A| + |S|).
  A figure whose denominator is 0 is NaN.
- Indices are 0-based unless a file is declared 1-based (the original TALP/WPT form); each file
  has its own flag, so a 1-based gold scores a 0-based hypothesis correctly.

Pure Python (no TensorFlow): the `aer` command and the training-time evaluation both use it.
"""

import logging
import math
from collections.abc import Iterable, Iterator, Sequence

from seqtrain.errors import SeqtrainError

logger = logging.getLogger(__name__)

Link = tuple[int, int]

_SEPARATORS = (("-", True), ("p", False), ("?", False))  # (separator, is_sure)


def _parse_token(token: str, one_based: bool) -> tuple[Link, bool]:
    """Parses one `i-j` / `ipj` / `i?j` token into ((i, j), is_sure), indices made 0-based."""
    for separator, is_sure in _SEPARATORS:
        if separator in token:
            left, _, right = token.partition(separator)
            return _indices(token, left, right, one_based), is_sure
    raise ValueError(f"malformed link {token!r}: expected 'i-j' (sure) or 'ipj'/'i?j' (possible)")


def _indices(token: str, left: str, right: str, one_based: bool) -> Link:
    # isdigit() rejects signs, spaces, a second separator and empty sides in one test.
    if not (left.isascii() and left.isdigit() and right.isascii() and right.isdigit()):
        raise ValueError(f"malformed link {token!r}: both indices must be non-negative integers")
    i, j = int(left), int(right)
    if not one_based:
        return i, j
    if i == 0 or j == 0:
        raise ValueError(
            f"link {token!r} has index 0 but the file is declared 1-based; "
            "drop the 1-based option if the file is 0-based"
        )
    return i - 1, j - 1


def parse_gold_line(line: str, one_based: bool = False) -> tuple[set[Link], set[Link]]:
    """Parses one Pharaoh line into (sure, possible) sets of 0-based (i, j) links.

    `i-j` is sure, `ipj` or `i?j` is possible; sure links are added to possible (S ⊆ P).
    An empty line gives two empty sets. Raises ValueError naming a malformed token.
    """
    sure: set[Link] = set()
    possible: set[Link] = set()
    for token in line.split():
        link, is_sure = _parse_token(token, one_based)
        possible.add(link)
        if is_sure:
            sure.add(link)
    return sure, possible


def read_links(
    path: str, one_based: bool = False, reverse: bool = False
) -> Iterator[tuple[set[Link], set[Link]]]:
    """Yields (sure, possible) per line of a Pharaoh file, 0-based (i, j) links.

    reverse=True swaps every pair to (j, i) (a target-source file read as source-target).
    Raises SeqtrainError naming the file, the 1-based line number and the bad token.
    """
    try:
        with open(path, "rb") as handle:  # decoded per line: a bad byte gets its line number
            yield from _parse_lines(handle, path, one_based, reverse)
    except OSError as error:
        raise SeqtrainError(f"cannot read alignment file {path}: {error.strerror}") from error


def _parse_lines(handle, path: str, one_based: bool, reverse: bool):
    for line_number, raw in enumerate(handle, start=1):
        try:
            sure, possible = parse_gold_line(raw.decode("utf-8"), one_based=one_based)
        except UnicodeDecodeError as error:
            raise SeqtrainError(
                f"{path}, line {line_number}: not UTF-8 text; is this an alignment file?"
            ) from error
        except ValueError as error:
            raise SeqtrainError(
                f"{path}, line {line_number}: {error}; fix or remove that link"
            ) from error
        if reverse:
            sure = {(j, i) for i, j in sure}
            possible = {(j, i) for i, j in possible}
        yield sure, possible


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else math.nan


def score(
    hypotheses: Sequence[set[Link]],
    sure: Sequence[set[Link]],
    possible: Sequence[set[Link]],
) -> dict:
    """Corpus-level AER, precision and recall (fractions in [0, 1], NaN if undefined).

    Each argument has one set of (i, j) links per sentence. `possible` should contain `sure`
    (parse_gold_line guarantees it); sure links missing from it are counted as possible anyway.
    Returns dict(aer, precision, recall, a=|A|, s=|S|, p=|P|, s_hits=|A∩S|, p_hits=|A∩P|).
    """
    if not len(hypotheses) == len(sure) == len(possible):
        raise ValueError(
            f"got {len(hypotheses)} hypothesis, {len(sure)} sure and {len(possible)} possible "
            "sentences; they must be equal"
        )
    a = s = p = s_hits = p_hits = 0
    for hyp, sure_links, possible_links in zip(hypotheses, sure, possible, strict=True):
        possible_links = possible_links | sure_links
        a += len(hyp)
        s += len(sure_links)
        p += len(possible_links)
        s_hits += len(hyp & sure_links)
        p_hits += len(hyp & possible_links)
    return {
        "aer": 1.0 - _ratio(s_hits + p_hits, a + s),
        "precision": _ratio(p_hits, a),
        "recall": _ratio(s_hits, s),
        "a": a,
        "s": s,
        "p": p,
        "s_hits": s_hits,
        "p_hits": p_hits,
    }


def _all_links(lines: Iterable[tuple[set[Link], set[Link]]]) -> list[set[Link]]:
    return [possible for _, possible in lines]


def aer_files(
    reference: str,
    hypothesis: str,
    reference_one_based: bool = False,
    hypothesis_one_based: bool = False,
    reverse: bool = False,
) -> dict:
    """Scores a hypothesis Pharaoh file against a gold file; returns score()'s dict.

    reference_one_based: the gold file uses 1-based indices (the original TALP/WPT form); the
    CLI's `--one-based` sets this flag only, since aligners write 0-based files.
    hypothesis_one_based: the hypothesis file is 1-based (rare).
    reverse: the hypothesis is target-source (`j-i`); its pairs are swapped before scoring
    (this gives the same scores as swapping the reference instead).
    Every link of the hypothesis, sure or possible, counts in A.
    Raises SeqtrainError on malformed files or different line counts.
    """
    gold = list(read_links(reference, one_based=reference_one_based))
    hyp = _all_links(read_links(hypothesis, one_based=hypothesis_one_based, reverse=reverse))
    if len(gold) != len(hyp):
        raise SeqtrainError(
            f"{reference} has {len(gold)} lines but {hypothesis} has {len(hyp)}; "
            "both must have one line per sentence pair, in the same order"
        )
    logger.info("Scoring %d sentences of %s against %s", len(hyp), hypothesis, reference)
    return score(hyp, [s for s, _ in gold], [p for _, p in gold])


def format_scores(scores: dict) -> str:
    """One line with percentages, e.g. `AER = 4.10 ; Precision = 96.30 ; Recall = 95.40 (...)`."""
    return (
        f"AER = {100 * scores['aer']:.2f} ; Precision = {100 * scores['precision']:.2f} ; "
        f"Recall = {100 * scores['recall']:.2f} "
        f"(|A| = {scores['a']}, |S| = {scores['s']}, |P| = {scores['p']})"
    )
