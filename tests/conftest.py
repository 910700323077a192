"""Shared fixtures: a tiny synthetic parallel corpus with exact alignments, and a run config."""

import os
import random
import subprocess
import sys

import pytest
import yaml

TOY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "toy")
SOURCE_WORDS = [f"s{i}" for i in range(24)]
TARGET_WORDS = {w: f"t{i}" for i, w in enumerate(SOURCE_WORDS)}


def make_corpus(directory, lines=240, seed=0):
    """Target = source words mapped one-to-one, each adjacent pair swapped: links are exact.

    Writes train.src/.tgt/.align, dev.* (40 lines), src.vocab and tgt.vocab; returns paths.
    """
    rng = random.Random(seed)
    os.makedirs(directory, exist_ok=True)
    paths = {}
    for split, count in (("train", lines), ("dev", 40)):
        src, tgt, align = [], [], []
        for _ in range(count):
            words = [rng.choice(SOURCE_WORDS) for _ in range(rng.randint(2, 9))]
            order = list(range(len(words)))
            for k in range(0, len(order) - 1, 2):
                order[k], order[k + 1] = order[k + 1], order[k]
            src.append(" ".join(words))
            tgt.append(" ".join(TARGET_WORDS[words[i]] for i in order))
            align.append(
                " ".join(f"{i}-{j}" for j, i in sorted(enumerate(order), key=lambda x: x[1]))
            )
        for ext, content in (("src", src), ("tgt", tgt), ("align", align)):
            path = os.path.join(directory, f"{split}.{ext}")
            with open(path, "w", encoding="utf-8") as f:
                f.write("\n".join(content) + "\n")
            paths[f"{split}.{ext}"] = path
    specials = ["<blank>", "<s>", "</s>", "<unk>"]
    for name, words in (("src.vocab", SOURCE_WORDS), ("tgt.vocab", TARGET_WORDS.values())):
        path = os.path.join(directory, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write("\n".join(specials + list(words)) + "\n")
        paths[name] = path
    return paths


def write_lines(path, lines):
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(line + "\n" for line in lines)


def tiny_config(paths, model_dir, **sections):
    """A config dict for a 2-layer, 32-unit model on the corpus of ``make_corpus``."""
    config = {
        "model_dir": str(model_dir),
        "data": {
            "train_features_file": paths["train.src"],
            "train_labels_file": paths["train.tgt"],
            "train_alignments": paths["train.align"],
            "source_vocabulary": paths["src.vocab"],
            "target_vocabulary": paths["tgt.vocab"],
        },
        "model": {
            "num_layers": 2,
            "num_units": 32,
            "num_heads": 4,
            "ffn_inner_dim": 64,
            "dropout": 0.1,
            "attention_dropout": 0.1,
            "ffn_dropout": 0.1,
        },
        "params": {
            "learning_rate": 1.0,
            "decay_params": {"model_dim": 32, "warmup_steps": 20},
            "guided_alignment_type": "ce",
        },
        "train": {
            "batch_size": 256,
            "length_bucket_width": 2,
            "save_summary_steps": 2,
            "save_checkpoints_steps": 5,
            "max_step": 6,
        },
        "eval": {"steps": None},
    }
    for section, values in sections.items():
        if isinstance(values, dict):
            config.setdefault(section, {}).update(values)
        else:
            config[section] = values
    return config


def write_config(path, config):
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(config, f)
    return str(path)


# Subprocesses get a deadlock guard, not a speed expectation: a lone multi-worker process blocks
# forever, and a hung test must fail rather than stall CI. It is far above any test's run time on
# a loaded 2-core machine; raise it with SEQTRAIN_TEST_HANG_GUARD (seconds) on slower ones.
HANG_GUARD = float(os.environ.get("SEQTRAIN_TEST_HANG_GUARD", "1800"))


def run_cli(*args, cwd=None, env=None, timeout=HANG_GUARD):
    """Runs ``python -m seqtrain.cli ARGS``; returns the CompletedProcess (text)."""
    return subprocess.run(
        [sys.executable, "-m", "seqtrain.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=timeout,
    )


@pytest.fixture
def corpus(tmp_path):
    return make_corpus(str(tmp_path / "data"))
