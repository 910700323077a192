"""Word alignment of a parallel corpus with eflomal, plus symmetrization (the `align` tool).

eflomal (pip install seqtrain[align]) aligns in both directions; this module turns the two
directional alignments into one with Koehn et al.'s heuristics (grow-diag-final-and by default),
implemented here in plain Python. Links are (i, j) tuples, i = source word index, j = target word
index, both 0-based; words are the whitespace-separated tokens of each line (str.split()).
No TensorFlow: this module must import fast.
"""

import logging
import os
import tempfile
import time
from collections.abc import Iterable, Sequence

from seqtrain.errors import SeqtrainError

logger = logging.getLogger(__name__)

Link = tuple[int, int]

SYMMETRIZATIONS = (
    "grow-diag-final-and",
    "grow-diag-final",
    "grow-diag",
    "intersection",
    "union",
    "forward",
    "reverse",
)

# eflomal 2.0 silently writes no links for a sentence of 1024 words or more (either side).
EFLOMAL_MAX_WORDS = 1023

# The 8 neighbours of a point, diagonals included (the "diag" of grow-diag).
_NEIGHBOURS = ((1, 0), (-1, 0), (0, 1), (0, -1), (1, 1), (-1, 1), (1, -1), (-1, -1))


class _Grid:
    """The alignment being grown, with which source and target words it already covers."""

    def __init__(self, links: Iterable[Link]):
        self.links: set[Link] = set()
        self.source_aligned: set[int] = set()
        self.target_aligned: set[int] = set()
        for link in links:
            self.add(link)

    def add(self, link: Link) -> None:
        self.links.add(link)
        self.source_aligned.add(link[0])
        self.target_aligned.add(link[1])

    def either_unaligned(self, link: Link) -> bool:
        return link[0] not in self.source_aligned or link[1] not in self.target_aligned

    def both_unaligned(self, link: Link) -> bool:
        return link[0] not in self.source_aligned and link[1] not in self.target_aligned

    def has_neighbour(self, link: Link) -> bool:
        i, j = link
        return any((i + di, j + dj) in self.links for di, dj in _NEIGHBOURS)


def _grow_diag(grid: _Grid, union: set[Link]) -> None:
    """GROW-DIAG: adds union points next to (8-neighbourhood) the current alignment whose
    source or target word is still unaligned, sweeping until a sweep adds nothing.

    Order as fast_align's atools: each sweep visits the remaining candidates in (i, j) order and
    a point added early in a sweep already counts for the later ones.
    """
    candidates = sorted(union - grid.links)
    added = True
    while added:
        added = False
        remaining = []
        for link in candidates:
            if grid.either_unaligned(link) and grid.has_neighbour(link):
                grid.add(link)
                added = True
            else:
                remaining.append(link)
        candidates = remaining


def _final(grid: _Grid, directional: set[Link], require_both_unaligned: bool) -> None:
    """FINAL (either word unaligned) or FINAL-AND (both unaligned): one pass, (i, j) order."""
    for link in sorted(directional - grid.links):
        if grid.both_unaligned(link) if require_both_unaligned else grid.either_unaligned(link):
            grid.add(link)


def symmetrize(
    forward: set[Link], reverse: set[Link], method: str, src_len: int, tgt_len: int
) -> set[Link]:
    """Combines two directional alignments of one sentence pair into one.

    forward: links of the source→target model; reverse: links of the target→source model; both
    as (source index, target index). method: one of SYMMETRIZATIONS. grow-diag starts from the
    intersection; the final steps then add forward links, then reverse links, in (i, j) order.
    src_len, tgt_len: the sentence lengths in words; a link outside them raises ValueError.
    """
    for name, links in (("forward", forward), ("reverse", reverse)):
        for i, j in links:
            if not (0 <= i < src_len and 0 <= j < tgt_len):
                raise ValueError(
                    f"{name} link {i}-{j} is outside a {src_len}x{tgt_len} sentence pair"
                )
    if method == "forward":
        return set(forward)
    if method == "reverse":
        return set(reverse)
    if method == "union":
        return forward | reverse
    if method == "intersection":
        return forward & reverse
    if method not in ("grow-diag", "grow-diag-final", "grow-diag-final-and"):
        raise ValueError(f"unknown symmetrization {method!r}; choose one of {SYMMETRIZATIONS}")
    grid = _Grid(forward & reverse)
    _grow_diag(grid, forward | reverse)
    if method != "grow-diag":
        both = method == "grow-diag-final-and"
        _final(grid, forward, require_both_unaligned=both)
        _final(grid, reverse, require_both_unaligned=both)
    return grid.links


_symmetrize_pair = symmetrize  # align() has a parameter named `symmetrize` that hides it


def _check_parallel(source: Sequence[str], target: Sequence[str], what: str) -> None:
    if len(source) != len(target):
        raise SeqtrainError(
            f"{what}: {len(source)} source lines but {len(target)} target lines; "
            "give one target line per source line"
        )


def _read_links(path: str, count: int) -> list[set[Link]]:
    with open(path, encoding="utf-8") as handle:
        lines = handle.read().splitlines()
    if len(lines) != count:
        raise RuntimeError(f"eflomal wrote {len(lines)} lines to {path}, expected {count}")
    return [{tuple(map(int, pair.split("-"))) for pair in line.split()} for line in lines]


def _run_eflomal(source: list[str], target: list[str], lowercase: bool, workdir: str):
    """Runs eflomal once (both directions); returns (forward, reverse) lists of link sets."""
    try:
        import eflomal
    except ImportError as error:
        raise SeqtrainError(
            "word alignment needs the eflomal package: pip install seqtrain[align]"
        ) from error
    paths = {name: os.path.join(workdir, name) for name in ("src", "tgt", "fwd", "rev")}
    for name, lines in (("src", source), ("tgt", target)):
        sentences, index = eflomal.read_text(lines, lowercase, 0, 0)
        with open(paths[name], "wb") as handle:
            eflomal.write_text(handle, tuple(sentences), len(index))
    # eflomal's defaults (as its Aligner class): IBM1 + HMM + fertility, 3 samplers.
    eflomal.align(
        paths["src"],
        paths["tgt"],
        links_filename_fwd=paths["fwd"],
        links_filename_rev=paths["rev"],
        model=3,
        n_samplers=3,
        quiet=not logger.isEnabledFor(logging.DEBUG),
    )
    return _read_links(paths["fwd"], len(source)), _read_links(paths["rev"], len(source))


def _warn_too_long(source: Sequence[str], target: Sequence[str]) -> None:
    too_long = [
        number
        for number, (src, tgt) in enumerate(zip(source, target, strict=True), start=1)
        if max(len(src.split()), len(tgt.split())) > EFLOMAL_MAX_WORDS
    ]
    if too_long:
        logger.warning(
            "%d sentence pairs have more than %d words on a side; eflomal gives them no links "
            "(lines %s)",
            len(too_long),
            EFLOMAL_MAX_WORDS,
            ", ".join(map(str, too_long[:10])) + (" ..." if len(too_long) > 10 else ""),
        )


def directional_alignments(
    source_lines: Sequence[str],
    target_lines: Sequence[str],
    lowercase: bool = False,
    extra_source: Sequence[str] | None = None,
    extra_target: Sequence[str] | None = None,
) -> list[tuple[set[Link], set[Link], int, int]]:
    """Aligns with eflomal; returns per input line (forward, reverse, src_len, tgt_len).

    extra_source/extra_target: more parallel text that only improves the statistics; its links
    are dropped. lowercase: lowercase words before aligning (eflomal is case-sensitive here).
    eflomal samples from /dev/urandom and has no seed: reruns differ slightly.
    """
    source_lines, target_lines = list(source_lines), list(target_lines)
    _check_parallel(source_lines, target_lines, "text to align")
    if not source_lines:
        raise SeqtrainError("nothing to align: the source and target texts are empty")
    if (extra_source is None) != (extra_target is None):
        raise SeqtrainError("extra text needs both a source and a target side")
    extra_source, extra_target = list(extra_source or []), list(extra_target or [])
    _check_parallel(extra_source, extra_target, "extra text")
    source, target = source_lines + extra_source, target_lines + extra_target
    _warn_too_long(source, target)
    logger.info(
        "Aligning %d sentence pairs (+ %d extra) with eflomal", len(source_lines), len(extra_source)
    )
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="seqtrain-align-") as workdir:
        forward, reverse = _run_eflomal(source, target, lowercase, workdir)
    logger.info("eflomal done in %.1f s", time.monotonic() - start)
    return [
        (forward[k], reverse[k], len(source_lines[k].split()), len(target_lines[k].split()))
        for k in range(len(source_lines))
    ]


def align(
    source_lines: Sequence[str],
    target_lines: Sequence[str],
    symmetrize: str = "grow-diag-final-and",
    lowercase: bool = False,
    extra_source: Sequence[str] | None = None,
    extra_target: Sequence[str] | None = None,
) -> list[set[Link]]:
    """Word-aligns parallel lines; returns one set of (i, j) links per line.

    symmetrize: one of SYMMETRIZATIONS. See directional_alignments for the other arguments.
    Raises SeqtrainError for mismatched line counts, empty input or a missing eflomal.
    """
    method = symmetrize
    if method not in SYMMETRIZATIONS:
        raise SeqtrainError(f"unknown symmetrization {method!r}; choose one of {SYMMETRIZATIONS}")
    pairs = directional_alignments(
        source_lines, target_lines, lowercase, extra_source, extra_target
    )
    return [
        _symmetrize_pair(forward, reverse, method, src_len, tgt_len)
        for forward, reverse, src_len, tgt_len in pairs
    ]


def write_pharaoh(path: str, links_per_line: Iterable[set[Link]]) -> None:
    """Writes one line per sentence pair: sorted `i-j` pairs, an empty line for no links."""
    with open(path, "w", encoding="utf-8") as handle:
        handle.writelines(
            " ".join(f"{i}-{j}" for i, j in sorted(links)) + "\n" for links in links_per_line
        )
