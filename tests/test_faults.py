"""Faults of long runs, provoked for real: cut log lines, signals, damaged checkpoints, write
errors (a file-size limit makes the kernel refuse writes: EFBIG), changed configs, two runs."""

import json
import logging
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
from conftest import run_cli, tiny_config, write_config

from seqtrain import runguard, runlog
from seqtrain.checkpoints import Saver, build_model, candidates
from seqtrain.config import load_config
from seqtrain.errors import SeqtrainError
from seqtrain.export import export_model, restore_model
from seqtrain.trainer import make_optimizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _record(step, loss):
    return {"kind": "train", "step": step, "loss": loss, "ce": loss - 0.5, "alignment": 1.0}


def test_log_skips_cut_lines_with_a_warning(tmp_path):
    lines = [json.dumps(_record(1, 4.0)), '{"kind": "train", "st', json.dumps(_record(2, 3.0))]
    lines.append('{"kind": "train", "step": 3, "loss": 2.')  # the crash: no newline at the end
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines))
    proc = run_cli("log", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if "skipped" in line]
    assert len(warnings) == 2
    assert "metrics.jsonl, line 2: skipped, not JSON" in warnings[0]
    assert "metrics.jsonl, line 4: skipped, not JSON" in warnings[1]
    rows = [row.split()[:3] for row in proc.stdout.strip().splitlines()[1:]]
    assert rows == [["1", "4.0000", "3.5000"], ["2", "3.0000", "2.5000"]]


def test_metrics_writer_starts_a_fresh_line_after_a_cut_one(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(json.dumps(_record(1, 4.0)) + '\n{"kind": "tr')
    writer = runlog.MetricsWriter(str(tmp_path), tf.summary.create_file_writer(str(tmp_path)))
    writer.write("train", 2, {"loss": 3.0})
    writer.write("train", 3, {"loss": 2.0})
    lines = (tmp_path / "metrics.jsonl").read_text().split("\n")
    assert lines[1] == '{"kind": "tr' and lines[-1] == ""
    assert [json.loads(line)["step"] for line in lines[2:-1]] == [2, 3]
    assert [r["step"] for r in runlog.read_records(str(tmp_path))] == [1, 2, 3]


def _limit_file_size(limit):
    """Kernel-enforced: writing past ``limit`` bytes fails with EFBIG (Python ignores SIGXFSZ)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def test_metrics_write_error_is_clear_and_keeps_earlier_records(tmp_path):
    writer = runlog.MetricsWriter(str(tmp_path), tf.summary.create_file_writer(str(tmp_path)))
    writer.write("train", 1, {"loss": 4.0})
    size = os.path.getsize(tmp_path / "metrics.jsonl")
    restore = _limit_file_size(size + 10)  # the next record only fits in part
    try:
        with pytest.raises(SeqtrainError) as error:
            writer.write("train", 2, {"loss": 3.0})
    finally:
        restore()
    assert "metrics.jsonl: cannot append the step 2 record (File too large)" in str(error.value)
    events = [name for name in os.listdir(tmp_path) if name.startswith("events.out")]
    size = os.path.getsize(tmp_path / events[0])
    restore = _limit_file_size(size + 20)  # now the TensorBoard events file is full
    try:
        with pytest.raises(SeqtrainError) as error:
            runlog.MetricsWriter(str(tmp_path), writer.summary_writer).write("eval", 1, {"bleu": 1})
    finally:
        restore()
    assert str(error.value) == (
        f"{tmp_path}: cannot write the TensorBoard events of step 1 (File too large); free disk "
        "space and run the same command again: training resumes from the last checkpoint"
    )
    # The cut record is skipped, the earlier one stays, and the next run starts a fresh line.
    summaries = tf.summary.create_file_writer(str(tmp_path / "later"))  # a new run's events file
    runlog.MetricsWriter(str(tmp_path), summaries).write("train", 2, {"loss": 3.0})
    records = [(r["kind"], r["step"]) for r in runlog.read_records(str(tmp_path))]
    assert records == [("train", 1), ("eval", 1), ("train", 2)]


def test_second_signal_ends_the_process_at_once():
    script = textwrap.dedent("""
        import os, signal, time
        from seqtrain.runguard import StopRequest
        with StopRequest() as stop:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.2)  # the handler runs at the next bytecode
            print("first", stop.signal, flush=True)
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
            print("survived", flush=True)
        """)
    proc = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": ROOT},
    )
    assert proc.returncode == -signal.SIGTERM
    assert proc.stdout == f"first {int(signal.SIGINT)}\n"
    assert "SIGINT: stopping after this step with a checkpoint" in proc.stderr


def _config(corpus, tmp_path, **sections):
    """The tiny config with model_dir tmp_path/run (created)."""
    path = write_config(tmp_path / "run.yml", tiny_config(corpus, tmp_path / "run", **sections))
    os.makedirs(tmp_path / "run", exist_ok=True)
    return load_config([path])


def _saver(config):
    model = build_model(config)
    optimizer = make_optimizer(config.params)
    optimizer.build(model.trainable_variables)
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer)
    return Saver(checkpoint, config.model_dir, max_to_keep=5), model


def _save_steps(config, steps):
    """Checkpoints at ``steps`` with distinct weights; returns the weights of each."""
    saver, model = _saver(config)
    weights = {}
    for step in steps:
        for variable in model.variables:
            variable.assign(variable * 0.5 + 0.01 * step)
        weights[step] = [v.numpy() for v in model.variables]
        saver.save(step)
    return weights


def _assert_weights(model, expected):
    for variable, value in zip(model.variables, expected):
        np.testing.assert_array_equal(variable.numpy(), value)


def _truncate(path, size=1000):
    with open(path, "r+b") as f:
        f.truncate(size)


def test_broken_latest_checkpoint_falls_back_with_a_warning(corpus, tmp_path, caplog):
    config = _config(corpus, tmp_path)
    weights = _save_steps(config, [2, 4, 6])
    run = tmp_path / "run"
    _truncate(run / "ckpt-6.data-00000-of-00001")
    os.remove(run / "ckpt-4.index")
    saver, model = _saver(config)
    with caplog.at_level(logging.WARNING):
        assert saver.restore() == str(run / "ckpt-2")
    messages = [r.getMessage() for r in caplog.records]
    assert any(f"{run / 'ckpt-6'} is unreadable" in m and "Read less bytes" in m for m in messages)
    assert any("ckpt-4.index is missing" in m for m in messages)
    assert messages[-1] == f"Using {run / 'ckpt-2'}, the newest readable checkpoint"
    _assert_weights(model, weights[2])
    # translate, eval and export read through restore_model: the same fallback.
    restored, path = restore_model(config)
    assert path == str(run / "ckpt-2")
    for variable, value in zip(restored.variables, weights[2]):
        np.testing.assert_array_equal(variable.numpy(), value)


def test_lost_state_file_still_finds_the_checkpoints(corpus, tmp_path):
    config = _config(corpus, tmp_path)
    weights = _save_steps(config, [3, 5])
    (tmp_path / "run" / "checkpoint").write_text("garbage {{{")  # cut mid-write, say
    assert tf.train.latest_checkpoint(str(tmp_path / "run")) is None  # what TF alone sees
    assert candidates(str(tmp_path / "run")) == [
        str(tmp_path / "run" / f"ckpt-{s}") for s in (5, 3)
    ]
    saver, model = _saver(config)
    assert saver.restore().endswith("ckpt-5")
    _assert_weights(model, weights[5])


def test_candidates_of_a_relative_model_dir_are_listed_once(corpus, tmp_path, monkeypatch):
    config = _config(corpus, tmp_path)
    _save_steps(config, [3, 5])  # the state file lists them relative to model_dir
    monkeypatch.chdir(tmp_path)
    assert candidates("run") == [os.path.join("run", "ckpt-5"), os.path.join("run", "ckpt-3")]


def test_no_readable_checkpoint_is_an_error_not_a_fresh_start(corpus, tmp_path):
    config = _config(corpus, tmp_path)
    _save_steps(config, [2, 4])
    _truncate(tmp_path / "run" / "ckpt-4.index", 100)
    _truncate(tmp_path / "run" / "ckpt-2.data-00000-of-00001")
    saver, _ = _saver(config)
    with pytest.raises(SeqtrainError) as error:
        saver.restore()
    message = str(error.value)
    assert "none of its 2 checkpoint(s) is readable" in message
    assert "ckpt-4.index or .data-*: not an sstable" in message and "ckpt-2.index" in message
    with pytest.raises(SeqtrainError, match="none of its 2 checkpoint"):
        restore_model(config)
    with pytest.raises(SeqtrainError, match="ckpt-4: unreadable checkpoint"):
        restore_model(config, str(tmp_path / "run" / "ckpt-4"))


def test_checkpoint_write_error_keeps_the_previous_one(corpus, tmp_path):
    config = _config(corpus, tmp_path)
    weights = _save_steps(config, [5])
    run = tmp_path / "run"
    state = (run / "checkpoint").read_text()
    saver, model = _saver(config)
    restore = _limit_file_size(100_000)  # below the data file (~570 kB)
    try:
        with pytest.raises(SeqtrainError) as error:
            saver.save(10)
    finally:
        restore()
    assert str(error.value) == (
        f"{run}: cannot write checkpoint ckpt-10 ("
        + str(error.value).split("(", 1)[1].split(")", 1)[0]
        + f"); the previous one, {run / 'ckpt-5'}, is intact: free disk space and run the same "
        "command again to resume"
    )
    assert "File too large" in str(error.value)
    assert (run / "checkpoint").read_text() == state
    assert sorted(os.listdir(run)) == [
        "checkpoint",
        "ckpt-5.data-00000-of-00001",
        "ckpt-5.index",
    ]  # no ckpt-10_temp left
    saver, model = _saver(config)
    assert saver.restore().endswith("ckpt-5")
    _assert_weights(model, weights[5])


def test_export_write_error_leaves_the_previous_export(corpus, tmp_path):
    config = _config(corpus, tmp_path)
    model = build_model(config)
    output = tmp_path / "export"
    output.mkdir()
    (output / "previous").write_text("an earlier export")
    restore = _limit_file_size(50_000)
    try:
        with pytest.raises(SeqtrainError) as error:
            export_model(config, model, str(output))
    finally:
        restore()
    assert f"{output}: cannot write the SavedModel (" in str(error.value)
    assert "the previous export there is unchanged: free disk space" in str(error.value)
    assert sorted(os.listdir(tmp_path)) == ["data", "export", "run", "run.yml"]  # no export.tmp*
    assert os.listdir(output) == ["previous"]


def _write_lock(model_dir, pid, host=None):
    os.makedirs(model_dir, exist_ok=True)
    owner = {"pid": pid, "host": host or socket.gethostname(), "started": 0}
    with open(os.path.join(model_dir, runguard.LOCK_FILE), "w") as f:
        json.dump(owner, f)


def test_second_run_on_a_model_dir_refuses(corpus, tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        _write_lock(tmp_path / "run", holder.pid)
        config = write_config(tmp_path / "run.yml", tiny_config(corpus, tmp_path / "run"))
        proc = run_cli("train", "--config", config)
    finally:
        holder.kill()
        holder.wait()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    message = proc.stderr.strip().splitlines()[-1]
    assert f"in use by another training run (PID {holder.pid} on {socket.gethostname()}" in message
    assert f"delete {tmp_path / 'run' / 'seqtrain.lock'}" in message
    assert sorted(os.listdir(tmp_path / "run")) == ["seqtrain.lock"]  # nothing written


def test_stale_lock_is_taken_over_with_a_warning(tmp_path, caplog):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _write_lock(tmp_path, dead.pid)
    with caplog.at_level(logging.WARNING):
        with runguard.RunLock(str(tmp_path)) as lock:
            assert json.load(open(tmp_path / "seqtrain.lock"))["pid"] == os.getpid()
            assert lock.owner["pid"] == os.getpid()
    assert f"taking over the lock of PID {dead.pid}, which no longer runs" in caplog.text
    assert not (tmp_path / "seqtrain.lock").exists()  # released
    _write_lock(tmp_path, dead.pid, host="another-host")  # cannot be checked from here
    with pytest.raises(SeqtrainError, match=f"PID {dead.pid} on another-host"):
        runguard.RunLock(str(tmp_path)).__enter__()


def test_changed_model_or_vocabulary_on_resume_is_an_error(corpus, tmp_path):
    config = _config(corpus, tmp_path)
    runguard.check_resume(config, resuming=False)
    saved = (tmp_path / "run" / "config.yml").read_text()
    shutil.copy(corpus["tgt.vocab"], tmp_path / "other.vocab")
    changed = _config(
        corpus,
        tmp_path,
        model={"num_units": 64, "alignment_heads": 2},
        data={"target_vocabulary": str(tmp_path / "other.vocab")},
    )
    with pytest.raises(SeqtrainError) as error:
        runguard.check_resume(changed, resuming=True)
    message = str(error.value)
    assert f"{tmp_path / 'run' / 'config.yml'}: the checkpoints in" in message
    assert "model.num_units: 32 -> 64" in message
    assert "model.alignment_heads: 1 -> 2" in message
    assert f"data.target_vocabulary: '{corpus['tgt.vocab']}' -> '{tmp_path / 'other.vocab'}'" in (
        message
    )
    assert (tmp_path / "run" / "config.yml").read_text() == saved  # untouched
    assert not (tmp_path / "run" / "config.1.yml").exists()


def test_safe_changes_on_resume_are_logged_and_configs_kept(corpus, tmp_path, caplog):
    config = _config(corpus, tmp_path)
    runguard.check_resume(config, resuming=False)
    first = (tmp_path / "run" / "config.yml").read_text()
    runguard.check_resume(config, resuming=True)  # unchanged: nothing to keep twice
    assert not (tmp_path / "run" / "config.1.yml").exists()
    changed = _config(
        corpus,
        tmp_path,
        train={"batch_size": 512, "max_step": 12},
        params={"learning_rate": 0.5},
        model={"dropout": 0.3},
    )
    with caplog.at_level(logging.INFO):
        runguard.check_resume(changed, resuming=True)
    assert (tmp_path / "run" / "config.1.yml").read_text() == first
    assert load_config([str(tmp_path / "run" / "config.yml")]) == changed
    for change in (
        "model.dropout 0.1 -> 0.3",
        "params.learning_rate 1.0 -> 0.5",
        "train.batch_size 256 -> 512",
        "train.max_step 6 -> 12",
    ):
        assert f"Configuration change: {change}" in caplog.text
