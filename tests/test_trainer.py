"""Trainer: replica/accumulation invariance, logs and metrics, resume, divergence, bad data."""

import glob
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from conftest import HANG_GUARD, run_cli, tiny_config, write_config

from seqtrain import losses
from seqtrain.config import ParamsConfig, TrainConfig
from seqtrain.trainer import accumulation_steps

HERE = os.path.dirname(os.path.abspath(__file__))
LOG_LINE = re.compile(
    r"Step = (\d+) ; steps/s = \d+\.\d\d, tokens/s = \d+ \(\d+ source, \d+ target\) ; "
    r"Learning rate = \d+\.\d{6} ; Loss = (\d+\.\d{6}) ; CE = (\d+\.\d{6}) ; "
    r"Alignment = (\d+\.\d{6})$"
)


@pytest.fixture(scope="module")
def invariance():
    proc = subprocess.run(
        [sys.executable, os.path.join(HERE, "scripts", "replica_invariance.py")],
        capture_output=True,
        text=True,
        timeout=HANG_GUARD,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def _reported(outputs, mode):
    params = ParamsConfig(
        guided_alignment_type=None if mode == "off" else "ce",
        guided_alignment_normalization="opennmt" if mode == "off" else mode,
    )
    sums = {k: v for k, v in outputs.items() if k not in ("finite", "grad_norm")}
    return {k: float(v) for k, v in losses.report(sums, sums["micro_batches"], params).items()}


@pytest.mark.parametrize("mode", ["off", "opennmt", "aligned_tokens"])
def test_two_replicas_equal_two_accumulation_steps(invariance, mode):
    """The same split (9+1 vs 4+6 target tokens) on 2 replicas or as 2 accumulation steps."""
    accum, replicas = invariance[mode]["accum"], invariance[mode]["replicas"]
    assert accum["iterations"] == replicas["iterations"] == 1
    for key in ("ce_sum", "tokens", "source_tokens", "target_tokens", "micro_batches"):
        assert accum["outputs"][key] == pytest.approx(replicas["outputs"][key], rel=1e-6, abs=1e-6)
    assert accum["outputs"]["tokens"] == 21.0
    np.testing.assert_allclose(accum["weights"], replicas["weights"], rtol=0, atol=1e-6)
    assert _reported(accum["outputs"], mode) == pytest.approx(
        _reported(replicas["outputs"], mode), rel=1e-6
    )


@pytest.mark.parametrize("mode", ["off", "aligned_tokens"])
def test_split_batch_equals_whole_batch(invariance, mode):
    """Without GA, or with aligned_tokens normalization, the split does not matter at all."""
    whole, accum = invariance[mode]["whole"], invariance[mode]["accum"]
    np.testing.assert_allclose(whole["weights"], accum["weights"], rtol=0, atol=1e-6)
    assert _reported(whole["outputs"], mode) == pytest.approx(
        _reported(accum["outputs"], mode), rel=1e-6
    )
    assert max(abs(w) for w in whole["weights"]) > 1e-3  # the update did happen


def test_opennmt_mode_alignment_term_depends_on_the_split(invariance):
    """The reference divides each micro-batch's GA cost by its own length (DESIGN.md): CE is
    split-invariant, the GA term is the sum of the parts' costs, not the whole batch's cost."""
    whole, accum = invariance["opennmt"]["whole"], invariance["opennmt"]["accum"]
    assert whole["outputs"]["ce_sum"] == pytest.approx(accum["outputs"]["ce_sum"], rel=1e-6)
    assert accum["outputs"]["ga_cost"] != pytest.approx(whole["outputs"]["ga_cost"], rel=1e-3)
    reported = _reported(accum["outputs"], "opennmt")
    expected = (accum["outputs"]["ce_sum"] + accum["outputs"]["ga_cost"]) / 21.0
    assert reported["loss"] == pytest.approx(expected, rel=1e-6)
    assert reported["alignment"] == pytest.approx(accum["outputs"]["ga_cost"] / 2, rel=1e-6)


def test_accumulation_steps():
    assert accumulation_steps(TrainConfig(batch_size=3072, effective_batch_size=25000), 1) == 9
    assert accumulation_steps(TrainConfig(batch_size=3072, effective_batch_size=25000), 4) == 3
    assert accumulation_steps(TrainConfig(batch_size=3072), 2) == 1


def _events(model_dir):
    values = {}
    for path in glob.glob(os.path.join(model_dir, "events.out.tfevents.*")):
        for record in tf.data.TFRecordDataset(path):
            event = tf.compat.v1.Event.FromString(record.numpy())
            for value in event.summary.value:
                number = tf.make_ndarray(value.tensor)
                values.setdefault(value.tag, {})[event.step] = float(number)
    return values


def test_train_logs_metrics_tensorboard_and_checkpoints(corpus, tmp_path):
    run = tmp_path / "run"
    train = {"save_checkpoints_steps": 2, "keep_checkpoint_max": 2}
    config = write_config(tmp_path / "run.yml", tiny_config(corpus, run, train=train))
    proc = run_cli("train", "--config", config)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [m for m in (LOG_LINE.search(line) for line in proc.stderr.splitlines()) if m]
    assert [int(m.group(1)) for m in lines] == [2, 4, 6]
    records = [json.loads(line) for line in open(run / "metrics.jsonl")]
    assert [r["step"] for r in records] == [2, 4, 6]
    events = _events(str(run))
    for match, record in zip(lines, records):
        assert float(match.group(2)) == pytest.approx(record["loss"], abs=1e-6)
        assert float(match.group(3)) == pytest.approx(record["ce"], abs=1e-6)
        assert float(match.group(4)) == pytest.approx(record["alignment"], abs=1e-6)
        assert events["train/loss"][record["step"]] == pytest.approx(record["loss"], rel=1e-6)
    # opennmt mode: Loss = CE + Alignment / (tokens per micro-batch) > CE.
    assert all(r["loss"] > r["ce"] for r in records)
    assert "train/alignment" in events and "train/grad_norm" in events
    assert tf.train.latest_checkpoint(str(run)).endswith("ckpt-6")
    # Saved at steps 2, 4 and 6; the last keep_checkpoint_max = 2 are kept.
    assert sorted(p.name for p in run.glob("ckpt-*.index")) == ["ckpt-4.index", "ckpt-6.index"]
    assert (run / "config.yml").exists()
    again = run_cli("train", "--config", config)
    assert again.returncode == 0 and "already reached max_step = 6" in again.stderr


def _losses(model_dir):
    return {
        r["step"]: (r["loss"], r["ce"], r["alignment"])
        for r in map(json.loads, open(os.path.join(model_dir, "metrics.jsonl")))
    }


@pytest.mark.slow
def test_resume_gives_the_same_losses(corpus, tmp_path):
    """20 steps straight vs 10 + restart + 10: same losses (deterministic ops)."""
    env = {**os.environ, "TF_DETERMINISTIC_OPS": "1"}
    train = {"save_summary_steps": 1, "save_checkpoints_steps": 10, "max_step": 20}
    straight = tmp_path / "straight"
    config = write_config(tmp_path / "a.yml", tiny_config(corpus, straight, train=train))
    assert run_cli("train", "--config", config, env=env).returncode == 0
    resumed = tmp_path / "resumed"
    config = write_config(tmp_path / "b.yml", tiny_config(corpus, resumed, train=train))
    half = write_config(tmp_path / "half.yml", {"train": {"max_step": 10}})
    assert run_cli("train", "--config", config, half, env=env).returncode == 0
    proc = run_cli("train", "--config", config, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Restored checkpoint" in proc.stderr
    a, b = _losses(straight), _losses(resumed)
    assert sorted(a) == sorted(b) == list(range(1, 21))
    for step in range(1, 21):
        np.testing.assert_allclose(a[step], b[step], rtol=1e-6, err_msg=f"step {step}")


def test_divergence_stops_without_writing_nan_weights(corpus, tmp_path):
    run = tmp_path / "run"
    params = {"decay_type": None, "learning_rate": 1e30}
    train = {"save_checkpoints_steps": 1, "save_summary_steps": 1, "max_step": 50}
    config = write_config(
        tmp_path / "run.yml", tiny_config(corpus, run, params=params, train=train)
    )
    proc = run_cli("train", "--config", config)
    assert proc.returncode == 2
    message = proc.stderr.strip().splitlines()[-1]
    step = int(re.search(r"NaN/Inf at step (\d+)", message).group(1))
    assert "Traceback" not in proc.stderr and step >= 2
    for index in glob.glob(str(run / "ckpt-*.index")):
        reader = tf.train.load_checkpoint(index[: -len(".index")])
        for name in reader.get_variable_to_shape_map():
            value = reader.get_tensor(name)
            if np.issubdtype(np.asarray(value).dtype, np.floating):
                assert np.all(np.isfinite(value)), (index, name)
    assert int(tf.train.latest_checkpoint(str(run)).rsplit("-", 1)[1]) == step - 1


def test_everything_filtered_is_a_clear_error(corpus, tmp_path):
    run = tmp_path / "run"
    train = {"maximum_features_length": 1}
    config = write_config(tmp_path / "run.yml", tiny_config(corpus, run, train=train))
    proc = run_cli("train", "--config", config)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "train.maximum_features_length" in proc.stderr.strip().splitlines()[-1]
    assert not glob.glob(str(run / "ckpt-*"))


def test_bad_alignment_stops_before_training(corpus, tmp_path):
    lines = open(corpus["train.align"]).read().splitlines()
    lines[4] = lines[4] + " 0-99"
    open(corpus["train.align"], "w").write("\n".join(lines) + "\n")
    run = tmp_path / "run"
    config = write_config(tmp_path / "run.yml", tiny_config(corpus, run))
    proc = run_cli("train", "--config", config)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    message = proc.stderr.strip().splitlines()[-1]
    assert "train.align" in message and "line 5" in message and "0-99" in message
    assert not glob.glob(str(run / "ckpt-*"))
