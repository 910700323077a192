"""Word alignment of a parallel corpus with eflomal, plus symmetrization (the `align` tool).

eflomal (pip install seqtrain[align]) aligns in both directions; this module turns the two
directional alignments into one with Koehn et al.'s heuristics (grow-diag-final-and by default),
implemented here in plain Python. Links are (i, j) tuples, i = source word index, j = target word
index, both 0-based; words are the whitespace-separated tokens of each line (str.split(), which
is also how eflomal splits). `align_files` / `align_config` are the `seqtrain align` command:
files in, one Pharaoh file out, written atomically. No TensorFlow: this module must import fast.
"""

import contextlib
import logging
import os
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from seqtrain.errors import SeqtrainError
from seqtrain.vocab import read_text_lines

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
# eflomal prints nothing while it runs (unless --log_level DEBUG): say it is alive this often.
HEARTBEAT_SECONDS = 30.0
# Symmetrization and writing log their progress every this many lines.
PROGRESS_LINES = 100_000

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
    with _heartbeat(f"eflomal is aligning {len(source)} sentence pairs in both directions"):
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


@contextlib.contextmanager
def _heartbeat(what: str) -> Iterator[None]:
    """Logs "<what>: still running, <elapsed>" every HEARTBEAT_SECONDS until the block ends."""
    stop = threading.Event()
    start = time.monotonic()

    def beat():
        while not stop.wait(HEARTBEAT_SECONDS):
            logger.info("%s: still running, %.0f s so far", what, time.monotonic() - start)

    thread = threading.Thread(target=beat, name="seqtrain-align-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


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
    """Writes one line per sentence pair: sorted `i-j` pairs, an empty line for no links.

    Atomic: written to a temporary file beside `path`, then renamed over it, so an interrupted
    run (or an exception from the iterable) leaves `path` as it was and no partial file.
    """
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.writelines(
                " ".join(f"{i}-{j}" for i, j in sorted(links)) + "\n" for links in links_per_line
            )
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


@dataclass
class AlignSummary:
    """What `seqtrain align` wrote (also logged as its last line)."""

    output: str
    lines: int = 0
    links: int = 0
    target_words: int = 0
    lines_without_links: int = 0
    seconds: float = 0.0

    @property
    def links_per_target_word(self) -> float:
        return self.links / self.target_words if self.target_words else float("nan")


def _read_pair(source: str, target: str, role: str) -> tuple[list[str], list[str]]:
    """Both files as lists of lines; SeqtrainError for an empty file or different line counts."""
    source_lines, target_lines = list(read_text_lines(source)), list(read_text_lines(target))
    for path, lines in ((source, source_lines), (target, target_lines)):
        if not any(line.split() for line in lines):
            raise SeqtrainError(
                f"{path} is empty (no words); give {role} text with one sentence per line"
            )
    if len(source_lines) != len(target_lines):
        raise SeqtrainError(
            f"line-count mismatch: {source} has {len(source_lines)} lines but {target} has "
            f"{len(target_lines)}; the {role} files must be parallel (line n of each is the same "
            "sentence pair)"
        )
    return source_lines, target_lines


def _check_output(output: str, inputs: Sequence[str], force: bool) -> None:
    """Fails before the (long) alignment run if the output cannot or must not be written."""
    if any(os.path.realpath(output) == os.path.realpath(path) for path in inputs):
        raise SeqtrainError(f"the output {output} is also an input file; choose another name")
    if os.path.isdir(output):
        raise SeqtrainError(f"the output {output} is a directory; give a file name")
    if os.path.exists(output) and not force:
        raise SeqtrainError(f"{output} already exists; pass --force to overwrite it")
    directory = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(directory) or not os.access(directory, os.W_OK):
        raise SeqtrainError(
            f"cannot write {output}: {directory} is not a writable directory; create it first"
        )


def _warn_empty_sides(source: Sequence[str], target: Sequence[str], path: str) -> None:
    empty = [
        number
        for number, (src, tgt) in enumerate(zip(source, target, strict=True), start=1)
        if not (src.split() and tgt.split())
    ]
    if empty:
        logger.warning(
            "%d sentence pairs of %s have an empty side; they get no links, and seqtrain train "
            "rejects empty sentences: remove those lines from all files (lines %s)",
            len(empty),
            path,
            ", ".join(map(str, empty[:10])) + (" ..." if len(empty) > 10 else ""),
        )


def _symmetrized(pairs, method: str, summary: AlignSummary) -> Iterator[set[Link]]:
    """Symmetrizes pair after pair, counting into `summary` and logging progress."""
    for number, (forward, reverse, src_len, tgt_len) in enumerate(pairs, start=1):
        links = _symmetrize_pair(forward, reverse, method, src_len, tgt_len)
        summary.lines += 1
        summary.links += len(links)
        summary.target_words += tgt_len
        summary.lines_without_links += not links
        if number % PROGRESS_LINES == 0:
            logger.info("Symmetrized %d of %d sentence pairs (%s)", number, len(pairs), method)
        yield links


def align_files(
    source: str,
    target: str,
    output: str,
    symmetrize: str = "grow-diag-final-and",
    lowercase: bool = False,
    extra_source: str | None = None,
    extra_target: str | None = None,
    force: bool = False,
) -> AlignSummary:
    """`seqtrain align`: word-aligns two parallel text files into a Pharaoh file `output`.

    Lines i-j (source word i, target word j, 0-based) over the whitespace words of each line,
    one output line per input line. extra_source/extra_target: more parallel text for the
    statistics only. Refuses to overwrite `output` unless `force`; writes it atomically.
    Raises SeqtrainError (naming the files) for empty files, mismatched line counts, an unknown
    method or a missing eflomal, before any output is written.
    """
    start = time.monotonic()
    if symmetrize not in SYMMETRIZATIONS:
        raise SeqtrainError(
            f"unknown symmetrization {symmetrize!r}; choose one of {', '.join(SYMMETRIZATIONS)}"
        )
    if (extra_source is None) != (extra_target is None):
        raise SeqtrainError("--extra-source and --extra-target go together; give both or neither")
    inputs = [source, target] + ([extra_source, extra_target] if extra_source else [])
    _check_output(output, inputs, force)
    source_lines, target_lines = _read_pair(source, target, "source and target")
    _warn_empty_sides(source_lines, target_lines, f"{source} / {target}")
    extra = (None, None)
    if extra_source is not None:
        extra = _read_pair(extra_source, extra_target, "extra source and target")
    pairs = directional_alignments(source_lines, target_lines, lowercase, *extra)
    summary = AlignSummary(output)
    write_pharaoh(output, _symmetrized(pairs, symmetrize, summary))
    summary.seconds = time.monotonic() - start
    logger.info(
        "Wrote %s (%s): %d lines, %d links, %.3f links per target word, %d lines without "
        "links, %.1f s",
        output,
        symmetrize,
        summary.lines,
        summary.links,
        summary.links_per_target_word,
        summary.lines_without_links,
        summary.seconds,
    )
    return summary


def align_config(
    config,
    force: bool = False,
    symmetrize: str = "grow-diag-final-and",
    lowercase: bool = False,
    extra_source: str | None = None,
    extra_target: str | None = None,
) -> AlignSummary:
    """`seqtrain align --config`: aligns data.train_features_file / train_labels_file into
    data.train_alignments (config: a seqtrain.config.Config). See align_files."""
    data = config.data
    if not data.train_alignments:
        raise SeqtrainError(
            "data.train_alignments is not set; set it to the Pharaoh file to write (e.g. "
            "train.src-tgt.align), or give --source, --target and --output instead of --config"
        )
    for key in ("train_features_file", "train_labels_file"):
        if not getattr(data, key):
            raise SeqtrainError(f"data.{key} is not set; seqtrain align --config aligns it")
    subword = [k for k in ("source_tokenization", "target_tokenization") if getattr(data, k)]
    if subword and data.alignment_level == "tokens":
        logger.warning(
            "data.%s is a subword tokenizer but data.alignment_level is tokens: seqtrain align "
            "writes links between whitespace words, so set data.alignment_level: words to have "
            "them projected onto the pieces (as tokens they would be wrong or out of range)",
            subword[0],
        )
    summaries = [  # one Pharaoh file per training corpus
        align_files(
            features,
            labels,
            alignments,
            symmetrize=symmetrize,
            lowercase=lowercase,
            extra_source=extra_source,
            extra_target=extra_target,
            force=force,
        )
        for features, labels, alignments, _ in data.train_corpora()
    ]
    return summaries[-1]
