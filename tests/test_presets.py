"""--model_type (OpenNMT-tf 2.32's catalog) and auto_config: the resolved configuration values.

Expected numbers are written from reading OpenNMT-tf's models/catalog.py, models/transformer.py,
models/sequence_to_sequence.py, runner.py and config.py (merge_config), not by calling it.
"""

import json
import logging
import os

import pytest
import yaml
from conftest import TOY, run_cli

from seqtrain import cli, presets
from seqtrain import config as cfg
from seqtrain.errors import SeqtrainError

# name -> (num_layers, num_units, num_heads, ffn_inner_dim, dropout, attention_dropout,
#          ffn_dropout, share_embeddings, position_encoder_class, maximum_relative_position,
#          pre_norm, output_layer_bias)
SIN = "SinusoidalPositionEncoder"
EXPECTED_MODELS = {
    "Transformer": (6, 512, 8, 2048, 0.1, 0.1, 0.1, "none", SIN, None, True, True),
    "TransformerBase": (6, 512, 8, 2048, 0.1, 0.1, 0.1, "none", SIN, None, True, True),
    "TransformerBig": (6, 1024, 16, 4096, 0.1, 0.1, 0.1, "none", SIN, None, True, True),
    "TransformerTiny": (2, 64, 2, 64, 0.1, 0.1, 0.1, "none", SIN, None, True, True),
    "TransformerBaseSharedEmbeddings": (6, 512, 8, 2048, 0.1, 0.1, 0.1, "all", SIN, None, True,
                                        True),
    "TransformerBigSharedEmbeddings": (6, 1024, 16, 4096, 0.1, 0.1, 0.1, "all", SIN, None, True,
                                       True),
    "TransformerRelative": (6, 512, 8, 2048, 0.1, 0.1, 0.1, "none", None, 20, True, True),
    "TransformerBaseRelative": (6, 512, 8, 2048, 0.1, 0.1, 0.1, "none", None, 20, True, True),
    "TransformerBigRelative": (6, 1024, 16, 4096, 0.1, 0.1, 0.1, "none", None, 20, True, True),
    # share_embeddings AUTO with two vocabulary files -> TARGET
    "ScalingNmtEnDe": (6, 1024, 16, 4096, 0.3, 0.1, 0.0, "target", SIN, None, False, False),
    "ScalingNmtEnFr": (6, 1024, 16, 4096, 0.1, 0.0, 0.0, "target", SIN, None, False, False),
}  # fmt: skip
MODEL_KEYS = (
    "num_layers", "num_units", "num_heads", "ffn_inner_dim", "dropout", "attention_dropout",
    "ffn_dropout", "share_embeddings", "position_encoder_class", "maximum_relative_position",
    "pre_norm", "output_layer_bias",
)  # fmt: skip


def write(tmp_path, text, name="run.yml"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def load(paths, model_type=None, auto=None):
    return cfg.load_config(paths, resolve=presets.resolver(model_type, auto))


DATA = "model_dir: run\ndata: {source_vocabulary: src.vocab, target_vocabulary: tgt.vocab}\n"


@pytest.mark.parametrize("name", sorted(EXPECTED_MODELS))
def test_catalog_model_keys(tmp_path, name):
    config = load([write(tmp_path, DATA)], name)
    assert tuple(getattr(config.model, key) for key in MODEL_KEYS) == EXPECTED_MODELS[name]
    assert config.train.sample_buffer_size == 500000  # no auto_config: seqtrain's defaults
    assert config.auto_config is False


def test_user_model_section_overrides_the_preset_key_by_key(tmp_path):
    path = write(tmp_path, DATA + "model: {num_layers: 2, num_units: 64, num_heads: 4}\n")
    config = load([path], "TransformerBigRelative")
    assert (config.model.num_layers, config.model.num_units, config.model.num_heads) == (2, 64, 4)
    assert config.model.ffn_inner_dim == 4096  # from the preset
    assert config.model.maximum_relative_position == 20
    assert config.model.position_encoder_class is None


def test_share_embeddings_auto_follows_the_vocabulary_files(tmp_path):
    same = write(tmp_path, "model_dir: r\ndata: {source_vocabulary: v, target_vocabulary: ./v}\n")
    assert load([same], "ScalingNmtEnDe").model.share_embeddings == "all"
    user_auto = write(tmp_path, DATA + "model: {share_embeddings: auto}\n", "auto.yml")
    assert load([user_auto]).model.share_embeddings == "target"


@pytest.mark.parametrize("name", ["LuongAttention", "NMTSmallV1", "GPT2Small", "ListenAttendSpell"])
def test_models_that_are_not_transformers_are_refused(tmp_path, capsys, name):
    path = write(tmp_path, DATA)
    assert cli.main(["train", "--config", path, "--model_type", name]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"does not support OpenNMT-tf's {name}" in err and "TransformerBase" in err


def test_unknown_model_type(tmp_path, capsys):
    assert cli.main(["eval", "--config", write(tmp_path, DATA), "--model_type", "Transfomer"]) == 2
    err = capsys.readouterr().err
    assert "Transfomer is not an OpenNMT-tf catalog model" in err and err.count("\n") == 1


def test_auto_config_values_of_a_transformer(tmp_path):
    """Transformer.auto_config over SequenceToSequence's, model_dim = the resolved num_units."""
    config = load([write(tmp_path, DATA + "model: {num_units: 64, num_heads: 4}\n")],
                  "TransformerBaseRelative", auto=True)  # fmt: skip
    p, t = config.params, config.train
    assert config.auto_config is True
    assert (p.optimizer, p.learning_rate, p.decay_type) == ("LazyAdam", 2.0, "NoamDecay")
    assert (p.optimizer_params.beta_1, p.optimizer_params.beta_2) == (0.9, 0.998)
    assert (p.decay_params.model_dim, p.decay_params.warmup_steps) == (64, 8000)
    assert (p.label_smoothing, p.average_loss_in_time, p.beam_width) == (0.1, True, 4)
    assert (t.batch_size, t.batch_type, t.effective_batch_size) == (3072, "tokens", 25000)
    assert (t.maximum_features_length, t.maximum_labels_length) == (100, 100)
    assert (t.sample_buffer_size, t.max_step, t.keep_checkpoint_max) == (-1, 500000, 8)
    assert config.infer.batch_size == 32


def test_auto_config_dict_of_a_transformer():
    """Everything OpenNMT-tf's TransformerTiny().auto_config() returns, key for key."""
    assert presets.auto_config("TransformerTiny", 64) == {
        "params": {
            "beam_width": 4,
            "average_loss_in_time": True,
            "label_smoothing": 0.1,
            "optimizer": "LazyAdam",
            "optimizer_params": {"beta_1": 0.9, "beta_2": 0.998},
            "learning_rate": 2.0,
            "decay_type": "NoamDecay",
            "decay_params": {"model_dim": 64, "warmup_steps": 8000},
        },
        "train": {
            "sample_buffer_size": -1,
            "max_step": 500000,
            "effective_batch_size": 25000,
            "batch_size": 3072,
            "batch_type": "tokens",
            "maximum_features_length": 100,
            "maximum_labels_length": 100,
            "keep_checkpoint_max": 8,
            "average_last_checkpoints": 8,
        },
        "eval": {"length_bucket_width": 5},
        "score": {"length_bucket_width": 5},
        "infer": {"batch_size": 32, "length_bucket_width": 5},
    }


def test_user_keys_win_and_replace_optimizer_and_decay_params_whole(tmp_path):
    path = write(tmp_path, DATA + (
        "auto_config: true\n"
        "params: {learning_rate: 1.0, optimizer_params: {beta_2: 0.99},"
        " decay_params: {warmup_steps: 100}}\n"
        "train: {batch_size: 1024, effective_batch_size: null, max_step: 300}\n"
    ))  # fmt: skip
    with open(path, encoding="utf-8") as f:
        raw, origin = presets.resolve_dict(yaml.safe_load(f), path)
    assert raw["params"]["optimizer_params"] == {"beta_2": 0.99}  # not merged with 0.9/0.998
    assert raw["params"]["decay_params"] == {"warmup_steps": 100}  # model_dim 512 dropped
    assert raw["params"]["label_smoothing"] == 0.1 and raw["train"]["sample_buffer_size"] == -1
    assert "auto_config of Transformer" in origin
    config = load([path])  # auto_config from the YAML key
    assert config.params.learning_rate == 1.0 and config.train.batch_size == 1024
    assert config.train.effective_batch_size is None and config.train.max_step == 300
    assert config.train.sample_buffer_size == -1  # recommended value under the user's
    off = load([path], auto=False)  # an explicit False (OpenNMT-tf's Runner argument) wins
    assert off.train.sample_buffer_size == 500000 and off.auto_config is False
    assert load([write(tmp_path, DATA, "plain.yml")]).train.sample_buffer_size == 500000


@pytest.mark.parametrize(
    "name,lr,effective", [("ScalingNmtEnDe", 0.001, 458752), ("ScalingNmtEnFr", 0.0007, 655360)]
)
def test_auto_config_of_scaling_nmt(name, lr, effective):
    values = presets.auto_config(name, 1024)
    assert values["params"]["optimizer"] == "Adam" and values["params"]["learning_rate"] == lr
    assert values["params"]["optimizer_params"] == {"beta_1": 0.9, "beta_2": 0.98, "epsilon": 1e-8}
    assert values["params"]["decay_type"] == "InvSqrtDecay"
    assert values["params"]["decay_params"] == {"warmup_steps": 4000, "initial_learning_rate": 1e-7}
    train = values["train"]
    assert (train["effective_batch_size"], train["batch_size"]) == (effective, 3072)
    assert (train["maximum_features_length"], train["maximum_labels_length"]) == (175, 175)
    assert (train["keep_checkpoint_max"], train["average_last_checkpoints"]) == (10, 10)
    assert "save_checkpoint_steps" not in train and "save_checkpoints_steps" not in train
    assert values["data"] == {"source_sequence_controls": {"end": True}}
    assert values["params"]["beam_width"] == 4 and train["sample_buffer_size"] == -1


def test_scaling_nmt_with_the_users_schedule(tmp_path, caplog):
    path = write(tmp_path, DATA + "params: {decay_type: NoamDecay, decay_params: {model_dim: 8,"
                 " warmup_steps: 10}}\n")  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="seqtrain.presets"):
        config = load([path], "ScalingNmtEnDe", auto=True)
    assert config.params.optimizer == "Adam" and config.params.learning_rate == 0.001
    eps = config.params.optimizer_params.epsilon
    assert (config.params.optimizer_params.beta_2, eps) == (0.98, 1e-8)
    assert config.params.decay_params.model_dim == 8 and config.train.effective_batch_size == 458752
    assert config.model.share_embeddings == "target" and config.model.pre_norm is False
    (warning,) = [r.getMessage() for r in caplog.records]
    assert "data.source_sequence_controls" in warning and "not applied" in warning
    # average_last_checkpoints has a seqtrain key (issue 13): applied, not in the warning
    assert config.train.average_last_checkpoints == 10 and "average_last" not in warning


def test_model_type_is_remembered_in_model_dir(tmp_path):
    model_dir = tmp_path / "run"
    path = write(tmp_path, f"model_dir: {model_dir}\n")
    assert load([path]).model.maximum_relative_position is None
    presets.remember_model_type(str(model_dir), "TransformerTiny")
    assert (model_dir / "model_type").read_text() == "TransformerTiny\n"
    assert load([path]).model.num_units == 64
    assert load([path], "TransformerBig").model.num_units == 1024  # the flag wins


def test_auto_config_on_a_model_without_model_type_uses_its_num_units(tmp_path):
    config = load([write(tmp_path, DATA + "model: {num_units: 256, num_heads: 4}\n")], auto=True)
    assert config.params.decay_params.model_dim == 256
    with pytest.raises(SeqtrainError, match="auto_config must be true or false"):
        load([write(tmp_path, DATA + "auto_config: 1\n", "bad.yml")])


@pytest.mark.slow
def test_relative_preset_with_auto_config_trains_and_its_guided_head_learns(tmp_path):
    """The issue's command: ``seqtrain train --model_type TransformerBaseRelative --auto_config
    --config data.yml`` with tiny sizes in the user's model: section, on the toy data; then
    ``seqtrain eval`` without --model_type (remembered in model_dir) on the same weights."""
    toy = {name: os.path.join(TOY, name) for name in os.listdir(TOY)}
    data = write(tmp_path, yaml.safe_dump({
        "model_dir": str(tmp_path / "run"),
        "data": {
            "train_features_file": toy["train.src"],
            "train_labels_file": toy["train.tgt"],
            "train_alignments": toy["train.src-tgt.align"],
            "eval_features_file": toy["dev.src"],
            "eval_labels_file": toy["dev.tgt"],
            "eval_alignments": toy["dev.src-tgt.align"],
            "source_vocabulary": toy["src.vocab"],
            "target_vocabulary": toy["tgt.vocab"],
        },
        "model": {"num_layers": 2, "num_units": 64, "num_heads": 4, "ffn_inner_dim": 128},
        "params": {
            "decay_params": {"model_dim": 64, "warmup_steps": 200},
            "guided_alignment_type": "ce",
            "guided_alignment_normalization": "aligned_tokens",
        },
        "train": {"batch_size": 2048, "effective_batch_size": None, "max_step": 250,
                  "save_checkpoints_steps": 50, "save_summary_steps": 50},
        "eval": {"steps": 50, "scorers": [], "batch_size": 64},
    }), "data.yml")  # fmt: skip
    proc = run_cli(
        "train", "--model_type", "TransformerBaseRelative", "--auto_config", "--config", data
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    saved = cfg.load_config([str(tmp_path / "run" / "config.yml")])
    assert saved.model.maximum_relative_position == 20 and saved.model.num_units == 64
    assert saved.model.position_encoder_class is None and saved.model.ffn_inner_dim == 128
    assert saved.train.sample_buffer_size == -1 and saved.train.length_bucket_width == 1
    assert saved.params.decay_params.warmup_steps == 200 and saved.auto_config is True
    with open(tmp_path / "run" / "metrics.jsonl", encoding="utf-8") as f:
        records = [json.loads(line) for line in f]
    aer = {r["step"]: r["aer"] for r in records if r["kind"] == "eval"}
    alignment = [r["alignment"] for r in records if r["kind"] == "train"]
    assert sorted(aer) == [50, 100, 150, 200, 250]
    assert aer[250] < aer[50] - 30, aer  # measured 70.5 -> 17.4
    assert alignment[-1] < alignment[0] - 0.5, alignment  # measured 2.41 -> 0.43
    proc = run_cli("eval", "--config", data)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"aer = {aer[250]:.2f}" in proc.stdout
