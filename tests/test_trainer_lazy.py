"""LazyAdam through ``Trainer.step`` on a real Transformer: accumulation 2, clipping on, loss
scaling on or off. Embedding rows of tokens absent from the micro-batches keep their weights and
both Adam moments bit for bit; rows present in either micro-batch move.

The optimizer alone is tested in test_optim.py; here the gradients take the path a user's do:
gather -> IndexedSlices -> loss-scale unscaling -> accumulation (concatenation) -> clipping ->
LazyAdam. Densifying anywhere on that path would make every row move (Adam decays m and v of rows
with a zero gradient and moves their weights), which the assertions below catch.
"""

import numpy as np
import tensorflow as tf

from seqtrain import config as cfg
from seqtrain.data import batch_from_examples
from seqtrain.model import Transformer
from seqtrain.optim import DynamicLossScale
from seqtrain.trainer import Trainer, make_optimizer

VOCAB = 40
PRESENT_A, PRESENT_B = range(4, 12), range(12, 20)  # ids in micro-batch A / B of the 2nd update
ABSENT = range(20, VOCAB)  # ids that only the 1st update sees
MODEL = cfg.ModelConfig(
    num_layers=1,
    num_units=16,
    num_heads=2,
    ffn_inner_dim=32,
    dropout=0.1,  # dropout on: the path a user takes (stateless seeds, see Trainer._seed)
    attention_dropout=0.1,
    ffn_dropout=0.1,
)
CLIP = 0.05  # far below the gradient norms of this model (asserted), so clipping scales


def _params(optimizer):
    return cfg.ParamsConfig(
        optimizer=optimizer,
        guided_alignment_type="ce",
        decay_type=None,
        learning_rate=0.01,
        clip_gradients=CLIP,
    )


def _examples(ids, count, seed):
    """``count`` sentence pairs (3-6 tokens) drawing source and target ids from ``ids`` only;
    permutations of ``ids`` laid end to end, so every id occurs once ``count`` sentences hold
    at least ``len(ids)`` tokens."""
    rng = np.random.RandomState(seed)
    ids = np.asarray(list(ids))
    lengths = [3 + k % 4 for k in range(count)]
    stream = {
        side: np.concatenate([rng.permutation(ids) for _ in range(sum(lengths))]) for side in "st"
    }
    out, start = [], 0
    for length in lengths:
        src, tgt = (stream[side][start : start + length] for side in "st")
        links = np.array([(t, t) for t in range(length)], np.int32)  # (target, source)
        out.append((src, tgt, links))
        start += length
    return out


def _covered(ids, examples):
    """Every id of ``ids`` occurs on both sides (so every present row really is present)."""
    sources = set(np.concatenate([s for s, _, _ in examples]).tolist())
    targets = set(np.concatenate([t for _, t, _ in examples]).tolist())
    return set(ids) <= sources and set(ids) <= targets


def _embedding_state(model, optimizer):
    """{name: (weights, m, v)} of the source and target embedding matrices, as numpy copies."""
    state = {}
    for name in ("source_embedding", "target_embedding"):
        var = getattr(model, name)
        m, v = optimizer.slots(var)
        state[name] = tuple(x.numpy().copy() for x in (var, m, v))
    return state


def _two_updates(optimizer_name, loss_scale):
    params = _params(optimizer_name)
    model = Transformer(MODEL, VOCAB, VOCAB, seed=3)
    optimizer = make_optimizer(params)
    optimizer.build(model.trainable_variables)
    strategy = tf.distribute.get_strategy()
    trainer = Trainer(model, optimizer, params, strategy, seed=5, loss_scale=loss_scale)
    # 1st update: every id 4..39 occurs, so m and v are non-zero on all those rows; a dense
    # (non-lazy) update of the 2nd step would then change the absent rows.
    # All four micro-batches hold 8 pairs of 3-6 tokens: one shape, one trace of the step.
    everything = _examples(range(4, VOCAB), 16, seed=0)
    assert _covered(range(4, VOCAB), everything)
    first = trainer.step([batch_from_examples(everything[:8]), batch_from_examples(everything[8:])])
    assert bool(first["finite"])
    before = _embedding_state(model, optimizer)
    a, b = _examples(PRESENT_A, 8, seed=1), _examples(PRESENT_B, 8, seed=2)
    assert _covered(PRESENT_A, a) and _covered(PRESENT_B, b)
    second = trainer.step([batch_from_examples(a), batch_from_examples(b)])
    assert bool(second["finite"]) and int(optimizer.iterations.numpy()) == 2
    # Clipping really scaled this update (the norm is computed before clipping).
    assert float(second["grad_norm"]) > 10 * CLIP
    return before, _embedding_state(model, optimizer)


def test_absent_embedding_rows_keep_weights_and_moments_bit_for_bit():
    """With a loss scale (float32 here: the scaling and unscaling path is the float16 one)."""
    loss_scale = 2.0**12
    scale = DynamicLossScale(initial=loss_scale)
    before, after = _two_updates("LazyAdam", scale)
    absent, present = list(ABSENT), list(PRESENT_A) + list(PRESENT_B)
    for name in before:
        for what, old, new in zip(("weights", "m", "v"), before[name], after[name]):
            # Bit for bit: exact equality, not a tolerance.
            np.testing.assert_array_equal(old[absent], new[absent], err_msg=f"{name} {what}")
            assert np.all(np.any(old[present] != new[present], axis=1)), f"{name} {what}"
    assert float(scale.scale.numpy()) == loss_scale  # both steps finite: scale unchanged


def test_plain_adam_moves_the_absent_rows():
    """The control: with ``optimizer: Adam`` the same two updates change the absent rows, so the
    test above can tell a lazy update from a dense one on this model and data."""
    before, after = _two_updates("Adam", None)
    for name in before:
        for what, old, new in zip(("weights", "m", "v"), before[name], after[name]):
            assert np.all(np.any(old[list(ABSENT)] != new[list(ABSENT)], axis=1)), (name, what)
