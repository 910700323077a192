"""Where seqtrain's peak RSS comes from: VmRSS after each phase of a short training run.

Each mode runs in a fresh process (RSS only grows): import TensorFlow, build data and model,
then N trainer steps on the real pipeline, printing VmRSS / VmHWM after each phase. Modes:
  default    seqtrain.trainer.Trainer as is (tf.function with reduce_retracing: the first
             batch traces shape-specific, the second traces again with None dimensions);
  signature  prototype: the same step function with an input_signature of None dimensions,
             so it is traced once.

    python bench/memory_probe.py [--shape small] [--steps 12] [--modes default signature]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib


def memory() -> dict:
    """Current and peak resident set of this process, MiB."""
    values = {}
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                values[line.split(":")[0]] = int(line.split()[1]) / 1024.0
    return values


def probe(shape: str, steps: int, mode: str, workdir: str, data_dir: str) -> list:
    """Runs one mode in this process; returns [(phase, VmRSS, VmHWM)]."""
    marks = [("python", *memory().values())]
    import tensorflow as tf

    tf.constant(1.0).numpy()
    marks.append(("import tensorflow", *memory().values()))
    import step_profile

    from seqtrain import data
    from seqtrain.checkpoints import build_model

    config, corpus = step_profile.load_setup(shape, workdir, data_dir)
    batches = iter(data.train_dataset(corpus, config.train, with_alignment=True))
    model = build_model(config)
    trainer, _ = step_profile.make_trainer(config, model)
    if mode == "signature":
        spec = {
            key: tf.TensorSpec([None] * t.shape.rank, t.dtype) for key, t in next(batches).items()
        }
        trainer._step = tf.function(trainer._cross_replica_step, input_signature=[(spec,)])
    marks.append(("data + model + optimizer", *memory().values()))
    for step in range(1, steps + 1):
        start = time.perf_counter()
        float(trainer.step([next(batches)])["grad_norm"])
        marks.append((f"step {step} ({time.perf_counter() - start:.1f} s)", *memory().values()))
    return marks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(benchlib.SHAPES), default="small")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--modes", nargs="+", default=["default", "signature"])
    parser.add_argument("--data", default=benchlib.DEFAULT_DATA)
    parser.add_argument("--workdir", default=benchlib.DEFAULT_WORKDIR)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        marks = probe(args.shape, args.steps, args.child, args.workdir, args.data)
        print("MARKS " + json.dumps(marks))
        return
    for mode in args.modes:
        cmd = [sys.executable, __file__, "--child", mode, "--shape", args.shape]
        cmd += ["--steps", str(args.steps), "--workdir", args.workdir, "--data", args.data]
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
        marks = json.loads(out.split("MARKS ", 1)[1])
        print(f"mode {mode}: phase, VmRSS MiB, VmHWM MiB")
        for phase, rss, hwm in marks:
            print(f"  {phase:<28}{rss:>8.0f}{hwm:>8.0f}")


if __name__ == "__main__":
    main()
