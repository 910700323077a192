"""Word-level output alignments, by hand: source AND target word indices of merged links, in
``translate``'s output line and in the evaluator's AER with sure and possible gold links.

A character-level SentencePiece model makes the pieces predictable: a word "ab" is the pieces
``▁ a b``, so piece k of a line belongs to the word opened by the last ``▁`` before it. The
source and target sides have different numbers of words and pieces per word, so swapping the two
indices of a link, or mapping target pieces with the source map, changes the expected output.
"""

import numpy as np
import pytest
import sentencepiece
import tensorflow as tf
from conftest import write_lines

from seqtrain import config as cfg
from seqtrain import evaluate, translate
from seqtrain.checkpoints import build_model
from seqtrain.vocab import Tokenizer, Vocab

PIECES = ["▁", "a", "b", "c", "d", "e"]


@pytest.fixture(scope="module")
def chars(tmp_path_factory):
    """(SentencePiece model path, vocabulary path) of a character model over a..e."""
    tmp = tmp_path_factory.mktemp("chars")
    write_lines(tmp / "corpus.txt", ["ab c de", "ba ed c", "abc dd ee", "cab bad"])
    sentencepiece.SentencePieceTrainer.train(
        input=str(tmp / "corpus.txt"),
        model_prefix=str(tmp / "chars"),
        model_type="char",
        vocab_size=8,
        unk_id=0,
        bos_id=-1,
        eos_id=-1,
        pad_id=-1,
        minloglevel=2,
    )
    Vocab(PIECES).save(str(tmp / "chars.vocab"))
    return str(tmp / "chars.model"), str(tmp / "chars.vocab")


def one_hot_rows(columns, width):
    """[len(columns), width] attention whose row t peaks (0.7) at source piece columns[t]."""
    rows = np.full((len(columns), width), 0.3 / (width - 1), np.float32)
    rows[np.arange(len(columns)), columns] = 0.7
    return rows


def test_translate_line_merges_pieces_to_word_links(chars):
    model_path, vocab_path = chars
    tokenizer, vocab = Tokenizer(model_path), Vocab.load(vocab_path)
    # Source "ab c de": pieces ▁ a b | ▁ c | ▁ d e -> words 0 0 0 1 1 2 2 2 (as translate does).
    pieces, source_words = translate.tokenize_lines(["ab c de"], tokenizer, True, "in.txt")
    assert pieces == [["▁", "a", "b", "▁", "c", "▁", "d", "e"]]
    assert source_words == [[0, 0, 0, 1, 1, 2, 2, 2]]
    # Output "ed ba": pieces ▁ e d | ▁ b a -> target words 0 0 0 1 1 1. Each target piece's most
    # attended source piece, and the word link (source word, target word) it makes:
    #   t0 -> s5 "▁" of "de" (2, 0)   t1 -> s6 "d" (2, 0)   t2 -> s0 "▁" of "ab" (0, 0)
    #   t3 -> s1 "a" (0, 1)           t4 -> s2 "b" (0, 1)   t5 -> s4 "c" (1, 1)
    ids = vocab.ids(["▁", "e", "d", "▁", "b", "a"])
    hyp = translate.Hypothesis(ids, -1.25, one_hot_rows([5, 6, 0, 1, 2, 4], 8))
    target = translate.TargetText(tokenizer, vocab)
    line = translate._render(hyp, target, "hard", True, source_words[0])
    # Pharaoh source-target, sorted by target word then source word.
    assert line == "-1.250000 ||| ed ba ||| 0-0 2-0 0-1 1-1"
    # Without word merging (alignment_level: tokens) the same rows give piece links.
    assert translate._render(hyp, target, "hard", False) == "ed ba ||| 5-0 6-1 0-2 1-3 2-4 4-5"


def test_evaluator_word_level_aer_with_possible_links(chars, tmp_path, monkeypatch):
    """The evaluator's AER: gold read with sure (i-j) and possible (ipj) links, forced-decoding
    rows merged to words, counts against a hand count."""
    model_path, vocab_path = chars
    write_lines(tmp_path / "dev.src", ["ab c de", "c ab"])
    write_lines(tmp_path / "dev.tgt", ["ed ba", "ba"])
    write_lines(tmp_path / "dev.align", ["2-0 1-1 0p1 1p0", "1-0 0p0"])
    config = cfg.build({
        "model_dir": str(tmp_path / "model"),
        "data": {
            "source_vocabulary": vocab_path, "target_vocabulary": vocab_path,
            "source_tokenization": model_path, "target_tokenization": model_path,
            "eval_features_file": str(tmp_path / "dev.src"),
            "eval_labels_file": str(tmp_path / "dev.tgt"),
            "eval_alignments": str(tmp_path / "dev.align"), "alignment_level": "words",
        },
        "model": {"num_layers": 1, "num_units": 8, "num_heads": 2, "ffn_inner_dim": 8},
        "eval": {"scorers": [], "batch_size": 8, "length_bucket_width": 0},  # one batch
    }, "test")  # fmt: skip
    eval_set = evaluate.EvalSet.load(config)
    assert eval_set.source_words == [[0, 0, 0, 1, 1, 2, 2, 2], [0, 0, 1, 1, 1]]
    assert eval_set.target_words == [[0, 0, 0, 1, 1, 1], [0, 0, 0]]
    # Line 1 as in the translate test: word links {(2,0), (0,0), (0,1), (1,1)}.
    # Line 2 "c ab" (▁ c | ▁ a b) -> "ba" (▁ b a): t0 -> s0 (0, 0), t1 -> s3 (1, 0), t2 -> s4
    # (1, 0): word links {(0,0), (1,0)}.
    attention = np.zeros([2, 7, 8], np.float32)  # [B, T = 6 pieces + </s> step, S = 8 pieces]
    attention[0, :6] = one_hot_rows([5, 6, 0, 1, 2, 4], 8)
    attention[1, :3, :5] = one_hot_rows([0, 3, 4], 5)
    evaluator = evaluate.Evaluator(config, build_model(config), eval_set)

    def forward(source_ids, source_length, target_in, target_out, target_length):
        assert source_length.numpy().tolist() == [8, 5]
        assert target_length.numpy().tolist() == [7, 4]  # pieces + </s>
        return tf.constant(2.0), tf.constant(4.0), tf.constant(attention)

    monkeypatch.setattr(evaluator, "_forward", forward)
    metrics = evaluator.evaluate()
    # Gold: line 1 S = {(2,0), (1,1)}, P = S + {(0,1), (1,0)}; line 2 S = {(1,0)}, P = S + {(0,0)}.
    # |A| = 4 + 2 = 6, |S| = 2 + 1 = 3; A∩S = {(2,0), (1,1)} + {(1,0)} = 3;
    # A∩P = {(2,0), (1,1), (0,1)} + {(0,0), (1,0)} = 5 ((0,0) of line 1 is not in P).
    assert metrics["precision"] == pytest.approx(100 * 5 / 6, abs=1e-9)
    assert metrics["recall"] == pytest.approx(100.0, abs=1e-9)
    assert metrics["aer"] == pytest.approx(100 * (1 - (3 + 5) / (6 + 3)), abs=1e-9)
    assert metrics["loss"] == 0.5
