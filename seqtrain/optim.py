"""LazyAdam and gradient helpers that keep embedding gradients sparse (schedules: schedules.py).

Embedding gradients arrive as `tf.IndexedSlices` (rows of the tokens in the batch). Everything here
keeps them sparse — accumulation, scaling, clipping — so that LazyAdam can update only those rows.
Densifying one by accident would still train, only slower and no longer lazily, so the helpers
below never call `tf.convert_to_tensor` on an IndexedSlices.

Learning-rate convention: a schedule is called with the optimizer's `iterations` value BEFORE the
update increments it, so the first update uses `schedule(0)` (as OpenNMT-tf / Keras do). The bias
correction uses t = iterations AFTER the increment (t = 1 for the first update).
"""

import tensorflow as tf

from seqtrain import config as cfg
from seqtrain import config_checks
from seqtrain.schedules import (  # noqa: F401  (re-exported: the optimizer's learning rate)
    NoamDecay,
    ScheduleWrapper,
    learning_rate_schedule,
)


def deduplicate(values, indices):
    """Sums the rows of an IndexedSlices that share an index.

    values [N, ...], indices [N] -> (summed [U, ...], unique_indices [U]), first-seen order.
    """
    unique, positions = tf.unique(indices)
    summed = tf.math.unsorted_segment_sum(values, positions, tf.shape(unique)[0])
    return summed, unique


def accumulate(grads_a, grads_b):
    """Adds two gradient lists element-wise; IndexedSlices + IndexedSlices stays IndexedSlices.

    Two IndexedSlices are concatenated (indices [Na]+[Nb], values [Na+Nb, ...]); duplicates are
    summed later by the optimizer or `deduplicate`. An IndexedSlices meeting a dense gradient
    (e.g. a tied embedding) is scattered into it. None means "no gradient" and is neutral.
    """
    if len(grads_a) != len(grads_b):
        raise ValueError(f"gradient lists differ in length: {len(grads_a)} vs {len(grads_b)}")
    return [_add(a, b) for a, b in zip(grads_a, grads_b)]


def _add(a, b):
    if a is None:
        return b
    if b is None:
        return a
    sparse_a = isinstance(a, tf.IndexedSlices)
    sparse_b = isinstance(b, tf.IndexedSlices)
    if sparse_a and sparse_b:
        indices_dtype = tf.int64 if tf.int64 in (a.indices.dtype, b.indices.dtype) else tf.int32
        return tf.IndexedSlices(
            tf.concat([a.values, b.values], axis=0),
            tf.concat(
                [tf.cast(a.indices, indices_dtype), tf.cast(b.indices, indices_dtype)], axis=0
            ),
            a.dense_shape,
        )
    if sparse_a or sparse_b:
        sparse, dense = (a, b) if sparse_a else (b, a)
        return tf.tensor_scatter_nd_add(dense, tf.expand_dims(sparse.indices, 1), sparse.values)
    return a + b


def scale_gradients(grads, factor):
    """Multiplies every gradient by `factor` (scalar); IndexedSlices stay sparse."""
    return [_scale(g, factor) for g in grads]


def _scale(grad, factor):
    if grad is None:
        return None
    if isinstance(grad, tf.IndexedSlices):
        values = grad.values * tf.cast(factor, grad.values.dtype)
        return tf.IndexedSlices(values, grad.indices, grad.dense_shape)
    return grad * tf.cast(factor, grad.dtype)


def global_norm(grads):
    """float32 scalar: the L2 norm of all gradients as if densified.

    IndexedSlices rows with the same index are summed before squaring, so duplicates count as
    their dense sum (tf.linalg.global_norm would square them separately).
    """
    squares = []
    for grad in grads:
        if grad is None:
            continue
        if isinstance(grad, tf.IndexedSlices):
            grad, _ = deduplicate(grad.values, grad.indices)
        squares.append(tf.reduce_sum(tf.square(tf.cast(grad, tf.float32))))
    if not squares:
        return tf.constant(0.0)
    return tf.sqrt(tf.add_n(squares))


def clip_by_global_norm(grads, clip_norm):
    """Scales all gradients by clip_norm / max(global_norm, clip_norm); IndexedSlices stay sparse.

    Returns (clipped gradients, global norm before clipping). A non-finite norm propagates
    (NaN gradients), as tf.clip_by_global_norm does, so the caller can detect it.
    """
    norm = global_norm(grads)
    clip_norm = tf.cast(clip_norm, tf.float32)
    factor = clip_norm / tf.maximum(norm, clip_norm)
    factor = tf.where(tf.math.is_finite(norm), factor, tf.constant(float("nan")))
    return scale_gradients(grads, factor), norm


def clip_by_norm(grads, clip_norm):
    """Keras's clipnorm: each gradient g scaled by clip_norm / max(‖g‖, clip_norm) on its own.

    ‖g‖ of an IndexedSlices is that of its dense form (duplicate rows summed first); it stays
    sparse. A non-finite norm gives NaN values, as tf.clip_by_norm does.
    """
    clip_norm = tf.cast(clip_norm, tf.float32)
    clipped = []
    for grad in grads:
        if grad is None:
            clipped.append(None)
            continue
        norm = global_norm([grad])
        factor = clip_norm / tf.maximum(norm, clip_norm)
        factor = tf.where(tf.math.is_finite(norm), factor, tf.constant(float("nan")))
        clipped.append(_scale(grad, factor))
    return clipped


class LazyAdam(tf.Module):
    """Adam whose IndexedSlices updates touch only the rows present in the gradient.

    For each row present (duplicates summed first), with t = iterations after the increment:
    m ← β1·m + (1-β1)·g; v ← β2·v + (1-β2)·g²; w ← w − lr·√(1−β2^t)/(1−β1^t) · m/(√v + ε).
    Absent rows keep w, m, v bit-identical. Dense gradients use the same formula through TF's
    fused ResourceApplyAdam kernel. lazy=False densifies IndexedSlices (plain Adam).

    Slots live in `self._slots[key] = {"m": ..., "v": ...}` with key = the variable's name
    (suffixed _1, _2 … for repeated names, in first-seen order), so a checkpoint taken with one
    model restores into a fresh optimizer after `build(model.trainable_variables)`.
    """

    def __init__(self, learning_rate, beta_1=0.9, beta_2=0.998, epsilon=1e-7, lazy=True, name=None):
        super().__init__(name=name or ("LazyAdam" if lazy else "Adam"))
        self.learning_rate = learning_rate  # float, or callable step -> lr
        self.beta_1 = float(beta_1)
        self.beta_2 = float(beta_2)
        self.epsilon = float(epsilon)
        self.lazy = bool(lazy)
        # Created under the caller's strategy scope (if any), so it is mirrored like the model.
        self.iterations = tf.Variable(
            0,
            dtype=tf.int64,
            trainable=False,
            name="iterations",
            aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
        )
        self._slots = {}  # key -> {"m": variable, "v": variable}
        self._slot_owner = {}  # key -> var.ref() of the model variable it belongs to

    def learning_rate_at(self, step):
        """float32 scalar learning rate for the update made when iterations == step."""
        if callable(self.learning_rate):
            return tf.cast(self.learning_rate(step), tf.float32)
        return tf.constant(self.learning_rate, tf.float32)

    def build(self, variables):
        """Creates the m and v slots of `variables` (call once, before tracing / restoring).

        Under a tf.distribute strategy, slots of mirrored variables are mirrored the same way.
        """
        for var in variables:
            self._get_slots(var)

    def slots(self, var):
        """(m, v) variables of a model variable (created if missing)."""
        entry = self._get_slots(var)
        return entry["m"], entry["v"]

    def _slot_key(self, var):
        """The variable's name, or name_1, name_2 … if an earlier variable holds that name."""
        base = var.name.split(":")[0]
        key, n = base, 0
        while key in self._slot_owner:
            if self._slot_owner[key] == var.ref():
                return key
            n += 1
            key = f"{base}_{n}"
        return key

    def _get_slots(self, var):
        key = self._slot_key(var)
        if key not in self._slots:
            self._slot_owner[key] = var.ref()
            self._slots[key] = {"m": _zeros_like_var(var, "m"), "v": _zeros_like_var(var, "v")}
        return self._slots[key]

    def apply_gradients(self, grads_and_vars, apply=None):
        """Applies one update; pairs with a None gradient are skipped.

        grads_and_vars: iterable of (gradient, variable); gradients are tensors shaped like
        their variable, or IndexedSlices (values [N, ...], indices [N]). Under a strategy call
        it in replica context (inside strategy.run) with gradients ALREADY all-reduced: the
        update is done once per variable through merge_call + strategy.extended.update.
        apply: optional boolean scalar (the same on every replica); when False nothing changes,
        not even `iterations` (the trainer passes "loss and gradients are finite").
        Returns the incremented `iterations` (graph mode) for control dependencies.
        """
        pairs = [(g, v) for g, v in grads_and_vars if g is not None]
        if not self.lazy:
            pairs = [(_densify(g), v) for g, v in pairs]
        if tf.distribute.has_strategy() and tf.distribute.in_cross_replica_context():
            return self._apply(tf.distribute.get_strategy(), pairs, apply)
        if tf.distribute.has_strategy():
            return tf.distribute.get_replica_context().merge_call(self._apply, args=(pairs, apply))
        return self._apply(tf.distribute.get_strategy(), pairs, apply)

    def _apply(self, strategy, pairs, apply=None):
        """Cross-replica part: one step counter increment and one update per variable."""
        for _, var in pairs:
            self._get_slots(var)  # normally already built; creation is lifted out of tf.function
        step = self.iterations.read_value()
        lr = self.learning_rate_at(step)
        t = tf.cast(step + 1, tf.float32)
        beta_1_power = tf.pow(self.beta_1, t)
        beta_2_power = tf.pow(self.beta_2, t)
        updates = []
        for grad, var in pairs:
            m, v = self.slots(var)
            if isinstance(grad, tf.IndexedSlices):
                lr_t = lr * tf.sqrt(1.0 - beta_2_power) / (1.0 - beta_1_power)
                fn = self._sparse_update_fn(lr_t)
            else:
                fn = self._dense_update_fn(lr, beta_1_power, beta_2_power)
            args = (grad, m, v)
            if apply is not None:  # extended.update hands each device its own copy of `apply`
                fn, args = _conditional(fn), args + (apply,)
            updates.append(strategy.extended.update(var, fn, args=args, group=True))
        with tf.control_dependencies([u for u in updates if u is not None]):
            increment = 1 if apply is None else tf.cast(_first(strategy, apply), tf.int64)
            return self.iterations.assign_add(increment)

    def _sparse_update_fn(self, lr_t):
        def update(var, grad, m, v):
            """var/m/v: one component variable [R, ...]; grad: IndexedSlices of that replica."""
            dtype = var.dtype.base_dtype
            values, indices = deduplicate(tf.cast(grad.values, dtype), grad.indices)
            beta_1, beta_2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
            m_rows = beta_1 * tf.gather(m, indices) + (1 - beta_1) * values
            v_rows = beta_2 * tf.gather(v, indices) + (1 - beta_2) * tf.square(values)
            delta = tf.cast(lr_t, dtype) * m_rows / (tf.sqrt(v_rows) + tf.cast(self.epsilon, dtype))
            return tf.group(
                m.scatter_update(tf.IndexedSlices(m_rows, indices)),
                v.scatter_update(tf.IndexedSlices(v_rows, indices)),
                var.scatter_sub(tf.IndexedSlices(delta, indices)),
            )

        return update

    def _dense_update_fn(self, lr, beta_1_power, beta_2_power):
        def update(var, grad, m, v):
            """Fused kernel: lr_t = lr·√(1−β2^t)/(1−β1^t); w −= lr_t·m/(√v + ε) (ε outside √)."""
            dtype = var.dtype.base_dtype
            return tf.raw_ops.ResourceApplyAdam(
                var=var.handle,
                m=m.handle,
                v=v.handle,
                beta1_power=tf.cast(beta_1_power, dtype),
                beta2_power=tf.cast(beta_2_power, dtype),
                lr=tf.cast(lr, dtype),
                beta1=tf.cast(self.beta_1, dtype),
                beta2=tf.cast(self.beta_2, dtype),
                epsilon=tf.cast(self.epsilon, dtype),
                grad=tf.cast(grad, dtype),
                use_locking=False,
                use_nesterov=False,
            )

        return update


def _conditional(update):
    """Wraps an update fn so that it runs only when its extra `apply` argument is True."""

    def conditional_update(var, grad, m, v, apply):
        def run():
            with tf.control_dependencies([update(var, grad, m, v)]):
                return tf.constant(True)

        return tf.cond(apply, run, lambda: tf.constant(False))

    return conditional_update


def _first(strategy, value):
    if isinstance(value, tf.distribute.DistributedValues):
        return strategy.experimental_local_results(value)[0]
    return value


def _densify(grad):
    if isinstance(grad, tf.IndexedSlices):
        return tf.convert_to_tensor(grad)
    return grad


def _zeros_like_var(var, slot_name):
    """A zero slot variable shaped like `var`, mirrored/colocated with it under a strategy.

    init_scope lifts creation out of any tf.function being traced (variables must be created
    eagerly, once); the variable's own strategy scope makes the slot distributed like it.
    """
    name = f"{var.name.split(':')[0]}/{slot_name}"
    with tf.init_scope():
        if isinstance(var, tf.distribute.DistributedValues):
            strategy = var.distribute_strategy
            with strategy.scope(), strategy.extended.colocate_vars_with(var):
                return tf.Variable(tf.zeros(var.shape, var.dtype), trainable=False, name=name)
        with tf.device(var.device):
            return tf.Variable(tf.zeros(var.shape, var.dtype), trainable=False, name=name)


def make_optimizer(params: cfg.ParamsConfig) -> LazyAdam:
    """LazyAdam (or Adam) with the learning rate or schedule of the `params` section."""
    schedule = learning_rate_schedule(
        params.learning_rate,
        params.decay_type,
        config_checks.decay_arguments(params),
        params.start_decay_steps,
        params.decay_step_duration,
        params.minimum_learning_rate,
    )
    p = params.optimizer_params
    return LazyAdam(schedule, p.beta_1, p.beta_2, p.epsilon, lazy=params.optimizer == "LazyAdam")


class DynamicLossScale(tf.Module):
    """float16 loss scaling: multiply the loss by `scale`, divide the gradients by it.

    A step with non-finite gradients is skipped and halves the scale; `period` finite steps in
    a row double it (the usual dynamic scheme). Call `update(finite)` once per step in
    cross-replica context.
    """

    def __init__(self, initial=2.0**15, period=2000):
        super().__init__(name="loss_scale")
        aggregation = tf.VariableAggregation.ONLY_FIRST_REPLICA
        self.scale = tf.Variable(initial, trainable=False, aggregation=aggregation, name="scale")
        self.good_steps = tf.Variable(
            0, dtype=tf.int64, trainable=False, aggregation=aggregation, name="good_steps"
        )
        self.period = period

    def update(self, finite):
        """finite: bool scalar, whether the step's gradients were finite."""
        grow = tf.logical_and(finite, self.good_steps + 1 >= self.period)
        factor = tf.where(grow, 2.0, tf.where(finite, 1.0, 0.5))
        self.good_steps.assign(tf.where(finite & ~grow, self.good_steps + 1, 0))
        return self.scale.assign(self.scale * factor)
