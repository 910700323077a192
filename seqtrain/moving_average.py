"""Exponential moving average of the trainable weights (``train.moving_average_decay``).

Semantics of OpenNMT-tf 2.32 (``tf.train.ExponentialMovingAverage`` with ``num_updates`` = the
optimizer step): after update k of a run (k = the step counter after it),

    decay_k  = min(decay, (1 + k) / (10 + k))
    shadow_k = shadow_(k-1) - (1 - decay_k) * (shadow_(k-1) - w_k)

and the shadow starts as the weights after the run's first update (OpenNMT-tf creates it then),
so early averages are not dragged towards the random initialization.

Checkpoints hold the *averaged* weights under ``model/``, as OpenNMT-tf's do: translate, eval,
export, average-checkpoints and ``--checkpoint_path`` fine-tuning read them without knowing
about the average. Unlike OpenNMT-tf (which restarts the average from the averaged weights on
every restart), the training weights are kept under ``moving_average/training_weights/``, so a
resumed run continues both the optimization and the average exactly.
"""

from __future__ import annotations

import contextlib
import logging

import tensorflow as tf

logger = logging.getLogger(__name__)

CHECKPOINT_KEY = "moving_average"  # name of the training weights' holder in a checkpoint


def holds_training_weights(prefix: str) -> bool:
    """Whether checkpoint ``prefix`` was written with a moving average (training weights kept)."""
    return any(name.startswith(f"{CHECKPOINT_KEY}/") for name, _ in tf.train.list_variables(prefix))


class MovingAverage:
    """Shadow copies of ``variables`` updated after each training step.

    variables: the model's trainable variables (any shapes, float32); step: the optimizer's
    iteration counter (int64 scalar variable), read by ``update`` for the step-dependent decay.
    """

    def __init__(self, variables, decay: float, step: tf.Variable):
        if not 0.9 <= decay <= 1.0:
            logger.warning(
                "train.moving_average_decay = %g: values near 1 (0.9999) are usual", decay
            )
        self.variables = list(variables)
        self.decay = float(decay)
        self.step = step
        self.shadow = [_copy(v, "shadow") for v in self.variables]
        # What a checkpoint stores besides the averaged weights (see the module docstring).
        self.trackable = tf.Module(name=CHECKPOINT_KEY)
        self.trackable.training_weights = [_copy(v, "training") for v in self.variables]
        self.started = False  # the shadow is set to the weights by the first update

    def update(self) -> None:
        """After a training step: the first call copies the weights, later ones average."""
        if not self.started:
            for shadow, variable in zip(self.shadow, self.variables):
                shadow.assign(variable.read_value())
            self.started = True
            return
        self._average()

    @tf.function
    def _average(self):
        step = tf.cast(self.step, tf.float32)
        decay = tf.minimum(tf.constant(self.decay, tf.float32), (1.0 + step) / (10.0 + step))
        for shadow, variable in zip(self.shadow, self.variables):
            shadow.assign_sub((1.0 - decay) * (shadow - variable.read_value()))

    @contextlib.contextmanager
    def swapped(self):
        """Inside the block the model holds the averaged weights (evaluation, saving) and
        ``trackable`` the training weights; they are put back afterwards, even on an error."""
        if not self.started:  # before the first update the average is the weights themselves
            self.update()
        holders = self.trackable.training_weights
        for holder, shadow, variable in zip(holders, self.shadow, self.variables):
            holder.assign(variable.read_value())
            variable.assign(shadow.read_value())
        try:
            yield
        finally:
            for holder, variable in zip(holders, self.variables):
                variable.assign(holder.read_value())

    def restore(self, prefix: str) -> bool:
        """After ``prefix`` was restored into the model (its averaged weights): takes them as the
        shadow and its training weights as the model's. False (nothing changed) when ``prefix``
        holds no training weights: the average then starts at the next update."""
        if not holds_training_weights(prefix):
            return False
        restore_training_weights(self.trackable, prefix)
        for holder, shadow, variable in zip(
            self.trackable.training_weights, self.shadow, self.variables
        ):
            shadow.assign(variable.read_value())
            variable.assign(holder.read_value())
        self.started = True
        return True


def restore_training_weights(trackable: tf.Module, prefix: str) -> None:
    """Reads ``moving_average/training_weights`` of ``prefix`` into ``trackable``."""
    checkpoint = tf.train.Checkpoint(**{CHECKPOINT_KEY: trackable})
    checkpoint.read(prefix).expect_partial().assert_existing_objects_matched()


def load_training_weights(variables, prefix: str) -> bool:
    """A run without a moving average resuming from a checkpoint written with one continues
    from its training weights (not from the average). False when ``prefix`` has none."""
    if not holds_training_weights(prefix):
        return False
    trackable = tf.Module(name=CHECKPOINT_KEY)
    trackable.training_weights = [_copy(v, "training") for v in variables]
    restore_training_weights(trackable, prefix)
    for holder, variable in zip(trackable.training_weights, variables):
        variable.assign(holder.read_value())
    return True


def _copy(variable: tf.Variable, kind: str) -> tf.Variable:
    name = variable.name.split(":")[0]
    return tf.Variable(variable.read_value(), trainable=False, name=f"{kind}/{name}")
