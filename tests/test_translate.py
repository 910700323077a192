"""seqtrain.translate: output formats, word merging, the Translator and translate_command."""

import dataclasses
import math
import os
import re

import numpy as np
import pytest
import tensorflow as tf
from conftest import TOY, write_lines

from seqtrain import config as cfg
from seqtrain import decoding, translate
from seqtrain.checkpoints import build_model
from seqtrain.errors import SeqtrainError
from seqtrain.vocab import build_vocab, read_text_lines

LINES = 12
EOS = 2


def read(path):
    return list(read_text_lines(path))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny untrained (seeded) model checkpoint on the first toy dev lines: (config, files)."""
    root = str(tmp_path_factory.mktemp("run"))
    files = {}
    for name, source in (("src", "dev.src"), ("tgt", "dev.tgt")):
        files[name] = os.path.join(root, f"dev.{name}")
        write_lines(files[name], read(os.path.join(TOY, source))[:LINES])
    build_vocab([files["src"]], os.path.join(root, "src.vocab"))
    build_vocab([files["tgt"]], os.path.join(root, "tgt.vocab"))
    config = cfg.build({
        "model_dir": os.path.join(root, "model"),
        "data": {"source_vocabulary": os.path.join(root, "src.vocab"),
                 "target_vocabulary": os.path.join(root, "tgt.vocab")},
        "model": {"num_layers": 1, "num_units": 16, "num_heads": 2, "ffn_inner_dim": 32},
        "params": {"beam_width": 2, "maximum_decoding_length": 6},
        "infer": {"batch_size": 5},
    }, "test")  # fmt: skip
    tf.train.Checkpoint(model=build_model(config)).save(os.path.join(config.model_dir, "ckpt"))
    return config, files


# ---------------------------------------------------------------- pure functions


def test_target_word_of_piece():
    assert translate.target_word_of_piece(["a", "b", "c"], False) == [0, 1, 2]
    pieces = ["▁das", "▁Hau", "s", "▁", "ist", "▁gut"]
    assert translate.target_word_of_piece(pieces, True) == [0, 1, 1, 2, 2, 3]
    # A first piece without "▁" still starts word 0.
    assert translate.target_word_of_piece(["s", "▁a", "b"], True) == [0, 1, 1]


def test_merge_to_words_hand_made():
    # source "the house is": ▁the ▁hou se ▁is; target "das Haus ist": ▁das ▁Hau s ▁ist
    source_words, target_words = [0, 1, 1, 2], [0, 1, 1, 2]
    links = [(0, 0), (1, 1), (2, 2), (2, 1), (3, 3)]
    assert translate.merge_to_words(links, source_words, target_words) == {(0, 0), (1, 1), (2, 2)}
    # Two source pieces of one word linked to two target words: both word links survive.
    assert translate.merge_to_words([(1, 0), (2, 3)], [0, 1, 1], [0, 0, 1, 2]) == {(1, 0), (1, 2)}
    assert translate.merge_to_words([], [0], [0]) == set()


def test_output_formats():
    assert translate.format_links({(2, 0), (0, 1), (1, 1), (3, 0)}) == "2-0 3-0 0-1 1-1"
    assert translate.format_line("a b") == "a b"
    assert translate.format_line("a b", -1.5) == "-1.500000 ||| a b"
    assert translate.format_line("a b", -1.5, "0-0 1-1") == "-1.500000 ||| a b ||| 0-0 1-1"
    assert translate.format_line("a", None, "0-0") == "a ||| 0-0"
    soft = np.array([[0.25, 0.75], [1.0, 0.0]])
    assert translate.format_soft(soft) == "0.250000 0.750000 ; 1.000000 0.000000"


# ---------------------------------------------------------------- Translator (copy model)


class CopyModel:
    """Incremental-decoding stand-in: emits the source ids then </s> (logit 0 vs -5 for every
    other id) and attends to source position length-1-t at step t (a reversed diagonal)."""

    incremental_alignment = True  # OpenNMT-tf's rows: the search's own steps

    vocab = 30

    def encode(self, source_ids, source_length, training=False):
        return source_ids, tf.sequence_mask(source_length, tf.shape(source_ids)[1])

    def initial_cache(self, memory, memory_mask):
        return {"ids": memory, "mask": memory_mask}

    def cache_shape_invariants(self, cache):
        return tf.nest.map_structure(lambda x: tf.TensorShape([None] * x.shape.rank), cache)

    def decode_step(self, ids, step, cache):
        width = tf.shape(cache["ids"])[1]
        length = tf.reduce_sum(tf.cast(cache["mask"], tf.int32), axis=1)
        source = tf.gather(cache["ids"], tf.minimum(step, width - 1), axis=1)
        token = tf.where(step < length, source, EOS)
        logits = tf.one_hot(token, self.vocab, on_value=0.0, off_value=-5.0)
        attention = tf.one_hot(tf.maximum(length - 1 - step, 0), width)
        return logits, attention, cache


@pytest.mark.parametrize("beam_width", [1, 3])
def test_translator_restores_input_order(beam_width):
    inputs = [[4, 5, 6, 7, 8], [9], [10, 11, 12], [], [13, 14, 15, 16], [17, 18]]
    params = cfg.ParamsConfig(beam_width=beam_width, length_penalty=0.6, maximum_decoding_length=9)
    translator = translate.Translator(CopyModel(), params, batch_size=2)
    results = translator(inputs)
    token_log_prob = -math.log(1.0 + (CopyModel.vocab - 1) * math.exp(-5.0))
    for source, hyps in zip(inputs, results):
        (hyp,) = hyps
        assert hyp.ids.tolist() == source
        n = len(source)
        assert hyp.attention.shape == (n, n)
        assert decoding.hard_alignments(hyp.attention, n, n) == [(n - 1 - t, t) for t in range(n)]
        if not n:  # empty input: not decoded
            assert hyp.score == 0.0
            continue
        expected = (n + 1) * token_log_prob  # </s> included
        if beam_width > 1:
            expected /= ((5.0 + n + 1) / 6.0) ** 0.6
        assert hyp.score == pytest.approx(expected, rel=1e-5)


def test_translator_n_best_bound():
    with pytest.raises(SeqtrainError, match="n_best"):
        translate.Translator(CopyModel(), cfg.ParamsConfig(beam_width=2), 4, n_best=3)


# ---------------------------------------------------------------- translate_command


def test_translate_formats(run, tmp_path):
    config, files = run
    sources = read(files["src"])
    out = str(tmp_path / "out.txt")
    argmax = dataclasses.replace(
        config, params=dataclasses.replace(config.params, alignment_extraction="argmax")
    )
    mutual = str(tmp_path / "mutual.txt")
    for cfg_, path in ((argmax, out), (config, mutual)):  # config: the default, intersection
        translate.translate_command(
            cfg_, files["src"], path, with_alignments="hard", with_scores=True, n_best=2
        )
    lines = read(out)
    assert len(lines) == 2 * len(sources)
    pattern = re.compile(r"(-?\d+\.\d{6}) \|\|\| (.*) \|\|\| ((?:\d+-\d+(?: \d+-\d+)*)?)")
    for k, (line, line_mutual) in enumerate(zip(lines, read(mutual))):
        match = pattern.fullmatch(line)
        assert match, line
        tokens = match.group(2).split()
        links = [tuple(map(int, pair.split("-"))) for pair in match.group(3).split()]
        source_length = len(sources[k // 2].split())
        assert [t for _, t in links] == list(range(len(tokens)))  # one link per target token
        assert all(0 <= s < source_length for s, _ in links)
        # intersection: the same line with a subset of those links, each source used once.
        match = pattern.fullmatch(line_mutual)
        assert match and match.group(2) == " ".join(tokens), line_mutual
        kept = [tuple(map(int, pair.split("-"))) for pair in match.group(3).split()]
        assert set(kept) <= set(links) and len({s for s, _ in kept}) == len(kept)
    for k in range(0, len(lines), 2):  # best first
        assert float(lines[k].split(" |||")[0]) >= float(lines[k + 1].split(" |||")[0])
    # The plain 1-best output is the first of each n-best pair, without score and links.
    plain = str(tmp_path / "plain.txt")
    translate.translate_command(config, files["src"], plain)
    assert read(plain) == [line.split(" ||| ")[1] for line in lines[::2]]


def test_translate_soft_alignments(run, tmp_path):
    config, files = run
    out = str(tmp_path / "soft.txt")
    translate.translate_command(config, files["src"], out, with_alignments="soft")
    for source, line in zip(read(files["src"]), read(out)):
        text, matrix = line.split(" ||| ")
        rows = [list(map(float, row.split())) for row in matrix.split(" ; ")] if matrix else []
        assert len(rows) == len(text.split())
        for row in rows:
            assert len(row) == len(source.split())
            assert sum(row) == pytest.approx(1.0, abs=1e-4)  # real source columns only


def test_translate_without_checkpoint_is_a_user_error(tmp_path, run):
    config, files = run
    empty = dataclasses.replace(config, model_dir=str(tmp_path / "none"))
    with pytest.raises(SeqtrainError, match="no checkpoint"):
        translate.translate_command(empty, files["src"])
