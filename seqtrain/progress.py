"""What a log line reports: the step outputs summed between two lines, and the throughput."""

from __future__ import annotations

import time

from seqtrain import losses


class Progress:
    """Sums the step outputs between two log lines; throughput excludes the first (tracing) step."""

    def __init__(self):
        self.outputs = []  # step outputs since the last line (tensors until read)
        self.timed = 0  # how many of them ran after the clock started
        self.start = None

    def add(self, outputs: dict) -> None:
        self.outputs.append(outputs)
        if self.start is None:
            float(outputs["grad_norm"])  # wait for the first step (it includes tracing)
            self.start = time.time()
            return
        self.timed += 1

    def record(self, step: int, learning_rate: float, params) -> dict:
        """The log record of the steps since the last call (losses averaged over all of them)."""
        values = [{k: float(v) for k, v in o.items()} for o in self.outputs]
        sums = {k: sum(v[k] for v in values) for k in values[0]}
        timed = values[len(values) - self.timed :] if self.timed else []
        elapsed = max(time.time() - self.start, 1e-9)
        source = sum(v["source_tokens"] for v in timed) / elapsed
        target = sum(v["target_tokens"] for v in timed) / elapsed
        record = {
            "step": step,
            "steps_per_sec": len(timed) / elapsed,
            "tokens_per_sec": source + target,
            "source_tokens_per_sec": source,
            "target_tokens_per_sec": target,
            "learning_rate": learning_rate,
            "grad_norm": sums["grad_norm"] / len(values),
        }
        if "loss_scale" in values[-1]:
            record["loss_scale"] = values[-1]["loss_scale"]
        figures = losses.report(sums, sums["micro_batches"], params)
        record.update({k: float(v) for k, v in figures.items()})
        self.outputs, self.timed, self.start = [], 0, time.time()
        return record
