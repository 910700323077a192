"""Vocabulary files, special tokens, vocabulary building, whitespace and SentencePiece."""

import collections
import hashlib
import random

import numpy as np
import pytest
import sentencepiece

from seqtrain.errors import SeqtrainError
from seqtrain.vocab import (
    BOS,
    EOS,
    PAD,
    UNK,
    Tokenizer,
    Vocab,
    build_vocab,
    train_sentencepiece,
)

SPECIALS = ["<blank>", "<s>", "</s>", "<unk>"]
SYLLABLES = ["ta", "ko", "ri", "men", "sul", "ba", "ne", "dor", "li", "pa", "gu", "fe"]


def make_words(rng, count):
    """Words of 2-4 syllables: with a vocabulary of 80 pieces most split into several pieces."""
    return ["".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4))) for _ in range(count)]


WORDS = make_words(random.Random(1), 150)


def write(path, text, mode="w"):
    if mode == "wb":
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def sp_model(tmp_path_factory):
    """A tiny BPE model (vocab 80) trained on a generated corpus: words split into pieces."""
    tmp = tmp_path_factory.mktemp("sp")
    rng = random.Random(0)
    lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9))) for _ in range(300)]
    corpus = write(tmp / "corpus.txt", "\n".join(lines) + "\n")
    model, vocab = train_sentencepiece([corpus], str(tmp / "sp"), 80, model_type="bpe")
    return model, vocab


def test_special_token_ids():
    assert (PAD, BOS, EOS, UNK) == (0, 1, 2, 3)
    vocab = Vocab(["x", "y"])
    assert vocab.as_list() == SPECIALS + ["x", "y"]
    assert [vocab.id(t) for t in SPECIALS] == [0, 1, 2, 3]
    assert vocab.size == len(vocab) == 6


def test_round_trip(tmp_path):
    vocab = Vocab(["der", "die", "Haus", "ü"])
    vocab.save(str(tmp_path / "v.txt"))
    assert (tmp_path / "v.txt").read_text(encoding="utf-8").split("\n") == SPECIALS + [
        "der",
        "die",
        "Haus",
        "ü",
        "",
    ]
    loaded = Vocab.load(str(tmp_path / "v.txt"))
    assert loaded.as_list() == vocab.as_list()


def test_load_prepends_missing_specials_and_moves_unk(tmp_path):
    # A plain token list with <unk> in the middle, a duplicate, CRLF, a BOM and a blank last line.
    path = write(tmp_path / "v.txt", b"\xef\xbb\xbfa\r\nb\r\n<unk>\r\na\r\nc\r\n\r\n", "wb")
    vocab = Vocab.load(path)
    assert vocab.as_list() == SPECIALS + ["a", "b", "c"]
    assert vocab.id("a") == 4 and vocab.id("c") == 6


def test_load_opennmt_file_keeps_ids(tmp_path):
    path = write(tmp_path / "v.txt", "<blank>\n<s>\n</s>\n<unk>\nx\ny\n")
    assert Vocab.load(path).as_list() == SPECIALS + ["x", "y"]


def test_load_sentencepiece_vocab_format(tmp_path):
    path = write(tmp_path / "sp.vocab", "<unk>\t0\n▁the\t-1.5\nab\t-3\n")
    assert Vocab.load(path).as_list() == SPECIALS + ["▁the", "ab"]


def test_load_errors(tmp_path):
    with pytest.raises(SeqtrainError, match="cannot read"):
        Vocab.load(str(tmp_path / "missing.txt"))
    with pytest.raises(SeqtrainError, match="empty"):
        Vocab.load(write(tmp_path / "empty.txt", "\n"))
    bad = write(tmp_path / "bad.txt", b"ok\nbad\xff\n", "wb")
    with pytest.raises(SeqtrainError, match=r"bad.txt line 2: byte 0xff at byte offset 6"):
        Vocab.load(bad)


def test_ids_and_tokens():
    vocab = Vocab(["a", "b"])
    ids = vocab.ids(["b", "zzz", "a", "<s>"])
    assert ids.dtype == np.int32 and ids.shape == (4,)
    np.testing.assert_array_equal(ids, [5, 3, 4, 1])
    assert vocab.ids([]).shape == (0,)
    assert vocab.tokens(ids) == ["b", "<unk>", "a", "<s>"]
    assert vocab.tokens([0, 2]) == ["<blank>", "</s>"]


def test_from_counter_order_size_min_frequency():
    counter = collections.Counter({"c": 5, "a": 5, "b": 7, "d": 1, "e": 2, "<s>": 9})
    # By frequency, ties by token; special tokens never counted twice.
    assert Vocab.from_counter(counter).as_list() == SPECIALS + ["b", "a", "c", "e", "d"]
    assert Vocab.from_counter(counter, min_frequency=2).as_list() == SPECIALS + ["b", "a", "c", "e"]
    limited = Vocab.from_counter(counter, size=6)
    assert limited.as_list() == SPECIALS + ["b", "a"] and len(limited) == 6
    assert len(Vocab.from_counter(counter, size=2)) == 4  # the specials always stay


def test_build_vocab(tmp_path):
    a = write(tmp_path / "a.txt", "x y x\nz  x\n")
    b = write(tmp_path / "b.txt", "y w\n")
    vocab = build_vocab([a, b], str(tmp_path / "v"), size=7)
    # counts: x 3, y 2, w 1, z 1 -> x, y, then w before z (ties by token), cut at 7 entries
    assert vocab.as_list() == SPECIALS + ["x", "y", "w"]
    assert Vocab.load(str(tmp_path / "v")).as_list() == vocab.as_list()
    assert build_vocab([a, b], str(tmp_path / "v2"), min_frequency=2).as_list() == SPECIALS + [
        "x",
        "y",
    ]


def test_whitespace_tokenizer():
    tok = Tokenizer()
    line = "  ein  Haus\tam See "
    assert tok.tokenize(line) == ["ein", "Haus", "am", "See"]
    assert tok.tokenize_with_words(line) == (["ein", "Haus", "am", "See"], [0, 1, 2, 3])
    assert tok.detokenize(["ein", "Haus"]) == "ein Haus"
    assert tok.identity() == "space" and not tok.is_subword


def test_sentencepiece_vocab_layout(sp_model):
    model_path, vocab_path = sp_model
    sp = sentencepiece.SentencePieceProcessor(model_file=model_path)
    assert sp.get_piece_size() == 80 and sp.id_to_piece(0) == "<unk>"
    with open(vocab_path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    pieces = [sp.id_to_piece(i) for i in range(1, 80)]
    assert lines == SPECIALS + pieces + [""]  # 80 + 3 entries, SentencePiece id order
    assert len(Vocab.load(vocab_path)) == 83


def test_sentencepiece_tokenizer(sp_model, tmp_path):
    model_path = sp_model[0]
    tok = Tokenizer(model_path)
    sp = sentencepiece.SentencePieceProcessor(model_file=model_path)
    line = " ".join(WORDS[:3])
    pieces = tok.tokenize(line)
    assert pieces == sp.encode(line, out_type=str) and len(pieces) > 3
    assert tok.detokenize(pieces) == line
    assert tok.is_subword
    with open(model_path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    assert tok.identity() == "sp:" + digest
    with pytest.raises(SeqtrainError, match="cannot load the SentencePiece model"):
        Tokenizer(write(tmp_path / "not.model", "hello"))


def test_sentencepiece_words_of_pieces(sp_model):
    tok = Tokenizer(sp_model[0])
    lines = [" ".join(WORDS[:2]), f" {WORDS[2]}  {WORDS[3]}\t{WORDS[4]} ", WORDS[5]]
    for line in lines:
        pieces, word_of_piece = tok.tokenize_with_words(line)
        assert pieces == tok.tokenize(line)
        words = line.split()
        rebuilt = ["".join(p for p, w in zip(pieces, word_of_piece) if w == k) for k in range(3)]
        assert [w.lstrip("\u2581") for w in rebuilt[: len(words)]] == words
        assert word_of_piece == sorted(word_of_piece)  # pieces of a word are contiguous
        assert len(pieces) > len(words)  # some word has several pieces


def test_sentencepiece_word_mapping_when_normalization_changes_words(sp_model):
    # NFKC turns U+00A8 into " \u0308" and SentencePiece a zero-width space into a space: the
    # whole-line pieces then hold more word starts than the raw line has words.
    tok = Tokenizer(sp_model[0])
    sp = sentencepiece.SentencePieceProcessor(model_file=sp_model[0])
    for line in [f"{WORDS[0]} x\u00a8y {WORDS[1]}", f"ta\u200bko {WORDS[2]}"]:
        words = line.split()
        per_word = [sp.encode(w, out_type=str) for w in words]
        pieces, word_of_piece = tok.tokenize_with_words(line)
        assert sum(p.startswith("\u2581") for p in pieces) == len(words) + 1  # the hard case
        assert pieces == sp.encode(line, out_type=str)
        assert word_of_piece == [k for k, p in enumerate(per_word) for _ in p]


def test_train_sentencepiece_errors(tmp_path):
    with pytest.raises(SeqtrainError, match="model_type"):
        train_sentencepiece([], str(tmp_path / "m"), 10, model_type="word")
    with pytest.raises(SeqtrainError, match="no such file"):
        train_sentencepiece([str(tmp_path / "nope")], str(tmp_path / "m"), 10)
    small = write(tmp_path / "small.txt", "a b\n")
    with pytest.raises(SeqtrainError, match="smaller vocab_size"):
        train_sentencepiece([small], str(tmp_path / "m"), 5000)
