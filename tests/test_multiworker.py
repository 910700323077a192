"""A real two-process MultiWorkerMirroredStrategy run on 127.0.0.1 (slow: ~30-60 s), compared
with a single-process run of the same global batches: the WEIGHTS after N steps, not only the
figures the workers print (an error both workers share, MEAN instead of SUM or a double count,
prints the same figures on both).

aligned_tokens mode, dropout off, Adam ε = 1, tolerance 1e-4 of the update: see
distributed_reference.py for why. Each worker reads its own shard of the corpus (tf.distribute gives
each worker an input pipeline); the reference builds the same two shards in one process and
trains on them as two accumulation steps.
"""

import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
import tensorflow as tf
from conftest import HANG_GUARD, tiny_config, write_config
from distributed_reference import (
    STEPS,
    TOLERANCE,
    checkpoint_weights,
    global_batches,
    initial_weights,
    invariance_config,
    relative_difference,
    train_reference,
)

from seqtrain import config as cfg

LOSS = re.compile(r"Step = (\d+) ; .* Loss = (\d+\.\d+) ; CE = (\d+\.\d+)")
# What a worker prints when its port was taken between our check and its bind.
PORT_TAKEN = re.compile(r"Could not start gRPC server|Address already in use|Failed to add port")


def _ephemeral_range():
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = map(int, f.read().split())
        return low, high
    except OSError:
        return 32768, 60999


def free_ports(count):
    """``count`` ports that are free now, chosen BELOW the ephemeral range.

    The race of "bind port 0, close, let the worker bind it": the kernel hands ports of the
    ephemeral range to every outgoing connection and every bind to port 0, so another process
    can get the port before the worker binds it. Ports outside that range are only ever taken
    by an explicit bind; and `_run_workers` retries with new ports if that happened anyway.
    TensorFlow's gRPC server sets no SO_REUSEPORT, so holding the port open while the worker
    binds it is not possible.
    """
    rng = random.SystemRandom()
    low = max(1024, _ephemeral_range()[0] - 12000)
    high = _ephemeral_range()[0] - 1
    ports = []
    while len(ports) < count:
        port = rng.randint(low, high)
        if port in ports:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        ports.append(port)
    return ports


def _start_workers(configs, workers):
    """configs: the --config files of every worker (merged left to right)."""
    processes = []
    for index in range(len(workers)):
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


def _kill(processes):
    for process in processes:  # the workers ignore SIGTERM while waiting for their peer
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)


def _run_workers(*configs, attempts=3):
    """Runs the 2 workers to the end -> [(returncode, stderr)]; new ports if one was taken."""
    for _ in range(attempts):
        processes = _start_workers(configs, [f"127.0.0.1:{p}" for p in free_ports(2)])
        try:
            outputs = [None, None]
            deadline = time.monotonic() + HANG_GUARD  # a deadlock guard only
            while None in outputs and time.monotonic() < deadline:
                for k, process in enumerate(processes):
                    if outputs[k] is None and process.poll() is not None:
                        outputs[k] = (process.returncode, process.stderr.read())
                        if process.returncode != 0:  # the peer would wait for it forever
                            _kill(processes)
                time.sleep(0.5)  # polling period, not a timing assumption
            for k, process in enumerate(processes):
                if outputs[k] is None:
                    _kill([process])
                    outputs[k] = (process.wait(), process.stderr.read())
        finally:
            _kill(processes)
            for process in processes:
                process.stdout.close()
                process.stderr.close()
        if not any(code and PORT_TAKEN.search(err) for code, err in outputs):
            return outputs
    return outputs


@pytest.mark.slow
def test_two_workers_train_and_agree_with_one_process(corpus, tmp_path):
    raw = invariance_config(corpus, tmp_path / "run", "aligned_tokens")
    outputs = _run_workers(write_config(tmp_path / "run.yml", raw))
    for code, err in outputs:
        assert code == 0, err[-3000:]
    losses = [[m.groups() for m in map(LOSS.search, err.splitlines()) if m] for _, err in outputs]
    assert [int(step) for step, _, _ in losses[0]] == list(range(1, STEPS + 1))
    assert losses[0] == losses[1]  # both workers report the same all-reduced figures
    assert "2 replica(s)" in outputs[0][1]
    run = tmp_path / "run"
    assert (run / f"ckpt-{STEPS}.index").exists()  # only the chief writes into model_dir
    records = [json.loads(line) for line in open(run / "metrics.jsonl")]
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    # The weights: the chief's checkpoint against one process trained on the same two shards.
    config = cfg.build({**raw, "model_dir": str(tmp_path / "reference")}, "test")
    reference = train_reference(config, global_batches(config, 2, STEPS), whole=False)
    workers = checkpoint_weights(config, str(run / f"ckpt-{STEPS}"))
    difference = relative_difference(workers, reference, initial_weights(config))
    assert difference < TOLERANCE, difference


@pytest.mark.slow
def test_a_dead_worker_stops_the_other_within_the_timeout(corpus, tmp_path):
    run = tmp_path / "run"
    train = {"max_step": 100000, "save_summary_steps": 1, "save_checkpoints_steps": 5}
    train["worker_timeout"] = 10.0
    config = write_config(tmp_path / "run.yml", tiny_config(corpus, run, train=train))
    chief, other = _start_workers([config], [f"127.0.0.1:{p}" for p in free_ports(2)])
    try:
        metrics = run / "metrics.jsonl"
        deadline = time.monotonic() + HANG_GUARD  # a deadlock guard only
        while time.monotonic() < deadline and chief.poll() is None:
            if metrics.exists() and len(metrics.read_text().splitlines()) >= 7:
                break
            time.sleep(0.1)  # polling period, not a timing assumption
        os.killpg(other.pid, signal.SIGKILL)  # worker 1 dies
        other.wait()
        _, err = chief.communicate(timeout=HANG_GUARD)
    finally:
        _kill([chief, other])
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
    outputs = _run_workers(config, more)
    for code, err in outputs:
        assert code == 0, err[-3000:]
        assert f"Restored checkpoint {latest}" in err
    losses = [[m.groups() for m in map(LOSS.search, err.splitlines()) if m] for _, err in outputs]
    assert [int(s) for s, _, _ in losses[0]] == [step + 1, step + 2, step + 3]
    assert losses[0] == losses[1]
