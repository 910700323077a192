"""Guided-alignment quality on real data: the guided head's AER against human gold links.

Protocol (the real-data alignment issue): De→En on a lowercased copy of onmt-toy-ende (10k WMT
pairs) with its shipped eflomal alignments (train.de-en.align); 2+2 layers, 256 units, 4 heads,
FFN 1024, dropouts 0.1; 8000-word vocabularies per side (``seqtrain build-vocab --size 8000``);
LazyAdam (0.9, 0.998), learning rate 2.0 × Noam (model_dim 256, warmup 4000), label smoothing
0.1; 2048-token batches, ``length_bucket_width: 1``; 1500 steps; guided alignment ``ce``.

Each variant (``--variant NAME key=value ...``, dotted config keys; ``off`` turns guided
alignment off) trains with ``seqtrain train`` and evaluates at steps 500, 1000, 1500 on
europarl-deen-gold-dev (100 sentences, sure links): AER / precision / recall of the guided head
by forced decoding of the references (as ``seqtrain eval`` extracts them, and from the head's
rows: argmax, intersection, row-normalized attention ≥ 0.5), dev CE and BLEU (beam 4) on the first
``--valid-lines`` lines of onmt-toy-ende's valid set (lowercased), printed side by side with the
supervisor (the shipped eflomal + grow-diag-final-and links of the gold sentences, AER 20.4).

    python bench/align_real.py --jobs 2                 # the default variants (first round)
    python bench/align_real.py --variants readl0 subwords --jobs 2   # words vs subwords
    python bench/align_real.py --variant readl0s2 model.alignment_row=reading \
        model.alignment_layer=0 params.guided_alignment_normalization=aligned_tokens train.seed=2
    python bench/align_real.py --variants baseline reading --jobs 2
    python bench/align_real.py --variant w2 model.alignment_row=reading \
        params.guided_alignment_weight=2

Runs, configs and per-run JSON go to ``--workdir`` (default ~/.cache/seqtrain-bench/align_real);
a finished run is reused unless ``--force``. A value ``files:NAME`` is a prepared file (e.g.
``files:de.spm.model``, the German SentencePiece model of the ``subwords`` variant). The table is
printed at the end and written to ``WORKDIR/table.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_DATA = os.path.join(REPO, "..", "shared", "data")
DEFAULT_WORKDIR = os.path.join(os.path.expanduser("~"), ".cache", "seqtrain-bench", "align_real")

# The variants compared in the README (each a set of dotted-key overrides of the protocol).
VARIANTS = {
    "opennmt": {},  # OpenNMT-tf's semantics: the seqtrain default
    "baseline": {"params.guided_alignment_normalization": "aligned_tokens"},
    "reading": {
        "params.guided_alignment_normalization": "aligned_tokens",
        "model.alignment_row": "reading",
    },
    "full": {
        "params.guided_alignment_normalization": "aligned_tokens",
        "model.alignment_context": "full",
        "model.alignment_layer": 0,
    },
    "off": {"params.guided_alignment_type": None},
}

# Recipe keys shared by the later variants (README, second and fourth rounds).
READING_L0 = {
    "params.guided_alignment_normalization": "aligned_tokens",
    "model.alignment_row": "reading",
    "model.alignment_layer": 0,
}
# Subwords: one 8000-piece SentencePiece model per side (trained on the lowercased train side),
# the eflomal word links projected onto the pieces, links merged back to words for the AER.
# A value "files:NAME" is the prepared file NAME (see prepare).
SUBWORDS = {
    "data.source_tokenization": "files:de.spm.model",
    "data.target_tokenization": "files:en.spm.model",
    "data.source_vocabulary": "files:de.spm.vocab",
    "data.target_vocabulary": "files:en.spm.vocab",
    "data.alignment_level": "words",
}
FIRST_ROUND = tuple(VARIANTS)  # the default variants
VARIANTS["readl0"] = READING_L0
VARIANTS["subwords"] = {**READING_L0, **SUBWORDS}


def protocol_config(files: dict, model_dir: str, steps: int) -> dict:
    """The issue's training configuration on the prepared files."""
    return {
        "model_dir": model_dir,
        "data": {
            "train_features_file": files["train.de"],
            "train_labels_file": files["train.en"],
            "train_alignments": files["train.align"],
            "eval_features_file": files["gold.de"],
            "eval_labels_file": files["gold.en"],
            "eval_alignments": files["gold.align"],
            "source_vocabulary": files["de.vocab"],
            "target_vocabulary": files["en.vocab"],
        },
        "model": {
            "num_layers": 2,
            "num_units": 256,
            "num_heads": 4,
            "ffn_inner_dim": 1024,
            "dropout": 0.1,
            "attention_dropout": 0.1,
            "ffn_dropout": 0.1,
        },
        "params": {
            "optimizer": "LazyAdam",
            "optimizer_params": {"beta_1": 0.9, "beta_2": 0.998},
            "learning_rate": 2.0,
            "decay_type": "NoamDecay",
            "decay_params": {"model_dim": 256, "warmup_steps": 4000},
            "label_smoothing": 0.1,
            "guided_alignment_type": "ce",
            "guided_alignment_weight": 1.0,
            "beam_width": 4,
        },
        "train": {
            "batch_size": 2048,
            "batch_type": "tokens",
            "length_bucket_width": 1,
            "save_summary_steps": 100,
            "save_checkpoints_steps": 500,
            "keep_checkpoint_max": 10,
            "max_step": steps,
        },
        "eval": {"steps": 500, "batch_size": 50, "scorers": ["bleu"]},
    }


def set_key(config: dict, dotted: str, value) -> None:
    *path, last = dotted.split(".")
    node = config
    for key in path:
        node = node.setdefault(key, {})
    node[last] = value


def parse_pairs(pairs: list[str]) -> dict:
    """["a.b=1", ...] -> {"a.b": 1, ...} (values parsed as YAML)."""
    return {k: yaml.safe_load(v) for k, v in (p.split("=", 1) for p in pairs)}


def lowercase_copy(source: str, destination: str, lines: int | None = None) -> str:
    if not os.path.exists(destination):
        with open(source, encoding="utf-8") as f:
            content = f.read().splitlines()[:lines]
        with open(destination, "w", encoding="utf-8") as f:
            f.write("".join(line.lower() + "\n" for line in content))
    return destination


def build_vocab(text: str, save_vocab: str, made: str, *flags: str) -> None:
    """``seqtrain build-vocab TEXT --size 8000 --save_vocab SAVE_VOCAB FLAGS`` unless the file
    ``made`` exists (a SentencePiece run's --save_vocab is a prefix)."""
    if not os.path.exists(made):
        cmd = [sys.executable, "-m", "seqtrain.cli", "build-vocab", text, "--size", "8000"]
        subprocess.run(cmd + ["--save_vocab", save_vocab, *flags], check=True)


def prepare(data_dir: str, workdir: str, valid_lines: int) -> dict:
    """Lowercased train/valid copies (token positions unchanged, so the links stay valid),
    the gold set and 8000-word vocabularies, built once in WORKDIR/data."""
    toy = os.path.join(data_dir, "onmt-toy-ende")
    gold = os.path.join(data_dir, "europarl-deen-gold-dev")
    out = os.path.join(workdir, "data")
    os.makedirs(out, exist_ok=True)
    files = {
        "train.align": os.path.join(toy, "train.de-en.align"),
        "gold.de": os.path.join(gold, "dev.de"),
        "gold.en": os.path.join(gold, "dev.en"),
        "gold.align": os.path.join(gold, "dev.de-en.gold"),
        "supervisor.align": os.path.join(gold, "dev.de-en.eflomal-gdfa.align"),
    }
    for lang in ("de", "en"):
        files[f"train.{lang}"] = lowercase_copy(
            os.path.join(toy, f"train.{lang}"), os.path.join(out, f"train.{lang}")
        )
        files[f"valid.{lang}"] = lowercase_copy(
            os.path.join(toy, f"valid.{lang}"),
            os.path.join(out, f"valid{valid_lines}.{lang}"),
            valid_lines,
        )
        train_text, vocab = files[f"train.{lang}"], os.path.join(out, f"{lang}.8000.vocab")
        build_vocab(train_text, vocab, vocab)
        prefix = os.path.join(out, f"{lang}.spm")
        build_vocab(train_text, prefix, prefix + ".vocab", "--sentencepiece")
        files[f"{lang}.vocab"] = vocab
        files[f"{lang}.spm.model"], files[f"{lang}.spm.vocab"] = (
            prefix + ".model",
            prefix + ".vocab",
        )
    return files


def train(name: str, overrides: dict, files: dict, args) -> str:
    """Trains one variant (skipped when its last checkpoint exists); returns its model_dir."""
    model_dir = os.path.join(args.workdir, "runs", name)
    done = os.path.join(model_dir, "done")
    if os.path.exists(done) and not args.force:
        return model_dir
    subprocess.run(["rm", "-rf", model_dir], check=True)
    os.makedirs(model_dir)
    config = protocol_config(files, model_dir, args.steps)
    for key, value in overrides.items():
        if isinstance(value, str) and value.startswith("files:"):
            value = files[value[len("files:") :]]
        set_key(config, key, value)
    path = os.path.join(model_dir, "bench.yml")
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(config, f, sort_keys=False)
    logging.info("training %s: %s", name, overrides or "protocol")
    with open(os.path.join(model_dir, "train.log"), "w", encoding="utf-8") as log:
        cmd = [sys.executable, "-m", "seqtrain.cli", "train", "--config", path]
        subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    open(done, "w").close()
    return model_dir


def evaluate(name: str, model_dir: str, files: dict, args) -> dict:
    """Scores every checkpoint in a subprocess (bench/align_real_eval.py); returns its JSON."""
    out = os.path.join(model_dir, "scores.json")
    if not os.path.exists(out) or args.force:
        cmd = [sys.executable, os.path.join(REPO, "bench", "align_real_eval.py"), model_dir]
        cmd += ["--valid", files["valid.de"], files["valid.en"], "--output", out]
        subprocess.run(cmd, check=True, cwd=REPO)
    with open(out, encoding="utf-8") as f:
        return json.load(f)


# The table's columns after the step, as keys of bench/align_real_eval.py's records.
FIGURES = (
    "aer", "precision", "recall", "aer_intersection", "precision_intersection",
    "recall_intersection", "aer_threshold", "gold_bleu", "valid_ce", "valid_bleu",
)  # fmt: skip


def table(results: dict, supervisor: dict) -> str:
    nan = float("nan")
    rows = [
        "| variant | step | AER | P | R | AER ∩ | P ∩ | R ∩ | AER ≥ 0.5 | gold-set BLEU "
        "| valid CE | valid BLEU |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, scores in results.items():
        for s in scores:
            figures = [s.get(k, nan) for k in FIGURES]
            rows.append(
                f"| {name} | {s['step']} | "
                + " | ".join(
                    f"{x:.3f}" if k == "valid_ce" else f"{x:.1f}" for k, x in zip(FIGURES, figures)
                )
                + " |"
            )
    rows.append(
        f"| supervisor (eflomal + gdfa) | | {supervisor['aer']:.1f} | "
        f"{supervisor['precision']:.1f} | {supervisor['recall']:.1f} | | | | | | | |"
    )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=DEFAULT_DATA, help="folder of the shared corpora")
    parser.add_argument("--workdir", default=DEFAULT_WORKDIR)
    parser.add_argument(
        "--variants", nargs="*", default=list(FIRST_ROUND), help=f"named: {', '.join(VARIANTS)}"
    )
    parser.add_argument(
        "--variant", nargs="+", action="append", default=[], metavar="NAME KEY=VALUE",
        help="an extra variant: a name then dotted-key overrides (values are YAML)",
    )  # fmt: skip
    parser.add_argument(
        "--set", nargs="*", default=[], metavar="KEY=VALUE",
        help="dotted-key overrides for every variant, e.g. train.mixed_precision=true",
    )  # fmt: skip
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--valid-lines", type=int, default=500)
    parser.add_argument("--jobs", type=int, default=1, help="variants trained at once")
    parser.add_argument("--force", action="store_true", help="retrain finished variants")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    common = parse_pairs(args.set)
    variants = {name: {**common, **VARIANTS[name]} for name in args.variants}
    for name, *pairs in args.variant:
        variants[name] = {**common, **parse_pairs(pairs)}
    files = prepare(os.path.abspath(args.data), args.workdir, args.valid_lines)

    def run(item):
        name, overrides = item
        return name, evaluate(name, train(name, overrides, files, args), files, args)

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        results = dict(pool.map(run, variants.items()))
    sys.path.insert(0, REPO)
    from seqtrain.aer import read_links, score

    gold = list(read_links(files["gold.align"]))
    supervisor = [p for _, p in read_links(files["supervisor.align"])]
    figures = score(supervisor, [s for s, _ in gold], [p for _, p in gold])
    report = table(results, {k: 100 * figures[k] for k in ("aer", "precision", "recall")})
    with open(os.path.join(args.workdir, "table.md"), "w", encoding="utf-8") as f:
        f.write(report + "\n")
    print(report)


if __name__ == "__main__":
    main()
