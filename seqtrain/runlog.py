"""Training figures out: the log line, metrics.jsonl, TensorBoard; and reading them back.

The log line is the interface people grep, so its format is fixed here once (DESIGN.md):

``Step = 100 ; steps/s = 2.45, tokens/s = 40123 (19560 source, 20563 target) ; Learning rate =
0.000025 ; Loss = 3.386743 ; CE = 3.303332 ; Alignment = 1.000929``

``seqtrain log`` reads ``model_dir/metrics.jsonl`` (one JSON object per report) or, for runs of
other tools, a captured log with such lines, and prints a table or draws the curves.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import struct

from seqtrain.errors import SeqtrainError

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
_LINE = re.compile(
    r"Step = (?P<step>\d+) ; steps/s = (?P<steps_per_sec>[\d.]+), "
    r"tokens/s = (?P<tokens_per_sec>\d+)"
    r" \((?P<source_tokens_per_sec>\d+) source, (?P<target_tokens_per_sec>\d+) target\) ; "
    r"Learning rate = (?P<learning_rate>[\d.e+-]+) ; Loss = (?P<loss>[\d.e+-]+|nan|inf)"
    r"(?: ; CE = (?P<ce>[\d.e+-]+|nan|inf))?(?: ; Alignment = (?P<alignment>[\d.e+-]+|nan|inf))?"
)
_EVAL = re.compile(r"Evaluation at step (?P<step>\d+) ; (?P<rest>.*)")


def format_train_line(record: dict) -> str:
    """The log line of a record (step, steps_per_sec, token rates, lr, loss, ce[, alignment])."""
    line = (
        f"Step = {record['step']} ; steps/s = {record['steps_per_sec']:.2f}, "
        f"tokens/s = {record['tokens_per_sec']:.0f} ({record['source_tokens_per_sec']:.0f} source, "
        f"{record['target_tokens_per_sec']:.0f} target) ; "
        f"Learning rate = {record['learning_rate']:f} ; Loss = {record['loss']:f}"
    )
    if "ce" in record:
        line += f" ; CE = {record['ce']:f}"
    if "alignment" in record:
        line += f" ; Alignment = {record['alignment']:f}"
    return line


def format_eval_line(step: int, metrics: dict) -> str:
    """``Evaluation at step N ; loss = … ; perplexity = … ; bleu = … ; aer = …``."""
    parts = [
        f"{name} = {int(value)}" if name == "cut" else f"{name} = {value:.4f}"  # cut: a count
        for name, value in metrics.items()
    ]
    return f"Evaluation at step {step} ; " + " ; ".join(parts)


class MetricsWriter:
    """Sends each report to the log, TensorBoard (tf.summary) and metrics.jsonl."""

    def __init__(self, model_dir: str, summary_writer=None):
        self.path = os.path.join(model_dir, METRICS_FILE)
        self.summary_writer = summary_writer  # a tf.summary writer, or None (non-chief worker)
        self.checked_tail = False  # whether a cut last line (crash mid-write) was looked for

    def write(self, kind: str, step: int, values: dict, line: str | None = None) -> None:
        """kind is "train" or "eval"; values are plain floats keyed by metric name."""
        if line:
            logger.info(line)
        record = {"kind": kind, "step": int(step), **{k: float(v) for k, v in values.items()}}
        if self.summary_writer is None:
            return
        text = json.dumps(record) + "\n"
        if not self.checked_tail:
            # A run killed mid-write (or a full disk) leaves a cut last line: start a fresh line
            # so that the new records stay readable (the cut one is skipped by read_records).
            self.checked_tail = True
            if not _ends_with_newline(self.path):
                logger.warning("%s: the last line was cut (an earlier crash?)", self.path)
                text = "\n" + text
        try:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(text)
        except OSError as e:
            raise SeqtrainError(
                f"{self.path}: cannot append the step {step} record ({e.strerror}); free disk "
                "space and run the same command again: training resumes from the last checkpoint"
            ) from e
        import tensorflow as tf  # only the writer needs TF; `seqtrain log` must stay light
        from tensorflow.core.framework import summary_pb2

        # tf.summary.scalar lives in the tensorboard package, which TensorFlow no longer pulls
        # in; a float32 scalar tagged for the "scalars" plugin is exactly what it would write.
        metadata = summary_pb2.SummaryMetadata(
            plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars")
        )
        try:
            with self.summary_writer.as_default(step=int(step)):
                for name, value in values.items():
                    if name != "step":
                        value = tf.constant(float(value))
                        tf.summary.write(f"{kind}/{name}", value, metadata=metadata)
            self.summary_writer.flush()
        except tf.errors.OpError as e:  # e.g. "File too large", "No space left on device"
            reason = e.message.strip().splitlines()[0].rsplit("; ", 1)[-1]
            raise SeqtrainError(
                f"{os.path.dirname(self.path)}: cannot write the TensorBoard events of step {step}"
                f" ({reason}); free disk space and run the same command again: training resumes "
                "from the last checkpoint"
            ) from e

    def write_images(self, step: int, images) -> None:
        """(tag, PNG bytes) pairs as TensorBoard image summaries; nothing without a writer."""
        if self.summary_writer is None or not images:
            return
        import tensorflow as tf
        from tensorflow.core.framework import summary_pb2

        # What tensorboard's image summary writes: [width, height, PNG] strings, "images" plugin.
        metadata = summary_pb2.SummaryMetadata(
            plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="images"),
            data_class=summary_pb2.DATA_CLASS_BLOB_SEQUENCE,
        )
        with self.summary_writer.as_default(step=int(step)):
            for tag, png in images:
                width, height = png_size(png)
                value = tf.constant([str(width).encode(), str(height).encode(), png])
                tf.summary.write(tag, value, metadata=metadata)
        self.summary_writer.flush()


def _ends_with_newline(path: str) -> bool:
    """True for a missing or empty file or one whose last byte is a newline."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            if f.tell() == 0:
                return True
            f.seek(-1, os.SEEK_END)
            return f.read(1) == b"\n"
    except FileNotFoundError:
        return True


def png_size(png: bytes) -> tuple[int, int]:
    """(width, height) in pixels from a PNG's IHDR header."""
    if png[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    return struct.unpack(">II", png[16:24])


def read_records(path: str) -> list[dict]:
    """Records from a model_dir, a metrics.jsonl, or a captured log of seqtrain or OpenNMT-tf."""
    if os.path.isdir(path):
        path = os.path.join(path, METRICS_FILE)
    if not os.path.isfile(path):
        raise SeqtrainError(f"{path}: no such file; give a model_dir, its metrics.jsonl or a log")
    records = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
            if path.endswith(".jsonl"):
                record = _json_record(line)
                if isinstance(record, str):
                    # A crash or a full disk cuts a line: skip it, keep the rest of the run.
                    logger.warning("%s, line %d: skipped, %s", path, number, record)
                elif record is not None:
                    records.append(record)
                continue
            records.extend(_parse_log_line(line))
    return records


def _json_record(line: str) -> dict | str | None:
    """The record of one metrics.jsonl line, None for a blank line, or why it is unreadable."""
    if not line.strip():
        return None
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        return f"not JSON ({e.msg})"
    if not isinstance(record, dict) or not isinstance(record.get("step"), (int, float)):
        return "not a record with a step"
    return record


def _parse_log_line(line: str) -> list[dict]:
    m = _LINE.search(line)
    if m:
        values = {k: float(v) for k, v in m.groupdict().items() if v is not None}
        return [{"kind": "train", **values, "step": int(values["step"])}]
    m = _EVAL.search(line)
    if m:
        values = {}
        for part in m.group("rest").split(" ; "):
            name, _, value = part.partition(" = ")
            try:
                values[name.strip()] = float(value)
            except ValueError:
                continue
        return [{"kind": "eval", "step": int(m.group("step")), **values}]
    return []


EVAL_ORDER = ("loss", "perplexity", "bleu", "chrf", "aer", "precision", "recall")


def _eval_names(evals) -> list[str]:
    names = {k for r in evals for k in r if k not in ("kind", "step")}
    return [n for n in EVAL_ORDER if n in names] + sorted(names - set(EVAL_ORDER))


def table(path: str) -> str:
    """A compact text table of the train reports, with dev metrics (``dev_*``) joined on step."""
    records = read_records(path)
    evals = {r["step"]: r for r in records if r.get("kind") == "eval"}
    train = {r["step"]: r for r in records if r.get("kind") == "train"}
    if not train and not evals:
        raise SeqtrainError(f"{path}: no training reports found")
    eval_names = _eval_names(evals.values())
    columns = ["loss", "ce", "alignment", "learning_rate", "tokens_per_sec"]
    header = ["step", "loss", "CE", "align", "lr", "tok/s"] + [f"dev_{n}" for n in eval_names]
    rows = []
    for step in sorted(set(train) | set(evals)):
        row = [str(int(step))]
        row += [_cell(name, train.get(step, {}).get(name)) for name in columns]
        row += [_cell(name, evals.get(step, {}).get(name)) for name in eval_names]
        rows.append(row)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in rows]
    return "\n".join(lines)


def _cell(name: str, value) -> str:
    if value is None:
        return "-"
    if name == "tokens_per_sec":
        return f"{value:.0f}"
    if name == "learning_rate":
        return f"{value:.2e}"
    return f"{value:.4f}" if math.isfinite(value) else str(value)


def plot(path: str, output: str) -> None:
    """The curves of ``figure`` to a PNG."""
    figure(read_records(path)).savefig(output, dpi=100)


def figure(records: list[dict]):
    """A matplotlib Figure: train losses with the dev loss, the learning rate on a secondary
    axis (left), and the dev metrics in percent at their evaluation steps (right; drawn only
    when the run has evaluations)."""
    try:
        from matplotlib.figure import Figure  # no pyplot: no global state
    except ImportError as e:
        raise SeqtrainError('--plot needs matplotlib: pip install -e ".[plot]"') from e
    train = [r for r in records if r.get("kind") == "train"]
    evals = [r for r in records if r.get("kind") == "eval"]
    if not (train or evals):
        raise SeqtrainError("no training reports or evaluations to plot")
    eval_names = [n for n in _eval_names(evals) if n not in ("loss", "perplexity")]
    fig = Figure(figsize=(11 if eval_names else 6, 4), layout="constrained")
    left = fig.add_subplot(1, 2 if eval_names else 1, 1)
    for name in ("loss", "ce", "alignment"):
        _curve(left, train, name, name)
    _curve(left, evals, "loss", "dev loss", marker="o")
    left.set_xlabel("step")
    left.set_title("losses")
    handles, labels = left.get_legend_handles_labels()
    if any("learning_rate" in r for r in train):
        rate = left.twinx()
        _curve(rate, train, "learning_rate", "learning rate", color="grey", ls="--")
        rate.set_ylabel("learning rate")
        rate.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
        more = rate.get_legend_handles_labels()
        handles, labels = handles + more[0], labels + more[1]
    left.legend(handles, labels)
    if eval_names:
        right = fig.add_subplot(1, 2, 2)
        for name in eval_names:
            _curve(right, evals, name, name, marker="o")
        steps = sorted({r["step"] for r in evals})
        if len(steps) <= 12:
            right.set_xticks(steps)  # the evaluation steps themselves
        right.set_xlabel("step")
        right.set_title("dev set (%)")
        right.legend()
    return fig


def _curve(ax, records, name, label, **style) -> None:
    points = [(r["step"], r[name]) for r in records if name in r]
    if points:
        ax.plot(*zip(*points), label=label, **style)
