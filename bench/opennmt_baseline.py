"""OpenNMT-tf 2.32 baseline: the same training run as seqtrain, in its own virtual environment.

Creates (once) a venv outside the repository with the pinned baseline
(tensorflow-cpu 2.13.1, tensorflow-addons 0.21.0, opennmt-tf 2.32.0; ~40 s), writes the
OpenNMT-tf YAML equivalent of the seqtrain benchmark config (same vocabularies, same Transformer
shape through a small ``--model`` file, batch size in tokens, label smoothing, guided alignment
CE on the same alignment file, LazyAdam, Noam schedule), trains N steps and parses its log line
``Step = … ; steps/s = …, tokens/s = … (… source, … target) ; … ; Loss = …``.

``--jit_compile`` is never used: OpenNMT-tf 2.32 crashes with guided alignment under XLA
(a 32-vs-31 shape mismatch, TF-NOTES).

    python bench/opennmt_baseline.py [--shape small|mid] [--steps 40] [--skip-steps 5] [--no-ga]
        [--venv ~/.cache/seqtrain-bench/onmt-venv] [--workdir ~/.cache/seqtrain-bench]
        [--translate N]   # then beam-4 decoding of N test sentences with the checkpoint
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib

PACKAGES = ["tensorflow-cpu==2.13.1", "tensorflow-addons==0.21.0", "opennmt-tf==2.32.0"]
DEFAULT_VENV = os.path.join(benchlib.DEFAULT_WORKDIR, "onmt-venv")

MODEL_FILE = """\
# Written by seqtrain's bench/opennmt_baseline.py: the benchmark's Transformer shape.
import opennmt


def model():
    return opennmt.models.Transformer(
        num_layers={num_layers},
        num_units={num_units},
        num_heads={num_heads},
        ffn_inner_dim={ffn_inner_dim},
        dropout=0.1,
        attention_dropout=0.1,
        ffn_dropout=0.1,
    )
"""


def ensure_venv(venv: str) -> str:
    """Path of ``onmt-main`` in ``venv``, creating the venv and installing the baseline first."""
    onmt_main = os.path.join(venv, "bin", "onmt-main")
    if os.path.exists(onmt_main):
        return onmt_main
    print(f"creating the OpenNMT-tf venv {venv} (~40 s)", file=sys.stderr, flush=True)
    subprocess.run(["python3", "-m", "venv", venv], check=True)
    pip = [os.path.join(venv, "bin", "pip"), "install", "-q", *PACKAGES]
    subprocess.run(pip, check=True)
    return onmt_main


def write_model_file(path: str, shape: str) -> str:
    with open(path, "w", encoding="utf-8") as f:
        f.write(MODEL_FILE.format(**benchlib.SHAPES[shape]))
    return path


def config_dict(model_dir: str, data: benchlib.Data, s: benchlib.TrainSettings) -> dict:
    """The OpenNMT-tf YAML of the benchmark (no --auto_config: every value is explicit)."""
    units = benchlib.SHAPES[s.shape]["num_units"]
    data_section = {
        "train_features_file": data.train_source,
        "train_labels_file": data.train_target,
        "source_vocabulary": data.source_vocabulary,
        "target_vocabulary": data.target_vocabulary,
    }
    params = {
        "optimizer": "LazyAdam",
        "optimizer_params": {"beta_1": 0.9, "beta_2": 0.998, "epsilon": 1e-7},
        "learning_rate": 2.0,
        "decay_type": "NoamDecay",
        "decay_params": {"model_dim": units, "warmup_steps": s.warmup_steps},
        "label_smoothing": 0.1,
        "average_loss_in_time": True,
        "beam_width": s.beam_width,
        "length_penalty": 0.6,
        "maximum_decoding_length": s.maximum_decoding_length,
        "minimum_decoding_length": s.minimum_decoding_length,
    }
    if s.guided_alignment:
        data_section["train_alignments"] = data.train_alignments
        params.update(guided_alignment_type="ce", guided_alignment_weight=1.0)
    return {
        "model_dir": model_dir,
        "data": data_section,
        "params": params,
        "train": {
            "batch_size": s.batch_size,
            "batch_type": "tokens",
            "effective_batch_size": None,  # one batch per update, as seqtrain's run
            "length_bucket_width": 1,
            "maximum_features_length": 100,
            "maximum_labels_length": 100,
            "sample_buffer_size": -1,
            "save_summary_steps": s.summary_steps,
            "save_checkpoints_steps": s.steps,  # one checkpoint, at the end (for decoding)
            "keep_checkpoint_max": 1,
            "max_step": s.steps,
        },
        "infer": {
            "batch_size": s.infer_batch_size,
            "batch_type": "examples",
            "length_bucket_width": 1,  # sort by length as seqtrain does (output order restored)
        },
    }


def prepare_run(run_dir: str, data: benchlib.Data, s: benchlib.TrainSettings) -> dict:
    """Writes model.py and config.yml into a fresh ``run_dir``; returns their paths."""
    benchlib.fresh_dir(run_dir)
    model_dir = os.path.join(run_dir, "model")
    config_path = os.path.join(run_dir, "config.yml")
    with open(config_path, "w", encoding="utf-8") as f:
        yaml.safe_dump(config_dict(model_dir, data, s), f, sort_keys=False)
    model_path = write_model_file(os.path.join(run_dir, "model.py"), s.shape)
    return {"run_dir": run_dir, "config": config_path, "model": model_path}


def train(onmt_main: str, run: dict, s: benchlib.TrainSettings, timeout=None) -> dict:
    """One training run; throughput from its log windows after the first one (tracing)."""
    cmd = [onmt_main, "--model", run["model"], "--config", run["config"], "train"]
    log = os.path.join(run["run_dir"], "train.log")
    result = benchlib.run_measured(cmd, log, timeout=timeout)
    benchlib.check(result, "OpenNMT-tf training")
    with open(log, encoding="utf-8", errors="replace") as f:
        records = benchlib.parse_log_lines(f.read())
    return benchlib.summarize_run(result, records, skip_steps=s.skip_steps)


def translate(onmt_main: str, run: dict, features: str, predictions: str, timeout=None):
    """Beam search over ``features`` with the run's last checkpoint -> RunResult."""
    cmd = [onmt_main, "--model", run["model"], "--config", run["config"], "infer"]
    cmd += ["--features_file", features, "--predictions_file", predictions]
    log = predictions + ".log"
    result = benchlib.run_measured(cmd, log, timeout=timeout)
    benchlib.check(result, "OpenNMT-tf inference")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(benchlib.SHAPES), default="small")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--skip-steps", type=int, default=5, help="left out of the timing")
    parser.add_argument("--no-ga", action="store_true", help="without guided alignment")
    parser.add_argument("--data", default=benchlib.DEFAULT_DATA)
    parser.add_argument("--workdir", default=benchlib.DEFAULT_WORKDIR)
    parser.add_argument("--venv", default=DEFAULT_VENV)
    parser.add_argument("--translate", type=int, default=0, metavar="N",
                        help="then decode the first N test sentences (beam 4)")  # fmt: skip
    args = parser.parse_args()
    onmt_main = ensure_venv(args.venv)
    data = benchlib.prepare_data(args.data, args.workdir)
    settings = benchlib.TrainSettings(
        shape=args.shape,
        guided_alignment=not args.no_ga,
        steps=args.steps,
        skip_steps=args.skip_steps,
    )
    run = prepare_run(os.path.join(args.workdir, "runs", "onmt-single"), data, settings)
    result = train(onmt_main, run, settings)
    if args.translate:
        features = benchlib.head_file(
            data.test_source, os.path.join(run["run_dir"], "test.en"), args.translate
        )
        decoded = translate(onmt_main, run, features, os.path.join(run["run_dir"], "test.out"))
        result["translate_wall_s"] = decoded.wall_s
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
