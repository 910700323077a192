"""Translation quality at equal budget: seqtrain vs OpenNMT-tf 2.32 (issue 19's protocol).

Both tools train the same model on the same data with the same settings, one run per seed,
then translate the test set with beam search; the script prints, per tool and seed and
averaged over the seeds: BLEU and chrF (sacrebleu, default settings, on the tokenized text as
it is), the output/reference length ratio (whitespace tokens, corpus level), the outputs at the
hard cap (``maximum_decoding_length`` tokens, 250), the outputs seqtrain's length guard cut
(``maximum_decoding_length_factor``/``offset``: as long as min(250, factor * S + offset); for
OpenNMT-tf, which has no guard, the same count at 250), the outputs of either tool at least
min(250, 2 * S + 10) words long (runaways by one yardstick: S source words, seqtrain's default
guard), and the training loss around steps
100 and 200 and at the end (mean of the 10 steps ending there; both tools log every step, so
the figures are per-step losses in both: with longer log windows seqtrain prints the window's
mean and OpenNMT-tf its last step, which differ early in training).

Protocol (defaults): De->En Multi30k (``--data``, default ``../shared/data/multi30k-de-en``
relative to the repository root: train.de/en, train.de-en.align, test2016.de/en); word
vocabularies of 8000 words per side (+ the 4 special tokens; ``seqtrain build-vocab``, shared
by both tools); 2+2 layers, d 256, 4 heads, FFN 1024, dropouts 0.1; LazyAdam (0.9, 0.998),
2.0 x Noam (model_dim 256, warm-up 4000); label smoothing 0.1, ``average_loss_in_time``;
2048-token batches, ``length_bucket_width`` 1; guided alignment ``ce``, weight 1; 1500 steps;
beam 4, length penalty 0.6, maximum_decoding_length 250; all 1000 test2016 sentences.

    python bench/translation_quality.py [--seeds 1 2 3] [--steps 1500] [--tools seqtrain opennmt]
        [--test-lines 1000] [--data DIR] [--workdir DIR] [--venv DIR]
        [--seqtrain-set params.maximum_decoding_length_factor=null] [--json out.json]

A full run (3 seeds, both tools) takes hours on 2 CPU cores. Runs go to
``--workdir``/quality/TOOL-seedN (configs, logs, checkpoints, predictions).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib  # noqa: E402
import opennmt_baseline  # noqa: E402
import train as seqtrain_bench  # noqa: E402

DEFAULT_DATA = os.path.join(benchlib.REPO, "..", "shared", "data", "multi30k-de-en")
LOSS_STEPS = (100, 200)  # early losses printed, besides the last one
LOSS_WINDOW = 10  # steps averaged for each printed loss


def prepare_data(args) -> tuple[benchlib.Data, str]:
    """(files both tools use, test reference file); vocabularies built once in the work dir."""
    vocab_dir = os.path.join(args.workdir, "quality", "vocab")
    os.makedirs(vocab_dir, exist_ok=True)
    vocabs = []
    for lang in (args.source, args.target):
        path = os.path.join(vocab_dir, f"{lang}.{args.vocab_size}.vocab")
        if not os.path.exists(path):
            text = os.path.join(args.data, f"train.{lang}")
            cmd = seqtrain_bench.seqtrain_command("build-vocab", text, "--save_vocab", path)
            result = benchlib.run_measured(
                cmd + ["--size", str(args.vocab_size + 4)], path + ".log"
            )
            benchlib.check(result, "seqtrain build-vocab")
        vocabs.append(path)
    test = os.path.join(args.workdir, "quality", f"test.{args.test_lines}")
    pair = f"{args.source}-{args.target}"
    data = benchlib.Data(
        train_source=os.path.join(args.data, f"train.{args.source}"),
        train_target=os.path.join(args.data, f"train.{args.target}"),
        train_alignments=os.path.join(args.data, f"train.{pair}.align"),
        test_source=benchlib.head_file(
            os.path.join(args.data, f"{args.test}.{args.source}"),
            f"{test}.{args.source}",
            args.test_lines,
        ),
        source_vocabulary=vocabs[0],
        target_vocabulary=vocabs[1],
    )
    reference = benchlib.head_file(
        os.path.join(args.data, f"{args.test}.{args.target}"),
        f"{test}.{args.target}",
        args.test_lines,
    )
    return data, reference


def settings(args) -> benchlib.TrainSettings:
    return benchlib.TrainSettings(
        shape="small",
        guided_alignment=True,
        steps=args.steps,
        summary_steps=1,
        skip_steps=min(5, args.steps - 1),
        batch_size=2048,
        warmup_steps=args.warmup_steps,
        beam_width=4,
        infer_batch_size=32,
        maximum_decoding_length=250,
    )


def run_seqtrain(seed: int, data, s, args) -> dict:
    """Trains and translates with seqtrain (``--reuse``: a finished run is only re-scored);
    returns predictions, per-step losses and the length limit it applied."""
    run_dir = os.path.join(args.workdir, "quality", f"seqtrain-seed{seed}")
    model_dir = os.path.join(run_dir, "model")
    predictions = os.path.join(run_dir, "test.out")
    summary = {}
    if not (args.reuse and os.path.exists(predictions)):
        overrides = seqtrain_bench.merge(
            {"train": {"seed": seed}}, seqtrain_bench.parse_overrides(args.seqtrain_set)
        )
        run = seqtrain_bench.prepare_run(run_dir, data, s, overrides)
        summary = seqtrain_bench.train(run, s)
        seqtrain_bench.translate(run, data.test_source, predictions)
    # The resolved configuration seqtrain saved (defaults filled in): the limit it applied.
    with open(os.path.join(model_dir, "config.yml"), encoding="utf-8") as f:
        params = yaml.safe_load(f)["params"]
    guard = (params["maximum_decoding_length_factor"], params["maximum_decoding_length_offset"])
    records = benchlib.read_metrics_jsonl(os.path.join(model_dir, "metrics.jsonl"))
    return {"predictions": predictions, "records": records, "guard": guard, "train": summary}


def run_opennmt(seed: int, data, s, args) -> dict:
    """Trains (``onmt-main --seed``) and translates with OpenNMT-tf in its own venv
    (``--reuse``: a finished run is only re-scored)."""
    run_dir = os.path.join(args.workdir, "quality", f"opennmt-seed{seed}")
    log = os.path.join(run_dir, "train.log")
    predictions = os.path.join(run_dir, "test.out")
    summary = {}
    if not (args.reuse and os.path.exists(predictions)):
        onmt_main = opennmt_baseline.ensure_venv(args.venv)
        run = opennmt_baseline.prepare_run(run_dir, data, s)
        cmd = [onmt_main, "--model", run["model"], "--config", run["config"], "--seed", str(seed)]
        result = benchlib.run_measured(cmd + ["train"], log)
        benchlib.check(result, "OpenNMT-tf training")
        opennmt_baseline.translate(onmt_main, run, data.test_source, predictions)
        summary = {"wall_s": result.wall_s}
    with open(log, encoding="utf-8", errors="replace") as f:
        records = benchlib.parse_log_lines(f.read())
    return {"predictions": predictions, "records": records, "guard": None, "train": summary}


def read_lines(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return f.read().splitlines()


def score(predictions: str, reference: str, source: str, cap: int, guard) -> dict:
    """BLEU, chrF, length ratio, outputs at the cap and outputs cut by the guard."""
    import sacrebleu  # the seqtrain venv has it

    hyps, refs, srcs = read_lines(predictions), read_lines(reference), read_lines(source)
    if len(hyps) != len(refs):
        raise RuntimeError(f"{predictions}: {len(hyps)} lines for {len(refs)} references")
    lengths = [len(h.split()) for h in hyps]
    limits = [cap] * len(hyps)
    if guard is not None and guard[0] is not None:
        limits = [min(cap, max(int(guard[0] * len(x.split())) + guard[1], 1)) for x in srcs]
    # The same yardstick for both tools: outputs as long as seqtrain's default guard allows
    # (min(250, 2 x source words + 10)); OpenNMT-tf's runaways stop at 250 only.
    runaway = [min(cap, 2 * len(x.split()) + 10) for x in srcs]
    return {
        "bleu": sacrebleu.corpus_bleu(hyps, [refs]).score,
        "chrf": sacrebleu.corpus_chrf(hyps, [refs]).score,
        "length_ratio": sum(lengths) / max(sum(len(r.split()) for r in refs), 1),
        "at_cap": sum(n >= cap for n in lengths),
        "cut": sum(n >= limit for n, limit in zip(lengths, limits)),
        "runaway": sum(n >= limit for n, limit in zip(lengths, runaway)),
    }


def losses(records: list[dict]) -> dict:
    """Mean per-step loss of the LOSS_WINDOW steps ending at each of LOSS_STEPS (``loss@N``)
    and at the last step (``final_loss``)."""
    by_step = {int(r["step"]): r["loss"] for r in records}
    last = max(by_step, default=0)
    out = {}
    for name, step in [(f"loss@{n}", n) for n in LOSS_STEPS] + [("final_loss", last)]:
        window = [by_step[t] for t in range(step - LOSS_WINDOW + 1, step + 1) if t in by_step]
        if step in by_step:
            out[name] = sum(window) / len(window)
    return out


# (key, header, format) of the table's columns.
COLUMNS = (
    ("bleu", "BLEU", "{:.2f}"),
    ("chrf", "chrF", "{:.2f}"),
    ("length_ratio", "output/reference length", "{:.3f}"),
    ("at_cap", "at the 250 cap", "{:g}"),
    ("cut", "cut at the limit", "{:g}"),
    ("runaway", "≥ 2·S+10 words", "{:g}"),
    ("loss@100", "loss@100", "{:.3f}"),
    ("loss@200", "loss@200", "{:.3f}"),
    ("final_loss", "final loss", "{:.3f}"),
)


def row(label: str, figures: dict) -> str:
    cells = [
        "-" if figures.get(key) is None else form.format(figures[key]) for key, _, form in COLUMNS
    ]
    return f"| {label} | " + " | ".join(cells) + " |"


def print_table(results: dict) -> None:
    """One row per tool and seed, then each tool's mean over its seeds (markdown table)."""
    print("| run | " + " | ".join(header for _, header, _ in COLUMNS) + " |")
    print("|" + " --- |" * (len(COLUMNS) + 1))
    for tool, runs in results.items():
        for seed, figures in runs.items():
            print(row(f"{tool} seed {seed}", figures))
        if len(runs) > 1:
            keys = set.intersection(*(set(f) for f in runs.values()))
            mean = {
                k: statistics.mean(f[k] for f in runs.values())
                for k in keys
                if all(f[k] is not None for f in runs.values())
            }
            print(row(f"**{tool} mean of {len(runs)}**", mean))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--tools", nargs="+", default=["seqtrain", "opennmt"],
                        choices=["seqtrain", "opennmt"])  # fmt: skip
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--warmup-steps", type=int, default=4000)
    parser.add_argument("--test-lines", type=int, default=1000)
    parser.add_argument("--data", default=os.path.normpath(DEFAULT_DATA))
    parser.add_argument("--source", default="de")
    parser.add_argument("--target", default="en")
    parser.add_argument("--test", default="test2016", help="test split name")
    parser.add_argument("--vocab-size", type=int, default=8000, help="words per side")
    parser.add_argument("--workdir", default=benchlib.DEFAULT_WORKDIR)
    parser.add_argument("--venv", default=opennmt_baseline.DEFAULT_VENV)
    parser.add_argument("--seqtrain-set", action="append", default=[], metavar="KEY=VALUE",
                        help="seqtrain config override, e.g. "
                        "params.maximum_decoding_length_factor=null")  # fmt: skip
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="re-score runs that already have predictions instead of rerunning",
    )
    parser.add_argument("--json", help="write the per-run figures here too")
    args = parser.parse_args()
    data, reference = prepare_data(args)
    s = settings(args)
    runners = {"seqtrain": run_seqtrain, "opennmt": run_opennmt}
    results: dict = {}
    for seed in args.seeds:  # seeds outermost: a partial run still compares both tools
        for tool in args.tools:
            out = runners[tool](seed, data, s, args)
            figures = score(
                out["predictions"], reference, data.test_source, s.maximum_decoding_length,
                out["guard"],
            )  # fmt: skip
            figures.update(losses(out["records"]))
            figures["train_wall_s"] = out["train"].get("wall_s")
            results.setdefault(tool, {})[seed] = figures
            print(f"{tool} seed {seed}: " + json.dumps(figures), file=sys.stderr, flush=True)
    print(f"{args.steps} steps, {args.test_lines} {args.test} sentences, "
          f"{args.source}->{args.target}, data {args.data}")  # fmt: skip
    print_table(results)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
