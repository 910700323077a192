"""A real two-process MultiWorkerMirroredStrategy run on 127.0.0.1 (slow: ~30-60 s)."""

import json
import os
import re
import signal
import socket
import subprocess
import sys

import pytest
from conftest import HANG_GUARD, tiny_config, write_config

LOSS = re.compile(r"Step = (\d+) ; .* Loss = (\d+\.\d+) ; CE = (\d+\.\d+)")


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.mark.slow
def test_two_workers_train_and_agree(corpus, tmp_path):
    run = tmp_path / "run"
    train = {"max_step": 3, "save_summary_steps": 1, "save_checkpoints_steps": 3}
    config = write_config(tmp_path / "run.yml", tiny_config(corpus, run, train=train))
    workers = [f"127.0.0.1:{port}" for port in free_ports(2)]
    processes = []
    for index in range(2):
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
                [sys.executable, "-m", "seqtrain.cli", "train", "--config", config],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
                start_new_session=True,
            )
        )
    outputs = []
    try:
        for process in processes:
            _, err = process.communicate(timeout=HANG_GUARD)
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
