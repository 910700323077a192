"""seqtrain training throughput: target tokens/s, step time, peak RSS, guided alignment on vs off.

Runs ``seqtrain train`` (a separate process per run, as a user would) on:
  * quickstart: config/quickstart.yml as shipped (its toy corpus and model), eval off;
  * small / mid: the issue's shapes (2+2 d256 4 heads FFN 1024; 3+3 d512 8 heads FFN 2048) on
    onmt-toy-ende with 8k word vocabularies and 2048-token batches (the compare.py setting);
with guided alignment on and off, the configurations' order rotating every round so that
machine noise hits all alike. Every step is logged; throughput = Σ target tokens / Σ seconds
after ``--skip-steps`` (tracing, first shapes), from model_dir/metrics.jsonl; CPU s/step from
/proc (steadier than wall time on a shared machine); peak RSS from wait4 of the process.

    python bench/train.py [--cases quickstart mid] [--steps 40] [--rounds 2] [--json out.json]
    python bench/train.py --cases small --variant bf16 train.mixed_precision=true \
        --variant arena2 env:MALLOC_ARENA_MAX=2

``--set KEY=VALUE`` (YAML value, dotted key) overrides the seqtrain config of every run;
``--variant NAME KEY=VALUE… [env:VAR=VALUE…]`` adds a candidate (GA on) alternated with the
GA-on baseline, with ratios of tokens/s and CPU/step against it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib

QUICKSTART = os.path.join(benchlib.REPO, "config", "quickstart.yml")


def parse_overrides(items: list[str]) -> dict:
    """["train.jit_compile=true", …] -> nested dict (values parsed as YAML)."""
    overrides: dict = {}
    for item in items or []:
        key, _, value = item.partition("=")
        node = overrides
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    return overrides


def merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for key, value in b.items():
        out[key] = merge(out[key], value) if isinstance(out.get(key), dict) else value
    return out


def config_dict(model_dir: str, data: benchlib.Data, s: benchlib.TrainSettings) -> dict:
    """seqtrain YAML equivalent of opennmt_baseline.config_dict (same values, same keys)."""
    shape = benchlib.SHAPES[s.shape]
    data_section = {
        "train_features_file": data.train_source,
        "train_labels_file": data.train_target,
        "source_vocabulary": data.source_vocabulary,
        "target_vocabulary": data.target_vocabulary,
    }
    if s.guided_alignment:
        data_section["train_alignments"] = data.train_alignments
    return {
        "model_dir": model_dir,
        "data": data_section,
        "model": {**shape, "dropout": 0.1, "attention_dropout": 0.1, "ffn_dropout": 0.1},
        "params": {
            "optimizer": "LazyAdam",
            "optimizer_params": {"beta_1": 0.9, "beta_2": 0.998, "epsilon": 1e-7},
            "learning_rate": 2.0,
            "decay_type": "NoamDecay",
            "decay_params": {"model_dim": shape["num_units"], "warmup_steps": s.warmup_steps},
            "label_smoothing": 0.1,
            "average_loss_in_time": True,
            "guided_alignment_type": "ce" if s.guided_alignment else None,
            "guided_alignment_weight": 1.0,
            "beam_width": s.beam_width,
            "length_penalty": 0.6,
            "maximum_decoding_length": s.maximum_decoding_length,
        },
        "train": _train_section(s),
        "eval": {"steps": None},
        "infer": {"batch_size": s.infer_batch_size},
    }


def _train_section(s: benchlib.TrainSettings) -> dict:
    return {
        "batch_size": s.batch_size,
        "batch_type": "tokens",
        "effective_batch_size": None,
        "length_bucket_width": 1,
        "maximum_features_length": 100,
        "maximum_labels_length": 100,
        "sample_buffer_size": -1,
        "save_summary_steps": s.summary_steps,
        "save_checkpoints_steps": s.steps,
        "keep_checkpoint_max": 1,
        "max_step": s.steps,
    }


def quickstart_overrides(model_dir: str, s: benchlib.TrainSettings) -> dict:
    """Merged over config/quickstart.yml: own model_dir, short run, no evaluation."""
    train = {
        "save_summary_steps": s.summary_steps,
        "save_checkpoints_steps": s.steps,
        "max_step": s.steps,
    }
    params = {} if s.guided_alignment else {"guided_alignment_type": None}
    return {"model_dir": model_dir, "train": train, "params": params, "eval": {"steps": None}}


def prepare_run(run_dir, data, s: benchlib.TrainSettings, overrides=None, case=None) -> dict:
    """Writes the run's config into a fresh ``run_dir``; ``case`` "quickstart" layers an
    override file over config/quickstart.yml instead of the onmt-toy-ende config."""
    benchlib.fresh_dir(run_dir)
    model_dir = os.path.join(run_dir, "model")
    path = os.path.join(run_dir, "config.yml")
    if case == "quickstart":
        content = merge(quickstart_overrides(model_dir, s), overrides or {})
        configs = [QUICKSTART, path]
    else:
        content = merge(config_dict(model_dir, data, s), overrides or {})
        configs = [path]
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(content, f, sort_keys=False)
    return {"run_dir": run_dir, "configs": configs, "model_dir": model_dir}


def seqtrain_command(*args) -> list:
    return [benchlib.SEQTRAIN_PYTHON, "-m", "seqtrain.cli", *args]


def train(run: dict, s: benchlib.TrainSettings, timeout=None, env=None) -> dict:
    """One ``seqtrain train``; throughput from metrics.jsonl after ``s.skip_steps``."""
    cmd = seqtrain_command("train", "--config", *run["configs"])
    log = os.path.join(run["run_dir"], "train.log")
    result = benchlib.run_measured(cmd, log, cwd=benchlib.REPO, env=env, timeout=timeout)
    benchlib.check(result, "seqtrain training")
    records = benchlib.read_metrics_jsonl(os.path.join(run["model_dir"], "metrics.jsonl"))
    summary = benchlib.summarize_run(result, records, skip_steps=s.skip_steps)
    if records and "alignment" in records[-1]:
        summary["alignment"] = records[-1]["alignment"]
    return summary


def translate(run: dict, features: str, predictions: str, timeout=None):
    """``seqtrain translate`` with the run's last checkpoint -> RunResult."""
    cmd = seqtrain_command("translate", "--config", *run["configs"])
    cmd += ["--features_file", features, "--predictions_file", predictions]
    result = benchlib.run_measured(cmd, predictions + ".log", cwd=benchlib.REPO, timeout=timeout)
    benchlib.check(result, "seqtrain translate")
    return result


def settings_for(case: str, ga: bool, args) -> benchlib.TrainSettings:
    shape = "small" if case == "quickstart" else case
    return benchlib.TrainSettings(
        shape=shape, guided_alignment=ga, steps=args.steps, skip_steps=args.skip_steps
    )


def configurations(args, overrides: dict) -> list[tuple[str, bool, dict, dict]]:
    """(label, guided alignment, seqtrain overrides, environment) of each configuration.

    A variant's ``env:NAME=VALUE`` items set environment variables of its process (e.g.
    ``env:MALLOC_ARENA_MAX=2``); the other items are config overrides.
    """
    configs = [("GA on", True, overrides, {})]
    if not args.variant or args.with_ga_off:
        configs.append(("GA off", False, overrides, {}))
    for name, *items in args.variant or []:
        env = dict(i[4:].split("=", 1) for i in items if i.startswith("env:"))
        keys = [i for i in items if not i.startswith("env:")]
        configs.append((name, True, merge(overrides, parse_overrides(keys)), env))
    return configs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=["quickstart", "mid"],
                        choices=["quickstart", "small", "mid"])  # fmt: skip
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--skip-steps", type=int, default=5, help="left out of the timing")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--variant", nargs="+", action="append", metavar="NAME KEY=VALUE",
                        help="a candidate (GA on) alternated with the baseline, e.g. "
                        "--variant bf16 train.mixed_precision=true")  # fmt: skip
    parser.add_argument("--with-ga-off", action="store_true", help="GA off too with --variant")
    parser.add_argument("--data", default=benchlib.DEFAULT_DATA)
    parser.add_argument("--workdir", default=benchlib.DEFAULT_WORKDIR)
    parser.add_argument("--json", help="write the results here too")
    args = parser.parse_args()
    data = benchlib.prepare_data(args.data, args.workdir)
    overrides = parse_overrides(args.set)
    configs = configurations(args, overrides)
    results = {}
    for case in args.cases:
        runs = {label: [] for label, *_ in configs}
        for index in range(args.rounds):
            shift = index % len(configs)  # rotate the order: drift hits every configuration
            for label, ga, extra, env in configs[shift:] + configs[:shift]:
                s = settings_for(case, ga, args)
                slug = "".join(c if c.isalnum() else "-" for c in label)
                run_dir = os.path.join(args.workdir, "runs", f"seqtrain-{case}-{slug}")
                run = prepare_run(run_dir, data, s, extra, case)
                runs[label].append(train(run, s, env=env))
                print(f"{case} {label} round {index + 1}: {short(runs[label][-1])}", flush=True)
        results[case] = {label: aggregate(runs[label]) for label in runs}
    print(format_table(results))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"configurations": configs, "results": results}, f, indent=2)


def short(r: dict) -> str:
    return (
        f"{r.get('target_tokens_per_sec', 0):.0f} tgt tok/s, {r.get('steps_per_sec', 0):.3f} "
        f"steps/s, loss {r.get('loss', float('nan')):.3f}, {r['peak_rss_mb']:.0f} MiB"
    )


def aggregate(runs: list[dict]) -> dict:
    """Per-run medians -> median/min/max over runs."""
    return {
        "cpu_s_per_step": benchlib.spread([r.get("cpu_s_per_step") for r in runs]),
        "target_tokens_per_cpu_s": benchlib.spread(
            [r.get("target_tokens_per_cpu_s") for r in runs]
        ),
        "target_tokens_per_sec": benchlib.spread([r.get("target_tokens_per_sec") for r in runs]),
        "step_time_s": benchlib.spread(
            [1.0 / r["steps_per_sec"] for r in runs if r.get("steps_per_sec")]
        ),
        "peak_rss_mb": benchlib.spread([r["peak_rss_mb"] for r in runs]),
        "loss": benchlib.spread([r.get("loss") for r in runs]),
        "runs": runs,
    }


def format_table(results: dict) -> str:
    """One row per configuration; ratios against the first one (the GA-on baseline)."""
    header = (
        f"{'case':<11}{'config':<14}{'tgt tok/s':>10}{'±':>5}{'step s':>8}{'CPU s/step':>11}"
        f"{'RSS MiB':>9}{'loss':>8}{'  vs first: tok/s, CPU/step':<30}"
    )
    lines = [header]
    for case, result in results.items():
        base = next(iter(result.values()))
        for label, r in result.items():
            tok, cpu = r["target_tokens_per_sec"], r["cpu_s_per_step"]
            ratio = _ratio(tok, base["target_tokens_per_sec"])
            cpu_ratio = _ratio(cpu, base["cpu_s_per_step"])
            rel = 100 * tok["rel_spread"] if tok["rel_spread"] is not None else 0.0
            lines.append(
                f"{case:<11}{label:<14}{_num(tok['median'], '.0f', 10)}{rel:>4.0f}%"
                f"{_num(r['step_time_s']['median'], '.3f', 8)}{_num(cpu['median'], '.2f', 11)}"
                f"{_num(r['peak_rss_mb']['median'], '.0f', 9)}{_num(r['loss']['median'], '.3f', 8)}"
                f"  ×{_num(ratio, '.3f', 0)}, ×{_num(cpu_ratio, '.3f', 0)}"
            )
    return "\n".join(lines)


def _ratio(a: dict, b: dict):
    return a["median"] / b["median"] if a["median"] and b["median"] else None


def _num(value, spec: str, width: int) -> str:
    return f"{value:{width}{spec}}" if value is not None else f"{'-':>{width}}"


if __name__ == "__main__":
    main()
