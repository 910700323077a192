"""Shared pieces of the seqtrain vs OpenNMT-tf benchmarks (bench/train.py, opennmt_baseline.py,
compare.py, roofline.py): the work dir, the data and vocabularies, the model shapes, running a
command while measuring its peak RSS, log parsing, medians and the FLOP model.

No TensorFlow import here: compare.py runs each system in its own process and stays light.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_DATA = os.path.join(REPO, "..", "shared", "data", "onmt-toy-ende")
DEFAULT_WORKDIR = os.path.join(os.path.expanduser("~"), ".cache", "seqtrain-bench")
SEQTRAIN_PYTHON = os.environ.get("SEQTRAIN_PYTHON", sys.executable)

# Model shapes of the issue: "small" is the quickstart-like one, "mid" the mid-size one.
SHAPES = {
    "small": {"num_layers": 2, "num_units": 256, "num_heads": 4, "ffn_inner_dim": 1024},
    "mid": {"num_layers": 3, "num_units": 512, "num_heads": 8, "ffn_inner_dim": 2048},
}


@dataclass(frozen=True)
class Data:
    """Files both systems train and decode on (the same vocabularies for both)."""

    train_source: str
    train_target: str
    train_alignments: str
    test_source: str
    source_vocabulary: str
    target_vocabulary: str


@dataclass(frozen=True)
class TrainSettings:
    """What one training run does; the same values go into both systems' YAML."""

    shape: str = "small"
    guided_alignment: bool = True
    steps: int = 40  # optimizer updates
    summary_steps: int = 1  # log period; 1: per-step losses comparable across both systems
    skip_steps: int = 5  # first steps left out of the timing (tracing, first shapes)
    batch_size: int = 2048  # tokens, per step
    warmup_steps: int = 400  # Noam warm-up: short so that the loss moves in a short run
    beam_width: int = 4
    infer_batch_size: int = 32
    maximum_decoding_length: int = 100
    minimum_decoding_length: int = 0  # OpenNMT-tf only: = maximum forces equal output lengths


def prepare_data(data_dir: str, workdir: str, vocab_size: int = 8004) -> Data:
    """Builds the word vocabularies once (``seqtrain build-vocab --size``) into the work dir."""
    vocab_dir = os.path.join(workdir, "data")
    os.makedirs(vocab_dir, exist_ok=True)
    vocabs = {}
    for side, lang in (("source", "en"), ("target", "de")):
        path = os.path.join(vocab_dir, f"{lang}.{vocab_size}.vocab")
        if not os.path.exists(path):
            cmd = [SEQTRAIN_PYTHON, "-m", "seqtrain.cli", "build-vocab"]
            cmd += [os.path.join(data_dir, f"train.{lang}"), "--save_vocab", path]
            subprocess.run(cmd + ["--size", str(vocab_size)], check=True, capture_output=True)
        vocabs[side] = path
    return Data(
        train_source=os.path.join(data_dir, "train.en"),
        train_target=os.path.join(data_dir, "train.de"),
        train_alignments=os.path.join(data_dir, "train.en-de.align"),
        test_source=os.path.join(data_dir, "test.en"),
        source_vocabulary=vocabs["source"],
        target_vocabulary=vocabs["target"],
    )


def fresh_dir(path: str) -> str:
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    return path


def head_file(source: str, destination: str, lines: int) -> str:
    """The first ``lines`` lines of ``source`` (a decoding test subset)."""
    with open(source, encoding="utf-8") as f:
        head = [line for _, line in zip(range(lines), f)]
    with open(destination, "w", encoding="utf-8") as f:
        f.writelines(head)
    return destination


# ---------------------------------------------------------------- measured runs


@dataclass
class RunResult:
    command: list
    returncode: int
    wall_s: float
    peak_rss_mb: float  # ru_maxrss of the process (VmHWM at exit), MiB
    cpu_s: float  # user + system CPU seconds of the whole process
    log_path: str
    marks: list  # (step, wall s since start, process CPU s, VmRSS MiB) when a log line appeared

    def tail(self, lines: int = 15) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return "".join(f.readlines()[-lines:])


STEP_MARK = re.compile(r"Step = (\d+) ;")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_rss_mb(pid: int) -> float | None:
    """Current resident set (VmRSS) of a live process, MiB."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def process_cpu_seconds(pid: int) -> float | None:
    """utime + stime of a live process (all its threads), from /proc/PID/stat."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # fields 14 and 15 of stat(5)


class _LogWatcher:
    """Notes (step, wall, CPU, RSS) each time a ``Step = N ;`` line lands in the log (0.1 s polls):
    CPU seconds per step stay meaningful when other jobs share the cores and wall time does not.
    """

    def __init__(self, path: str, pid: int, start: float):
        self.path, self.pid, self.start = path, pid, start
        self.offset, self.partial, self.marks = 0, "", []

    def poll(self) -> None:
        with open(self.path, encoding="utf-8", errors="replace") as f:
            f.seek(self.offset)
            chunk = f.read()
            self.offset = f.tell()
        if not chunk:
            return
        *lines, self.partial = (self.partial + chunk).split("\n")
        for line in lines:
            match = STEP_MARK.search(line)
            if match:
                step, now = int(match.group(1)), time.monotonic() - self.start
                cpu, rss = process_cpu_seconds(self.pid), process_rss_mb(self.pid)
                self.marks.append((step, now, cpu, rss))


def run_measured(cmd, log_path: str, cwd=None, env=None, timeout: float | None = None):
    """Runs ``cmd`` (output to ``log_path``); peak RSS from wait4's rusage of that process.

    ``ru_maxrss`` of a reaped child is its high-water mark (VmHWM): exact, no polling, no psutil.
    On timeout the process group is killed (returncode -9).
    """
    env = {**os.environ, **(env or {})}
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    env.setdefault("PYTHONUNBUFFERED", "1")
    start = time.monotonic()
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, cwd=cwd, env=env, start_new_session=True
        )
        watcher = _LogWatcher(log_path, proc.pid, start)
        while True:
            watcher.poll()
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if timeout is not None and time.monotonic() - start > timeout:
                os.killpg(proc.pid, signal.SIGKILL)
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.1)
    proc.returncode = os.waitstatus_to_exitcode(status)  # Popen must not reap it again
    wall = time.monotonic() - start
    cpu = usage.ru_utime + usage.ru_stime
    return RunResult(
        list(cmd), proc.returncode, wall, usage.ru_maxrss / 1024.0, cpu, log_path, watcher.marks
    )


def cpu_per_step(marks: list, warmup_steps: int) -> float | None:
    """Process CPU seconds per step between the first mark after warm-up and the last mark."""
    marks = [m for m in marks if m[0] >= warmup_steps and m[2] is not None]
    if len(marks) < 2 or marks[-1][0] == marks[0][0]:
        return None
    return (marks[-1][2] - marks[0][2]) / (marks[-1][0] - marks[0][0])


def check(result: RunResult, what: str) -> None:
    if result.returncode != 0:
        raise RuntimeError(
            f"{what} failed (exit {result.returncode}); log {result.log_path}:\n{result.tail()}"
        )


# ---------------------------------------------------------------- log parsing and statistics

# Both systems print this line (seqtrain kept OpenNMT-tf's format on purpose).
LOG_LINE = re.compile(
    r"Step = (?P<step>\d+) ; steps/s = (?P<steps_per_sec>[\d.]+), tokens/s = (?P<tokens>\d+) "
    r"\((?P<source_tokens_per_sec>\d+) source, (?P<target_tokens_per_sec>\d+) target\) ; "
    r"Learning rate = (?P<learning_rate>[\d.e+-]+) ; Loss = (?P<loss>[\d.e+-]+|nan|inf)"
)


def parse_log_lines(text: str) -> list[dict]:
    """Training records (step, steps_per_sec, target_tokens_per_sec, …, loss) of a log."""
    records = []
    for match in LOG_LINE.finditer(text):
        record = {k: float(v) for k, v in match.groupdict().items()}
        record["step"] = int(record["step"])
        records.append(record)
    return records


def read_metrics_jsonl(path: str) -> list[dict]:
    """seqtrain's model_dir/metrics.jsonl, train records only."""
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()]
    return [r for r in records if r.get("kind") == "train"]


def summarize_windows(records: list[dict], skip_steps: int, loss_steps: int = 5) -> dict:
    """Throughput of the log windows after step ``skip_steps`` (tracing, first shapes), and the
    loss of the last ``loss_steps`` steps.

    Rates are totals over those windows (Σ target tokens / Σ seconds, each window's seconds =
    its steps / its steps/s), not a median of per-window ratios. The loss is the mean of the
    logged losses of windows ending in the last ``loss_steps`` steps: log every step
    (summary_steps 1) to compare systems, because OpenNMT-tf logs the loss of the window's LAST
    step while seqtrain logs the mean over the window (on a falling curve the mean lags).
    """
    timed, previous = [], 0
    for record in records:
        steps = record["step"] - previous
        previous = record["step"]
        if record["step"] > skip_steps and record["steps_per_sec"] > 0:
            timed.append((steps, steps / record["steps_per_sec"], record))
    if not timed:
        return {"windows": 0}
    seconds = sum(t[1] for t in timed)
    last = records[-1]["step"]
    tail = [r["loss"] for r in records if r["step"] > last - loss_steps]
    return {
        "windows": len(timed),
        "timed_steps": sum(t[0] for t in timed),
        "target_tokens_per_sec": sum(r["target_tokens_per_sec"] * s for _, s, r in timed) / seconds,
        "source_tokens_per_sec": sum(r["source_tokens_per_sec"] * s for _, s, r in timed) / seconds,
        "steps_per_sec": sum(t[0] for t in timed) / seconds,
        "loss": sum(tail) / len(tail),
        "last_step": last,
    }


def summarize_run(result: RunResult, records: list[dict], skip_steps: int) -> dict:
    """Throughput (the tool's own log), CPU seconds per step (our /proc marks), peak RSS.

    ``target_tokens_per_cpu_s`` = target tokens per step / CPU seconds per step: less sensitive
    than wall-clock rates to other jobs on the machine (it still moves with cache and memory
    bandwidth contention, and with threads that spin while they wait).
    """
    summary = summarize_windows(records, skip_steps)
    per_step = None
    if summary.get("steps_per_sec"):
        per_step = summary["target_tokens_per_sec"] / summary["steps_per_sec"]
    cpu = cpu_per_step(result.marks, skip_steps)
    summary.update(
        target_tokens_per_step=per_step,
        cpu_s_per_step=cpu,
        target_tokens_per_cpu_s=per_step / cpu if per_step and cpu else None,
        peak_rss_mb=result.peak_rss_mb,
        rss_mb_at_steps=[(m[0], m[3]) for m in result.marks],
        wall_s=result.wall_s,
        cpu_s=result.cpu_s,
        log=result.log_path,
    )
    return summary


def spread(values: list[float]) -> dict:
    """median, min, max and relative half-range of a list of measurements."""
    values = [v for v in values if v is not None]
    if not values:
        return {"median": None, "min": None, "max": None, "n": 0, "rel_spread": None}
    med = statistics.median(values)
    rel = (max(values) - min(values)) / (2 * med) if med else None
    return {
        "median": med,
        "min": min(values),
        "max": max(values),
        "n": len(values),
        "rel_spread": rel,
    }


# ---------------------------------------------------------------- the FLOP model


def corpus_lengths(source_path: str, target_path: str) -> list[tuple[int, int]]:
    """(S, T) per training example: S source words, T = target words + 1 (``</s>``)."""
    with open(source_path, encoding="utf-8") as fs, open(target_path, encoding="utf-8") as ft:
        return [(len(s.split()), len(t.split()) + 1) for s, t in zip(fs, ft)]


def example_train_flops(source_len: int, target_len: int, shape: dict, vocab: int) -> dict:
    """Training FLOPs of one example on real (unpadded) tokens, split into matmul and attention.

    Forward: 2 FLOPs per multiply-add; training = forward + backward = 3 × forward. Matmuls:
    encoder layer 4d² (q, k, v, out) + 2df (FFN) per source token; decoder layer 4d² (self) +
    2d² (cross q, out) + 2df per target token and 2d² (cross k, v) per source token; output
    projection dV per target token. Attention (scores + context, 2·d per query-key pair): encoder
    S² pairs, decoder causal T(T+1)/2 self pairs and T·S cross pairs per layer.
    """
    d, f, layers = shape["num_units"], shape["ffn_inner_dim"], shape["num_layers"]
    s, t = source_len, target_len
    matmul = layers * (s * (4 * d * d + 2 * d * f) + t * (6 * d * d + 2 * d * f) + s * 2 * d * d)
    matmul += t * d * vocab
    attention = layers * 2 * d * (s * s + t * (t + 1) // 2 + t * s)
    return {"matmul": 6 * matmul, "attention": 6 * attention}


def train_flops_per_target_token(lengths, shape: dict, vocab: int) -> dict:
    """Corpus-average training FLOPs per target token (training samples the corpus uniformly)."""
    total = {"matmul": 0, "attention": 0}
    tokens = 0
    for s, t in lengths:
        for key, value in example_train_flops(s, t, shape, vocab).items():
            total[key] += value
        tokens += t
    per = {k: v / tokens for k, v in total.items()}
    per["total"] = per["matmul"] + per["attention"]
    return per


def parameter_count(shape: dict, source_vocab: int, target_vocab: int) -> int:
    """Trainable parameters of the Transformer (embeddings, layers, norms, output layer)."""
    d, f, layers = shape["num_units"], shape["ffn_inner_dim"], shape["num_layers"]
    attention = 4 * d * d + 4 * d
    ffn = 2 * d * f + f + d
    encoder = layers * (attention + ffn + 4 * d) + 2 * d
    decoder = layers * (2 * attention + ffn + 6 * d) + 2 * d
    return (source_vocab + target_vocab) * d + encoder + decoder + d * target_vocab + target_vocab


def as_json(obj):
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj
