"""Faults provoked on real training runs through the command line (slow: several runs each).

Deterministic ops make a resumed run's losses comparable with an uninterrupted one's."""

import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
from conftest import make_corpus, run_cli, tiny_config, write_config

pytestmark = pytest.mark.slow
ENV = {**os.environ, "TF_DETERMINISTIC_OPS": "1"}
TRAIN = {"save_summary_steps": 1, "save_checkpoints_steps": 2, "max_step": 20}


def _losses(model_dir):
    """step -> (loss, ce, alignment) of metrics.jsonl; a step trained twice keeps the last."""
    path = os.path.join(model_dir, "metrics.jsonl")
    return {r["step"]: (r["loss"], r["ce"], r["alignment"]) for r in map(json.loads, open(path))}


def _same_losses(a, b, steps):
    for step in steps:
        np.testing.assert_allclose(a[step], b[step], rtol=1e-6, err_msg=f"step {step}")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A corpus and a model_dir trained straight for 20 steps (checkpoints 6, 8, ..., 20): the
    reference losses, and the start of the runs that tests make on copies of it."""
    root = tmp_path_factory.mktemp("trained")
    corpus = make_corpus(str(root / "data"))
    config = write_config(root / "run.yml", tiny_config(corpus, root / "run", train=TRAIN))
    proc = run_cli("train", "--config", config, env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return corpus, root / "run"


def _copy(trained, tmp_path, **sections):
    corpus, source = trained
    run = tmp_path / "run"
    shutil.copytree(source, run)
    train = {**TRAIN, **sections.pop("train", {})}
    config = tiny_config(corpus, run, train=train, **sections)
    return write_config(tmp_path / "run.yml", config), run


def test_sigterm_saves_and_the_resumed_run_has_the_same_losses(trained, tmp_path):
    corpus, reference = trained
    run = tmp_path / "run"
    train = {"save_summary_steps": 1, "save_checkpoints_steps": 100000, "max_step": 100000}
    config = write_config(tmp_path / "run.yml", tiny_config(corpus, run, train=train))
    process = subprocess.Popen(
        [sys.executable, "-m", "seqtrain.cli", "train", "--config", config],
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    try:
        metrics = run / "metrics.jsonl"
        deadline = time.time() + 240
        while time.time() < deadline and process.poll() is None:
            if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
                break
            time.sleep(0.05)
        # Freeze it first so that it is still far from step 20 when the SIGTERM is handled.
        process.send_signal(signal.SIGSTOP)
        lock = json.loads((run / "seqtrain.lock").read_text())
        assert lock["pid"] == process.pid
        process.send_signal(signal.SIGTERM)
        process.send_signal(signal.SIGCONT)
        _, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 128 + signal.SIGTERM, err[-3000:]
    last = err.strip().splitlines()[-1]
    match = re.fullmatch(
        r"seqtrain train: stopped by SIGTERM after step (\d+); checkpoint (.*) holds it: run the "
        r"same command to resume",
        last,
    )
    assert match, last
    step = int(match.group(1))
    assert 3 <= step < 20
    assert match.group(2) == str(run / f"ckpt-{step}")
    assert tf.train.latest_checkpoint(str(run)) == str(run / f"ckpt-{step}")
    assert sorted(_losses(run)) == list(range(1, step + 1))  # the last step finished and logged
    assert not (run / "seqtrain.lock").exists()
    # Resume up to step 20: the same losses as the uninterrupted reference run.
    more = write_config(tmp_path / "more.yml", {"train": {"max_step": 20}})
    proc = run_cli("train", "--config", config, more, env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"Restored checkpoint {run / f'ckpt-{step}'}" in proc.stderr
    assert "Configuration change: train.max_step 100000 -> 20" in proc.stderr
    assert (run / "config.1.yml").exists()  # the first start's configuration, kept
    a, b = _losses(reference), _losses(run)
    assert sorted(a) == sorted(b) == list(range(1, 21))
    _same_losses(a, b, range(1, 21))


def test_train_and_translate_fall_back_from_a_broken_checkpoint(trained, tmp_path):
    config, run = _copy(trained, tmp_path, train={"max_step": 22})
    first = _losses(run)
    with open(run / "ckpt-20.data-00000-of-00001", "r+b") as f:
        f.truncate(1000)
    proc = run_cli("train", "--config", config, env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"Checkpoint {run / 'ckpt-20'} is unreadable: ckpt-20.index or .data-*: " in proc.stderr
    assert f"Using {run / 'ckpt-18'}, the newest readable checkpoint" in proc.stderr
    assert f"Restored checkpoint {run / 'ckpt-18'}" in proc.stderr
    _same_losses(first, _losses(run), [19, 20])  # trained again, identically
    assert tf.train.latest_checkpoint(str(run)) == str(run / "ckpt-22")
    (tmp_path / "in.txt").write_text("s1 s2 s3\n")
    os.remove(run / "ckpt-22.index")
    proc = run_cli(
        "translate", "--config", config, "--features_file", str(tmp_path / "in.txt"), env=ENV
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"Checkpoint {run / 'ckpt-22'} is unreadable: ckpt-22.index is missing" in proc.stderr
    assert f"Restored model weights from {run / 'ckpt-20'}" in proc.stderr
    assert len(proc.stdout.splitlines()) == 1
    # None readable: an error naming them, not a fresh start.
    for index in run.glob("ckpt-*.index"):
        os.remove(index)
    before = (run / "metrics.jsonl").read_text()
    proc = run_cli("train", "--config", config, env=ENV)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    message = proc.stderr.strip().splitlines()[-1]
    assert f"{run}: none of its 8 checkpoint(s) is readable (ckpt-22.index is missing;" in message
    assert (run / "metrics.jsonl").read_text() == before
    assert not list(run.glob("ckpt-*.index"))


def _limit_file_size(limit):
    def set_limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return set_limit


def test_full_disk_at_a_checkpoint_keeps_the_previous_one(trained, tmp_path):
    config, run = _copy(trained, tmp_path, train={"max_step": 22})
    state = (run / "checkpoint").read_text()
    proc = subprocess.run(
        [sys.executable, "-m", "seqtrain.cli", "train", "--config", config],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
        preexec_fn=_limit_file_size(200_000),  # a checkpoint's data file is ~570 kB
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    message = proc.stderr.strip().splitlines()[-1]
    assert message.startswith(f"seqtrain train: error: {run}: cannot write checkpoint ckpt-22 (")
    assert "File too large" in message
    assert message.endswith(
        f"the previous one, {run / 'ckpt-20'}, is intact: free disk space and run the same "
        "command again to resume"
    )
    assert (run / "checkpoint").read_text() == state
    assert not list(run.glob("ckpt-22*")) and not (run / "seqtrain.lock").exists()
    crashed = _losses(run)  # steps 21 and 22 were logged before the save failed
    proc = run_cli("train", "--config", config, env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"Restored checkpoint {run / 'ckpt-20'}" in proc.stderr
    _same_losses(crashed, _losses(run), [21, 22])
    assert tf.train.latest_checkpoint(str(run)) == str(run / "ckpt-22")


def test_changed_model_on_resume_stops_before_any_step(trained, tmp_path):
    config, run = _copy(trained, tmp_path, model={"num_units": 64, "num_heads": 4})
    before = {name: (run / name).read_bytes() for name in ("metrics.jsonl", "config.yml")}
    proc = run_cli("train", "--config", config, env=ENV)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    message = proc.stderr.strip().splitlines()[-1]
    assert f"{run / 'config.yml'}: the checkpoints in {run} were trained" in message
    assert "(model.num_units: 32 -> 64); restore them, or train into a new model_dir" in message
    assert {name: (run / name).read_bytes() for name in before} == before
    assert tf.train.latest_checkpoint(str(run)).endswith("ckpt-20")
