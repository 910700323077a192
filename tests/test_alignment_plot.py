"""Alignment pictures: the data behind them, the PNGs, plot-alignment, TensorBoard images."""

import glob
import os
import struct
import sys

import numpy as np
import pytest
import sentencepiece
import tensorflow as tf
from conftest import TOY, make_corpus, tiny_config, write_config, write_lines

from seqtrain import alignment_plot, cli, decoding
from seqtrain import config as cfg
from seqtrain.alignment_plot import AlignmentPicture
from seqtrain.checkpoints import build_model
from seqtrain.errors import SeqtrainError
from seqtrain.export import restore_model
from seqtrain.vocab import Vocab, read_text_lines, train_sentencepiece

DEV_LINES = 6  # the pairs drawn in these tests (the toy dev lines have 2 to 9 words)


def png_header_size(path):
    """(width, height) read from the PNG signature and IHDR chunk."""
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR"
    return struct.unpack(">II", head[16:24])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model trained 6 steps by `seqtrain train`, evaluating (and drawing) at 3 and 6."""
    root = tmp_path_factory.mktemp("plot")
    paths = make_corpus(str(root / "data"))
    raw = tiny_config(
        paths,
        root / "model",
        eval={"steps": 3, "scorers": [], "alignment_images": 2, "batch_size": 8},
    )
    raw["data"].update(
        eval_features_file=paths["dev.src"],
        eval_labels_file=paths["dev.tgt"],
        eval_alignments=paths["dev.align"],
    )
    path = write_config(root / "run.yml", raw)
    assert cli.main(["train", "--config", path]) == 0
    return cfg.load_config([path]), path, paths


def forced_pair(model, config, source, target):
    """Forced-decoding attention [n, m] of one pair of token lists alone (no padding) and its
    links (s, t) under the default params.alignment_extraction (intersection): s is row t's
    argmax and t is column s's argmax."""
    source_ids = Vocab.load(config.data.source_vocabulary).ids(source)
    target_ids = Vocab.load(config.data.target_vocabulary).ids(target)
    batch = {
        "source_ids": tf.constant([source_ids]),
        "source_length": tf.constant([len(source_ids)]),
        "target_in": tf.constant([[1, *target_ids]]),
        "target_out": tf.constant([[*target_ids, 2]]),
        "target_length": tf.constant([len(target_ids) + 1]),
    }
    _, attention = decoding.forced_decoding(model, batch)
    matrix = attention.numpy()[0, : len(target_ids)]
    assert config.params.alignment_extraction == "intersection"
    best_source, best_target = matrix.argmax(axis=1), matrix.argmax(axis=0)
    return matrix, {(int(s), t) for t, s in enumerate(best_source) if best_target[s] == t}


def test_picture_data_is_the_models_attention_and_links(trained):
    config, _, paths = trained
    model, _ = restore_model(config)
    sources = list(read_text_lines(paths["dev.src"]))[:DEV_LINES]
    targets = list(read_text_lines(paths["dev.tgt"]))[:DEV_LINES]
    gold_lines = list(read_text_lines(paths["dev.align"]))[:DEV_LINES]
    gold = [({tuple(map(int, p.split("-"))) for p in g.split()}, set()) for g in gold_lines]
    assert len({len(s.split()) for s in sources}) > 1  # the batch pads some pairs
    # batch_size 4: two batches, the second one partial.
    pictures = alignment_plot.alignment_pictures(
        config, model, list(zip(sources, targets)), gold, batch_size=4
    )
    assert len(pictures) == DEV_LINES
    for picture, source, target, (sure, _) in zip(pictures, sources, targets, gold):
        matrix, links = forced_pair(model, config, source.split(), target.split())
        assert picture.matrix.shape == (len(target.split()), len(source.split()))
        np.testing.assert_allclose(picture.matrix, matrix, atol=1e-5)
        np.testing.assert_allclose(picture.matrix.sum(axis=1), 1.0, atol=1e-5)  # no pad column
        assert picture.source_labels == source.split()
        assert picture.target_labels == target.split()
        assert picture.links == links
        marks = picture.marks()
        assert set(marks["hit"]) == links & sure
        assert set(marks["false link"]) == links - sure
        assert set(marks["miss"]) == sure - links
        assert marks["possible, not linked"] == []


def test_merge_matrix_to_words_hand_made():
    # Source pieces -> words [0, 0, 1]; target pieces -> words [0, 1, 1].
    matrix = np.array([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8], [0.6, 0.2, 0.2]])
    merged = alignment_plot.merge_matrix(matrix, [0, 0, 1], [0, 1, 1])
    # Columns summed per source word; rows averaged per target word.
    expected = np.array([[0.8, 0.2], [(0.2 + 0.8) / 2, (0.8 + 0.2) / 2]])
    np.testing.assert_allclose(merged, expected, atol=1e-6)
    # A word count larger than the pieces cover: the missing word's column is zero.
    wide = alignment_plot.merge_matrix(matrix, [0, 0, 1], [0, 1, 1], source_words=3)
    np.testing.assert_allclose(wide, np.c_[expected, [0.0, 0.0]], atol=1e-6)


def test_word_level_picture_merges_matrix_and_links(monkeypatch):
    """At words level a picture merges its piece attention and links with the word maps."""
    attention = np.zeros((4, 3), np.float32)  # 3 target pieces + padding row, 3 source pieces
    attention[0] = [0.7, 0.2, 0.1]  # piece 0 (word 0) -> source piece 0 (word 0)
    attention[1] = [0.1, 0.1, 0.8]  # piece 1 (word 1) -> source piece 2 (word 1)
    attention[2] = [0.2, 0.5, 0.3]  # piece 2 (word 1) -> source piece 1 (word 0)
    source_side = (["▁ab", "c", "▁d"], [0, 0, 1])
    target_side = (["▁x", "▁y", "z"], [0, 1, 1])
    picture = alignment_plot._picture(attention, source_side, target_side, ("abc d", "x yz"), True)
    assert picture.source_labels == ["abc", "d"] and picture.target_labels == ["x", "yz"]
    np.testing.assert_allclose(picture.matrix, [[0.9, 0.1], [0.45, 0.55]], atol=1e-6)
    assert picture.links == {(0, 0), (1, 1), (0, 1)}


def test_word_level_pictures_with_sentencepiece(tmp_path):
    """Words level: the piece attention of each pair, merged to the raw words."""
    sp_model, sp_vocab = train_sentencepiece(
        [os.path.join(TOY, "dev.src"), os.path.join(TOY, "dev.tgt")], str(tmp_path / "sp"), 150
    )
    shared = {"source_vocabulary": sp_vocab, "target_vocabulary": sp_vocab}
    raw = {
        "model_dir": str(tmp_path / "model"),
        "data": {**shared, "source_tokenization": sp_model, "target_tokenization": sp_model,
                 "alignment_level": "words"},
        "model": {"num_layers": 1, "num_units": 16, "num_heads": 2, "ffn_inner_dim": 32},
    }  # fmt: skip
    config = cfg.build(raw, "test")
    model = build_model(config)  # untrained (seeded): the data path does not need training
    sp = sentencepiece.SentencePieceProcessor(model_file=sp_model)
    sources = list(read_text_lines(os.path.join(TOY, "dev.src")))[:3]
    targets = list(read_text_lines(os.path.join(TOY, "dev.tgt")))[:3]
    pairs = list(zip(sources, targets))
    pictures = alignment_plot.alignment_pictures(config, model, pairs)
    split_words = 0
    for picture, (source, target) in zip(pictures, pairs):
        pieces = [sp.encode(line, out_type=str) for line in (source, target)]
        # "▁" opens a word: the word of each piece, counted here apart from the tokenizer.
        words = [list(np.cumsum([p.startswith("▁") for p in side]) - 1) for side in pieces]
        split_words += len(pieces[0]) - len(source.split()) + len(pieces[1]) - len(target.split())
        matrix, links = forced_pair(model, config, *pieces)
        assert picture.source_labels == source.split() and picture.target_labels == target.split()
        np.testing.assert_allclose(
            picture.matrix, alignment_plot.merge_matrix(matrix, *words), atol=1e-5
        )
        assert picture.links == {(words[0][s], words[1][t]) for s, t in links}
    assert split_words > 0  # some words are several pieces: the merge is not the identity


def test_marks_classify_gold_links():
    picture = AlignmentPicture(
        np.zeros((3, 3)), ["a", "b", "c"], ["x", "y", "z"], links={(0, 0), (1, 1), (2, 1)}
    )
    assert picture.marks() == {"model link": [(0, 0), (1, 1), (2, 1)]}
    picture.sure, picture.possible = {(0, 0), (2, 2)}, {(1, 1), (0, 2)}
    assert picture.marks() == {
        "hit": [(0, 0), (1, 1)],  # sure and possible links the model makes
        "false link": [(2, 1)],
        "miss": [(2, 2)],  # a sure link the model does not make
        "possible, not linked": [(0, 2)],
    }


def test_plot_alignment_command_writes_pngs_sized_by_the_lengths(trained, tmp_path, capsys):
    _, path, paths = trained
    out = tmp_path / "pictures"
    status = cli.main(
        ["plot-alignment", "--config", path, "--first", "3", "--output_dir", str(out)]
    )
    assert status == 0 and capsys.readouterr().out == f"3 pictures in {out}\n"
    assert sorted(os.listdir(out)) == ["0001.png", "0002.png", "0003.png"]  # dev set by default
    sources = list(read_text_lines(paths["dev.src"]))
    for k in range(3):
        width, height = png_header_size(out / f"{k + 1:04d}.png")
        columns, rows = len(sources[k].split()), len(sources[k].split())  # same length
        # 0.3 inch (30 px) per cell plus labels, colorbar and legend; at least 400 x 300.
        assert max(400, 30 * columns) <= width <= 30 * columns + 600
        assert max(300, 30 * rows) <= height <= 30 * rows + 600
    # Other files: their own gold, the first N lines only.
    write_lines(tmp_path / "bad.align", ["0-0", "0-99"])
    status = cli.main([
        "plot-alignment", "--config", path, "--features_file", paths["dev.src"],
        "--labels_file", paths["dev.tgt"], "--alignments", str(tmp_path / "bad.align"),
        "--first", "2", "--output_dir", str(tmp_path / "bad"),
    ])  # fmt: skip
    stderr = capsys.readouterr().err
    n = len(sources[1].split())
    assert status == 2 and f"line 2: 0-99 is out of range for {n} source and {n} target" in stderr
    assert not (tmp_path / "bad").exists()  # checked before anything is drawn


def test_tensorboard_images_at_each_evaluation(trained):
    config, _, _ = trained
    images = {}
    for event_file in glob.glob(os.path.join(config.model_dir, "events.out.tfevents.*")):
        for record in tf.data.TFRecordDataset(event_file):
            event = tf.compat.v1.Event.FromString(record.numpy())
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name == "images":
                    images[(event.step, value.tag)] = value.tensor.string_val
    tags = ["alignment/dev_line_0001", "alignment/dev_line_0002"]  # eval.alignment_images: 2
    assert sorted(images) == [(step, tag) for step in (3, 6) for tag in tags]
    for width, height, png in images.values():
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        assert struct.unpack(">II", png[16:24]) == (int(width), int(height))


def test_without_matplotlib_the_commands_say_how_to_install(trained, tmp_path, monkeypatch):
    _, path, _ = trained
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(SeqtrainError, match=r'pip install -e "\.\[plot\]"'):
        alignment_plot.render(AlignmentPicture(np.zeros((1, 1)), ["a"], ["x"], set()))
    out = str(tmp_path / "none")
    assert cli.main(["plot-alignment", "--config", path, "--output_dir", out]) == 2
    assert not os.path.exists(out)
