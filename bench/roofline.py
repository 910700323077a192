"""The roofline: measured float32 matmul peak of this machine and the training FLOP model.

Peak: best time of a 4096×4096×4096 float32 matmul with ``tf.matmul`` (inside a tf.function,
result forced) and with numpy (OpenBLAS), both on all cores; peak = the faster of the two.
compare.py measures it before and after its runs and keeps the better figures, so a busy
minute does not lower the roofline (which would inflate the "% of peak").
Model FLOPs (``benchlib.example_train_flops``): 2 FLOPs per multiply-add, backward = 2 ×
forward, real (unpadded) tokens of the training corpus, matmuls (≈ 6 × matmul parameters ×
tokens) plus attention (scores and context); padding and non-matmul work count as waste.

    python bench/roofline.py [--size 4096] [--repeats 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib


def numpy_gflops(size: int, repeats: int) -> float:
    import numpy as np

    a = np.random.default_rng(0).standard_normal((size, size), dtype=np.float32)
    b = np.random.default_rng(1).standard_normal((size, size), dtype=np.float32)
    a @ b  # warm-up (thread pool start)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * size**3 / min(times) / 1e9  # a peak: the best run (others only lose time)


def tensorflow_gflops(size: int, repeats: int, dtype: str = "float32") -> float:
    import tensorflow as tf

    a = tf.cast(tf.random.normal([size, size], seed=0), dtype)
    b = tf.cast(tf.random.normal([size, size], seed=1), dtype)

    @tf.function
    def product():
        return tf.reduce_sum(tf.cast(tf.matmul(a, b), tf.float32))  # fetched: cannot be pruned

    product().numpy()  # trace + warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        product().numpy()
        times.append(time.perf_counter() - start)
    return 2 * size**3 / min(times) / 1e9  # a peak: the best run (others only lose time)


def measure_peak(size: int = 4096, repeats: int = 5) -> dict:
    """float32 peak (the roofline), plus tf.matmul in bfloat16 for runs with mixed precision
    (fast only on CPUs with bf16 instructions, e.g. avx512_bf16 / AMX)."""
    numpy_rate = numpy_gflops(size, repeats)
    tf_rate = tensorflow_gflops(size, repeats)
    bf16_rate = tensorflow_gflops(size, repeats, "bfloat16")
    return {
        "matmul_size": size,
        "numpy_gflops": numpy_rate,
        "tensorflow_gflops": tf_rate,
        "peak_gflops": max(numpy_rate, tf_rate),
        "tensorflow_bf16_gflops": bf16_rate,
        "bf16_peak_gflops": max(bf16_rate, numpy_rate, tf_rate),
    }


def flop_model(data_dir: str, vocab: int = 8004) -> dict:
    """Per shape: parameters and corpus-average training FLOPs per target token."""
    lengths = benchlib.corpus_lengths(
        os.path.join(data_dir, "train.en"), os.path.join(data_dir, "train.de")
    )
    model = {}
    for name, shape in benchlib.SHAPES.items():
        per_token = benchlib.train_flops_per_target_token(lengths, shape, vocab)
        model[name] = {
            "parameters": benchlib.parameter_count(shape, vocab, vocab),
            "train_flops_per_target_token": per_token,
        }
    return model


def achieved(target_tokens_per_sec, flops_per_target_token: float, peak_gflops: float) -> dict:
    """Achieved model GFLOP/s of a training run and its share of the measured peak."""
    if not target_tokens_per_sec or not peak_gflops:
        return {"gflops": None, "percent_of_peak": None}
    gflops = target_tokens_per_sec * flops_per_target_token / 1e9
    return {"gflops": gflops, "percent_of_peak": 100 * gflops / peak_gflops}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--data", default=benchlib.DEFAULT_DATA)
    parser.add_argument("--json", help="write the results here too")
    args = parser.parse_args()
    result = {"peak": measure_peak(args.size, args.repeats), "model": flop_model(args.data)}
    peak = result["peak"]
    print(
        f"float32 matmul {args.size}³: numpy {peak['numpy_gflops']:.1f} GFLOP/s, "
        f"tf.matmul {peak['tensorflow_gflops']:.1f} GFLOP/s; bfloat16 tf.matmul "
        f"{peak['tensorflow_bf16_gflops']:.1f} GFLOP/s"
    )
    for name, entry in result["model"].items():
        per = entry["train_flops_per_target_token"]
        print(
            f"{name}: {entry['parameters']:,} parameters; training MFLOP per target token: "
            f"{per['total'] / 1e6:.1f} ({per['matmul'] / 1e6:.1f} matmul + "
            f"{per['attention'] / 1e6:.1f} attention)"
        )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
