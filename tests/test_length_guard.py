"""The length guard: params.maximum_decoding_length_factor/offset, per sentence, in the searches,
``seqtrain translate`` (a warning counts the cut outputs) and evaluation (metric ``cut``)."""

import dataclasses
import logging
import os

import numpy as np
import pytest
import tensorflow as tf
from conftest import TOY, make_corpus, tiny_config, write_config, write_lines

from seqtrain import cli
from seqtrain import config as cfg
from seqtrain.checkpoints import build_model
from seqtrain.decoding import EOS_ID, compile_search, cut_at_limit, length_limits
from seqtrain.errors import SeqtrainError
from seqtrain.model import Transformer
from seqtrain.vocab import build_vocab, read_text_lines

VOCAB = 20
MODEL = cfg.ModelConfig(num_layers=2, num_units=16, num_heads=4, ffn_inner_dim=32)
SOURCE = [[4, 5, 6, 7, 8], [9, 10, 11, 0, 0], [12, 13, 0, 0, 0]]
SOURCE_LENGTH = [5, 3, 2]


def make_model(eos_bias):
    """Tiny random Transformer (the one of test_decoding): with eos_bias 0.45 its greedy
    outputs of SOURCE end after 2, 1 and more than 12 tokens."""
    model = Transformer(MODEL, VOCAB, VOCAB, seed=7)
    bias = np.zeros(VOCAB, np.float32)
    bias[EOS_ID] = eos_bias
    model.output.bias.assign(bias)
    return model


def test_length_limits_hand_computed():
    lengths = tf.constant([1, 5, 200, 0, 7])
    assert length_limits(lengths, 250, 2.0, 10).numpy().tolist() == [12, 20, 250, 10, 24]
    assert length_limits(lengths, 250, 1.5, 0).numpy().tolist() == [1, 7, 250, 1, 10]  # >= 1
    assert length_limits(lengths, 30, None).numpy().tolist() == [30] * 5
    assert length_limits(lengths, 250, 0.0, 0).numpy().tolist() == [1] * 5


def test_cut_at_limit():
    lengths = tf.constant([[3, 2], [5, 5]])
    assert cut_at_limit(lengths, tf.constant([3, 6])).numpy().tolist() == [
        [True, False],
        [False, False],
    ]
    assert cut_at_limit(lengths, tf.constant(5)).numpy().tolist() == [[False, False], [True, True]]


def test_greedy_per_sentence_limits_cut_only_their_sentence():
    model = make_model(eos_bias=0.45)
    search = compile_search(model)
    ids, lengths = tf.constant(SOURCE), tf.constant(SOURCE_LENGTH)
    free = search(ids, lengths, tf.constant(12))
    assert free.lengths.numpy()[:, 0].tolist() == [2, 1, 12]  # see make_model
    limits = tf.constant([1, 5, 3])
    capped = search(ids, lengths, limits)
    assert capped.lengths.numpy()[:, 0].tolist() == [1, 1, 3]
    assert cut_at_limit(capped.lengths, limits).numpy()[:, 0].tolist() == [True, False, True]
    # Greedy choices do not depend on the limit: the cut outputs are prefixes of the free ones.
    for row, n in enumerate([1, 1, 3]):
        assert capped.ids.numpy()[row, 0, :n].tolist() == free.ids.numpy()[row, 0, :n].tolist()
    assert capped.ids.shape[2] == 3  # the search stopped at the largest limit needed


@pytest.mark.parametrize(
    "beam_width, eos_bias, expected_cut",
    [(2, 0.3, [True, False, True]), (4, 0.05, [False, True, False])],
)
def test_beam_per_sentence_limit_equals_the_sentence_alone(beam_width, eos_bias, expected_cut):
    """A [B] limit gives each sentence what a scalar limit gives it decoded alone (without
    limits, beam 2 ends SOURCE after 3, 1 and > 12 tokens; beam 4 after 0, > 12 and 2)."""
    model = make_model(eos_bias)
    search = compile_search(model, beam_width=beam_width, length_penalty=0.6)
    limits = [2, 6, 4]
    batched = search(tf.constant(SOURCE), tf.constant(SOURCE_LENGTH), tf.constant(limits))
    cut = cut_at_limit(batched.lengths, tf.constant(limits)).numpy()
    assert cut[:, 0].tolist() == expected_cut
    for row, limit in enumerate(limits):
        width = SOURCE_LENGTH[row]
        alone = search(tf.constant([SOURCE[row][:width]]), tf.constant([width]), tf.constant(limit))
        n = int(alone.lengths[0, 0])
        assert int(batched.lengths[row, 0]) == n <= limit
        assert batched.ids.numpy()[row, 0, :n].tolist() == alone.ids.numpy()[0, 0, :n].tolist()
        assert float(batched.scores[row, 0]) == pytest.approx(float(alone.scores[0, 0]), abs=1e-5)
        assert cut[row, 0] == (n == limit)


# ---------------------------------------------------------------- seqtrain translate (CLI)


@pytest.fixture(scope="module")
def never_ending(tmp_path_factory):
    """A tiny checkpoint whose </s> logit is -1e4: it never ends a sentence by itself."""
    root = str(tmp_path_factory.mktemp("guard"))
    sources = list(read_text_lines(os.path.join(TOY, "dev.src")))[:12]
    targets = list(read_text_lines(os.path.join(TOY, "dev.tgt")))[:12]
    write_lines(os.path.join(root, "src.txt"), sources)
    write_lines(os.path.join(root, "tgt.txt"), targets)
    build_vocab([os.path.join(root, "src.txt")], os.path.join(root, "src.vocab"))
    build_vocab([os.path.join(root, "tgt.txt")], os.path.join(root, "tgt.vocab"))
    config = {
        "model_dir": os.path.join(root, "model"),
        "data": {
            "source_vocabulary": os.path.join(root, "src.vocab"),
            "target_vocabulary": os.path.join(root, "tgt.vocab"),
        },
        "model": {"num_layers": 1, "num_units": 16, "num_heads": 2, "ffn_inner_dim": 32},
        "params": {"beam_width": 2, "maximum_decoding_length": 40},
        "infer": {"batch_size": 5},
    }
    model = build_model(cfg.build(config, "test"))
    bias = np.zeros(model.output.bias.shape, np.float32)
    bias[EOS_ID] = -1e4
    model.output.bias.assign(bias)
    tf.train.Checkpoint(model=model).save(os.path.join(config["model_dir"], "ckpt"))
    return root, config, sources


def translate_cli(root, config, caplog):
    path = write_config(os.path.join(root, "run.yml"), config)
    out = os.path.join(root, "out.txt")
    caplog.clear()
    with caplog.at_level(logging.INFO):
        args = ["translate", "--config", path, "--features_file", os.path.join(root, "src.txt")]
        assert cli.main(args + ["--predictions_file", out]) == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    return [len(line.split()) for line in read_text_lines(out)], warnings


@pytest.mark.parametrize("factor, offset", [(2.0, 10), (1.0, 0), (None, 10)])
def test_translate_stops_runaway_outputs_at_the_factor_and_logs_the_count(
    never_ending, caplog, factor, offset
):
    root, config, sources = never_ending
    params = dict(
        config["params"],
        maximum_decoding_length_factor=factor,
        maximum_decoding_length_offset=offset,
    )
    lengths, warnings = translate_cli(root, dict(config, params=params), caplog)
    if factor is None:
        expected = [40] * len(sources)  # the hard cap only
    else:
        expected = [min(40, int(factor * len(s.split())) + offset) for s in sources]
    assert lengths == expected
    assert len(warnings) == 1
    assert warnings[0].startswith(f"{len(sources)} of {len(sources)} outputs were cut")
    assert "maximum_decoding_length = 40" in warnings[0]


def test_translate_without_cut_outputs_warns_nothing(never_ending, caplog):
    root, config, sources = never_ending
    model = build_model(cfg.build(config, "test"))
    tf.train.Checkpoint(model=model).read(os.path.join(config["model_dir"], "ckpt-1"))
    bias = np.zeros(model.output.bias.shape, np.float32)
    bias[EOS_ID] = 1e4  # </s> first: every output is empty
    model.output.bias.assign(bias)
    other = dict(config, model_dir=os.path.join(root, "ending"))
    tf.train.Checkpoint(model=model).save(os.path.join(other["model_dir"], "ckpt"))
    lengths, warnings = translate_cli(root, other, caplog)
    assert lengths == [0] * len(sources)
    assert warnings == []


# ---------------------------------------------------------------- a model trained to repeat


@pytest.mark.slow
def test_model_trained_on_repetitions_is_cut_at_the_factor(tmp_path, caplog):
    """Targets are their sentence repeated 5 times (about 5 S tokens): trained on them, the
    model keeps repeating past 2 S; translate and evaluation stop it at 2 S and count it."""
    paths = make_corpus(str(tmp_path / "data"), lines=200)
    for split in ("train", "dev"):
        with open(paths[f"{split}.tgt"], encoding="utf-8") as f:
            lines = [line.split() for line in f.read().splitlines()]
        write_lines(paths[f"{split}.tgt"], [" ".join(words * 5) for words in lines])
    config = tiny_config(
        paths,
        tmp_path / "model",
        data={"train_alignments": None, "eval_features_file": paths["dev.src"],
              "eval_labels_file": paths["dev.tgt"]},
        params={"guided_alignment_type": None, "learning_rate": 2.0, "beam_width": 1,
                "maximum_decoding_length": 100, "maximum_decoding_length_factor": 2.0,
                "maximum_decoding_length_offset": 0},
        train={"max_step": 150, "save_checkpoints_steps": 150, "save_summary_steps": 50,
               "batch_size": 512, "maximum_labels_length": 60},
        eval={"steps": 150, "scorers": ["bleu"]},
    )  # fmt: skip
    path = write_config(tmp_path / "run.yml", config)
    with caplog.at_level(logging.INFO):
        assert cli.main(["train", "--config", path]) == 0
    evaluation = [r.getMessage() for r in caplog.records if "Evaluation at step" in r.getMessage()]
    assert evaluation and " ; cut = " in evaluation[-1]
    sources = list(read_text_lines(paths["dev.src"]))
    out = str(tmp_path / "out.txt")
    caplog.clear()
    with caplog.at_level(logging.INFO):
        args = ["translate", "--config", path, "--features_file", paths["dev.src"]]
        assert cli.main(args + ["--predictions_file", out]) == 0
    lengths = [len(line.split()) for line in read_text_lines(out)]
    limits = [2 * len(s.split()) for s in sources]
    cut = sum(n == limit for n, limit in zip(lengths, limits))
    assert all(n <= limit for n, limit in zip(lengths, limits))
    assert cut >= len(sources) // 2  # the model repeats past the factor
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(w.startswith(f"{cut} of {len(sources)} outputs were cut") for w in warnings)
    assert f"cut = {cut}" in evaluation[-1]


def test_config_rejects_a_negative_factor():
    with pytest.raises(SeqtrainError, match="maximum_decoding_length_factor"):
        cfg.build({"params": {"maximum_decoding_length_factor": -1.0}}, "test")
    params = cfg.build({"params": {"maximum_decoding_length_factor": None}}, "test").params
    assert dataclasses.asdict(params)["maximum_decoding_length_factor"] is None
