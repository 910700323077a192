"""OpenNMT-tf tokenization settings: the forms, the pieces, word mapping, projection, errors."""

import json

import numpy as np
import pytest
import yaml

from seqtrain import alignment, tokenizers, vocab
from seqtrain.config import TokenizationConfig, build
from seqtrain.errors import SeqtrainError

pytest.importorskip("pyonmttok")

AGGRESSIVE = {"mode": "aggressive", "joiner_annotate": True}


def onmt(**params):
    return tokenizers.make_tokenizer(TokenizationConfig("OpenNMTTokenizer", params))


def test_config_forms(tmp_path):
    """A mapping with type, OpenNMT-tf's legacy mapping without type, a YAML path, JSON."""
    data = build(
        {
            "data": {
                "source_tokenization": {"type": "OpenNMTTokenizer", "params": AGGRESSIVE},
                "target_tokenization": AGGRESSIVE,  # legacy: params of an OpenNMTTokenizer
            }
        },
        "test.yml",
    ).data
    assert data.source_tokenization == TokenizationConfig("OpenNMTTokenizer", AGGRESSIVE)
    assert data.target_tokenization == data.source_tokenization
    path = tmp_path / "tok.yml"
    path.write_text(yaml.safe_dump({"type": "OpenNMTTokenizer", "params": AGGRESSIVE}))
    from_file = tokenizers.make_tokenizer(str(path))
    from_json = tokenizers.make_tokenizer(json.dumps(AGGRESSIVE))
    for tok in (from_file, from_json):
        assert tok.kind == "opennmt" and tok.params == {**AGGRESSIVE, "mode": "aggressive"}
        assert tok.tokenize("Hi, Bob!") == ["Hi", "￭,", "Bob", "￭!"]
    assert from_file.identity() == from_json.identity() == onmt(**AGGRESSIVE).identity()
    assert onmt(mode="aggressive").identity() != from_file.identity()  # keys the data cache
    # OpenNMT-tf's default mode is conservative.
    assert onmt().params["mode"] == "conservative"
    assert onmt().tokenize("Hi, Bob!") == ["Hi", ",", "Bob", "!"]
    assert tokenizers.make_tokenizer(None).kind == "space"
    space = tokenizers.make_tokenizer(TokenizationConfig("SpaceTokenizer", {}))
    assert space.kind == "space" and space.tokenize("a  b") == ["a", "b"]


def test_sentencepiece_forms(tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("".join(f"the house number {i} is red\n" for i in range(50)))
    model, _ = vocab.train_sentencepiece([str(text)], str(tmp_path / "sp"), vocab_size=25)
    by_path = tokenizers.make_tokenizer(model)  # seqtrain's original form
    typed = tokenizers.make_tokenizer(
        TokenizationConfig("SentencePieceTokenizer", {"model": model})
    )
    assert by_path.kind == typed.kind == "sentencepiece"
    assert by_path.identity() == typed.identity()
    assert typed.tokenize("the red house") == by_path.tokenize("the red house")
    with pytest.raises(SeqtrainError, match="subword sampling"):
        tokenizers.make_tokenizer(
            TokenizationConfig("SentencePieceTokenizer", {"model": model, "nbest_size": 64})
        )


def test_aggressive_joiner_words_and_detokenization():
    tok = onmt(**AGGRESSIVE)
    pieces, words = tok.tokenize_with_words("Don't go!")
    assert pieces == ["Don", "￭'￭", "t", "go", "￭!"]
    assert words == [0, 0, 0, 1, 1]
    pieces, words = tok.tokenize_with_words("It's 3.5km-long.")
    assert pieces == ["It", "￭'￭", "s", "3", "￭.￭", "5￭", "km", "￭-￭", "long", "￭."]
    assert words == [0, 0, 0, 1, 1, 1, 1, 1, 1, 1]
    # Output side: the words of the detokenized translation.
    assert tok.detokenize(["Geh", "nicht", "￭!"]) == "Geh nicht!"
    assert tok.word_of_pieces(["Geh", "nicht", "￭!"]) == [0, 1, 1]
    assert tok.word_of_pieces(["<unk>", "￭,", "x"]) == [0, 0, 1]
    # Case markup tokens have no characters: they belong to the next piece's word.
    cased = onmt(mode="aggressive", joiner_annotate=True, case_markup=True)
    pieces, words = cased.tokenize_with_words("Hello WORLD")
    assert pieces[0].startswith("｟mrk_case_modifier") and len(pieces) == 5
    assert words == [0, 0, 1, 1, 1]


def test_pieces_across_words_cannot_take_word_links():
    with pytest.raises(ValueError, match="spans two words"):
        onmt(mode="none").tokenize_with_words("a b")


def test_character_tokenizer():
    tok = tokenizers.make_tokenizer(TokenizationConfig("CharacterTokenizer", {}))
    assert tok.tokenize("ab c") == ["a", "b", "▁", "c"]
    assert tok.detokenize(["a", "b", "▁", "c"]) == "ab c"
    assert tok.tokenize_with_words("ab  c d") == (
        ["a", "b", "▁", "▁", "c", "▁", "d"],
        [0, 0, 1, 1, 1, 2, 2],
    )


def test_word_links_projected_on_aggressive_joiner_pieces(tmp_path):
    """Hand-made: the gold (t, s) rows of word links after OpenNMT Tokenizer segmentation."""
    (tmp_path / "src").write_text("Hi, Bob!\nDon't go!\n", encoding="utf-8")
    (tmp_path / "tgt").write_text("Salut Bob !\nGeh nicht!\n", encoding="utf-8")
    (tmp_path / "align").write_text("0-0 1-1 1-2\n0-1 1-0\n", encoding="utf-8")
    tok = onmt(**AGGRESSIVE)
    examples = list(
        alignment.read_parallel(
            *(str(tmp_path / name) for name in ("src", "tgt", "align")),
            tok, tok, None, None, "words", check_only=True,
        )  # fmt: skip
    )
    # Line 1: Hi ￭, Bob ￭! (words 0 0 1 1) / Salut Bob ! (words 0 1 2).
    # 0-0: s{0,1} x t{0}; 1-1: s{2,3} x t{1}; 1-2: s{2,3} x t{2}.
    np.testing.assert_array_equal(
        examples[0].links, [[0, 0], [0, 1], [1, 2], [1, 3], [2, 2], [2, 3]]
    )
    # Line 2: Don ￭'￭ t go ￭! (words 0 0 0 1 1) / Geh nicht ￭! (words 0 1 1).
    # 0-1: s{0,1,2} x t{1,2}; 1-0: s{3,4} x t{0}.
    np.testing.assert_array_equal(
        examples[1].links,
        [[0, 3], [0, 4], [1, 0], [1, 1], [1, 2], [2, 0], [2, 1], [2, 2]],
    )
    assert (examples[1].source_length, examples[1].target_length) == (5, 3)


def test_word_index_out_of_range_names_the_line(tmp_path):
    (tmp_path / "src").write_text("Hi, Bob!\n", encoding="utf-8")
    (tmp_path / "tgt").write_text("Salut Bob !\n", encoding="utf-8")
    (tmp_path / "align").write_text("2-0\n", encoding="utf-8")  # 2 words only, 4 pieces
    tok = onmt(**AGGRESSIVE)
    paths = [str(tmp_path / name) for name in ("src", "tgt", "align")]
    with pytest.raises(SeqtrainError, match=r"align line 1: link '2-0': source index 2"):
        list(alignment.read_parallel(*paths, tok, tok, None, None, "words", check_only=True))


@pytest.mark.parametrize(
    "params, message",
    [
        ({"mode": "agg"}, "invalid tokenization mode: agg"),
        (
            {"mode": "aggressive", "joiner_anotate": True},
            r"unknown option\(s\) \['joiner_anotate'\]",
        ),
        ({"bpe_dropout": 0.1}, "params.bpe_dropout asks for subword sampling"),
        ({"sp_nbest_size": 8}, "params.sp_nbest_size asks for subword sampling"),
        ({"bpe_model_path": "missing.bpe"}, "params.bpe_model_path = 'missing.bpe' does not exist"),
        ({"case_feature": True}, "case_feature is not supported"),
    ],
)
def test_bad_opennmt_params(params, message):
    with pytest.raises(SeqtrainError, match=message) as error:
        tokenizers.make_tokenizer(TokenizationConfig("OpenNMTTokenizer", params), "data.x")
    assert str(error.value).startswith("data.x") and "\n" not in str(error.value)


def test_bad_settings(tmp_path):
    with pytest.raises(SeqtrainError, match="data.source_tokenization.type = 'Moses'"):
        build({"data": {"source_tokenization": {"type": "Moses"}}}, "x.yml")
    with pytest.raises(SeqtrainError, match="SpaceTokenizer takes no params"):
        tokenizers.make_tokenizer(TokenizationConfig("SpaceTokenizer", {"x": 1}))
    with pytest.raises(SeqtrainError, match="invalid JSON"):
        tokenizers.make_tokenizer("{mode: aggressive")
    with pytest.raises(SeqtrainError, match="'nope.yml' does not exist"):
        tokenizers.make_tokenizer("nope.yml")
    bad = tmp_path / "bad.yml"
    bad.write_text("type: OpenNMTTokenizer\nparam: {mode: aggressive}\n")
    with pytest.raises(SeqtrainError, match="unknown key 'tokenization.param'"):
        tokenizers.make_tokenizer(str(bad))


def test_cli_rejects_bad_tokenizer_before_writing(tmp_path):
    from conftest import make_corpus, run_cli, tiny_config, write_config

    paths = make_corpus(str(tmp_path / "data"), lines=10)
    data = {"source_tokenization": {"type": "OpenNMTTokenizer", "params": {"mode": "agressive"}}}
    config = tiny_config(paths, tmp_path / "run", data=data)
    proc = run_cli("train", "--config", write_config(tmp_path / "run.yml", config))
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "data.source_tokenization: pyonmttok rejects params" in proc.stderr
    assert "invalid tokenization mode: agressive" in proc.stderr
    assert not (tmp_path / "run").exists()


def test_export_refuses_tokenizers_without_a_tensorflow_op(tmp_path):
    from conftest import make_corpus, tiny_config

    from seqtrain import export

    paths = make_corpus(str(tmp_path / "data"), lines=10)
    data = {"target_tokenization": {"type": "OpenNMTTokenizer", "params": AGGRESSIVE}}
    config = build(tiny_config(paths, tmp_path / "run", data=data), "run.yml")
    with pytest.raises(SeqtrainError, match="export supports whitespace and SentencePiece"):
        export.TranslateModule(config, model=None)
