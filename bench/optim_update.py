"""Times one LazyAdam sparse update against dense Adam on a 32000×512 embedding, 2000 rows touched.

Usage: python bench/optim_update.py [--repeats 30]
Prints the median time of each update (inside tf.function, after warm-up) and the ratio.
"""

import argparse
import time

import numpy as np
import tensorflow as tf

from seqtrain.optim import LazyAdam

VOCAB, DIM, ROWS = 32000, 512, 2000


def median_ms(fn, repeats):
    fn()  # trace + warm up
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def make_update(lazy, grad):
    var = tf.Variable(tf.random.normal([VOCAB, DIM], seed=1))
    opt = LazyAdam(1e-3, lazy=lazy)
    opt.build([var])

    @tf.function
    def update():
        opt.apply_gradients([(grad, var)])
        return opt.iterations.read_value()  # a fetched output, so the update cannot be pruned

    return lambda: update().numpy()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    rng = np.random.RandomState(0)
    indices = tf.constant(rng.choice(VOCAB, ROWS, replace=False).astype(np.int32))
    values = tf.constant(rng.randn(ROWS, DIM).astype(np.float32))
    sparse = tf.IndexedSlices(values, indices, tf.constant([VOCAB, DIM]))
    dense = tf.convert_to_tensor(sparse)
    lazy_ms = median_ms(make_update(True, sparse), args.repeats)
    dense_ms = median_ms(make_update(True, dense), args.repeats)
    densified_ms = median_ms(make_update(False, sparse), args.repeats)
    print(f"LazyAdam sparse update ({ROWS} of {VOCAB}x{DIM} rows): {lazy_ms:.2f} ms")
    print(f"dense Adam (ResourceApplyAdam, dense gradient given): {dense_ms:.2f} ms")
    print(f"Adam lazy=False (IndexedSlices densified + ResourceApplyAdam): {densified_ms:.2f} ms")
    print(
        f"ratio dense/lazy = {dense_ms / lazy_ms:.1f}x; "
        f"densified/lazy = {densified_ms / lazy_ms:.1f}x"
    )


if __name__ == "__main__":
    main()
