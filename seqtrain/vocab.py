"""Vocabularies (token <-> id) and tokenizers (whitespace or SentencePiece), no TensorFlow.

Vocabulary files are OpenNMT-tf's: one token per line, UTF-8. Ids: 0 ``<blank>`` (PAD), 1 ``<s>``,
2 ``</s>``, 3 ``<unk>``, then the file's other tokens in file order. A file that lacks the special
tokens at the top (a plain token list, a SentencePiece ``.vocab`` file) gets them prepended, as
OpenNMT-tf does; ``<unk>`` is always id 3 here (OpenNMT-tf appends it at the end instead).

Tokenizers turn a raw line into the pieces the model sees. Word-level alignments need to know
which whitespace-separated word of the raw line each piece came from: ``tokenize_with_words``.
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import logging
import os
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from seqtrain.errors import SeqtrainError

logger = logging.getLogger(__name__)

PAD, BOS, EOS, UNK = 0, 1, 2, 3
PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN = "<blank>", "<s>", "</s>", "<unk>"
SPECIAL_TOKENS = (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN)
SP_MARKER = "\u2581"  # SentencePiece's "▁": a piece starting with it starts a new word


class Vocab:
    """An ordered token list with the four special tokens first; ids are list positions."""

    def __init__(self, tokens: Iterable[str]):
        """``tokens`` in id order; specials are moved to ids 0-3 and duplicates dropped."""
        ordered = list(SPECIAL_TOKENS)
        seen = set(ordered)
        for token in tokens:
            if token not in seen:  # first occurrence wins, as OpenNMT-tf's Vocab.add
                seen.add(token)
                ordered.append(token)
        self._tokens = ordered
        self._ids = {token: i for i, token in enumerate(ordered)}

    @classmethod
    def load(cls, path: str) -> Vocab:
        """Reads an OpenNMT-tf vocabulary file (or a SentencePiece ``token<TAB>score`` file)."""
        lines = [
            line for line in read_text_lines(path) if line
        ]  # a token is never empty (blank last line)
        if lines and all(_is_sentencepiece_entry(line) for line in lines):
            lines = [line.split("\t")[0] for line in lines]
        if not lines:
            raise SeqtrainError(f"{path}: the vocabulary file is empty; build one with build-vocab")
        if tuple(lines[:3]) != SPECIAL_TOKENS[:3]:
            logger.info("%s does not start with <blank> <s> </s>: prepending them", path)
        return cls(lines)

    @classmethod
    def from_counter(
        cls, counter: collections.Counter, size: int | None = None, min_frequency: int = 1
    ) -> Vocab:
        """Most frequent tokens first (ties by token); ``size`` counts the 4 specials too."""
        ranked = sorted(
            (item for item in counter.items() if item[1] >= min_frequency and item[0]),
            key=lambda item: (-item[1], item[0]),
        )
        tokens = [token for token, _ in ranked if token not in SPECIAL_TOKENS]
        if size is not None:
            tokens = tokens[: max(size - len(SPECIAL_TOKENS), 0)]
        return cls(tokens)

    def save(self, path: str) -> None:
        """Writes all tokens, specials included, one per line (atomically)."""
        tmp = f"{path}.tmp"
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            f.writelines(f"{token}\n" for token in self._tokens)
        os.replace(tmp, path)

    @property
    def size(self) -> int:
        return len(self._tokens)

    def __len__(self) -> int:
        return len(self._tokens)

    def __contains__(self, token: str) -> bool:
        return token in self._ids

    def as_list(self) -> list[str]:
        """All tokens in id order (a copy)."""
        return list(self._tokens)

    def id(self, token: str) -> int:
        return self._ids.get(token, UNK)

    def ids(self, tokens: Sequence[str]) -> np.ndarray:
        """int32 [len(tokens)] ids; unknown tokens map to UNK."""
        return np.fromiter(
            map(self._ids.get, tokens, itertools.repeat(UNK)), dtype=np.int32, count=len(tokens)
        )

    def tokens(self, ids: Iterable[int]) -> list[str]:
        """Tokens of ``ids`` (a list or an int array); stopping at EOS is the caller's job."""
        if isinstance(ids, np.ndarray):
            ids = ids.tolist()
        return [self._tokens[i] for i in ids]


def _is_sentencepiece_entry(line: str) -> bool:
    _, tab, score = line.partition("\t")
    if not tab or "\t" in score:
        return False
    try:
        float(score)
    except ValueError:
        return False
    return True


class Tokenizer:
    """Whitespace tokens (``sp_model_path=None``) or SentencePiece pieces.

    Words are the whitespace-separated words of the raw line (``str.split()``). With
    SentencePiece, the whole line is encoded at once (the same pieces as ``spm_encode``), and each
    piece belongs to the word opened by the last piece that starts with "▁". For models trained
    with SentencePiece's defaults (split_by_whitespace, add_dummy_prefix) pieces never straddle
    two words, so this mapping is exact. When SentencePiece's normalization changes the number of
    words (e.g. NFKC turns "¨" into " ̈", or a zero-width space into a space), the line is encoded
    word by word to map pieces to words; if that gives different pieces than the whole line,
    ``tokenize_with_words`` raises ValueError (the model makes pieces across words, so word
    alignments cannot be projected on it). ``tokenize`` and ``tokenize_with_words`` therefore
    always give the same pieces.
    """

    def __init__(self, sp_model_path: str | None = None):
        self.sp_model_path = sp_model_path
        self._sp = None
        self._identity = "space"
        if sp_model_path is not None:
            import sentencepiece  # imported here: whitespace users need not have it

            try:
                with open(sp_model_path, "rb") as f:
                    model = f.read()
                self._sp = sentencepiece.SentencePieceProcessor(model_proto=model)
            except (OSError, RuntimeError) as e:
                raise SeqtrainError(
                    f"{sp_model_path}: cannot load the SentencePiece model ({e}); give the "
                    ".model file written by spm_train or build-vocab"
                ) from e
            self._identity = "sp:" + hashlib.sha256(model).hexdigest()
            self._encode = self._sp.encode_as_pieces

    @property
    def is_subword(self) -> bool:
        return self._sp is not None

    @property
    def kind(self) -> str:
        return "sentencepiece" if self._sp is not None else "space"

    def identity(self) -> str:
        """'space' or 'sp:<sha256 of the model file>': part of data cache keys."""
        return self._identity

    def tokenize(self, line: str) -> list[str]:
        if self._sp is None:
            return line.split()
        return self._encode(line)

    def tokenize_with_words(self, line: str) -> tuple[list[str], list[int]]:
        """(pieces, word_of_piece): word_of_piece[k] = index of the raw word of pieces[k]."""
        words = line.split()
        if self._sp is None:
            return words, list(range(len(words)))
        pieces = self._encode(line)
        word_of_piece = []
        word = -1
        for piece in pieces:
            if piece[0] == SP_MARKER:
                word += 1
            word_of_piece.append(word)
        if word + 1 == len(words) and (not pieces or word_of_piece[0] == 0):
            return pieces, word_of_piece
        return self._tokenize_word_by_word(line, words, pieces)

    def _tokenize_word_by_word(self, line, words, pieces):
        per_word = [self._encode(word) for word in words]
        flat = [piece for word_pieces in per_word for piece in word_pieces]
        if flat != pieces:
            raise ValueError(
                f"SentencePiece pieces {pieces} of {line!r} cannot be mapped to its words "
                f"(encoding word by word gives {flat}); train the model with default options "
                "(split_by_whitespace) or use alignment_level: tokens"
            )
        return pieces, [k for k, word_pieces in enumerate(per_word) for _ in word_pieces]

    def word_of_pieces(self, pieces: Sequence[str]) -> list[int]:
        """Word of ``detokenize(pieces)`` of each piece (see ``marker_words``)."""
        return marker_words(pieces, self._sp is not None)

    def detokenize(self, pieces: Sequence[str]) -> str:
        if self._sp is None:
            return " ".join(pieces)
        return self._sp.decode_pieces(list(pieces))


def marker_words(pieces: Sequence[str], is_subword: bool) -> list[int]:
    """Word index of each piece: "▁" opens a word (SentencePiece), else one word per token.

    A first piece without "▁" still belongs to word 0.
    """
    if not is_subword:
        return list(range(len(pieces)))
    words, word = [], -1
    for piece in pieces:
        if word < 0 or piece.startswith(SP_MARKER):
            word += 1
        words.append(word)
    return words


def read_text_lines(path: str) -> Iterator[str]:
    """Yields the lines of a UTF-8 file without line ends; CRLF and a leading BOM are accepted.

    Decoding is strict: a bad byte raises SeqtrainError naming the file, line and byte offset.
    """
    try:
        handle = open(path, "rb")  # noqa: SIM115 (closed below; per-line decode gives line numbers)
    except OSError as e:
        raise SeqtrainError(f"cannot read {path}: {e.strerror}") from e
    with handle:
        offset = 0
        for number, raw in enumerate(handle, 1):
            start = 3 if number == 1 and raw.startswith(b"\xef\xbb\xbf") else 0
            try:
                yield raw[start:].rstrip(b"\r\n").decode("utf-8")
            except UnicodeDecodeError as e:
                bad = start + e.start
                raise SeqtrainError(
                    f"{path} line {number}: byte 0x{raw[bad]:02x} at byte offset "
                    f"{offset + bad} is not valid UTF-8; convert the file, e.g. "
                    f"iconv -f LATIN1 -t UTF-8 {path} > {path}.utf8"
                ) from e
            offset += len(raw)


def build_vocab(
    text_paths: Sequence[str],
    output_path: str,
    size: int | None = None,
    min_frequency: int = 1,
    tokenizer: Tokenizer | None = None,
) -> Vocab:
    """Counts the tokens of the files (whitespace tokens by default) and writes the vocabulary.

    ``size`` is the total number of entries including the 4 special tokens (None = all).
    """
    tokenizer = tokenizer or Tokenizer()
    counter: collections.Counter = collections.Counter()
    for path in text_paths:
        for line in read_text_lines(path):
            counter.update(tokenizer.tokenize(line))
    vocab = Vocab.from_counter(counter, size=size, min_frequency=min_frequency)
    vocab.save(output_path)
    logger.info("Wrote %d tokens (of %d distinct) to %s", len(vocab), len(counter), output_path)
    return vocab


def train_sentencepiece(
    text_paths: Sequence[str],
    model_prefix: str,
    vocab_size: int,
    model_type: str = "unigram",
    character_coverage: float = 1.0,
    input_sentence_size: int = 2_000_000,
) -> tuple[str, str]:
    """Trains a SentencePiece model on the files (both sides' files = a joint model).

    Writes ``model_prefix.model`` and ``model_prefix.vocab``; the latter (SentencePiece's own
    ``piece<TAB>score`` file is overwritten) is an OpenNMT-style vocabulary: ``<blank> <s> </s>
    <unk>`` then the pieces in SentencePiece id order, without SentencePiece's ``<unk>``. It has
    vocab_size + 3 entries. SentencePiece's BOS/EOS/PAD are disabled: seqtrain adds its own.
    Returns (model_path, vocab_path).
    """
    import sentencepiece

    if model_type not in ("unigram", "bpe"):
        raise SeqtrainError(f"model_type = {model_type!r}; use 'unigram' or 'bpe'")
    for path in text_paths:
        if not os.path.isfile(path):
            raise SeqtrainError(f"cannot read {path}: no such file")
    try:
        sentencepiece.SentencePieceTrainer.train(
            input=list(text_paths),
            model_prefix=model_prefix,
            vocab_size=vocab_size,
            model_type=model_type,
            character_coverage=character_coverage,
            input_sentence_size=input_sentence_size,
            shuffle_input_sentence=True,
            unk_id=0,
            bos_id=-1,
            eos_id=-1,
            pad_id=-1,
            num_threads=os.cpu_count() or 1,
            minloglevel=2,
        )
    except RuntimeError as e:
        raise SeqtrainError(
            f"SentencePiece training on {', '.join(text_paths)} failed: {e}; a smaller "
            "vocab_size usually helps with small corpora"
        ) from e
    model_path, vocab_path = f"{model_prefix}.model", f"{model_prefix}.vocab"
    sp = sentencepiece.SentencePieceProcessor(model_file=model_path)
    pieces = [
        sp.id_to_piece(i)
        for i in range(sp.get_piece_size())
        if not (sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i))
    ]
    Vocab(pieces).save(vocab_path)
    return model_path, vocab_path
