"""Single-process references for the distributed tests: the same global batches as a 2-replica
(or 2-worker) run, trained by ``Trainer.step`` on the default strategy, split in two micro-batches
(accumulation) or concatenated into one whole batch. Also: weights of a checkpoint, and the
tolerance of a weight comparison.

Tolerance (relative to the update, ``relative_difference``): the runs add the same float32 terms
in different orders (all-reduce vs accumulation, one batch vs two), a few ulps of the largest
gradient terms per step; with ε = 1 the update is linear in the gradient, and with a learning
rate of 1 it is large next to the ulp of the weights themselves. Measured after 3 steps: 0.4e-6
to 1.6e-6 of the update. 1e-4 leaves a ~60× margin for that, while every real error is ≥ 0.1: a
MEAN instead of a SUM halves the update (0.5), counting a micro-batch twice or dropping one
changes it by ~0.5, normalizing by per-replica instead of global tokens by the imbalance of the
halves.
"""

import numpy as np
import tensorflow as tf
from conftest import tiny_config

from seqtrain import config as cfg
from seqtrain import data
from seqtrain.checkpoints import build_model
from seqtrain.trainer import Trainer, make_optimizer

STEPS = 3
TOLERANCE = 1e-4  # of the update size; see the module docstring
MODES = {  # name -> params
    "off": {"guided_alignment_type": None},
    "aligned_tokens": {
        "guided_alignment_type": "ce",
        "guided_alignment_normalization": "aligned_tokens",
    },
    "opennmt": {"guided_alignment_type": "ce", "guided_alignment_normalization": "opennmt"},
}


def invariance_config(corpus, model_dir, mode):
    """tiny_config with dropout off, Adam ε = 1, a constant learning rate, STEPS steps."""
    no_dropout = {"dropout": 0.0, "attention_dropout": 0.0, "ffn_dropout": 0.0}
    params = {"decay_type": None, "learning_rate": 1.0, "optimizer_params": {"epsilon": 1.0}}
    train = {"max_step": STEPS, "save_checkpoints_steps": STEPS, "save_summary_steps": 1}
    return tiny_config(
        corpus, model_dir, model=no_dropout, params={**params, **MODES[mode]}, train=train
    )


def global_batches(config: cfg.Config, pipelines: int, steps: int) -> list[list[dict]]:
    """The two halves of each of ``steps`` global batches.

    pipelines 1: one input pipeline whose consecutive batches go to replicas 0 and 1
    (``--num-devices 2``, or 1 device with 2 accumulation steps); pipelines 2: one pipeline per
    worker (multi-worker), each fed its shard of the corpus, as ``tf.distribute`` does.
    """
    corpus = data.load_corpus(config, "train")
    with_alignment = bool(config.params.guided_alignment_type)
    if pipelines == 1:
        batches = iter(data.train_dataset(corpus, config.train, with_alignment=with_alignment))
        return [[next(batches), next(batches)] for _ in range(steps)]
    iterators = [
        iter(
            data.train_dataset(
                corpus,
                config.train,
                input_context=tf.distribute.InputContext(pipelines, index, pipelines),
                with_alignment=with_alignment,
            )
        )
        for index in range(pipelines)
    ]
    return [[next(it) for it in iterators] for _ in range(steps)]


def concatenate(halves: list[dict]) -> dict:
    """One batch holding the examples of both halves (each padded to the longer one)."""

    def pad(x, shape):
        return tf.pad(x, [[0, 0]] + [[0, n - m] for n, m in zip(shape, x.shape[1:])])

    whole = {}
    for key in halves[0]:
        parts = [h[key] for h in halves]
        shape = np.max([p.shape[1:] for p in parts], axis=0).tolist() if parts[0].ndim else []
        whole[key] = tf.concat([pad(p, shape) for p in parts], axis=0)
    return whole


def train_reference(config: cfg.Config, batches: list[list[dict]], whole: bool) -> list:
    """Weights (numpy, trainable order) after one update per global batch."""
    model = build_model(config)
    optimizer = make_optimizer(config.params)
    optimizer.build(model.trainable_variables)
    strategy = tf.distribute.get_strategy()
    trainer = Trainer(model, optimizer, config.params, strategy, seed=config.train.seed)
    for halves in batches:
        outputs = trainer.step([concatenate(halves)] if whole else halves)
        assert bool(outputs["finite"])
    return [v.numpy() for v in model.trainable_variables]


def initial_weights(config: cfg.Config) -> list:
    return [v.numpy() for v in build_model(config).trainable_variables]


def checkpoint_weights(config: cfg.Config, path: str) -> list:
    model = build_model(config)
    tf.train.Checkpoint(model=model).restore(path).expect_partial()
    return [v.numpy() for v in model.trainable_variables]


def relative_difference(a: list, b: list, initial: list) -> float:
    """max |a - b| over all weights, divided by max |b - initial| (the size of the update)."""
    difference = max(float(np.max(np.abs(x - y))) for x, y in zip(a, b))
    update = max(float(np.max(np.abs(y - w))) for y, w in zip(b, initial))
    assert update > 0, "the reference did not move"
    return difference / update
