"""seqtrain vs OpenNMT-tf 2.32: training and beam-4 decoding on onmt-toy-ende, one table.

For each model shape (small: 2+2 layers d256 4 heads FFN 1024; mid: 3+3 d512 8 heads FFN 2048),
both systems train the same configuration (8k word vocabularies built once with
``seqtrain build-vocab``, 2048-token batches, label smoothing 0.1, LazyAdam, Noam, guided
alignment CE on train.en-de.align) in separate processes, alternating (each round permutes the
order of the four runs: seqtrain/OpenNMT-tf × guided alignment on/off). Both log every step.
Per run: target tokens/s = Σ tokens / Σ seconds after the first steps (tracing, first shapes),
step time, CPU seconds per step (/proc: steadier than wall time when other jobs share the
cores), peak RSS (wait4), the loss (mean of the last 5 steps). Across runs: median (min–max).
Then beam-4 decoding of the first test sentences with each system's last small GA checkpoint,
every output forced to the same length (the models are barely trained; OpenNMT-tf gets
minimum_decoding_length = maximum, seqtrain's untrained model does not stop early — checked and
reported), timed as wall(N sentences) - wall(1 sentence) so start-up and tracing cancel.
A roofline line relates achieved model FLOP/s to the measured float32 matmul peak
(bench/roofline.py).

    python bench/compare.py --quick            # < ~15 min on a quiet 2-core machine
    python bench/compare.py [--rounds 3] [--steps 60] [--shapes small mid] [--json out.json]
        [--seqtrain-set train.mixed_precision=true]  # a candidate seqtrain setting

Output: the table on stdout, everything (every run) in ``--json`` (default
WORKDIR/compare-<time>.json). Work files (vocabularies, configs, runs) live in
``--workdir`` (default ~/.cache/seqtrain-bench), never in the repository.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib
import decode_compare
import opennmt_baseline as onmt
import roofline
import train as st

SYSTEMS = ("seqtrain", "opennmt")
NAMES = {"seqtrain": "seqtrain", "opennmt": "OpenNMT-tf"}
# (rounds, steps, steps left out of the timing) per shape; decoding sentences and length.
QUICK = {"small": (2, 30, 5), "mid": (1, 15, 5), "decode_sentences": 200, "decode_length": 40}
FULL = {"small": (3, 60, 10), "mid": (3, 30, 5), "decode_sentences": 500, "decode_length": 80}


def run_plan(rounds: int) -> list[list[tuple[str, bool]]]:
    """Per round, the 4 (system, guided alignment) runs in a different order (drift cancels)."""
    base = [("seqtrain", True), ("opennmt", True), ("seqtrain", False), ("opennmt", False)]
    orders = [base, base[::-1], base[1::2] + base[0::2], base[0::2][::-1] + base[1::2][::-1]]
    return [orders[i % len(orders)] for i in range(rounds)]


def train_once(system, shape, ga, steps, skip, args, data, onmt_main, overrides) -> dict:
    settings = benchlib.TrainSettings(
        shape=shape, guided_alignment=ga, steps=steps, summary_steps=1, skip_steps=skip
    )
    run_dir = os.path.join(args.workdir, "runs", f"cmp-{system}-{shape}-ga{int(ga)}")
    if system == "seqtrain":
        run = st.prepare_run(run_dir, data, settings, overrides)
        return st.train(run, settings, timeout=args.timeout)
    run = onmt.prepare_run(run_dir, data, settings)
    return onmt.train(onmt_main, run, settings, timeout=args.timeout)


def benchmark_shape(shape, rounds, steps, skip, args, data, onmt_main, overrides) -> dict:
    runs = {(system, ga): [] for system in SYSTEMS for ga in (True, False)}
    for index, order in enumerate(run_plan(rounds)):
        for system, ga in order:
            if not ga and shape not in args.ga_off_shapes:
                continue
            result = train_once(system, shape, ga, steps, skip, args, data, onmt_main, overrides)
            runs[(system, ga)].append(result)
            log(f"{shape} {NAMES[system]} GA {'on' if ga else 'off'} round {index + 1}: "
                f"{st.short(result)}")  # fmt: skip
    table = {}
    for (system, ga), results in runs.items():
        if results:
            table[f"{system}/ga_{'on' if ga else 'off'}"] = aggregate(results)
    return table


def aggregate(results: list[dict]) -> dict:
    return st.aggregate(results)


# ---------------------------------------------------------------- report


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _median(entry: dict, key: str):
    value = entry.get(key, {})
    return value.get("median") if isinstance(value, dict) else None


def _fmt(value, spec: str, width: int) -> str:
    return f"{value:{width}{spec}}" if value is not None else f"{'-':>{width}}"


def format_report(result: dict) -> str:
    p = result["roofline"]["peak"]
    peak = p["peak_gflops"]
    # seqtrain with mixed precision computes in bfloat16 on CPUs: its roofline is the bf16 one.
    mixed = result["seqtrain_overrides"].get("train", {}).get("mixed_precision")
    seqtrain_peak = p.get("bf16_peak_gflops", peak) if mixed else peak
    title = (
        "seqtrain vs OpenNMT-tf 2.32 — onmt-toy-ende En→De, 8k word vocabs, 2048-token batches; "
        f"{result['machine']}"
    )
    header = (
        f"{'shape':<6}{'GA':<4}{'system':<11}{'tgt tok/s':>10}{'(min–max)':>13}{'step s':>8}"
        f"{'CPU s/step':>11}{'tok/CPU-s':>10}{'RSS MiB':>9}{'loss@N':>8}{'GFLOP/s':>8}{'%peak':>6}"
    )
    lines = [title, header]
    for shape, table in result["training"].items():
        flops = result["roofline"]["model"][shape]["train_flops_per_target_token"]["total"]
        for ga in ("on", "off"):
            for system in SYSTEMS:
                entry = table.get(f"{system}/ga_{ga}")
                system_peak = seqtrain_peak if system == "seqtrain" else peak
                if entry:
                    lines.append(_row(shape, ga, system, entry, flops, system_peak))
            lines += _ratio_rows(shape, ga, table)
        lines += _overhead_rows(shape, table)
    lines += decode_compare.decode_rows(result.get("decoding"))
    lines.append(
        f"roofline: float32 matmul {p['matmul_size']}³ numpy {p['numpy_gflops']:.0f}, tf.matmul "
        f"{p['tensorflow_gflops']:.0f} GFLOP/s -> peak {peak:.0f}; model FLOPs = 6 × matmul "
        "MACs + attention on real tokens (bench/roofline.py)"
    )
    if "tensorflow_bf16_gflops" in p:
        used = " (the %peak of seqtrain rows: mixed precision)" if mixed else ""
        lines.append(f"bfloat16 tf.matmul {p['tensorflow_bf16_gflops']:.0f} GFLOP/s{used}")
    lines.append(f"noise: (min–max) over runs; {result['noise_note']}")
    return "\n".join(lines)


def _row(shape, ga, system, entry, flops, peak) -> str:
    tok = entry["target_tokens_per_sec"]
    gflops = roofline.achieved(tok["median"], flops, peak)
    span = f"({tok['min']:.0f}–{tok['max']:.0f})" if tok["n"] > 1 else ""
    return (
        f"{shape:<6}{ga:<4}{NAMES[system]:<11}{_fmt(tok['median'], '.0f', 10)}{span:>13}"
        f"{_fmt(_median(entry, 'step_time_s'), '.3f', 8)}"
        f"{_fmt(_median(entry, 'cpu_s_per_step'), '.2f', 11)}"
        f"{_fmt(_median(entry, 'target_tokens_per_cpu_s'), '.0f', 10)}"
        f"{_fmt(_median(entry, 'peak_rss_mb'), '.0f', 9)}{_fmt(_median(entry, 'loss'), '.3f', 8)}"
        f"{_fmt(gflops['gflops'], '.1f', 8)}{_fmt(gflops['percent_of_peak'], '.0f', 5)}%"
    )


def _ratio_rows(shape, ga, table) -> list[str]:
    a, b = table.get(f"seqtrain/ga_{ga}"), table.get(f"opennmt/ga_{ga}")
    if not (a and b and _median(a, "target_tokens_per_sec") and _median(b, "loss")):
        return []
    ratio = _median(a, "target_tokens_per_sec") / _median(b, "target_tokens_per_sec")
    cpu = _median(a, "target_tokens_per_cpu_s"), _median(b, "target_tokens_per_cpu_s")
    cpu_ratio = cpu[0] / cpu[1] if all(cpu) else None
    rss = _median(a, "peak_rss_mb") / _median(b, "peak_rss_mb")
    loss = _median(a, "loss") - _median(b, "loss")
    row = (
        f"{shape:<6}{ga:<4}{'ratio':<11}seqtrain/OpenNMT-tf: tokens/s ×{ratio:.2f} (goal ≥ 1.5), "
        f"tokens per CPU-s ×{_fmt(cpu_ratio, '.2f', 0)}, peak RSS ×{rss:.2f} (goal ≤ 1), "
        f"loss difference {loss:+.3f}"
    )
    return [row]


def _overhead_rows(shape, table) -> list[str]:
    parts = []
    for system in SYSTEMS:
        on, off = table.get(f"{system}/ga_on"), table.get(f"{system}/ga_off")
        if on and off and _median(on, "step_time_s") and _median(off, "step_time_s"):
            wall = _median(on, "step_time_s") / _median(off, "step_time_s") - 1
            cpu_on, cpu_off = _median(on, "cpu_s_per_step"), _median(off, "cpu_s_per_step")
            cpu = f", CPU/step {100 * (cpu_on / cpu_off - 1):+.1f}%" if cpu_on and cpu_off else ""
            parts.append(f"{NAMES[system]} step time {100 * wall:+.1f}%{cpu}")
    return (
        [f"{shape:<6}GA overhead (on vs off): " + "; ".join(parts) + " (goal ≤ 3 %)"]
        if parts
        else []
    )


def machine_description() -> str:
    model = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            names = (line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
            model = next(names, "")
    except OSError:
        pass
    load = os.getloadavg()[0]
    return f"{os.cpu_count()} cores {model}, Python {platform.python_version()}, load {load:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short runs (< ~15 min)")
    parser.add_argument("--shapes", nargs="+", default=["small", "mid"], choices=["small", "mid"])
    parser.add_argument("--ga-off-shapes", nargs="*", default=None,
                        help="shapes also run without guided alignment (default: all)")  # fmt: skip
    parser.add_argument("--rounds", type=int, help="rounds per shape (default: mode's)")
    parser.add_argument("--steps", type=int, help="training steps per run (default: mode's)")
    parser.add_argument("--decode-sentences", type=int)
    parser.add_argument("--decode-length", type=int, help="forced output length")
    parser.add_argument("--decode-rounds", type=int, default=None)
    parser.add_argument("--no-decode", action="store_true")
    parser.add_argument("--seqtrain-set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--data", default=benchlib.DEFAULT_DATA)
    parser.add_argument("--workdir", default=benchlib.DEFAULT_WORKDIR)
    parser.add_argument("--venv", default=onmt.DEFAULT_VENV)
    parser.add_argument("--timeout", type=float, default=1800, help="per process, seconds")
    parser.add_argument("--json", help="default: WORKDIR/compare-<date-time>.json")
    args = parser.parse_args()
    mode = QUICK if args.quick else FULL
    if args.ga_off_shapes is None:
        args.ga_off_shapes = args.shapes
    start = time.monotonic()
    onmt_main = onmt.ensure_venv(args.venv)
    data = benchlib.prepare_data(args.data, args.workdir)
    overrides = st.parse_overrides(args.seqtrain_set)
    result = {"machine": machine_description(), "mode": "quick" if args.quick else "full"}
    result["seqtrain_overrides"] = overrides
    result["roofline"] = measure_roofline(args)  # again at the end: the better figures count
    result["training"] = {}
    for shape in args.shapes:
        rounds, steps, skip = mode[shape]
        rounds, steps = args.rounds or rounds, args.steps or steps
        result["training"][shape] = benchmark_shape(
            shape, rounds, steps, skip, args, data, onmt_main, overrides
        )
    if not args.no_decode and "small" in args.shapes:
        sentences = args.decode_sentences or mode["decode_sentences"]
        rounds = args.decode_rounds or (1 if args.quick else 2)
        length = args.decode_length or mode["decode_length"]
        result["decoding"] = decode_compare.decode_benchmark(
            args.workdir, data.test_source, onmt_main, sentences, length, rounds, args.timeout
        )
    result["roofline"]["peak"] = best_peak(result["roofline"]["peak"], measure_roofline(args))
    result["elapsed_s"] = time.monotonic() - start
    result["noise_note"] = (
        f"load average at the end {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; "
        f"total {result['elapsed_s'] / 60:.1f} min"
    )
    text = format_report(result)
    print(text)
    path = args.json or os.path.join(args.workdir, f"compare-{time.strftime('%Y%m%d-%H%M%S')}.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump({**result, "table": text}, f, indent=2)
    log(f"JSON: {path}")


def best_peak(first: dict, second: dict) -> dict:
    """Per field, the higher of two peak measurements (peaks are only ever underestimated)."""
    peak = {k: max(v, second["peak"][k]) if k != "matmul_size" else v for k, v in first.items()}
    return peak


def measure_roofline(args) -> dict:
    """Matmul peak in a separate process (this one stays free of TensorFlow), FLOP model here."""
    out = os.path.join(args.workdir, "roofline.json")
    cmd = [benchlib.SEQTRAIN_PYTHON, os.path.join(os.path.dirname(__file__), "roofline.py")]
    subprocess.run(cmd + ["--json", out, "--data", args.data], check=True, capture_output=True)
    with open(out, encoding="utf-8") as f:
        return json.load(f)


if __name__ == "__main__":
    main()
