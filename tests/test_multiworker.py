"""A real two-process MultiWorkerMirroredStrategy run on 127.0.0.1 (slow: ~30-60 s)."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
import tensorflow as tf
from conftest import tiny_config, write_config

LOSS = re.compile(r"Step = (\d+) ; .* Loss = (\d+\.\d+) ; CE = (\d+\.\d+)")


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _launch(*configs, count=2):
    """Starts ``count`` workers of one multi-worker run on 127.0.0.1."""
    workers = [f"127.0.0.1:{port}" for port in free_ports(count)]
    processes = []
    for index in range(count):
        tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        env = {
            **os.environ,
            "TF_CONFIG": json.dumps(tf_config),
            # Two processes share the machine: one thread pool each avoids oversubscription.
            "TF_NUM_INTRAOP_THREADS": "1",
            "TF_NUM_INTEROP_THREADS": "1",
        }
        processes.append(
            subprocess.Popen(
                [sys.executable, "-m", "seqtrain.cli", "train", "--config", *configs],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
                start_new_session=True,
            )
        )
    return processes


@pytest.mark.slow
def test_two_workers_train_and_agree(corpus, tmp_path):
    run = tmp_path / "run"
    train = {"max_step": 3, "save_summary_steps": 1, "save_checkpoints_steps": 3}
    config = write_config(tmp_path / "run.yml", tiny_config(corpus, run, train=train))
    processes = _launch(config)
    outputs = []
    try:
        for process in processes:
            _, err = process.communicate(timeout=240)
            outputs.append((process.returncode, err))
    finally:
        for process in processes:  # the workers ignore SIGTERM while waiting for their peer
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
    for code, err in outputs:
        assert code == 0, err[-3000:]
    losses = [[m.groups() for m in map(LOSS.search, err.splitlines()) if m] for _, err in outputs]
    assert [int(step) for step, _, _ in losses[0]] == [1, 2, 3]
    assert losses[0] == losses[1]  # both workers report the same all-reduced figures
    assert "2 replica(s)" in outputs[0][1]
    assert (run / "ckpt-3.index").exists()  # only the chief writes into model_dir
    records = [json.loads(line) for line in open(run / "metrics.jsonl")]
    assert [r["step"] for r in records] == [1, 2, 3]


@pytest.mark.slow
def test_a_dead_worker_stops_the_other_within_the_timeout(corpus, tmp_path):
    run = tmp_path / "run"
    train = {"max_step": 100000, "save_summary_steps": 1, "save_checkpoints_steps": 5}
    train["worker_timeout"] = 10.0
    config = write_config(tmp_path / "run.yml", tiny_config(corpus, run, train=train))
    chief, other = _launch(config)
    try:
        metrics = run / "metrics.jsonl"
        deadline = time.time() + 240
        while time.time() < deadline and chief.poll() is None:
            if metrics.exists() and len(metrics.read_text().splitlines()) >= 7:
                break
            time.sleep(0.1)
        os.killpg(other.pid, signal.SIGKILL)  # worker 1 dies
        other.wait()
        _, err = chief.communicate(timeout=180)
    finally:
        for process in (chief, other):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
    assert chief.returncode == 2, err[-3000:]
    message = err.strip().splitlines()[-1]
    assert "a collective operation failed (" in message, message
    assert "another worker died" in message and "train.worker_timeout = 10 s" in message
    assert "restart all workers: they resume from the last checkpoint" in message
    assert not (run / "seqtrain.lock").exists()
    latest = tf.train.latest_checkpoint(str(run))
    step = int(latest.rsplit("-", 1)[1])  # 5 at least
    # Restart both: each restores the same checkpoint and they train on together.
    more = write_config(tmp_path / "more.yml", {"train": {"max_step": step + 3}})
    processes = _launch(config, more)
    try:
        outputs = [p.communicate(timeout=240)[1] for p in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
    for process, err in zip(processes, outputs):
        assert process.returncode == 0, err[-3000:]
        assert f"Restored checkpoint {latest}" in err
    losses = [[m.groups() for m in map(LOSS.search, err.splitlines()) if m] for err in outputs]
    assert [int(s) for s, _, _ in losses[0]] == [step + 1, step + 2, step + 3]
    assert losses[0] == losses[1]
