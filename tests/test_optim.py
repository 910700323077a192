"""LazyAdam, sparse-preserving gradient helpers and schedules, checked against numpy references."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from conftest import HANG_GUARD

from seqtrain.errors import SeqtrainError
from seqtrain.optim import (
    LazyAdam,
    NoamDecay,
    ScheduleWrapper,
    accumulate,
    clip_by_global_norm,
    global_norm,
    learning_rate_schedule,
    scale_gradients,
)

B1, B2, EPS = 0.9, 0.998, 1e-7
REPO = Path(__file__).resolve().parents[1]


def np_adam_rows(w, m, v, rows, g_rows, lr, t):
    """In-place numpy (float64) Adam on the given rows; t is 1 for the first update."""
    lr_t = lr * np.sqrt(1 - B2**t) / (1 - B1**t)
    m[rows] = B1 * m[rows] + (1 - B1) * g_rows
    v[rows] = B2 * v[rows] + (1 - B2) * g_rows**2
    w[rows] -= lr_t * m[rows] / (np.sqrt(v[rows]) + EPS)


def dense_of(indices, values, rows):
    dense = np.zeros((rows,) + values.shape[1:])
    np.add.at(dense, indices, values)
    return dense


def slices(indices, values, shape):
    return tf.IndexedSlices(
        tf.constant(values, tf.float32), tf.constant(indices, tf.int32), tf.constant(shape)
    )


SPARSE_STEPS = [  # (indices with duplicates, values): rows 0, 6, 7 are never touched
    ([1, 3, 1, 5], [[0.5, -1.0, 2.0], [0.1, 0.2, 0.3], [1.5, 0.5, -0.5], [-2.0, 1.0, 0.0]]),
    ([4, 4, 2], [[1.0, 1.0, 1.0], [-3.0, 0.5, 2.0], [0.3, -0.7, 0.9]]),
    ([3, 1, 3], [[0.2, 0.2, -0.4], [1.0, -1.0, 1.0], [0.6, 0.0, 0.1]]),
]


def schedule(step):
    """lr = 0.01·(step+1): tells which step the optimizer passes to the schedule."""
    return 0.01 * tf.cast(step + 1, tf.float32)


@pytest.mark.parametrize("use_function", [False, True])
def test_sparse_update_matches_numpy_and_skips_absent_rows(use_function):
    init = np.random.RandomState(0).randn(8, 3)
    var = tf.Variable(init.astype(np.float32), name="embedding")
    opt = LazyAdam(schedule)
    opt.build([var])
    m_var, v_var = opt.slots(var)
    apply = tf.function(opt.apply_gradients) if use_function else opt.apply_gradients
    w, m, v = var.numpy().astype(np.float64), np.zeros((8, 3)), np.zeros((8, 3))
    for i, (indices, values) in enumerate(SPARSE_STEPS):
        before = [var.numpy(), m_var.numpy(), v_var.numpy()]
        apply([(slices(indices, values, [8, 3]), var)])
        dense = dense_of(indices, np.array(values), 8)
        rows = np.unique(indices)
        np_adam_rows(w, m, v, rows, dense[rows], lr=0.01 * (i + 1), t=i + 1)
        for got, want in zip([var, m_var, v_var], [w, m, v]):
            np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-6)
        absent = np.setdiff1d(np.arange(8), rows)
        for got, old in zip([var, m_var, v_var], before):
            assert np.array_equal(got.numpy()[absent], old[absent])
    assert opt.iterations.numpy() == 3
    assert np.array_equal(var.numpy()[[0, 6, 7]], init.astype(np.float32)[[0, 6, 7]])
    assert not np.any(m_var.numpy()[[0, 6, 7]]) and not np.any(v_var.numpy()[[0, 6, 7]])


def test_dense_update_matches_numpy_adam():
    rng = np.random.RandomState(1)
    init = rng.randn(4, 5)
    var = tf.Variable(init.astype(np.float32))
    opt = LazyAdam(schedule)
    m_var, v_var = opt.slots(var)  # lazily created
    w, m, v = init.copy(), np.zeros((4, 5)), np.zeros((4, 5))
    for i in range(3):
        grad = rng.randn(4, 5).astype(np.float32)
        grad[:, 0] *= 1e-4  # √v ~ 4e-6: would expose ε inside the square root (√(v + ε))
        opt.apply_gradients([(tf.constant(grad), var)])
        np_adam_rows(w, m, v, slice(None), grad.astype(np.float64), lr=0.01 * (i + 1), t=i + 1)
        for got, want in zip([var, m_var, v_var], [w, m, v]):
            np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-6)


def test_not_lazy_densifies_indexed_slices():
    init = np.random.RandomState(2).randn(8, 3).astype(np.float32)
    adam, lazy = LazyAdam(0.05, lazy=False), LazyAdam(0.05)
    var, lazy_var = tf.Variable(init), tf.Variable(init)
    w, m, v = init.astype(np.float64), np.zeros((8, 3)), np.zeros((8, 3))
    for i, (indices, values) in enumerate(SPARSE_STEPS):
        adam.apply_gradients([(slices(indices, values, [8, 3]), var)])
        lazy.apply_gradients([(slices(indices, values, [8, 3]), lazy_var)])
        np_adam_rows(w, m, v, slice(None), dense_of(indices, np.array(values), 8), 0.05, i + 1)
    m_var, v_var = adam.slots(var)
    for got, want in zip([var, m_var, v_var], [w, m, v]):
        np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-6)
    # Row 5 only had a gradient at step 1: dense Adam keeps decaying its m and moving it,
    # LazyAdam leaves it where step 1 put it.
    lazy_m, _ = lazy.slots(lazy_var)
    assert not np.allclose(m_var.numpy()[5], lazy_m.numpy()[5])
    assert not np.allclose(var.numpy()[5], lazy_var.numpy()[5])
    assert np.array_equal(var.numpy()[0], init[0])  # never any gradient: m = 0, no move


def test_noam_decay_values():
    noam = NoamDecay(2.0, 512, 8000)
    for step in [0, 7999, 100000]:
        s = step + 1.0
        want = 2.0 * 512**-0.5 * min(s**-0.5, s * 8000**-1.5)
        np.testing.assert_allclose(float(noam(step)), want, rtol=1e-6)
    assert float(noam(7999)) > float(noam(0)) and float(noam(100000)) < float(noam(7999))


def test_schedule_wrapper_options():
    def inverse(step):
        return 1.0 / tf.cast(step + 1, tf.float32)

    wrapped = ScheduleWrapper(inverse, start_decay_steps=10, decay_step_duration=4)
    got = [float(wrapped(s)) for s in [0, 10, 13, 14, 22]]
    np.testing.assert_allclose(got, [1.0, 1.0, 1.0, 1 / 2, 1 / 4], rtol=1e-6)
    floored = ScheduleWrapper(inverse, minimum_learning_rate=0.3)
    got = [float(floored(s)) for s in [0, 1, 2, 3, 9]]
    np.testing.assert_allclose(got, [1, 0.5, 1 / 3, 0.3, 0.3], rtol=1e-6)


def test_learning_rate_schedule_builder():
    assert learning_rate_schedule(0.5) == 0.5
    lr = learning_rate_schedule(2.0, "NoamDecay", {"model_dim": 512, "warmup_steps": 8000})
    np.testing.assert_allclose(float(lr(99)), 2.0 * 512**-0.5 * 100 * 8000**-1.5, rtol=1e-6)
    with pytest.raises(SeqtrainError, match="decay_type"):
        learning_rate_schedule(1.0, "ExponentialDecay")
    with pytest.raises(SeqtrainError, match="missing: warmup_steps"):
        learning_rate_schedule(1.0, "RsqrtDecay", {})
    with pytest.raises(SeqtrainError, match="unknown: model_dim"):
        learning_rate_schedule(1.0, "RsqrtDecay", {"model_dim": 512, "warmup_steps": 10})


def test_accumulate_keeps_indexed_slices_sparse():
    a = slices([1, 3], [[1.0, 2.0], [3.0, 4.0]], [5, 2])
    b = slices([3, 0, 3], [[0.5, 0.5], [1.0, 1.0], [2.0, 2.0]], [5, 2])
    dense_a, dense_b = np.ones((2, 2)), np.full((2, 2), 3.0)
    summed = accumulate([a, tf.constant(dense_a), None], [b, tf.constant(dense_b), None])
    assert isinstance(summed[0], tf.IndexedSlices)
    assert summed[0].values.shape == (5, 2)
    want = dense_of([1, 3], np.array(a.values), 5) + dense_of([3, 0, 3], np.array(b.values), 5)
    np.testing.assert_allclose(tf.convert_to_tensor(summed[0]).numpy(), want)
    np.testing.assert_allclose(summed[1].numpy(), dense_a + dense_b)
    assert summed[2] is None
    mixed = accumulate([a], [tf.ones((5, 2))])[0]  # sparse + dense (tied embedding) -> dense
    np.testing.assert_allclose(mixed.numpy(), dense_of([1, 3], np.array(a.values), 5) + 1)


def test_scale_and_clip_keep_sparse_and_count_duplicates_densely():
    sparse = slices([2, 2, 0], [[3.0, 0.0], [1.0, 0.0], [0.0, 3.0]], [4, 2])  # dense row 2 = 4
    dense = tf.constant([[12.0]])
    want_norm = np.sqrt(4.0**2 + 3.0**2 + 12.0**2)  # 13, not sqrt(9+1+9+144)
    np.testing.assert_allclose(float(global_norm([sparse, None, dense])), want_norm, rtol=1e-6)
    scaled = scale_gradients([sparse, dense], 0.5)
    assert isinstance(scaled[0], tf.IndexedSlices)
    np.testing.assert_allclose(scaled[0].values.numpy(), np.array(sparse.values) * 0.5)
    clipped, norm = clip_by_global_norm([sparse, dense], 6.5)
    np.testing.assert_allclose(float(norm), 13.0, rtol=1e-6)
    assert isinstance(clipped[0], tf.IndexedSlices)
    np.testing.assert_allclose(float(global_norm(clipped)), 6.5, rtol=1e-6)
    np.testing.assert_allclose(clipped[1].numpy(), [[6.0]], rtol=1e-6)
    unclipped, _ = clip_by_global_norm([sparse, dense], 100.0)
    np.testing.assert_allclose(unclipped[0].values.numpy(), sparse.values.numpy())


def test_repeated_variable_names_get_distinct_slots():
    a, b = tf.Variable(tf.zeros([2])), tf.Variable(tf.zeros([3]))
    assert a.name == b.name
    opt = LazyAdam(0.1)
    opt.build([a, b])
    assert opt.slots(a)[0].shape == (2,) and opt.slots(b)[0].shape == (3,)
    assert len(opt.variables) == 5  # 2 × (m, v) + iterations


def test_slots_created_lazily_inside_tf_function():
    var = tf.Variable(tf.ones([5, 2]))
    opt = LazyAdam(0.1)
    apply = tf.function(opt.apply_gradients)
    for _ in range(2):  # the second call must reuse the slots made while tracing the first
        apply([(slices([4, 1, 4], [[1.0, 1.0]] * 3, [5, 2]), var)])
    m, v = opt.slots(var)
    assert len(opt.variables) == 3
    np.testing.assert_allclose(m.numpy()[4], [0.2 * 0.9 + 0.2] * 2, rtol=1e-6)
    np.testing.assert_allclose(v.numpy()[[0, 2, 3]], np.zeros((3, 2)))


def make_model():
    rng = np.random.RandomState(3)
    module = tf.Module()
    module.embedding = tf.Variable(rng.randn(8, 3).astype(np.float32), name="embedding")
    module.kernel = tf.Variable(rng.randn(3, 2).astype(np.float32), name="kernel")
    return module


def train_step(model, opt, ids):
    with tf.GradientTape() as tape:
        out = tf.matmul(tf.gather(model.embedding, ids), model.kernel)
        loss = tf.reduce_sum(tf.square(out - 1.0))
    variables = [model.embedding, model.kernel]
    opt.apply_gradients(zip(tape.gradient(loss, variables), variables))


def test_checkpoint_round_trip_is_bit_exact(tmp_path):
    batches = [tf.constant(ids) for ids in ([1, 3, 1], [2, 5], [3, 4, 4])]
    straight, straight_opt = make_model(), LazyAdam(schedule)
    for ids in batches:
        train_step(straight, straight_opt, ids)

    first, first_opt = make_model(), LazyAdam(schedule)
    for ids in batches[:2]:
        train_step(first, first_opt, ids)
    path = tf.train.Checkpoint(model=first, optimizer=first_opt).save(str(tmp_path / "ckpt"))

    resumed, resumed_opt = make_model(), LazyAdam(schedule)
    resumed_opt.build(resumed.trainable_variables)
    tf.train.Checkpoint(model=resumed, optimizer=resumed_opt).restore(path).assert_consumed()
    assert resumed_opt.iterations.numpy() == 2
    train_step(resumed, resumed_opt, batches[2])
    for var in [straight.embedding, straight.kernel]:
        got = next(v for v in resumed.trainable_variables if v.name == var.name)
        assert np.array_equal(got.numpy(), var.numpy())
        for got_slot, want_slot in zip(resumed_opt.slots(got), straight_opt.slots(var)):
            assert np.array_equal(got_slot.numpy(), want_slot.numpy())


DISTRIBUTED_SCRIPT = """
import json
import numpy as np
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from seqtrain.optim import LazyAdam

INIT_E = np.random.RandomState(0).randn(8, 3).astype(np.float32)
INIT_K = np.random.RandomState(1).randn(3, 2).astype(np.float32)
IDS = np.array([[1, 3, 1], [3, 5, 6]], np.int32)  # replica 0, replica 1; rows 0 2 4 7 absent

def loss_fn(emb, kernel, ids):
    return tf.reduce_sum(tf.square(tf.matmul(tf.gather(emb, ids), kernel) - 1.0))

# single device: the sum of both replicas' losses
emb, kernel = tf.Variable(INIT_E, name="emb"), tf.Variable(INIT_K, name="kernel")
opt = LazyAdam(0.05)
@tf.function
def single_step():
    with tf.GradientTape() as tape:
        loss = loss_fn(emb, kernel, IDS[0]) + loss_fn(emb, kernel, IDS[1])
    opt.apply_gradients(zip(tape.gradient(loss, [emb, kernel]), [emb, kernel]))

strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    d_emb, d_kernel = tf.Variable(INIT_E, name="emb"), tf.Variable(INIT_K, name="kernel")
    d_opt = LazyAdam(0.05)
    d_opt.build([d_emb])  # the kernel's slots are created lazily inside strategy.run
kinds = []
def replica_step():
    ctx = tf.distribute.get_replica_context()
    ids = tf.gather(tf.constant(IDS), ctx.replica_id_in_sync_group)
    with tf.GradientTape() as tape:
        loss = loss_fn(d_emb, d_kernel, ids)
    grads = ctx.all_reduce(tf.distribute.ReduceOp.SUM, tape.gradient(loss, [d_emb, d_kernel]))
    kinds.append(type(grads[0]).__name__)
    d_opt.apply_gradients(zip(grads, [d_emb, d_kernel]))
@tf.function
def distributed_step():
    strategy.run(replica_step)

for _ in range(3):
    single_step()
    distributed_step()
result = {"kinds": sorted(set(kinds)), "iterations": int(d_opt.iterations.numpy())}
for name, want, got in [("emb", emb, d_emb), ("kernel", kernel, d_kernel)]:
    m, v = opt.slots(want)
    dm, dv = d_opt.slots(got)
    for part, a, b in [("w", want, got), ("m", m, dm), ("v", v, dv)]:
        for i, comp in enumerate(b.values):
            diff = float(np.max(np.abs(a.numpy() - comp.numpy())))
            result[f"{name}.{part}.replica{i}"] = diff
absent = [0, 2, 4, 7]
result["absent_unchanged"] = all(
    np.array_equal(c.numpy()[absent], INIT_E[absent]) for c in d_emb.values
) and all(not np.any(c.numpy()[absent]) for s in d_opt.slots(d_emb) for c in s.values)
result["slot_types"] = sorted({type(s).__name__ for s in d_opt.slots(d_kernel)})
print("RESULT " + json.dumps(result))
"""


def test_mirrored_strategy_matches_single_device(tmp_path):
    script = tmp_path / "distributed_optim.py"
    script.write_text(textwrap.dedent(DISTRIBUTED_SCRIPT))
    path = os.pathsep.join(p for p in [str(REPO), os.environ.get("PYTHONPATH", "")] if p)
    env = dict(os.environ, PYTHONPATH=path, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run(
        [sys.executable, str(script)],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=HANG_GUARD,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1]
    result = json.loads(line[len("RESULT ") :])
    assert result["kinds"] == ["IndexedSlices"]  # the all-reduce keeps embedding grads sparse
    assert result["iterations"] == 3
    assert result["absent_unchanged"] is True
    assert result["slot_types"] == ["MirroredVariable"]
    diffs = {k: v for k, v in result.items() if "replica" in k}
    assert len(diffs) == 12
    assert max(diffs.values()) <= 1e-6, diffs


@pytest.mark.parametrize("use_function", [False, True])
def test_apply_false_changes_nothing(use_function):
    """The trainer's NaN guard: a rejected update leaves weights, slots and the step untouched."""
    emb = tf.Variable(np.arange(15, dtype=np.float32).reshape(5, 3))
    bias = tf.Variable(np.ones(3, np.float32))
    opt = LazyAdam(0.1)
    opt.build([emb, bias])
    sparse = tf.IndexedSlices(tf.ones([2, 3]), tf.constant([1, 3]), tf.constant([5, 3]))
    dense = tf.constant([0.5, -1.0, 2.0])

    def apply(flag):
        opt.apply_gradients([(sparse, emb), (dense, bias)], apply=flag)

    if use_function:
        apply = tf.function(apply)
    apply(tf.constant(False))
    assert int(opt.iterations.numpy()) == 0
    assert np.array_equal(emb.numpy(), np.arange(15, dtype=np.float32).reshape(5, 3))
    assert np.array_equal(bias.numpy(), np.ones(3, np.float32))
    for var in (emb, bias):
        m, v = opt.slots(var)
        assert not np.any(m.numpy()) and not np.any(v.numpy())
    apply(tf.constant(True))
    assert int(opt.iterations.numpy()) == 1
    # First Adam step moves each touched entry by lr (m/sqrt(v) = sign(g) after bias correction).
    np.testing.assert_allclose(emb.numpy()[1], np.arange(3, 6) - 0.1, rtol=1e-5)
    np.testing.assert_allclose(emb.numpy()[0], np.arange(3), rtol=0)
    np.testing.assert_allclose(bias.numpy(), 1 - 0.1 * np.sign([0.5, -1.0, 2.0]), rtol=1e-5)
