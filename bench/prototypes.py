"""Prototypes of candidate seqtrain changes, timed by bench/step_profile.py (seqtrain itself
is not edited): padding to bucket multiples, the guided-alignment cost from gold links only, and
a cheaper dropout mask. (The fused label-smoothed cross-entropy prototyped here first is now
seqtrain.losses.smoothed_cross_entropy.)
"""

import tensorflow as tf


def pad_to_multiple(batch: dict, multiple: int) -> dict:
    """Pads the time axes of a batch up to a multiple (PAD = 0, alignment rows/cols 0)."""

    def up(n):
        return -(-n // multiple) * multiple

    t, s = batch["target_in"].shape[1], batch["source_ids"].shape[1]
    pt, ps = up(t) - t, up(s) - s
    out = dict(batch)
    out["source_ids"] = tf.pad(batch["source_ids"], [[0, 0], [0, ps]])
    out["target_in"] = tf.pad(batch["target_in"], [[0, 0], [0, pt]])
    out["target_out"] = tf.pad(batch["target_out"], [[0, 0], [0, pt]])
    if "alignment" in batch:
        out["alignment"] = tf.pad(batch["alignment"], [[0, 0], [0, pt], [0, ps]])
    return out


def sparse_ga_cost(attention, links, lengths_without_eos, weight):
    """The ``opennmt`` GA cost from gold links only.

    attention [B, T, S]; links int32 [K, 3] of (b, t, s). Rows of the guided head are softmax
    rows over real keys (masked keys are exactly 0), so OpenNMT-tf's row renormalization is the
    identity up to rounding; the cost is -Σ_links log clip(A[b, t, s]) / Σ_b len_t(b).
    """
    probs = tf.gather_nd(tf.cast(attention, tf.float32), links)
    total = -tf.reduce_sum(tf.math.log(tf.clip_by_value(probs, 1e-7, 1.0 - 1e-7)))
    normalizer = tf.cast(tf.reduce_sum(tf.maximum(lengths_without_eos, 0)), tf.float32)
    return weight * tf.math.divide_no_nan(total, normalizer)


class ByteDropout:
    """Prototype of ``seqtrain.layers.Dropout`` drawing 4 keep decisions per random 32-bit word
    (uint8 thresholds: the rate is rounded to k/256, 0.1 -> 26/256 = 0.1016), so the Philox
    generator runs 4× fewer times. Same stateless, per-site seeding."""

    def __init__(self, training: bool, seed=None):
        self.training, self.seed, self._site = training, seed, 0

    def __call__(self, x, rate: float):
        if not self.training or rate <= 0:
            return x
        self._site += 1
        seed = tf.random.experimental.stateless_fold_in(self.seed, self._site)
        size = tf.size(x)
        words = tf.random.stateless_uniform(
            [(size + 3) // 4], seed, minval=None, maxval=None, dtype=tf.uint32
        )
        random_bytes = tf.reshape(tf.bitcast(words, tf.uint8), [-1])[:size]
        threshold = round(rate * 256)
        keep = tf.reshape(random_bytes >= threshold, tf.shape(x))
        scale = tf.cast(256 / (256 - threshold), x.dtype)
        return tf.where(keep, x * scale, tf.zeros_like(x))


class Patched:
    """Context manager: seqtrain.model.Dropout replaced by ``replacement`` (tracing only)."""

    def __init__(self, replacement):
        self.replacement = replacement

    def __enter__(self):
        import seqtrain.model

        self.module, self.original = seqtrain.model, seqtrain.model.Dropout
        seqtrain.model.Dropout = self.replacement

    def __exit__(self, *exc):
        self.module.Dropout = self.original
