"""Transformer building blocks as plain ``tf.Module`` code: dense, layer norm, attention, FFN.

Why not Keras layers:
  * embedding gradients: a ``tf.gather`` on the ``tf.Variable`` itself yields ``tf.IndexedSlices``
    that LazyAdam needs; owning the lookup keeps them sparse (no hidden densification);
  * checkpoints: ``tf.Module`` attributes are tracked by ``tf.train.Checkpoint`` directly, with
    stable names that do not depend on Keras' layer naming or build order;
  * dependencies: no Keras 3 / tf-keras behaviour to track (installing tf-keras even replaces
    tensorflow-cpu, see TF-NOTES).

Initialization is deterministic: every variable draws from a stateless RNG seeded by
``(seed, crc32(variable path))``, so two models built with the same seed (in tests, or on each
replica/worker of the distributed trainer) hold identical weights, whatever the creation order.

Variables are float32. Layers take a ``compute_dtype`` and cast variables to it in the forward
pass (mixed precision); layer norm statistics and attention softmax are computed in float32.
"""

import math
import zlib

import tensorflow as tf

# Added to attention logits of masked keys; exp(-1e9 + x) underflows to exactly 0 in float32.
MASK_VALUE = -1e9
# OpenNMT-tf 2.x's LayerNorm is Keras' LayerNormalization with its default epsilon.
LAYER_NORM_EPSILON = 1e-3


def stateless_seed(seed: int, path: str) -> tf.Tensor:
    """Seed pair [2] for the variable at ``path`` (independent of creation order)."""
    return tf.constant([seed, zlib.crc32(path.encode("utf-8")) & 0x7FFFFFFF], dtype=tf.int64)


def glorot_uniform(shape, seed: int, path: str, fan_out=None) -> tf.Tensor:
    """Glorot/Xavier uniform [fan_in, fan_out] (Keras' default), optionally a custom fan_out.

    ``fan_out`` lets a fused kernel (e.g. Q|K|V as one [d, 3d] matrix) use the limit of each of
    its [d, d] blocks, i.e. the same distribution as three separately initialized matrices.
    """
    fan_in, out = shape
    fan_out = out if fan_out is None else fan_out
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return tf.random.stateless_uniform(
        shape, seed=stateless_seed(seed, path), minval=-limit, maxval=limit, dtype=tf.float32
    )


def cast(variable, dtype):
    """The variable as a tensor of ``dtype`` (no-op cast avoided for float32)."""
    return variable if variable.dtype == dtype else tf.cast(variable, dtype)


class Dropout:
    """Dropout for the successive dropout sites of one forward pass.

    Create one per forward pass. With ``training`` False it is the identity. With a ``seed``
    tensor (int [2]), site i uses stateless dropout seeded with ``fold_in(seed, i)``: the masks
    are a pure function of (seed, site order), so runs and replicas are reproducible (the caller
    folds in the step and replica id). Without a seed it uses ``tf.nn.dropout`` (global RNG).
    """

    def __init__(self, training: bool, seed=None):
        self.training = training
        self.seed = seed
        self._site = 0

    def __call__(self, x, rate: float):
        if not self.training or rate <= 0:
            return x
        self._site += 1
        if self.seed is None:
            return tf.nn.dropout(x, rate)
        site_seed = tf.random.experimental.stateless_fold_in(self.seed, self._site)
        return stateless_dropout(x, rate, site_seed)


def stateless_dropout(x, rate: float, seed):
    """Inverted dropout drawing two 16-bit keep decisions per random 32-bit word.

    ``tf.nn.experimental.stateless_dropout`` draws one float per element; the Philox generator
    was ~5 % of a small model's CPU step; halving its work made a [2048, 1024] dropout 1.6×
    faster and a step 2.5 % (float32) / 13 % (bfloat16) cheaper (bench/README.md). The rate is
    rounded to k/65536 (0.1 -> 0.1000061) and the kept values are scaled by 65536/(65536-k), so
    the expectation is exact.
    """
    size = tf.size(x)
    words = tf.random.stateless_uniform(
        [(size + 1) // 2], seed, minval=None, maxval=None, dtype=tf.uint32
    )
    halves = tf.reshape(tf.bitcast(words, tf.uint16), [-1])[:size]
    threshold = min(round(rate * 65536), 65535)
    keep = tf.reshape(halves >= threshold, tf.shape(x))
    scale = tf.cast(65536 / (65536 - threshold), x.dtype)
    return tf.where(keep, x * scale, tf.zeros_like(x))


class Dense(tf.Module):
    """Affine map on the last axis: [..., in] -> [..., out], as a 2-D matmul.

    The input is reshaped to 2-D first: an einsum on 3-D input built a huge intermediate in
    its gradient (TF-NOTES, "einsum trap").
    """

    def __init__(self, in_dim, out_dim, seed, path, blocks=1, use_bias=True, name=None):
        super().__init__(name=name)
        self.out_dim = out_dim
        init = glorot_uniform([in_dim, out_dim], seed, f"{path}/kernel", fan_out=out_dim // blocks)
        self.kernel = tf.Variable(init, name="kernel")
        self.bias = tf.Variable(tf.zeros([out_dim]), name="bias") if use_bias else None

    def __call__(self, x, dtype):
        """x: [..., in] of ``dtype`` -> [..., out]."""
        outer = tf.shape(x)[:-1]
        y = tf.matmul(tf.reshape(x, [-1, x.shape[-1]]), cast(self.kernel, dtype))
        if self.bias is not None:
            y = tf.nn.bias_add(y, cast(self.bias, dtype))
        return tf.reshape(y, tf.concat([outer, [self.out_dim]], 0))


class LayerNorm(tf.Module):
    """Layer normalization over the last axis, statistics in float32."""

    def __init__(self, dim, name=None):
        super().__init__(name=name)
        self.gamma = tf.Variable(tf.ones([dim]), name="gamma")
        self.beta = tf.Variable(tf.zeros([dim]), name="beta")

    def __call__(self, x):
        """x: [..., dim] any float dtype -> same shape and dtype."""
        x32 = tf.cast(x, tf.float32)
        mean, variance = tf.nn.moments(x32, axes=[-1], keepdims=True)
        y = (x32 - mean) * tf.math.rsqrt(variance + LAYER_NORM_EPSILON)
        return tf.cast(y * self.gamma + self.beta, x.dtype)


def split_heads(x, num_heads):
    """[B, T, H*dh] -> [B, H, T, dh]."""
    shape = tf.shape(x)
    x = tf.reshape(x, [shape[0], shape[1], num_heads, x.shape[-1] // num_heads])
    return tf.transpose(x, [0, 2, 1, 3])


def combine_heads(x):
    """[B, H, T, dh] -> [B, T, H*dh]."""
    shape = tf.shape(x)
    x = tf.transpose(x, [0, 2, 1, 3])
    return tf.reshape(x, [shape[0], shape[2], x.shape[2] * x.shape[3]])


def attention_bias(key_mask):
    """bool [B, S] (True = real key) -> float32 [B, 1, 1, S] additive bias (0 or MASK_VALUE)."""
    return (1.0 - tf.cast(key_mask, tf.float32))[:, tf.newaxis, tf.newaxis, :] * MASK_VALUE


def causal_bias(length):
    """float32 [1, 1, T, T]: query t may attend to keys 0..t only."""
    allowed = tf.linalg.band_part(tf.ones([length, length]), -1, 0)
    return ((1.0 - allowed) * MASK_VALUE)[tf.newaxis, tf.newaxis]


class MultiHeadAttention(tf.Module):
    """Scaled dot-product multi-head attention (self or encoder-decoder).

    Self-attention fuses the Q, K, V projections into one [d, 3d] kernel; cross-attention has a
    [d, d] query kernel and a fused [d, 2d] key|value kernel (keys/values are computed once per
    source sentence in incremental decoding). Head h owns columns h*dh:(h+1)*dh of each block.

    With ``relative`` = M (self-attention, OpenNMT-tf's ``maximum_relative_position``), the
    variables ``relative_position_keys`` and ``relative_position_values`` [2M+1, dh] (shared by
    the heads) hold one vector per clipped distance key - query in [-M, M] (row distance + M);
    the key vector is added to each key before the dot product, the value vector to each value.
    """

    def __init__(self, num_units, num_heads, seed, path, cross, relative=None, name=None):
        super().__init__(name=name)
        self.num_heads = num_heads
        self.cross = cross
        self.maximum_relative_position = relative
        if relative is not None:  # Shaw et al. 2018, self-attention only (as OpenNMT-tf)
            shape = [2 * relative + 1, num_units // num_heads]
            self.relative_position_keys = tf.Variable(
                glorot_uniform(shape, seed, f"{path}/relative_position_keys"),
                name="relative_position_keys",
            )
            self.relative_position_values = tf.Variable(
                glorot_uniform(shape, seed, f"{path}/relative_position_values"),
                name="relative_position_values",
            )
        if cross:
            self.query = Dense(num_units, num_units, seed, f"{path}/query", name="query")
            self.key_value = Dense(
                num_units, 2 * num_units, seed, f"{path}/key_value", blocks=2, name="key_value"
            )
        else:
            self.qkv = Dense(num_units, 3 * num_units, seed, f"{path}/qkv", blocks=3, name="qkv")
        self.output = Dense(num_units, num_units, seed, f"{path}/output", name="output")

    def project_query(self, x, dtype):
        """Cross-attention queries: [B, T, d] -> [B, H, T, dh]."""
        return split_heads(self.query(x, dtype), self.num_heads)

    def project_key_value(self, memory, dtype):
        """Cross-attention keys and values: [B, S, d] -> 2 x [B, H, S, dh]."""
        keys, values = tf.split(self.key_value(memory, dtype), 2, axis=-1)
        return split_heads(keys, self.num_heads), split_heads(values, self.num_heads)

    def project_self(self, x, dtype):
        """Self-attention q, k, v: [B, T, d] -> 3 x [B, H, T, dh]."""
        q, k, v = tf.split(self.qkv(x, dtype), 3, axis=-1)
        return tuple(split_heads(t, self.num_heads) for t in (q, k, v))

    def attend(self, q, k, v, bias, dropout, rate, dtype):
        """Attention of queries over keys.

        Args:
          q: [B, H, T, dh]; k, v: [B, H, S, dh] (``dtype``). With relative positions the T
            queries are the last T of the S positions (T = S in a full pass, T = 1 for one
            decoding step over a cache).
          bias: float32 broadcastable to [B, H, T, S] (0 or MASK_VALUE), or None.
          dropout: a ``Dropout``; rate: the attention dropout rate.

        Returns:
          (output [B, T, d] of ``dtype``, probabilities float32 [B, H, T, S] before dropout).
        """
        depth = q.shape[-1]
        q = q * depth**-0.5
        logits = tf.matmul(q, k, transpose_b=True)
        one_hot = None
        if self.maximum_relative_position is not None:
            one_hot = relative_one_hot(
                tf.shape(q)[2], tf.shape(k)[2], self.maximum_relative_position, dtype
            )
            keys = cast(self.relative_position_keys, dtype)
            logits += relative_matmul(last_axis_matmul(q, keys, True), one_hot, True)
        logits = tf.cast(logits, tf.float32)
        if bias is not None:
            logits += bias
        probs = tf.nn.softmax(logits)
        dropped = dropout(tf.cast(probs, dtype), rate)
        context = tf.matmul(dropped, v)
        if one_hot is not None:
            values = cast(self.relative_position_values, dtype)
            context += last_axis_matmul(relative_matmul(dropped, one_hot, False), values, False)
        return self.output(combine_heads(context), dtype), probs


def relative_one_hot(query_length, key_length, maximum, dtype):
    """One-hot clipped relative positions, [Tq, Tk, 2M+1] of ``dtype`` (M = ``maximum``).

    The queries are positions Tk-Tq .. Tk-1 of the keys' 0 .. Tk-1 (a full pass: Tq = Tk; one
    cached decoding step: Tq = 1, the newest position). Entry [t, s] is one at
    clip(s - (Tk - Tq + t), -M, M) + M, OpenNMT-tf's ``relative_positions``.
    """
    keys = tf.range(key_length)
    queries = tf.range(key_length - query_length, key_length)
    distance = tf.clip_by_value(keys[tf.newaxis, :] - queries[:, tf.newaxis], -maximum, maximum)
    return tf.one_hot(distance + maximum, 2 * maximum + 1, dtype=dtype)


def last_axis_matmul(x, matrix, transpose):
    """[..., n] @ matrix [n, m] (or matrix^T [m, n] when ``transpose``) -> [..., m], as a 2-D
    matmul (a broadcast batch matmul's gradient would reduce a batch of products)."""
    inner = matrix.shape[1] if transpose else matrix.shape[0]
    flat = tf.matmul(tf.reshape(x, [-1, inner]), matrix, transpose_b=transpose)
    return tf.reshape(flat, tf.concat([tf.shape(x)[:-1], tf.shape(flat)[-1:]], 0))


def relative_matmul(x, one_hot, to_keys):
    """Per query position t, ``x[:, :, t] @ one_hot[t]^T`` or ``@ one_hot[t]``.

    Args:
      x: [B, H, Tq, 2M+1] (to_keys: scores per relative position -> per key) or
        [B, H, Tq, Tk] (not to_keys: weights per key -> summed per relative position).
      one_hot: [Tq, Tk, 2M+1] from ``relative_one_hot``.

    Returns:
      [B, H, Tq, Tk] (to_keys) or [B, H, Tq, 2M+1]. Batched over t as matmuls, so the
      relative tables get dense [2M+1, dh] gradients (no [Tq, Tk, dh] gather).
    """
    shape = tf.shape(x)
    flat = tf.reshape(tf.transpose(x, [2, 0, 1, 3]), [shape[2], shape[0] * shape[1], shape[3]])
    y = tf.matmul(flat, one_hot, transpose_b=to_keys)  # [Tq, B*H, Tk or 2M+1]
    y = tf.reshape(y, [shape[2], shape[0], shape[1], tf.shape(y)[-1]])
    return tf.transpose(y, [1, 2, 0, 3])


class FeedForward(tf.Module):
    """ReLU feed-forward network: d -> inner -> d, ffn dropout after the ReLU."""

    def __init__(self, num_units, inner_dim, seed, path, name=None):
        super().__init__(name=name)
        self.inner = Dense(num_units, inner_dim, seed, f"{path}/inner", name="inner")
        self.outer = Dense(inner_dim, num_units, seed, f"{path}/outer", name="outer")

    def __call__(self, x, dropout, rate, dtype):
        """x: [B, T, d] -> [B, T, d]."""
        return self.outer(dropout(tf.nn.relu(self.inner(x, dtype)), rate), dtype)


def sinusoidal_encoding(positions, depth):
    """OpenNMT-tf's SinusoidalPositionEncoder layout, float32.

    Args:
      positions: float32 [T] 1-based positions (OpenNMT-tf counts from 1).
      depth: even model dimension d.

    Returns:
      [T, d] = [sin(p * w_i) for i < d/2] ++ [cos(p * w_i) for i < d/2] with
      w_i = exp(-i * log(10000) / (d/2 - 1)).
    """
    half = depth // 2
    increment = math.log(10000.0) / max(half - 1, 1)
    inv_timescales = tf.exp(tf.range(half, dtype=tf.float32) * -increment)
    scaled = positions[:, tf.newaxis] * inv_timescales[tf.newaxis, :]
    return tf.concat([tf.sin(scaled), tf.cos(scaled)], axis=1)
