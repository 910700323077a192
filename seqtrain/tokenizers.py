"""Tokenizers configured as in OpenNMT-tf: ``data.source_tokenization`` / ``target_tokenization``.

A tokenization setting is one of (OpenNMT-tf 2.32's ``make_tokenizer`` forms, plus seqtrain's):

* null: whitespace tokens (``SpaceTokenizer``);
* a path to a SentencePiece ``.model`` file (seqtrain's original form);
* a mapping ``{type: ..., params: {...}}``, a path to a YAML file holding one, or the same as a
  JSON string; a mapping without ``type`` is the params of an ``OpenNMTTokenizer`` (OpenNMT-tf's
  legacy form). Types: ``OpenNMTTokenizer`` (pyonmttok options, mode ``conservative`` by
  default), ``SentencePieceTokenizer`` (``model``), ``SpaceTokenizer``, ``CharacterTokenizer``
  (one token per character, spaces become "▁").

Every tokenizer offers ``tokenize``, ``detokenize``, ``tokenize_with_words`` (pieces and the
whitespace word of the raw line each piece comes from, for word-level alignments),
``word_of_pieces`` (the word of ``detokenize(pieces)`` each piece lands in, for output
alignments), ``is_subword``, ``kind`` and ``identity`` (part of data cache keys). Subword
sampling (SentencePiece ``nbest_size``, ``sp_nbest_size``, ``bpe_dropout``) is rejected: seqtrain
encodes the corpus once and caches it. No TensorFlow here.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Sequence

import yaml

from seqtrain import config as cfg
from seqtrain.errors import SeqtrainError
from seqtrain.vocab import Tokenizer

SPACE = "\u2581"  # CharacterTokenizer's stand-in for " " (as OpenNMT-tf's)
# pyonmttok options that name files: they must exist, and their contents key the data cache.
ONMT_FILE_OPTIONS = ("bpe_model_path", "bpe_vocab_path", "sp_model_path", "vocabulary_path")


def make_tokenizer(spec, where: str = "data.source_tokenization"):
    """A tokenizer from a tokenization setting (see the module docstring); where: the key."""
    spec = resolve(spec, where)
    if spec is None or isinstance(spec, str):
        return Tokenizer(spec)
    params = dict(spec.params)
    if spec.type == "OpenNMTTokenizer":
        return OpenNMTTokenizer(params, where)
    if spec.type == "SentencePieceTokenizer":
        unknown = set(params) - {"model", "nbest_size", "alpha"}
        if "model" not in params or unknown:
            raise SeqtrainError(
                f"{where}: SentencePieceTokenizer takes params model (required), nbest_size, "
                f"alpha; got {sorted(params)}"
            )
        if params.get("nbest_size", 0) not in (0, 1):
            raise SeqtrainError(_no_sampling(where, "params.nbest_size"))
        _check_file(params["model"], f"{where}.params.model")
        return Tokenizer(params["model"])
    if params:
        raise SeqtrainError(f"{where}: {spec.type} takes no params; got {sorted(params)}")
    return Tokenizer(None) if spec.type == "SpaceTokenizer" else CharacterTokenizer()


def resolve(spec, where: str):
    """None, a SentencePiece model path (str) or a ``config.TokenizationConfig``."""
    if spec is None or isinstance(spec, cfg.TokenizationConfig):
        return spec
    if spec.lstrip().startswith("{"):
        try:
            mapping = json.loads(spec)
        except json.JSONDecodeError as e:
            raise SeqtrainError(f"{where}: invalid JSON tokenization: {e}") from e
        return cfg.tokenization_from_mapping(mapping, where)
    _check_file(spec, where)
    with open(spec, "rb") as f:
        content = f.read()
    try:  # a SentencePiece model is binary protobuf: not a YAML mapping
        mapping = yaml.safe_load(content.decode("utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError):
        mapping = None
    if isinstance(mapping, dict):
        return cfg.tokenization_from_mapping(mapping, f"{where} ({spec})")
    return spec


def _check_file(path, where: str) -> None:
    if not isinstance(path, str) or not os.path.isfile(path):
        raise SeqtrainError(
            f"{where} = {path!r} does not exist (paths are relative to the directory seqtrain "
            f"runs in: {os.getcwd()})"
        )


def _no_sampling(where: str, key: str) -> str:
    return (
        f"{where}: {key} asks for subword sampling, which seqtrain does not support (it encodes "
        "the corpus once and caches it); remove it or set it to 0"
    )


def _file_digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def word_of_ranges(text: str, ranges: dict, count: int) -> list[int]:
    """Word index (of ``text.split()``) of each of ``count`` pieces from their character ranges.

    ranges: piece index -> (first, last) character of ``text`` (inclusive). Whitespace belongs to
    the word after it (the last word at the end); a piece without a range (a case-markup token)
    takes the word of the next piece that has one. Raises ValueError if a piece spans two words.
    """
    word_at, word = [], -1
    for k, char in enumerate(text):
        space = char.isspace()
        if not space and (k == 0 or text[k - 1].isspace()):
            word += 1
        word_at.append(word + 1 if space else word)
    last = max(len(text.split()) - 1, 0)
    word_at = [min(w, last) for w in word_at]
    words: list = [None] * count
    for k, (first, final) in ranges.items():
        if word_at[first] != word_at[final]:
            raise ValueError(f"piece {k} ({text[first:final + 1]!r}) spans two words")
        words[k] = word_at[first]
    following = last
    for k in reversed(range(count)):
        if words[k] is None:
            words[k] = following
        following = words[k]
    return words


class OpenNMTTokenizer:
    """pyonmttok.Tokenizer with OpenNMT-tf's defaults (mode ``conservative``); deterministic."""

    kind = "opennmt"
    is_subword = True
    sp_model_path = None

    def __init__(self, params: dict, where: str):
        try:
            import pyonmttok  # an extra: pip install seqtrain[onmt]
        except ImportError as e:
            raise SeqtrainError(
                f"{where}: OpenNMTTokenizer needs pyonmttok: pip install seqtrain[onmt]"
            ) from e
        params = {"mode": "conservative", **params}
        if params.get("case_feature"):
            raise SeqtrainError(f"{where}: case_feature is not supported (nor in OpenNMT-tf)")
        for key in ("sp_nbest_size", "bpe_dropout"):
            if params.get(key):
                raise SeqtrainError(_no_sampling(where, f"params.{key}"))
        files = {}
        for key in ONMT_FILE_OPTIONS:
            if params.get(key) is not None:
                _check_file(params[key], f"{where}.params.{key}")
                files[key] = _file_digest(params[key])
        try:
            self._tokenizer = pyonmttok.Tokenizer(**params)
        except (TypeError, ValueError) as e:
            reason = str(e).splitlines()[0]
            if isinstance(e, TypeError):  # pybind11 lists the accepted options in its message
                unknown = sorted(set(params) - set(re.findall(r"(\w+): ", str(e))))
                reason = f"unknown option(s) {unknown}" if unknown else "a value of a wrong type"
            raise SeqtrainError(
                f"{where}: pyonmttok rejects params {params} ({reason}); see "
                "https://github.com/OpenNMT/Tokenizer/blob/master/docs/options.md"
            ) from e
        self.params = params
        description = json.dumps({"params": params, "files": files}, sort_keys=True)
        self._identity = "onmt:" + hashlib.sha256(description.encode()).hexdigest()

    def identity(self) -> str:
        return self._identity

    def tokenize(self, line: str) -> list[str]:
        return self._tokenizer.tokenize(line, training=False)[0]

    def detokenize(self, pieces: Sequence[str]) -> str:
        return self._tokenizer.detokenize(list(pieces))

    def word_of_pieces(self, pieces: Sequence[str]) -> list[int]:
        """Word of ``detokenize(pieces)`` each piece lands in (joiners glue pieces to words)."""
        text, ranges = self._tokenizer.detokenize_with_ranges(list(pieces), unicode_ranges=True)
        return word_of_ranges(text, ranges, len(pieces))

    def tokenize_with_words(self, line: str) -> tuple[list[str], list[int]]:
        """(pieces, word_of_piece) over the whitespace words of ``line``; ValueError if the
        pieces do not detokenize to as many words (they could not be mapped to them)."""
        pieces = self.tokenize(line)
        text, ranges = self._tokenizer.detokenize_with_ranges(pieces, unicode_ranges=True)
        if len(text.split()) != len(line.split()):
            raise ValueError(
                f"the OpenNMT Tokenizer pieces {pieces} of {line!r} detokenize to "
                f"{len(text.split())} words, not {len(line.split())}; word alignments cannot be "
                "projected on them (use alignment_level: tokens)"
            )
        return pieces, word_of_ranges(text, ranges, len(pieces))


class CharacterTokenizer:
    """One token per character, " " written "▁" (OpenNMT-tf's CharacterTokenizer)."""

    kind = "character"
    is_subword = True
    sp_model_path = None

    def identity(self) -> str:
        return "character"

    def tokenize(self, line: str) -> list[str]:
        return list(line.replace(" ", SPACE))

    def detokenize(self, pieces: Sequence[str]) -> str:
        return "".join(pieces).replace(SPACE, " ")

    def word_of_pieces(self, pieces: Sequence[str]) -> list[int]:
        """Word of ``detokenize(pieces)`` each piece lands in (a space joins the next word)."""
        ranges, offset = {}, 0
        for k, piece in enumerate(pieces):
            if piece:
                ranges[k] = (offset, offset + len(piece) - 1)
            offset += len(piece)
        return word_of_ranges(self.detokenize(pieces), ranges, len(pieces))

    def tokenize_with_words(self, line: str) -> tuple[list[str], list[int]]:
        pieces = self.tokenize(line)
        return pieces, self.word_of_pieces(pieces)
