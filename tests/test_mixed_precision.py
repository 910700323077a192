"""Mixed precision and XLA through the trainer: bfloat16 training on CPU against float32 on the
same batches, float32 variables and checkpoints, float16 dynamic loss scaling (overflow: the
update is skipped and the scale halves), and ``train.jit_compile: true``."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf
from conftest import tiny_config

from seqtrain import config as cfg
from seqtrain import trainer
from seqtrain.data import batch_from_examples
from seqtrain.optim import DynamicLossScale
from seqtrain.trainer import Trainer, make_optimizer

STEPS = 4
NO_DROPOUT = {"dropout": 0.0, "attention_dropout": 0.0, "ffn_dropout": 0.0}


def run_config(corpus, model_dir, **train):
    return cfg.build(
        tiny_config(
            corpus,
            model_dir,
            model=NO_DROPOUT,
            train={"max_step": STEPS, "save_summary_steps": 1, "save_checkpoints_steps": STEPS,
                   **train},
        ),
        "test",
    )  # fmt: skip


def losses_of(model_dir):
    with open(os.path.join(model_dir, "metrics.jsonl"), encoding="utf-8") as f:
        return [r["loss"] for r in map(json.loads, f) if r["kind"] == "train"]


def test_compute_dtype_on_this_machine():
    if tf.config.list_physical_devices("GPU"):
        pytest.skip("a GPU machine computes in float16")
    assert trainer.compute_dtype(True) == tf.bfloat16 and trainer.compute_dtype(False) == tf.float32


@pytest.mark.slow
@pytest.mark.skipif(bool(tf.config.list_physical_devices("GPU")), reason="CPU path")
def test_bfloat16_training_tracks_float32_and_restores_into_float32(corpus, tmp_path):
    """STEPS updates with train.mixed_precision (bfloat16 on CPU) vs float32, same seed and
    batches; then the bfloat16 checkpoint resumes in a float32 run."""
    float32 = run_config(corpus, tmp_path / "float32")
    bfloat16 = run_config(corpus, tmp_path / "bfloat16", mixed_precision=True)
    trainer.train(float32)
    trainer.train(bfloat16)
    a, b = losses_of(float32.model_dir), losses_of(bfloat16.model_dir)
    assert len(a) == len(b) == STEPS
    # bfloat16 keeps 8 significant bits (relative rounding 2^-9 ≈ 0.2 % per value); the loss is
    # a sum over a few hundred tokens of a 2-layer model, whose rounding errors mostly average
    # out, so 1 % bounds a correct run (it passes) while a precision bug (the softmax or the
    # loss computed in bfloat16, gradients rounded before the update) costs more within these
    # steps. The per-step gap itself was not recorded.
    np.testing.assert_allclose(b, a, rtol=1e-2)
    assert a[-1] < a[0] and b[-1] < b[0]  # both learn
    # Variables and optimizer slots stay float32 in the checkpoint.
    path = tf.train.latest_checkpoint(bfloat16.model_dir)
    reader = tf.train.load_checkpoint(path)
    dtypes = reader.get_variable_to_dtype_map()
    floating = {name: d for name, d in dtypes.items() if d.is_floating}
    assert floating and all(d == tf.float32 for d in floating.values()), floating
    # Resume the bfloat16 run in float32: it restores and trains on to STEPS + 2.
    resumed = cfg.build(
        {**cfg.to_dict(bfloat16), "train": {**cfg.to_dict(bfloat16)["train"],
                                            "mixed_precision": False, "max_step": STEPS + 2}},
        "test",
    )  # fmt: skip
    trainer.train(resumed)
    assert len(losses_of(resumed.model_dir)) == STEPS + 2
    assert tf.train.latest_checkpoint(resumed.model_dir).endswith(f"ckpt-{STEPS + 2}")


@pytest.mark.slow
def test_jit_compile_trains(corpus, tmp_path):
    """train.jit_compile: true XLA-compiles the forward/backward; same losses as without XLA."""
    plain = run_config(corpus, tmp_path / "plain", max_step=2)
    jit = run_config(corpus, tmp_path / "jit", max_step=2, jit_compile=True)
    trainer.train(plain)
    trainer.train(jit)
    a, b = losses_of(plain.model_dir), losses_of(jit.model_dir)
    assert len(b) == 2 and all(np.isfinite(b))
    # XLA fuses and reorders float32 arithmetic: the same figures to ~1e-6, not bit for bit.
    np.testing.assert_allclose(b, a, rtol=1e-4)


def _float16_trainer(initial_scale):
    model_config = cfg.ModelConfig(
        num_layers=1, num_units=16, num_heads=2, ffn_inner_dim=32, **NO_DROPOUT
    )
    params = cfg.ParamsConfig(guided_alignment_type="ce", decay_type=None, learning_rate=0.01)
    from seqtrain.model import Transformer

    model = Transformer(model_config, 20, 20, seed=1, compute_dtype=tf.float16)
    optimizer = make_optimizer(params)
    optimizer.build(model.trainable_variables)
    scale = DynamicLossScale(initial=initial_scale, period=1000)
    strategy = tf.distribute.get_strategy()
    step = Trainer(model, optimizer, params, strategy, seed=1, loss_scale=scale)
    return model, optimizer, scale, step


def _batch():
    rng = np.random.RandomState(0)
    examples = []
    for length in (3, 5, 4):
        src, tgt = rng.randint(4, 20, length), rng.randint(4, 20, length)
        examples.append((src, tgt, np.array([(t, t) for t in range(length)], np.int32)))
    return batch_from_examples(examples)


def test_float16_loss_scale_overflow_skips_the_update_and_halves_the_scale():
    """float16 compute on CPU (the GPU path): a loss scale of 2^40 overflows the float16
    gradients (max 65504): nothing changes but the scale, halved. A scale of 2^10 applies."""
    model, optimizer, scale, trainer_ = _float16_trainer(2.0**40)
    before = [v.numpy().copy() for v in model.trainable_variables]
    outputs = trainer_.step([_batch()])
    assert not bool(outputs["finite"])
    assert float(outputs["loss_scale"]) == 2.0**39 == float(scale.scale.numpy())
    assert int(optimizer.iterations.numpy()) == 0
    for old, new in zip(before, model.trainable_variables):
        np.testing.assert_array_equal(old, new.numpy())
    assert all(np.all(np.isfinite(v.numpy())) for v in model.trainable_variables)
    assert int(scale.good_steps.numpy()) == 0

    model, optimizer, scale, trainer_ = _float16_trainer(2.0**10)
    outputs = trainer_.step([_batch()])
    assert bool(outputs["finite"]) and float(outputs["loss_scale"]) == 2.0**10
    assert int(optimizer.iterations.numpy()) == 1 and int(scale.good_steps.numpy()) == 1
    assert all(v.dtype == tf.float32 for v in model.trainable_variables)
