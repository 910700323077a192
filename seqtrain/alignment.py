"""Parallel text + Pharaoh alignment files -> validated examples (ids and gold links).

No TensorFlow here.

Pharaoh lines hold pairs ``i-j``: source index i, target index j, 0-based, space separated; an
empty line means "no links". Indices count the tokens the model sees, or with
``alignment_level: words`` the whitespace-separated words of the raw lines, projected here onto
every pair of pieces of the two words.

Offset convention (the batch contract in seqtrain/data.py): links are returned as rows
``(t, s)``. Row t of the gold matrix is target token y_t, the token PREDICTED at decoder step t
(which reads target_in[t] = ``<s>`` or y_(t-1)); column s is source token x_s, and the source has
no BOS/EOS. So the link ``s-t`` of the file lands at [t, s] with no shift on either axis.

Every problem in the files (line-count mismatch, bad pair, index out of range, empty sentence,
bad UTF-8) raises SeqtrainError naming the file, the 1-based line, the pair and what to do.
"""

from __future__ import annotations

import itertools
import math
import re
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from seqtrain.errors import SeqtrainError
from seqtrain.tokenizers import make_tokenizer
from seqtrain.vocab import UNK, Tokenizer, Vocab, read_text_lines

# A whole valid line at once (the fast path); token by token only to report an error.
_LINE = re.compile(r"\s*(?:[0-9]+-[0-9]+(?:\s+[0-9]+-[0-9]+)*)?\s*")
_PAIR = re.compile(r"[0-9]+-[0-9]+")
_GOLD_PAIR = re.compile(r"([0-9]+)([-p?])([0-9]+)")  # sure i-j, possible ipj or i?j
_NO_LINKS = np.zeros((0, 2), dtype=np.int32)


class Example(NamedTuple):
    line: int  # 1-based line number in the files
    source_ids: np.ndarray | None  # int32 [S], no BOS/EOS (None with check_only)
    target_ids: np.ndarray | None  # int32 [T], no BOS/EOS (None with check_only)
    links: np.ndarray | None  # int32 [L, 2] rows (t, s), sorted, unique; None: no file
    source_length: int  # S (model tokens)
    target_length: int  # T (model tokens, without </s>)
    sure: np.ndarray | None = None  # bool [L]: sure (True) or possible; with allow_possible


def parse_pharaoh_line(line: str, allow_possible: bool = False):
    """Links (source i, target j) of one Pharaoh line, in file order, duplicates kept.

    Each token must be ``i-j`` (digits only); with ``allow_possible`` also ``ipj``/``i?j``
    (possible links of gold files), and the result is ``(links, sure)`` with ``sure[k]`` True for
    ``-`` links. An empty or blank line gives no links. Raises ValueError naming the bad token.
    """
    if allow_possible:
        links, sure = [], []
        for token in line.split():
            match = _GOLD_PAIR.fullmatch(token)
            if not match:
                raise ValueError(_malformed(token, "i-j (sure) or ipj / i?j (possible)"))
            links.append((int(match.group(1)), int(match.group(3))))
            sure.append(match.group(2) == "-")
        return links, sure
    numbers = _parse_numbers(line)
    return list(zip(numbers[0::2], numbers[1::2]))


def _parse_numbers(line: str) -> list[int]:
    """Flat [i0, j0, i1, j1, ...] of a sure-only line (ValueError on a malformed token)."""
    if not _LINE.fullmatch(line):
        for token in line.split():
            if not _PAIR.fullmatch(token):
                raise ValueError(_malformed(token, "i-j"))
    return list(map(int, line.replace("-", " ").split()))


def _malformed(token: str, form: str) -> str:
    return (
        f"malformed link '{token}': expected {form} with non-negative integers "
        "(i = source index, j = target index)"
    )


def project_links(links, src_word_of_piece, tgt_word_of_piece) -> list[tuple[int, int]]:
    """Word links (i, j) -> every (source piece, target piece) pair of the two words."""
    src_pieces, tgt_pieces = defaultdict(list), defaultdict(list)
    for piece, word in enumerate(src_word_of_piece):
        src_pieces[word].append(piece)
    for piece, word in enumerate(tgt_word_of_piece):
        tgt_pieces[word].append(piece)
    return [(s, t) for i, j in links for s in src_pieces.get(i, ()) for t in tgt_pieces.get(j, ())]


def links_to_rows(links) -> np.ndarray:
    """(s, t) links -> int32 [L, 2] rows (t, s), sorted and unique (see the module docstring)."""
    rows = sorted({(t, s) for s, t in links})
    flat = itertools.chain.from_iterable(rows)  # fromiter on a flat iterator: fastest here
    return np.fromiter(flat, dtype=np.int32, count=2 * len(rows)).reshape(-1, 2)


class _Side:
    """One text file with its tokenizer and vocabulary."""

    def __init__(self, name, path, tokenizer: Tokenizer, vocab: Vocab | None, words: bool):
        self.name, self.path, self.tokenizer, self.vocab = name, path, tokenizer, vocab
        self.words = words  # pieces must be mapped to words

    def tokenize(self, line: str, number: int):
        """(pieces, word_of_piece or None, limit): alignment indices must be < limit."""
        if not self.words:
            pieces = self.tokenizer.tokenize(line)
            return pieces, None, len(pieces)
        try:
            pieces, word_of_piece = self.tokenizer.tokenize_with_words(line)
        except ValueError as e:
            raise SeqtrainError(f"{self.path} line {number}: {e}") from e
        return (
            pieces,
            word_of_piece,
            len(line.split()) if self.tokenizer.is_subword else len(pieces),
        )


def read_parallel(
    source_path: str,
    target_path: str,
    alignment_path: str | None,
    source_tokenizer: Tokenizer,
    target_tokenizer: Tokenizer,
    source_vocab: Vocab | None,
    target_vocab: Vocab | None,
    alignment_level: str = "tokens",
    check_only: bool = False,
    allow_possible: bool = False,
) -> Iterator[Example]:
    """Streams validated examples from the three files (see Example for shapes).

    check_only: skip the vocabulary lookups (source_ids/target_ids are None; vocabs may be None).
    allow_possible: the alignment file is a gold file with possible links (``ipj``/``i?j``).
    """
    if alignment_level not in ("tokens", "words"):
        raise SeqtrainError(f"alignment_level = {alignment_level!r}; use tokens or words")
    if not check_only and (source_vocab is None or target_vocab is None):
        raise ValueError("read_parallel needs both vocabularies unless check_only is set")
    # Word links need projecting only when a side has subwords (whitespace tokens are words).
    subword = source_tokenizer.is_subword or target_tokenizer.is_subword
    project = alignment_level == "words" and subword
    src = _Side("source", source_path, source_tokenizer, source_vocab, project)
    tgt = _Side("target", target_path, target_tokenizer, target_vocab, project)
    paths = [source_path, target_path] + ([alignment_path] if alignment_path else [])
    # Count lines first (≈ 1 s per GB): a deleted line would otherwise surface as a confusing
    # index error on the first shifted line rather than as what it is.
    if len({_count_lines(path) for path in paths}) > 1:
        raise _count_mismatch(paths)
    readers = [read_text_lines(path) for path in paths]
    for number, lines in enumerate(itertools.zip_longest(*readers), 1):
        if None in lines:
            raise _count_mismatch(paths)
        src_tokens = src.tokenize(lines[0], number)
        tgt_tokens = tgt.tokenize(lines[1], number)
        for side, (pieces, _, _) in ((src, src_tokens), (tgt, tgt_tokens)):
            if not pieces:
                raise SeqtrainError(
                    f"{side.path} line {number}: the {side.name} sentence is empty; remove line "
                    f"{number} from all files ({', '.join(paths)}), e.g. with sed -i '{number}d'"
                )
        links = sure = None
        if alignment_path:
            context = (number, lines, src, tgt, alignment_path, alignment_level)
            links, sure = _line_links(context, src_tokens, tgt_tokens, allow_possible)
        src_ids = tgt_ids = None
        if not check_only:
            src_ids, tgt_ids = src.vocab.ids(src_tokens[0]), tgt.vocab.ids(tgt_tokens[0])
        yield Example(number, src_ids, tgt_ids, links, len(src_tokens[0]), len(tgt_tokens[0]), sure)


def _line_links(context, src_tokens, tgt_tokens, allow_possible):
    """(rows int32 [L, 2] (t, s), sure bool [L] or None) of one alignment line, validated.

    src_tokens / tgt_tokens: (pieces, word_of_piece, index limit) from _Side.tokenize.
    """
    number, lines, _, _, path, _ = context
    try:
        if allow_possible:
            pairs, flags = parse_pharaoh_line(lines[2], allow_possible=True)
            numbers = [n for pair in pairs for n in pair]
        else:
            numbers = _parse_numbers(lines[2])
    except ValueError as e:
        raise SeqtrainError(f"{path} line {number}: {e}; fix or remove that link") from e
    if not numbers:
        return _NO_LINKS, (np.zeros(0, dtype=bool) if allow_possible else None)
    s_idx, t_idx = numbers[0::2], numbers[1::2]
    (_, src_wop, s_limit), (_, tgt_wop, t_limit) = src_tokens, tgt_tokens
    if max(s_idx) >= s_limit or max(t_idx) >= t_limit:
        raise _out_of_range(context, s_idx, t_idx, s_limit, t_limit)
    links = list(zip(s_idx, t_idx))
    if src_wop is not None:  # word level with subwords
        if allow_possible:  # a piece pair is sure if any of its word links is sure
            sure_links = project_links([p for p, f in zip(links, flags) if f], src_wop, tgt_wop)
        links = project_links(links, src_wop, tgt_wop)
    elif allow_possible:
        sure_links = [p for p, f in zip(links, flags) if f]
    rows = links_to_rows(links)
    if not allow_possible:
        return rows, None
    sure_set = {(t, s) for s, t in sure_links}
    return rows, np.array([(t, s) in sure_set for t, s in rows.tolist()], dtype=bool)


def _out_of_range(context, s_idx, t_idx, s_limit, t_limit) -> SeqtrainError:
    """The error for the first pair (in file order) with an index past the sentence end."""
    number, lines, src, tgt, path, level = context
    k = next(k for k, (i, j) in enumerate(zip(s_idx, t_idx)) if i >= s_limit or j >= t_limit)
    i, j = s_idx[k], t_idx[k]
    side, index, limit = (src, i, s_limit) if i >= s_limit else (tgt, j, t_limit)
    line = lines[0] if side is src else lines[1]
    tokens, words = len(side.tokenizer.tokenize(line)), len(line.split())
    unit = "word" if level == "words" else "token"
    if level == "words" and index < tokens:
        hint = "the alignments seem to refer to subword tokens: set data.alignment_level: tokens"
    elif all(b < s_limit and a < t_limit for a, b in zip(s_idx, t_idx)):
        hint = "the file may be target-source: seqtrain expects source-target pairs i-j"
    elif index == limit and min(s_idx + t_idx) >= 1:
        hint = "the file may be 1-based: seqtrain expects 0-based indices (subtract 1 from each)"
    else:
        hint = (
            f"the alignments must be computed on these exact lines ({src.path}, {tgt.path}) "
            f"in this order, with indices counting {_unit_text(side.tokenizer, level)}"
        )
    return SeqtrainError(
        f"{path} line {number}: link '{i}-{j}': {side.name} index {index} is out of range, the "
        f"{side.name} sentence has {tokens} tokens and {words} words (valid {unit} indices 0.."
        f"{limit - 1}); {hint}"
    )


def _unit_text(tokenizer: Tokenizer, level: str) -> str:
    if level == "words":
        return "the whitespace-separated words of the raw text"
    if tokenizer.is_subword:
        return "the tokenizer's pieces (or set data.alignment_level: words for word indices)"
    return "the whitespace-separated tokens"


def _count_lines(path: str) -> int:
    """Lines as read_text_lines counts them (a last line without a newline counts)."""
    count, last = 0, b"\n"
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            count += chunk.count(b"\n")
            last = chunk[-1:]
    return count + (last != b"\n")


def _count_mismatch(paths) -> SeqtrainError:
    counts = ", ".join(f"{path} has {_count_lines(path)} lines" for path in paths)
    return SeqtrainError(
        f"line-count mismatch: {counts}; the files must be parallel (line n of each is the same "
        "sentence pair): find where they diverge and remove or add lines in all of them"
    )


@dataclass
class DataSummary:
    """Corpus figures of one split (``seqtrain check-data``); tokens are model tokens."""

    name: str
    source_path: str
    target_path: str
    alignment_path: str | None
    lines: int = 0
    source_tokens: int = 0
    target_tokens: int = 0  # without </s>
    max_source_tokens: int = 0
    max_target_tokens: int = 0
    source_unknown: int | None = None  # tokens mapped to <unk> (None: no vocabulary)
    target_unknown: int | None = None
    too_long_lines: int | None = None  # source or target over the length limits (no </s>)
    links: int = 0  # unique (t, s) token links, after word -> piece projection
    sure_links: int | None = None  # with possible links (gold files) only
    empty_alignment_lines: int = 0
    aligned_target_tokens: int = 0  # target tokens with at least one link
    links_per_target_token: float | None = None  # None without an alignment file
    unaligned_target_tokens_pct: float | None = None
    notes: list[str] = field(default_factory=list)  # suspicions that are not errors


def check_data(
    source_path: str,
    target_path: str,
    alignment_path: str | None,
    source_tokenizer: Tokenizer,
    target_tokenizer: Tokenizer,
    source_vocab: Vocab | None = None,
    target_vocab: Vocab | None = None,
    alignment_level: str = "tokens",
    allow_possible: bool = False,
    maximum_source_length: int | None = None,
    maximum_target_length: int | None = None,
    name: str = "data",
) -> DataSummary:
    """Reads the whole split through read_parallel (raising on the first problem) and counts."""
    with_vocab = source_vocab is not None and target_vocab is not None
    summary = DataSummary(name, source_path, target_path, alignment_path)
    if with_vocab:
        summary.source_unknown = summary.target_unknown = 0
    if maximum_source_length or maximum_target_length:
        summary.too_long_lines = 0
    if allow_possible and alignment_path:
        summary.sure_links = 0
    examples = read_parallel(
        source_path,
        target_path,
        alignment_path,
        source_tokenizer,
        target_tokenizer,
        source_vocab,
        target_vocab,
        alignment_level,
        not with_vocab,
        allow_possible,
    )
    for ex in examples:
        _count_example(summary, ex, maximum_source_length, maximum_target_length)
    if alignment_path and summary.target_tokens:
        summary.links_per_target_token = summary.links / summary.target_tokens
        unaligned = summary.target_tokens - summary.aligned_target_tokens
        summary.unaligned_target_tokens_pct = 100.0 * unaligned / summary.target_tokens
    subword = source_tokenizer.is_subword or target_tokenizer.is_subword
    if alignment_path and alignment_level == "tokens" and subword:
        words = _words_if_indices_fit_words(source_path, target_path, alignment_path)
        if words is not None and 1.1 * words < summary.source_tokens + summary.target_tokens:
            summary.notes.append(
                "no link index reaches the word count of its sentence although SentencePiece "
                "splits words: the alignments may count words; if so set "
                "data.alignment_level: words"
            )
    return summary


def _words_if_indices_fit_words(source_path, target_path, alignment_path) -> int | None:
    """Source + target word count if every link index is below its sentence's word count.

    Token-level alignments on subword text almost surely have some index past the word count;
    word-level ones read as token indices never do (and train silently on wrong links).
    """
    words = 0
    paths = (source_path, target_path, alignment_path)
    for source, target, links in zip(*map(read_text_lines, paths)):
        src_words, tgt_words = len(source.split()), len(target.split())
        words += src_words + tgt_words
        for token in links.split():  # already validated by read_parallel
            i, j = _GOLD_PAIR.fullmatch(token).group(1, 3)
            if int(i) >= src_words or int(j) >= tgt_words:
                return None
    return words


def _count_example(summary: DataSummary, ex: Example, max_source, max_target) -> None:
    summary.lines += 1
    summary.source_tokens += ex.source_length
    summary.target_tokens += ex.target_length
    summary.max_source_tokens = max(summary.max_source_tokens, ex.source_length)
    summary.max_target_tokens = max(summary.max_target_tokens, ex.target_length)
    if ex.source_ids is not None:
        summary.source_unknown += int(np.count_nonzero(ex.source_ids == UNK))
        summary.target_unknown += int(np.count_nonzero(ex.target_ids == UNK))
    if summary.too_long_lines is not None:
        summary.too_long_lines += bool(
            (max_source and ex.source_length > max_source)
            or (max_target and ex.target_length > max_target)
        )
    if ex.links is not None:
        summary.links += len(ex.links)
        summary.empty_alignment_lines += not len(ex.links)
        summary.aligned_target_tokens += len(set(ex.links[:, 0].tolist()))
    if ex.sure is not None:
        summary.sure_links += int(ex.sure.sum())


def format_summary(summary: DataSummary) -> str:
    """Human-readable lines for the check-data command."""
    s = summary
    out = [
        f"{s.name}: {s.lines} sentence pairs ({s.source_path}, {s.target_path}"
        + (f", {s.alignment_path})" if s.alignment_path else ")"),
        f"  source: {s.source_tokens} tokens, longest {s.max_source_tokens}"
        + _unknown_text(s.source_unknown, s.source_tokens),
        f"  target: {s.target_tokens} tokens, longest {s.max_target_tokens}"
        + _unknown_text(s.target_unknown, s.target_tokens),
    ]
    if s.too_long_lines is not None:
        out.append(f"  over the length limits (dropped in training): {s.too_long_lines} lines")
    if s.alignment_path:
        sure = "" if s.sure_links is None else f" ({s.sure_links} sure)"
        out.append(
            f"  alignments: {s.links} links{sure}, {s.links_per_target_token or 0.0:.3f} per "
            f"target token, {s.unaligned_target_tokens_pct or 0.0:.2f}% of target tokens "
            f"unaligned, {s.empty_alignment_lines} empty lines"
        )
    out.extend(f"  note: {note}" for note in s.notes)
    return "\n".join(out)


def _unknown_text(count: int | None, total: int) -> str:
    if count is None:
        return " (no vocabulary given)"
    return f", {count} unknown ({100.0 * count / total if total else math.nan:.2f}%)"


def load_tokenizers_and_vocabs(config):
    """(source Tokenizer, target Tokenizer, source Vocab or None, target Vocab or None)."""
    data = config.data
    return (
        make_tokenizer(data.source_tokenization, "data.source_tokenization"),
        make_tokenizer(data.target_tokenization, "data.target_tokenization"),
        Vocab.load(data.source_vocabulary) if data.source_vocabulary else None,
        Vocab.load(data.target_vocabulary) if data.target_vocabulary else None,
    )


def check_config_data(config) -> list[DataSummary]:
    """Checks the train split and, if set, the eval split of a Config (raises on a problem).

    The eval alignments are a gold file (sure ``i-j`` and possible ``ipj``/``i?j`` links) read
    at the same data.alignment_level as the training alignments.
    """
    data, train = config.data, config.train
    src_tok, tgt_tok, src_vocab, tgt_vocab = load_tokenizers_and_vocabs(config)
    summaries = []
    corpora = data.train_corpora()
    splits = [
        ("train" if len(corpora) == 1 else f"train corpus {k + 1}", *files[:3])
        for k, files in enumerate(corpora)
    ]
    splits.append(("eval", data.eval_features_file, data.eval_labels_file, data.eval_alignments))
    for name, source, target, alignments in splits:
        if not (source or target or alignments):
            continue
        if not (source and target):
            missing = "features" if not source else "labels"
            split = "eval" if name == "eval" else "train"
            raise SeqtrainError(f"data.{split}_{missing}_file is not set; give both text files")
        summaries.append(
            check_data(
                source,
                target,
                alignments,
                src_tok,
                tgt_tok,
                src_vocab,
                tgt_vocab,
                data.alignment_level,
                allow_possible=name == "eval",
                maximum_source_length=train.maximum_features_length if name != "eval" else None,
                maximum_target_length=train.maximum_labels_length if name != "eval" else None,
                name=name,
            )
        )
    if not summaries:
        raise SeqtrainError("nothing to check: set data.train_features_file and train_labels_file")
    return summaries
