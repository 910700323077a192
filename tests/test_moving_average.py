"""train.moving_average_decay: OpenNMT-tf's step-dependent decay, checkpoints holding the average
as the model's weights (training weights beside them), evaluation on the average, resume."""

import numpy as np
import pytest
import tensorflow as tf
from conftest import tiny_config, write_config

from seqtrain import evaluate, trainer
from seqtrain.checkpoints import build_model
from seqtrain.config import load_config
from seqtrain.moving_average import MovingAverage, load_training_weights

DECAY = 0.3  # min(0.3, (1 + k) / (10 + k)): 0.25 at k = 2, then 0.3 (both branches used)


def test_hand_computed_average_swap_and_restore(tmp_path):
    x = tf.Variable([1.0, -2.0])
    step = tf.Variable(1, dtype=tf.int64)
    average = MovingAverage([x], DECAY, step)
    average.update()  # k = 1: the shadow starts as the weights
    x.assign([3.0, 0.0])
    step.assign(2)
    average.update()  # decay min(0.3, 3/12) = 0.25: 1 - 0.75 * (1 - 3) = 2.5; -2 + 0.75 * 2 = -0.5
    np.testing.assert_allclose(average.shadow[0].numpy(), [2.5, -0.5], rtol=1e-6)
    x.assign([5.0, 1.0])
    step.assign(3)
    average.update()  # decay min(0.3, 4/13) = 0.3: 2.5 + 0.7 * 2.5 = 4.25; -0.5 + 0.7 * 1.5 = 0.55
    np.testing.assert_allclose(average.shadow[0].numpy(), [4.25, 0.55], rtol=1e-6)

    checkpoint = tf.train.Checkpoint(model=tf.Module(), moving_average=average.trackable)
    checkpoint.model.x = x
    with average.swapped():
        np.testing.assert_allclose(x.numpy(), [4.25, 0.55], rtol=1e-6)
        path = checkpoint.write(str(tmp_path / "ckpt-3"))
    np.testing.assert_array_equal(x.numpy(), [5.0, 1.0])
    reader = tf.train.load_checkpoint(path)
    np.testing.assert_allclose(
        reader.get_tensor("model/x/.ATTRIBUTES/VARIABLE_VALUE"), [4.25, 0.55]
    )
    held = reader.get_tensor("moving_average/training_weights/0/.ATTRIBUTES/VARIABLE_VALUE")
    np.testing.assert_array_equal(held, [5.0, 1.0])

    # Resume: the model reads the average, then restore() swaps it back to the training weights.
    y = tf.Variable([0.0, 0.0])
    restored = MovingAverage([y], DECAY, step)
    fresh = tf.train.Checkpoint(model=tf.Module())
    fresh.model.x = y
    fresh.read(path).expect_partial()
    assert restored.restore(path)
    np.testing.assert_array_equal(y.numpy(), [5.0, 1.0])
    np.testing.assert_allclose(restored.shadow[0].numpy(), [4.25, 0.55], rtol=1e-6)

    # A run without the average resuming from it continues from the training weights.
    z = tf.Variable([4.25, 0.55])
    assert load_training_weights([z], path)
    np.testing.assert_array_equal(z.numpy(), [5.0, 1.0])


def _expected(weights_per_step, first_step, start=None):
    """The recurrence in numpy: {step: averaged weights} for steps first_step, first_step + 1 …"""
    out, shadow = {}, start
    for k, weights in enumerate(weights_per_step, start=first_step):
        if shadow is None:
            shadow = [w.astype(np.float64) for w in weights]
        else:
            decay = min(DECAY, (1.0 + k) / (10.0 + k))
            shadow = [s - (1.0 - decay) * (s - w) for s, w in zip(shadow, weights)]
        out[k] = shadow
    return out


def _model_weights(config, prefix):
    model = build_model(config)
    tf.train.Checkpoint(model=model).read(prefix).expect_partial()
    return [v.numpy() for v in model.trainable_variables]


def _assert_close(actual, expected):
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-6)


@pytest.fixture
def recorded(monkeypatch):
    """Trainable weights before / after each update and at each evaluation (in-process runs)."""
    seen = {"before": [], "after": [], "eval": []}
    step, call = trainer.Trainer.step, evaluate.Evaluator.__call__

    def weights(model):
        return [v.numpy() for v in model.trainable_variables]

    def recording_step(self, micro_batches):
        seen["before"].append(weights(self.model))
        outputs = step(self, micro_batches)
        seen["after"].append(weights(self.model))
        return outputs

    def recording_call(self, at):
        seen["eval"].append(weights(self.model))
        return call(self, at)

    monkeypatch.setattr(trainer.Trainer, "step", recording_step)
    monkeypatch.setattr(evaluate.Evaluator, "__call__", recording_call)
    return seen


def _ema_config(corpus, tmp_path, max_step):
    data = {"eval_features_file": corpus["dev.src"], "eval_labels_file": corpus["dev.tgt"]}
    raw = tiny_config(
        corpus, tmp_path / "run", data={**tiny_config(corpus, "x")["data"], **data},
        train={"max_step": max_step, "save_checkpoints_steps": 2, "moving_average_decay": DECAY},
        eval={"steps": 2, "scorers": [], "alignment_images": 0},
    )  # fmt: skip
    return load_config([write_config(tmp_path / "run.yml", raw)])


def test_training_saves_and_evaluates_the_average(corpus, tmp_path, recorded):
    config = _ema_config(corpus, tmp_path, max_step=4)
    trainer.train(config)
    expected = _expected(recorded["after"], first_step=1)
    run = tmp_path / "run"
    for k in (2, 4):
        _assert_close(_model_weights(config, str(run / f"ckpt-{k}")), expected[k])
    _assert_close(recorded["eval"][0], expected[2])  # evaluated on the average …
    _assert_close(recorded["eval"][1], expected[4])
    assert not np.allclose(expected[4][0], recorded["after"][3][0])  # … which differs
    reader = tf.train.load_checkpoint(str(run / "ckpt-4"))
    for i, weights in enumerate(recorded["after"][3]):  # the training weights are kept too
        name = f"moving_average/training_weights/{i}/.ATTRIBUTES/VARIABLE_VALUE"
        np.testing.assert_array_equal(reader.get_tensor(name), weights)
    # best/ckpt (the lowest dev loss so far) holds the weights of one of the evaluations.
    written = _model_weights(config, str(run / "best" / "ckpt"))
    assert any(
        all(np.allclose(a, b, rtol=1e-5, atol=1e-6) for a, b in zip(written, evaluated))
        for evaluated in recorded["eval"]
    )


@pytest.mark.slow
def test_resume_continues_weights_and_average(corpus, tmp_path, recorded):
    config = _ema_config(corpus, tmp_path, max_step=4)
    trainer.train(config)
    first = list(recorded["after"])
    recorded["before"].clear()
    recorded["after"].clear()
    trainer.train(_ema_config(corpus, tmp_path, max_step=6))
    # The resumed run starts from the training weights of step 4, not from their average …
    for a, b in zip(recorded["before"][0], first[3]):
        np.testing.assert_array_equal(a, b)
    # … and continues the average of step 4 (a restarted average would start at w_5).
    expected = _expected(first + recorded["after"], first_step=1)
    saved = _model_weights(config, str(tmp_path / "run" / "ckpt-6"))
    _assert_close(saved, expected[6])
    restarted = _expected(recorded["after"], first_step=5)[6]
    assert not all(np.allclose(a, b, rtol=1e-5, atol=1e-6) for a, b in zip(saved, restarted))
