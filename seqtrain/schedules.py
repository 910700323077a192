"""Learning-rate schedules of OpenNMT-tf 2.32 (``params.decay_type``) and its ScheduleWrapper.

Each schedule maps the optimizer step (0 for the first update, see ``seqtrain.optim``) to a
float32 learning rate with OpenNMT-tf's formula, written in each class's docstring; the wrapper
applies ``start_decay_steps``, ``decay_step_duration`` and ``minimum_learning_rate``.
"""

import math

import tensorflow as tf

from seqtrain import config_checks
from seqtrain.errors import SeqtrainError


class NoamDecay:
    """`scale · model_dim^-0.5 · min((step+1)^-0.5, (step+1) · warmup_steps^-1.5)`."""

    def __init__(self, scale, model_dim, warmup_steps):
        self.scale = float(scale)
        self.model_dim = float(model_dim)
        self.warmup_steps = float(warmup_steps)

    def __call__(self, step):
        """step: integer scalar (0 for the first update) -> float32 scalar learning rate."""
        step = tf.cast(step, tf.float32) + 1.0
        return (
            self.scale
            * self.model_dim**-0.5
            * tf.minimum(tf.math.rsqrt(step), step * self.warmup_steps**-1.5)
        )


class RsqrtDecay:
    """`scale / sqrt(max(step, warmup_steps))` (Tensor2Tensor's rsqrt_decay; step from 0)."""

    def __init__(self, scale, warmup_steps):
        self.scale, self.warmup_steps = float(scale), float(warmup_steps)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        return self.scale * tf.math.rsqrt(tf.maximum(step, self.warmup_steps))


class InvSqrtDecay:
    """With s = step + 1: `init + (lr - init) · s / warmup_steps` while s <= warmup_steps, then
    `lr · sqrt(warmup_steps / s)` (fairseq's inverse_sqrt)."""

    def __init__(self, learning_rate, warmup_steps, initial_learning_rate=0.0):
        self.lr, self.warmup_steps = float(learning_rate), float(warmup_steps)
        self.init_lr = float(initial_learning_rate)

    def __call__(self, step):
        step = tf.cast(step, tf.float32) + 1.0
        warmup = self.init_lr + (self.lr - self.init_lr) * (step / self.warmup_steps)
        decay = self.lr * tf.sqrt(self.warmup_steps / step)
        return tf.where(step <= self.warmup_steps, warmup, decay)


class CosineAnnealing:
    """`eta_min + (eta_max - eta_min) · (1 + cos(pi · step / max_step)) / 2`; with warmup_steps,
    `eta_max · step / warmup_steps` before it (step from 0, not shifted by the warm-up)."""

    def __init__(self, eta_max, eta_min=0.0, max_step=1000000, warmup_steps=None):
        self.eta_max, self.eta_min, self.max_step = float(eta_max), float(eta_min), float(max_step)
        self.warmup_steps = None if warmup_steps is None else float(warmup_steps)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        cosine = 1.0 + tf.cos(math.pi * step / self.max_step)
        annealing = self.eta_min + 0.5 * (self.eta_max - self.eta_min) * cosine
        if self.warmup_steps is None:
            return annealing
        linear = self.eta_max * step / self.warmup_steps
        return tf.where(step < self.warmup_steps, linear, annealing)


class RNMTPlusDecay:
    """RNMT+ (Chen et al. 2018), t = step, n replicas, p warm-up, s start, e end:
    `scale · min(1 + t·(n-1)/(n·p), n, n · (2n)^((s - n·t)/(e - s)))`."""

    def __init__(self, scale, num_replicas, warmup_steps=500, start_step=600000, end_step=1200000):
        self.scale, self.n, self.p = float(scale), float(num_replicas), float(warmup_steps)
        self.s, self.e = float(start_step), float(end_step)

    def __call__(self, step):
        t, n = tf.cast(step, tf.float32), self.n
        warmup = tf.minimum(1.0 + t * (n - 1.0) / (n * self.p), n)
        decay = n * tf.pow(2.0 * n, (self.s - n * t) / (self.e - self.s))
        return self.scale * tf.minimum(warmup, decay)


SCHEDULE_CLASSES = {
    "NoamDecay": NoamDecay,
    "RsqrtDecay": RsqrtDecay,
    "InvSqrtDecay": InvSqrtDecay,
    "CosineAnnealing": CosineAnnealing,
    "RNMTPlusDecay": RNMTPlusDecay,
}


class ScheduleWrapper:
    """OpenNMT-tf's wrapper: delay the decay, stretch its steps, floor the learning rate.

    step' = max(step - start_decay_steps, 0) // decay_step_duration;
    lr = max(schedule(step'), minimum_learning_rate).
    """

    def __init__(
        self, schedule, start_decay_steps=0, decay_step_duration=1, minimum_learning_rate=0
    ):
        if decay_step_duration < 1:
            raise SeqtrainError(
                f"params.decay_step_duration: must be an integer >= 1, got {decay_step_duration}"
            )
        self.schedule = schedule
        self.start_decay_steps = int(start_decay_steps)
        self.decay_step_duration = int(decay_step_duration)
        self.minimum_learning_rate = float(minimum_learning_rate)

    def __call__(self, step):
        """step: integer scalar -> float32 scalar learning rate."""
        step = tf.maximum(tf.cast(step, tf.int64) - self.start_decay_steps, 0)
        step //= self.decay_step_duration
        lr = tf.cast(self.schedule(step), tf.float32)
        return tf.maximum(lr, self.minimum_learning_rate)


def learning_rate_schedule(
    learning_rate,
    decay_type=None,
    decay_params=None,
    start_decay_steps=0,
    decay_step_duration=1,
    minimum_learning_rate=0.0,
):
    """Builds the `learning_rate` argument of LazyAdam from the `params` section of the config.

    decay_type None -> the constant float `learning_rate`. Otherwise, as OpenNMT-tf, the schedule
    is built from decay_params over its defaults (``config.SCHEDULES``), its first argument
    (scale / learning_rate / eta_max) defaulting to `learning_rate`, and wrapped in a
    ScheduleWrapper with the remaining options.
    """
    if decay_type is None:
        return float(learning_rate)
    arguments = config_checks.schedule_arguments(
        decay_type, dict(decay_params or {}), learning_rate, "params.decay_params"
    )
    schedule = SCHEDULE_CLASSES[decay_type](**arguments)
    return ScheduleWrapper(schedule, start_decay_steps, decay_step_duration, minimum_learning_rate)
