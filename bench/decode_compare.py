"""Beam-4 decoding, seqtrain vs OpenNMT-tf, for bench/compare.py (also runnable alone).

Both systems decode the first test sentences with their last small GA checkpoint (compare.py's
run folders), 32 sentences per batch, sorted by length. The models are barely trained, so
their free outputs differ in length (seqtrain's: ``<unk>`` up to the maximum; OpenNMT-tf's: an
immediate ``</s>``); to give both the same work every output is forced to
``maximum_decoding_length`` (OpenNMT-tf: minimum_decoding_length = maximum; seqtrain's model
never stops early — the report warns if the mean output lengths differ).

Each system decodes 1, N/4 and N sentences in separate processes:
  end-to-end rate = tokens(N) / (wall(N) - wall(1)): start-up (import, restore, first trace)
    cancels, warm-up of later batches (new shapes) is paid, as a user pays it;
  steady rate = (tokens(N) - tokens(N/4)) / (wall(N) - wall(N/4)): batches after warm-up.
The two differ a lot for OpenNMT-tf (its first batches are slow), so both are reported.

    python bench/decode_compare.py [--sentences 200] [--length 40] [--rounds 1]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib
import opennmt_baseline as onmt
import train as st

SYSTEMS = ("seqtrain", "opennmt")
NAMES = {"seqtrain": "seqtrain", "opennmt": "OpenNMT-tf"}


def count_tokens(path: str) -> tuple[int, int]:
    """(lines, whitespace tokens) of a predictions file."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    return len(lines), sum(len(line.split()) for line in lines)


def set_decoding_length(config_path: str, length: int, seqtrain: bool) -> None:
    """Beam 4 and a fixed output length in a run's config (the checkpoint stays)."""
    with open(config_path, encoding="utf-8") as f:
        config = yaml.safe_load(f)
    config["params"]["maximum_decoding_length"] = length
    config["params"]["beam_width"] = 4
    if seqtrain:  # the hard cap alone: no relative length limit, equal work for both
        config["params"]["maximum_decoding_length_factor"] = None
    else:
        config["params"]["minimum_decoding_length"] = length
    with open(config_path, "w", encoding="utf-8") as f:
        yaml.safe_dump(config, f, sort_keys=False)


def _runs(workdir: str, length: int) -> dict:
    runs = {}
    for system in SYSTEMS:
        run_dir = os.path.join(workdir, "runs", f"cmp-{system}-small-ga1")
        config = os.path.join(run_dir, "config.yml")
        if not os.path.exists(config):
            raise FileNotFoundError(f"{config}: run bench/compare.py (small shape) first")
        set_decoding_length(config, length, seqtrain=system == "seqtrain")
        runs[system] = {"run_dir": run_dir, "configs": [config], "config": config}
        runs[system]["model"] = os.path.join(run_dir, "model.py")
    return runs


def decode_benchmark(workdir, test_source, onmt_main, sentences, length, rounds, timeout=None):
    """Both systems, 1 / N/4 / N sentences, ``rounds`` times alternating -> report dict."""
    work = benchlib.fresh_dir(os.path.join(workdir, "runs", "cmp-decode"))
    sizes = (1, max(sentences // 4, 2), sentences)
    inputs = {
        n: benchlib.head_file(test_source, os.path.join(work, f"test{n}.en"), n) for n in sizes
    }
    runs = _runs(workdir, length)
    walls = {s: {n: [] for n in sizes} for s in SYSTEMS}
    cpus = {s: {n: [] for n in sizes} for s in SYSTEMS}
    tokens, rss = {s: {} for s in SYSTEMS}, {s: [] for s in SYSTEMS}
    for index in range(rounds):
        for system in SYSTEMS if index % 2 == 0 else SYSTEMS[::-1]:
            for n in sizes:
                out = os.path.join(work, f"{system}.{n}.out")
                if system == "seqtrain":
                    result = st.translate(runs[system], inputs[n], out, timeout=timeout)
                else:
                    result = onmt.translate(onmt_main, runs[system], inputs[n], out, timeout)
                walls[system][n].append(result.wall_s)
                cpus[system][n].append(result.cpu_s)
                rss[system].append(result.peak_rss_mb)
                tokens[system][n] = count_tokens(out)
            timing = ", ".join(f"{n}: {walls[system][n][-1]:.1f} s" for n in sizes)
            print(
                f"decode {NAMES[system]} round {index + 1}: {timing}", file=sys.stderr, flush=True
            )
    return {s: _summary(walls[s], cpus[s], tokens[s], rss[s], sizes) for s in SYSTEMS}


def _summary(walls, cpus, tokens, rss, sizes) -> dict:
    one, quarter, full = sizes

    def rates(times, low, high):
        count = tokens[high][1] - (tokens[low][1] if low != 1 else 0)
        deltas = [b - a for a, b in zip(times[low], times[high])]
        return benchlib.spread([count / d for d in deltas if d > 0])

    lines, count = tokens[full]
    return {
        "sentences": lines,
        "output_tokens": count,
        "mean_output_length": count / max(lines, 1),
        "end_to_end_tokens_per_sec": rates(walls, one, full),
        "steady_tokens_per_sec": rates(walls, quarter, full),
        "steady_tokens_per_cpu_s": rates(cpus, quarter, full),
        "startup_s": benchlib.spread(walls[one]),
        "peak_rss_mb": benchlib.spread(rss),
        "walls_s": {str(n): walls[n] for n in sizes},
    }


def decode_rows(decoding: dict | None) -> list[str]:
    """Report lines for compare.py's table."""
    if not decoding:
        return []
    rows = []
    for system in SYSTEMS:
        d = decoding[system]
        rows.append(
            f"decode beam 4, {d['sentences']} sentences × {d['mean_output_length']:.0f} tokens, "
            f"{NAMES[system]}: end-to-end {_num(d['end_to_end_tokens_per_sec'])} tok/s, "
            f"steady {_num(d['steady_tokens_per_sec'])} tok/s "
            f"({_num(d['steady_tokens_per_cpu_s'])} per CPU-s), start-up "
            f"{d['startup_s']['median']:.1f} s, peak RSS {d['peak_rss_mb']['median']:.0f} MiB"
        )
    for key, label in (("end_to_end", "end-to-end"), ("steady", "steady")):
        a = decoding["seqtrain"][f"{key}_tokens_per_sec"]["median"]
        b = decoding["opennmt"][f"{key}_tokens_per_sec"]["median"]
        if a and b:
            rows.append(f"decode ratio seqtrain/OpenNMT-tf, {label}: ×{a / b:.2f} (goal ≥ 2)")
    la, lb = (decoding[s]["mean_output_length"] for s in SYSTEMS)
    if abs(la - lb) > 0.1 * max(la, lb):
        rows.append(f"WARNING: output lengths differ ({la:.1f} vs {lb:.1f}): unequal work")
    return rows


def _num(entry: dict) -> str:
    return f"{entry['median']:.0f}" if entry["median"] is not None else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentences", type=int, default=200)
    parser.add_argument("--length", type=int, default=40, help="forced output length")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--data", default=benchlib.DEFAULT_DATA)
    parser.add_argument("--workdir", default=benchlib.DEFAULT_WORKDIR)
    parser.add_argument("--venv", default=onmt.DEFAULT_VENV)
    args = parser.parse_args()
    onmt_main = onmt.ensure_venv(args.venv)
    test = os.path.join(args.data, "test.en")
    report = decode_benchmark(
        args.workdir, test, onmt_main, args.sentences, args.length, args.rounds
    )
    print("\n".join(decode_rows(report)))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
