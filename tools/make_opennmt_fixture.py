"""Write tests/data/opennmt_fixture/: a tiny OpenNMT-tf 2.32 Transformer and OpenNMT-tf's numbers.

Runs OpenNMT-tf in its own venv (as ``bench/opennmt_baseline.py``; created there on first use):

1. generates a tiny parallel corpus with exact word alignments (target = source words mapped one
   to one, each adjacent pair swapped) and OpenNMT-tf vocabularies (``<blank> <s> </s>`` then the
   words; OpenNMT-tf adds ``<unk>`` after the last line);
2. trains a 2-layer, 32-unit, 2-head Transformer (FFN 64, dropout 0.1) with guided alignment (CE)
   and LazyAdam for ``--steps`` steps with ``onmt-main train``;
3. translates the evaluation batch with ``onmt-main infer`` (greedy, hard alignments);
4. runs ``tools/opennmt_fixture_reference.py`` in the venv: OpenNMT-tf's own loss terms for the
   batch in evaluation mode, its guided-alignment cost, the first sentence's logits, and the
   weights after one more training step by OpenNMT-tf's ``Trainer`` on that batch (dropout 0).

    python tools/make_opennmt_fixture.py [--venv ~/.cache/seqtrain-bench/onmt-venv] [--steps 300]

The checkpoint is what ``onmt-main`` wrote; reference.json says how everything was made.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
import opennmt_baseline  # noqa: E402

OUTPUT = os.path.join(ROOT, "tests", "data", "opennmt_fixture")
SOURCE_WORDS = [f"s{i}" for i in range(20)]
TARGET_WORDS = [f"t{i}" for i in range(20)]
SHAPE = {"num_layers": 2, "num_units": 32, "num_heads": 2, "ffn_inner_dim": 64}
WARMUP = 100  # NoamDecay warm-up of the fixture run
BATCH_LINES = 6  # sentence pairs of the evaluated batch

MODEL_FILE = """\
# The fixture's Transformer (tools/make_opennmt_fixture.py).
import opennmt


def model(dropout=0.1):
    return opennmt.models.Transformer(
        num_layers={num_layers},
        num_units={num_units},
        num_heads={num_heads},
        ffn_inner_dim={ffn_inner_dim},
        dropout=dropout,
        attention_dropout=dropout,
        ffn_dropout=dropout,
    )
"""


def corpus(count: int, rng: random.Random) -> tuple[list[str], list[str], list[str]]:
    """(source, target, Pharaoh links) lines; target j is source order[j]."""
    src, tgt, align = [], [], []
    for _ in range(count):
        words = [rng.randrange(len(SOURCE_WORDS)) for _ in range(rng.randint(2, 8))]
        order = list(range(len(words)))
        for k in range(0, len(order) - 1, 2):
            order[k], order[k + 1] = order[k + 1], order[k]
        src.append(" ".join(SOURCE_WORDS[w] for w in words))
        tgt.append(" ".join(TARGET_WORDS[words[i]] for i in order))
        align.append(" ".join(f"{i}-{j}" for j, i in sorted(enumerate(order), key=lambda x: x[1])))
    return src, tgt, align


def write_lines(path: str, lines: list[str]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(line + "\n" for line in lines)


def onmt_config(work: str, steps: int) -> dict:
    """OpenNMT-tf YAML with every value explicit (no --auto_config)."""
    return {
        "model_dir": os.path.join(work, "run"),
        "data": {
            "train_features_file": os.path.join(work, "train.src"),
            "train_labels_file": os.path.join(work, "train.tgt"),
            "train_alignments": os.path.join(work, "train.align"),
            "source_vocabulary": os.path.join(work, "src.vocab"),
            "target_vocabulary": os.path.join(work, "tgt.vocab"),
        },
        "params": {
            "optimizer": "LazyAdam",
            "optimizer_params": {"beta_1": 0.9, "beta_2": 0.998, "epsilon": 1e-7},
            "learning_rate": 2.0,
            "decay_type": "NoamDecay",
            "decay_params": {"model_dim": SHAPE["num_units"], "warmup_steps": WARMUP},
            "label_smoothing": 0.1,
            "average_loss_in_time": True,
            "guided_alignment_type": "ce",
            "guided_alignment_weight": 1.0,
            "beam_width": 1,
            "maximum_decoding_length": 30,
        },
        "train": {
            "batch_size": 32,
            "batch_type": "examples",
            "effective_batch_size": None,
            "length_bucket_width": 1,
            "sample_buffer_size": -1,
            "save_summary_steps": 50,
            "save_checkpoints_steps": steps,
            "keep_checkpoint_max": 1,
            "max_step": steps,
        },
        "infer": {"batch_size": 8, "batch_type": "examples", "with_alignments": "hard"},
    }


def run(cmd: list[str], log: str) -> None:
    with open(log, "w", encoding="utf-8") as f:
        result = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT)
    if result.returncode:
        with open(log, encoding="utf-8") as f:
            sys.stderr.write(f.read()[-4000:])
        raise SystemExit(f"failed ({result.returncode}): {' '.join(cmd)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", default=opennmt_baseline.DEFAULT_VENV)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--output", default=OUTPUT)
    parser.add_argument(
        "--work", help="keep the OpenNMT-tf run in this directory (default: a temp)"
    )
    args = parser.parse_args()
    onmt_main = opennmt_baseline.ensure_venv(args.venv)
    python = os.path.join(args.venv, "bin", "python")
    rng = random.Random(16)
    with tempfile.TemporaryDirectory(prefix="onmt-fixture-") as scratch:
        work = os.path.abspath(args.work or scratch)
        os.makedirs(work, exist_ok=True)
        files = {}
        for split, count in (("train", 400), ("batch", BATCH_LINES)):
            for ext, lines in zip(("src", "tgt", "align"), corpus(count, rng)):
                files[f"{split}.{ext}"] = os.path.join(work, f"{split}.{ext}")
                write_lines(files[f"{split}.{ext}"], lines)
        specials = ["<blank>", "<s>", "</s>"]
        write_lines(os.path.join(work, "src.vocab"), specials + SOURCE_WORDS)
        write_lines(os.path.join(work, "tgt.vocab"), specials + TARGET_WORDS)
        config = onmt_config(work, args.steps)
        config_path = os.path.join(work, "config.yml")
        with open(config_path, "w", encoding="utf-8") as f:
            yaml.safe_dump(config, f, sort_keys=False)
        model_path = os.path.join(work, "model.py")
        with open(model_path, "w", encoding="utf-8") as f:
            f.write(MODEL_FILE.format(**SHAPE))
        base = [onmt_main, "--model", model_path, "--config", config_path]
        run(base + ["train"], os.path.join(work, "train.log"))
        predictions = os.path.join(work, "greedy.txt")
        infer = ["infer", "--features_file", files["batch.src"], "--predictions_file", predictions]
        run(base + infer, os.path.join(work, "infer.log"))
        reference = os.path.join(ROOT, "tools", "opennmt_fixture_reference.py")
        run([python, reference, work], os.path.join(work, "reference.log"))
        write_output(work, args.output, config)


def write_output(work: str, output: str, config: dict) -> None:
    """Copies the checkpoint and the files the tests read into ``output`` (replaced)."""
    shutil.rmtree(output, ignore_errors=True)
    os.makedirs(output)
    run_dir = config["model_dir"]
    prefix = os.path.basename(opennmt_baseline_latest(run_dir))
    for name in os.listdir(run_dir):
        if name.startswith(prefix + "."):
            shutil.copy(os.path.join(run_dir, name), os.path.join(output, name))
    with open(os.path.join(output, "checkpoint"), "w", encoding="utf-8") as f:
        f.write(f'model_checkpoint_path: "{prefix}"\nall_model_checkpoint_paths: "{prefix}"\n')
    for name in ("src.vocab", "tgt.vocab", "model.py", "greedy.txt", "next_step.npz"):
        shutil.copy(os.path.join(work, name), os.path.join(output, name))
    for split in ("train", "batch"):
        for ext in ("src", "tgt", "align"):
            shutil.copy(
                os.path.join(work, f"{split}.{ext}"), os.path.join(output, f"{split}.{ext}")
            )
    shutil.copy(os.path.join(work, "logits.npy"), os.path.join(output, "first_logits.npy"))
    with open(os.path.join(work, "numbers.json"), encoding="utf-8") as f:
        numbers = json.load(f)
    relative = json.loads(json.dumps(config).replace(work + os.sep, "").replace(work, "."))
    numbers["opennmt_config"] = relative
    numbers["model"] = SHAPE
    with open(os.path.join(output, "reference.json"), "w", encoding="utf-8") as f:
        json.dump(numbers, f, indent=1)
    print(f"fixture written to {output}: {sorted(os.listdir(output))}")


def opennmt_baseline_latest(run_dir: str) -> str:
    import re

    with open(os.path.join(run_dir, "checkpoint"), encoding="utf-8") as f:
        return re.search(r'model_checkpoint_path: "([^"]+)"', f.read()).group(1)


if __name__ == "__main__":
    main()
