"""One update of the same global batch: whole on 1 replica, split over 2 accumulation steps, and
split over 2 replicas (2 logical CPUs). Prints a JSON report for tests/test_trainer.py.

Run as a script: the logical CPU split must happen before TensorFlow runs any op.
"""

import json
import sys

import numpy as np
import tensorflow as tf

(cpu,) = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

from seqtrain import config as cfg  # noqa: E402
from seqtrain.data import batch_from_examples  # noqa: E402
from seqtrain.model import Transformer  # noqa: E402
from seqtrain.trainer import Trainer, make_optimizer  # noqa: E402

MODEL = cfg.ModelConfig(
    num_layers=2,
    num_units=16,
    num_heads=4,
    ffn_inner_dim=32,
    dropout=0.0,
    attention_dropout=0.0,
    ffn_dropout=0.0,
)


def examples():
    """Two halves with unequal token counts (9+1 vs 4+6 targets) and unequal aligned rows."""
    rng = np.random.RandomState(0)

    def example(src_len, tgt_len, links):
        src = rng.randint(4, 30, size=src_len)
        tgt = rng.randint(4, 30, size=tgt_len)
        return src, tgt, np.array(links, np.int32).reshape(-1, 2)

    first = [example(7, 8, [(0, 0), (1, 2), (2, 2), (5, 6), (7, 6)]), example(2, 1, [(0, 1)])]
    second = [example(3, 3, [(0, 0), (2, 1)]), example(5, 5, [])]
    return first, second


def run(strategy, split, mode):
    # A large Adam epsilon makes the first update nearly linear in the gradient
    # (Δw ≈ lr·√(1-β2)·g), so comparing weights compares gradients; with the default 1e-7 the
    # first step is lr·sign(g) and float round-off on tiny gradients would dominate.
    params = cfg.ParamsConfig(
        guided_alignment_type=None if mode == "off" else "ce",
        guided_alignment_normalization="opennmt" if mode == "off" else mode,
        label_smoothing=0.1,
        decay_type=None,
        learning_rate=1.0,
        optimizer_params=cfg.OptimizerParams(epsilon=1.0),
    )
    with strategy.scope():
        model = Transformer(MODEL, 30, 30, seed=7)
        optimizer = make_optimizer(params)
        optimizer.build(model.trainable_variables)
    trainer = Trainer(model, optimizer, params, strategy, seed=1)
    first, second = examples()
    if split == "whole":
        outputs = trainer.step([batch_from_examples(first + second)])
    elif split == "accum":
        outputs = trainer.step([batch_from_examples(first), batch_from_examples(second)])
    else:
        halves = [batch_from_examples(first), batch_from_examples(second)]
        batch = strategy.experimental_distribute_values_from_function(
            lambda context: halves[context.replica_id_in_sync_group]
        )
        outputs = trainer.step([batch])
    initial = Transformer(MODEL, 30, 30, seed=7).trainable_variables
    moved = [v.numpy() - w.numpy() for v, w in zip(model.trainable_variables, initial)]
    weights = np.concatenate([d.ravel() for d in moved])  # the update itself
    return {
        "outputs": {k: float(v) for k, v in outputs.items()},
        "weights": weights.tolist(),
        "iterations": int(optimizer.iterations.numpy()),
    }


def main():
    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    default = tf.distribute.get_strategy()
    report = {}
    for mode in ("off", "opennmt", "aligned_tokens"):
        report[mode] = {
            "whole": run(default, "whole", mode),
            "accum": run(default, "accum", mode),
            "replicas": run(mirrored, "replicas", mode),
        }
    json.dump(report, sys.stdout)


if __name__ == "__main__":
    main()
