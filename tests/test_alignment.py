"""Pharaoh parsing, the (t, s) offset convention, word->subword projection and file validation."""

import itertools
import random

import numpy as np
import pytest
import sentencepiece

from seqtrain.alignment import (
    check_config_data,
    check_data,
    format_summary,
    links_to_rows,
    parse_pharaoh_line,
    project_links,
    read_parallel,
)
from seqtrain.config import build
from seqtrain.errors import SeqtrainError
from seqtrain.vocab import UNK, Tokenizer, Vocab, train_sentencepiece

SPACE = Tokenizer()

# A clean 3-line corpus: 3/4, 2/2 and 4/3 tokens (source/target).
SOURCE = ["a b c", "d e", "f g h i"]
TARGET = ["A B C D", "E F", "G H I"]
ALIGN = ["0-0 1-2 1-3 2-1", "", "0-0 0-0 3-0 1-2"]


def write_lines(path, lines, newline="\n", bom=False):
    data = ("\ufeff" if bom else "") + "".join(line + newline for line in lines)
    path.write_bytes(data.encode("utf-8"))
    return str(path)


def corpus(tmp_path, source=SOURCE, target=TARGET, align=ALIGN, **kwargs):
    return (
        write_lines(tmp_path / "src.txt", source, **kwargs),
        write_lines(tmp_path / "tgt.txt", target, **kwargs),
        write_lines(tmp_path / "train.align", align, **kwargs) if align is not None else None,
    )


def vocabs():
    return Vocab(list("abcdefghi")), Vocab(list("ABCDEFGHI"))


def read_all(paths, level="tokens", tokenizers=(SPACE, SPACE), **kwargs):
    src_vocab, tgt_vocab = vocabs()
    return list(read_parallel(*paths, *tokenizers, src_vocab, tgt_vocab, level, **kwargs))


def gold_matrix(pharaoh, source_length, target_length):
    """Dense [T, S] gold built straight from the text: 1 at [t, s] for each 's-t'."""
    gold = np.zeros((target_length, source_length), np.float32)
    for token in pharaoh.split():
        s, t = token.split("-")
        gold[int(t), int(s)] = 1.0
    return gold


def test_example_rows_offset_convention():
    links = parse_pharaoh_line("0-0 1-2 1-3 2-1")
    assert links == [(0, 0), (1, 2), (1, 3), (2, 1)]  # (source i, target j), file order
    rows = links_to_rows(links)
    assert rows.dtype == np.int32 and rows.shape == (4, 2)
    # (t, s) sorted: (t=0,s=0), (t=1,s=2), (t=2,s=1), (t=3,s=1)
    np.testing.assert_array_equal(rows, [[0, 0], [1, 2], [2, 1], [3, 1]])
    dense = np.zeros((4, 3), np.float32)
    dense[rows[:, 0], rows[:, 1]] = 1.0
    np.testing.assert_array_equal(dense, gold_matrix("0-0 1-2 1-3 2-1", 3, 4))


def test_duplicates_many_to_one_and_empty():
    links = parse_pharaoh_line("0-1 0-1 2-1 1-1  ")
    assert links == [(0, 1), (0, 1), (2, 1), (1, 1)]  # duplicates kept by the parser
    np.testing.assert_array_equal(links_to_rows(links), [[1, 0], [1, 1], [1, 2]])
    assert parse_pharaoh_line("") == [] and parse_pharaoh_line(" \t ") == []
    assert links_to_rows([]).shape == (0, 2)


@pytest.mark.parametrize(
    "token", ["1-", "a-b", "-1-2", "1:2", "1--2", "1-2-3", "-2", "1-2x", "１-2"]
)
def test_malformed_tokens(token):
    with pytest.raises(ValueError, match=f"malformed link '{token}'"):
        parse_pharaoh_line(f"0-0 {token} 3-3")


def test_possible_links():
    links, sure = parse_pharaoh_line("0-0 1p2 2?1 3-3", allow_possible=True)
    assert links == [(0, 0), (1, 2), (2, 1), (3, 3)] and sure == [True, False, False, True]
    with pytest.raises(ValueError, match="'1x2'"):
        parse_pharaoh_line("1x2", allow_possible=True)
    with pytest.raises(ValueError, match="'1p2'"):
        parse_pharaoh_line("1p2")  # possible links only where allowed


def test_read_parallel_clean(tmp_path):
    examples = read_all(corpus(tmp_path))
    assert [ex.line for ex in examples] == [1, 2, 3]
    np.testing.assert_array_equal(examples[0].source_ids, [4, 5, 6])
    np.testing.assert_array_equal(examples[2].target_ids, [10, 11, 12])
    assert examples[0].source_ids.dtype == np.int32 and examples[0].links.dtype == np.int32
    for ex, pharaoh, src, tgt in zip(examples, ALIGN, SOURCE, TARGET):
        dense = np.zeros((len(tgt.split()), len(src.split())), np.float32)
        dense[ex.links[:, 0], ex.links[:, 1]] = 1.0
        np.testing.assert_array_equal(
            dense, gold_matrix(pharaoh, len(src.split()), len(tgt.split()))
        )
        assert (ex.source_length, ex.target_length) == (len(src.split()), len(tgt.split()))
    assert examples[1].links.shape == (0, 2)
    np.testing.assert_array_equal(examples[2].links, [[0, 0], [0, 3], [2, 1]])


def test_unknown_tokens_and_no_alignment_file(tmp_path):
    paths = corpus(tmp_path, source=["a zz c"], target=["A"], align=None)
    (ex,) = read_all(paths)
    np.testing.assert_array_equal(ex.source_ids, [4, UNK, 6])
    assert ex.links is None


def test_crlf_and_bom_same_as_clean(tmp_path):
    clean = read_all(corpus(tmp_path / "", align=ALIGN))
    (tmp_path / "dos").mkdir()
    dos = read_all(corpus(tmp_path / "dos", newline="\r\n", bom=True))
    assert len(dos) == len(clean) == 3
    for a, b in zip(clean, dos):
        assert a.line == b.line
        for x, y in zip(a[1:4], b[1:4]):
            np.testing.assert_array_equal(x, y)


def test_line_count_mismatch(tmp_path):
    paths = corpus(tmp_path, target=TARGET[:2])  # a deleted target line
    with pytest.raises(SeqtrainError) as error:
        read_all(paths)
    message = str(error.value)
    assert "line-count mismatch" in message
    assert f"{paths[0]} has 3 lines" in message and f"{paths[1]} has 2 lines" in message
    assert f"{paths[2]} has 3 lines" in message
    paths = corpus(tmp_path, align=ALIGN + ["0-0"])  # an extra alignment line
    with pytest.raises(SeqtrainError, match=r"train.align has 4 lines"):
        read_all(paths)


@pytest.mark.parametrize(
    "bad, pair, problem",
    [
        ("0-0 4-1", "'4-1'", "source index 4 is out of range, the source sentence has 4 tokens"),
        (
            "2-0 0-3 1-1",
            "'0-3'",
            "target index 3 is out of range, the target sentence has 3 tokens",
        ),
    ],
)
def test_index_out_of_range(tmp_path, bad, pair, problem):
    # line 3 has 4 source tokens and 3 target tokens
    paths = corpus(tmp_path, align=ALIGN[:2] + [bad])
    with pytest.raises(SeqtrainError) as error:
        read_all(paths)
    message = str(error.value)
    assert message.startswith(f"{paths[2]} line 3: link {pair}: {problem}")


def test_target_source_file_hint(tmp_path):
    # 2 source / 4 target tokens, the pairs written target-source
    paths = corpus(tmp_path, source=["a b"], target=["A B C D"], align=["3-1 2-0"])
    with pytest.raises(SeqtrainError, match="may be target-source"):
        read_all(paths)


def test_one_based_file_hint(tmp_path):
    paths = corpus(tmp_path, source=["a b"], target=["A B C"], align=["1-1 2-3"])
    with pytest.raises(SeqtrainError, match=r"link '2-3': source index 2 .* may be 1-based"):
        read_all(paths)


def test_malformed_pair_in_file(tmp_path):
    paths = corpus(tmp_path, align=["0-0", "1-1", "0-0 2:1"])
    with pytest.raises(SeqtrainError, match=r"train.align line 3: malformed link '2:1'"):
        read_all(paths)


def test_empty_sentence(tmp_path):
    paths = corpus(tmp_path, target=["A B C D", "  ", "G H I"])
    with pytest.raises(
        SeqtrainError, match=r"tgt.txt line 2: the target sentence is empty; remove"
    ):
        read_all(paths)


def test_non_utf8_byte(tmp_path):
    paths = corpus(tmp_path)
    data = b"a b c\nd e\nf g\xe9 h i\n"
    (tmp_path / "src.txt").write_bytes(data)
    offset = data.index(b"\xe9")
    with pytest.raises(SeqtrainError) as error:
        read_all(paths)
    message = str(error.value)
    assert f"{paths[0]} line 3: byte 0xe9 at byte offset {offset} is not valid UTF-8" in message
    assert "iconv" in message


def test_check_data_summary(tmp_path):
    paths = corpus(tmp_path, source=["a b c", "d e", "f g zz i"])
    src_vocab, tgt_vocab = vocabs()
    summary = check_data(*paths, SPACE, SPACE, src_vocab, tgt_vocab, maximum_source_length=3)
    # target tokens 4 + 2 + 3 = 9; unique links 4 + 0 + 3 = 7; target tokens with a link:
    # line 1 t in {0, 1, 2, 3}, line 3 t in {0, 2} -> 6 aligned, 3 unaligned.
    assert (summary.lines, summary.source_tokens, summary.target_tokens) == (3, 9, 9)
    assert (summary.max_source_tokens, summary.max_target_tokens) == (4, 4)
    assert (summary.links, summary.aligned_target_tokens, summary.empty_alignment_lines) == (
        7,
        6,
        1,
    )
    assert summary.links_per_target_token == pytest.approx(7 / 9)
    assert summary.unaligned_target_tokens_pct == pytest.approx(100 * 3 / 9)
    assert (summary.source_unknown, summary.target_unknown, summary.too_long_lines) == (1, 0, 1)
    text = format_summary(summary)
    assert "3 sentence pairs" in text and "7 links, 0.778 per target token" in text
    assert "33.33% of target tokens unaligned, 1 empty lines" in text
    assert "1 unknown (11.11%)" in text


def test_check_data_without_vocab_or_alignments(tmp_path):
    paths = corpus(tmp_path, align=None)
    summary = check_data(*paths, SPACE, SPACE)
    assert summary.source_unknown is None and summary.links_per_target_token is None
    assert "no vocabulary given" in format_summary(summary)


def test_check_config_data_eval_gold(tmp_path):
    paths = corpus(tmp_path)
    (tmp_path / "dev").mkdir()
    dev = corpus(tmp_path / "dev", source=["a b"], target=["A B"], align=["0-0 1p1 0?1"])
    src_vocab, tgt_vocab = vocabs()
    src_vocab.save(str(tmp_path / "src.vocab"))
    tgt_vocab.save(str(tmp_path / "tgt.vocab"))
    data = {
        "train_features_file": paths[0],
        "train_labels_file": paths[1],
        "train_alignments": paths[2],
        "eval_features_file": dev[0],
        "eval_labels_file": dev[1],
        "eval_alignments": dev[2],
        "source_vocabulary": str(tmp_path / "src.vocab"),
        "target_vocabulary": str(tmp_path / "tgt.vocab"),
    }
    train, gold = check_config_data(build({"model_dir": "m", "data": data}, "test"))
    assert (train.name, train.links, train.sure_links) == ("train", 7, None)
    assert (gold.name, gold.lines, gold.links, gold.sure_links) == ("eval", 1, 3, 1)
    assert train.too_long_lines == 0  # default limits are 100 tokens
    examples = list(read_parallel(*dev, SPACE, SPACE, src_vocab, tgt_vocab, allow_possible=True))
    np.testing.assert_array_equal(examples[0].links, [[0, 0], [1, 0], [1, 1]])
    np.testing.assert_array_equal(examples[0].sure, [True, False, False])


# ------------------------------------------------------------ words -> SentencePiece pieces

SYLLABLES = ["ta", "ko", "ri", "men", "sul", "ba", "ne", "dor", "li", "pa", "gu", "fe"]


@pytest.fixture(scope="module")
def bpe(tmp_path_factory):
    """A real BPE model with 80 pieces: most generated words split into several pieces."""
    tmp = tmp_path_factory.mktemp("bpe")
    rng = random.Random(3)
    words = ["".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4))) for _ in range(150)]
    lines = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 9))) for _ in range(300)]
    (tmp / "corpus.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    model, _ = train_sentencepiece([str(tmp / "corpus.txt")], str(tmp / "bpe"), 80, "bpe")
    return Tokenizer(model), sentencepiece.SentencePieceProcessor(model_file=model), words


def pieces_of_word(word_of_piece, word):
    return [k for k, w in enumerate(word_of_piece) if w == word]


def test_piece_to_word_mapping(bpe):
    tok, sp, words = bpe
    line = " ".join(words[:6])
    pieces, word_of_piece = tok.tokenize_with_words(line)
    assert pieces == sp.encode(line, out_type=str)  # the pieces training sees
    assert len(pieces) > 6  # words really are split
    for k, word in enumerate(words[:6]):
        joined = "".join(pieces[p] for p in pieces_of_word(word_of_piece, k))
        assert joined == "\u2581" + word


def test_projection_is_cartesian_product(bpe):
    tok, _, words = bpe
    _, src_wop = tok.tokenize_with_words(" ".join(words[:4]))
    _, tgt_wop = tok.tokenize_with_words(" ".join(words[10:13]))
    links = [(1, 2), (3, 0), (1, 2)]
    projected = project_links(links, src_wop, tgt_wop)
    expected = set()
    for i, j in links:
        expected |= set(itertools.product(pieces_of_word(src_wop, i), pieces_of_word(tgt_wop, j)))
    assert set(projected) == expected
    n1, n2 = len(pieces_of_word(src_wop, 1)), len(pieces_of_word(tgt_wop, 2))
    assert len(projected) == 2 * n1 * n2 + len(pieces_of_word(src_wop, 3)) * len(
        pieces_of_word(tgt_wop, 0)
    )
    assert n1 * n2 > 1  # a real many-to-many projection


def test_read_parallel_word_level(bpe, tmp_path):
    tok, _, words = bpe
    src, tgt = " ".join(words[:4]), " ".join(words[20:23])
    paths = corpus(tmp_path, source=[src], target=[tgt], align=["1-2 3-0"])
    vocab = Vocab(sorted({p for line in (src, tgt) for p in tok.tokenize(line)}))
    (ex,) = read_parallel(*paths, tok, tok, vocab, vocab, "words")
    _, src_wop = tok.tokenize_with_words(src)
    _, tgt_wop = tok.tokenize_with_words(tgt)
    gold = np.zeros((len(tgt_wop), len(src_wop)), np.float32)
    for i, j in [(1, 2), (3, 0)]:
        for s in pieces_of_word(src_wop, i):
            for t in pieces_of_word(tgt_wop, j):
                gold[t, s] = 1.0
    dense = np.zeros_like(gold)
    dense[ex.links[:, 0], ex.links[:, 1]] = 1.0
    np.testing.assert_array_equal(dense, gold)
    assert ex.source_length == len(src_wop) > 4


def test_word_level_hint_for_subword_indices(bpe, tmp_path):
    tok, _, words = bpe
    longest = sorted(words, key=lambda w: -len(tok.tokenize(w)))
    src = " ".join(longest[:2])
    n_pieces = len(tok.tokenize(src))
    assert n_pieces > 2
    paths = corpus(tmp_path, source=[src], target=[words[5]], align=[f"{n_pieces - 1}-0"])
    vocab = Vocab([])
    with pytest.raises(SeqtrainError) as error:
        list(read_parallel(*paths, tok, tok, vocab, vocab, "words"))
    message = str(error.value)
    assert f"line 1: link '{n_pieces - 1}-0'" in message
    assert f"{n_pieces} tokens and 2 words" in message and "alignment_level: tokens" in message
    # The same file at token level is valid.
    (ex,) = read_parallel(*paths, tok, tok, vocab, vocab, "tokens")
    np.testing.assert_array_equal(ex.links, [[0, n_pieces - 1]])
    assert check_data(*paths, tok, tok).notes == []


def test_note_when_token_level_links_look_like_words(bpe, tmp_path):
    tok, _, words = bpe
    longest = sorted(words, key=lambda w: -len(tok.tokenize(w)))
    src, tgt = " ".join(longest[:3]), " ".join(longest[3:5])
    paths = corpus(tmp_path, source=[src], target=[tgt], align=["0-0 2-1 1-1"])
    summary = check_data(*paths, tok, tok)  # indices fit the 3 / 2 words: probably words
    assert len(summary.notes) == 1 and "alignment_level: words" in summary.notes[0]
    assert "note: no link index reaches" in format_summary(summary)
    assert check_data(*paths, SPACE, SPACE).notes == []  # whitespace tokens are the words
    assert check_data(*paths, tok, tok, alignment_level="words").notes == []


def test_model_with_pieces_across_words(tmp_path):
    (tmp_path / "rep.txt").write_text("ta ko ri\n" * 200 + "men sul\n" * 50, encoding="utf-8")
    sentencepiece.SentencePieceTrainer.train(
        input=str(tmp_path / "rep.txt"),
        model_prefix=str(tmp_path / "rep"),
        vocab_size=30,
        model_type="bpe",
        split_by_whitespace=False,
        bos_id=-1,
        eos_id=-1,
        minloglevel=2,
    )
    tok = Tokenizer(str(tmp_path / "rep.model"))
    assert tok.tokenize("ta ko ri") == ["\u2581ta\u2581ko\u2581ri"]
    paths = corpus(tmp_path, source=["ta ko ri"], target=["A"], align=["0-0"])
    vocab = Vocab([])
    with pytest.raises(SeqtrainError, match=r"src.txt line 1: SentencePiece pieces .* cannot be"):
        list(read_parallel(*paths, tok, SPACE, vocab, vocab, "words"))
