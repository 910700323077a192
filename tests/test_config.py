"""Configuration: merging, defaults == config/reference.yml, and the user errors of the CLI."""

import dataclasses
import os
import subprocess
import sys

import pytest
import yaml

from seqtrain import config as cfg
from seqtrain import config_checks
from seqtrain.errors import SeqtrainError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_reference_yml_lists_every_default():
    with open(os.path.join(ROOT, "config", "reference.yml"), encoding="utf-8") as f:
        reference = yaml.safe_load(f)
    reference["model_dir"] = ""  # the reference shows a placeholder path
    assert reference == cfg.to_dict(cfg.Config())


def test_every_default_has_a_comment():
    source = open(os.path.join(ROOT, "seqtrain", "config.py"), encoding="utf-8").read()
    for cls in (cfg.DataConfig, cfg.ModelConfig, cfg.ParamsConfig, cfg.TrainConfig):
        for f in dataclasses.fields(cls):
            lines = [ln for ln in source.splitlines() if ln.strip().startswith(f"{f.name}:")]
            assert lines and "#" in lines[0], f"{cls.__name__}.{f.name} has no comment"


def test_merge_left_to_right(tmp_path):
    a = write(tmp_path / "a.yml", "model_dir: run\ntrain: {batch_size: 100, seed: 7}\n")
    b = write(
        tmp_path / "b.yml", "train: {batch_size: 200}\nparams: {optimizer_params: {beta_2: 0.99}}\n"
    )
    config = cfg.load_config([a, b])
    assert config.model_dir == "run"
    assert config.train.batch_size == 200 and config.train.seed == 7
    assert config.params.optimizer_params.beta_2 == 0.99
    assert config.params.optimizer_params.beta_1 == 0.9  # untouched default
    assert isinstance(config.params.learning_rate, float)


def test_ints_accepted_for_floats_and_lists_as_tuples(tmp_path):
    p = write(
        tmp_path / "a.yml",
        "model_dir: r\nparams: {guided_alignment_weight: 1}\n" "eval: {scorers: [bleu, chrf]}\n",
    )
    config = cfg.load_config([p])
    assert config.params.guided_alignment_weight == 1.0
    assert config.eval.scorers == ("bleu", "chrf")


@pytest.mark.parametrize(
    "text, expected",
    [
        (
            "model_dir: r\nparams: {guided_alignment_typ: ce}\n",
            "Did you mean 'params.guided_alignment_type'",
        ),
        ("model_dir: r\nparms: {}\n", "Did you mean 'params'"),
        ("model_dir: r\ntrain: {batch_size: -3}\n", "train.batch_size = -3 is too small"),
        ("model_dir: r\ntrain: {batch_size: big}\n", "train.batch_size must be an integer"),
        ("model_dir: r\nparams: {guided_alignment_type: foo}\n", "allowed: ce, mse, null"),
        ("model_dir: r\ntrain: {batch_type: words}\n", "allowed: tokens, examples"),
        ("train: {batch_size: 3}\n", "model_dir is required"),
        ("model_dir: r\ntrain: [1, 2]\n", "'train' must be a mapping"),
    ],
)
def test_errors_name_file_and_key(tmp_path, text, expected):
    p = write(tmp_path / "bad.yml", text)
    with pytest.raises(SeqtrainError) as e:
        cfg.load_config([p])
    assert expected in str(e.value)
    assert "bad.yml" in str(e.value)


def test_cross_field_checks(tmp_path):
    p = write(tmp_path / "a.yml", "model_dir: r\nmodel: {num_units: 10, num_heads: 3}\n")
    with pytest.raises(SeqtrainError, match="divisible"):
        config_checks.check(cfg.load_config([p]))
    p = write(tmp_path / "b.yml", "model_dir: r\nparams: {guided_alignment_type: ce}\n")
    with pytest.raises(SeqtrainError, match="train_alignments"):
        config_checks.check(cfg.load_config([p]))


def test_missing_file_is_reported(tmp_path):
    p = write(
        tmp_path / "a.yml", f"model_dir: {tmp_path}/run\ndata:\n  train_features_file: nope.txt\n"
    )
    with pytest.raises(SeqtrainError, match="data.train_labels_file is required"):
        config_checks.check_files(cfg.load_config([p]), "train")


def test_saved_config_round_trips(tmp_path):
    config = cfg.load_config([write(tmp_path / "a.yml", "model_dir: r\ntrain: {seed: 3}\n")])
    cfg.save_config(config, str(tmp_path / "out.yml"))
    assert cfg.load_config([str(tmp_path / "out.yml")]) == config


@pytest.mark.parametrize(
    "text",
    [
        "model_dir: {run}\nparams: {{guided_alignment_typ: ce}}\n",
        "model_dir: {run}\nparms: {{}}\n",
        "model_dir: {run}\ntrain: {{batch_size: true}}\n",
        "model_dir: {run}\ndata: {{train_features_file: missing.txt, train_labels_file: m.txt, "
        "source_vocabulary: v, target_vocabulary: v}}\n",
    ],
)
def test_cli_exit_2_one_line_nothing_written(tmp_path, text):
    run = tmp_path / "run"
    p = write(tmp_path / "bad.yml", text.format(run=run))
    proc = subprocess.run(
        [sys.executable, "-m", "seqtrain.cli", "train", "--config", p],
        capture_output=True,
        text=True,
        cwd=str(tmp_path),
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert "bad.yml" in lines[0]
    assert not run.exists()


@pytest.mark.parametrize("name", ["quickstart.yml", "transformer-base.yml", "reference.yml"])
def test_shipped_configs_are_valid(name):
    config = cfg.load_config([os.path.join(ROOT, "config", name)])
    config_checks.check(config)
    if name == "transformer-base.yml":
        assert (config.model.num_layers, config.model.num_units, config.model.num_heads) == (
            6,
            512,
            8,
        )
        assert config.params.optimizer_params.beta_2 == 0.998
        assert config_checks.decay_arguments(config.params)["warmup_steps"] == 8000
        assert config.train.effective_batch_size == 25000
