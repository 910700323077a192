"""Step-0 state of the Transformer pinned to OpenNMT-tf 2.32's (bench/README.md, issue 19).

OpenNMT-tf creates its embeddings with Keras' ``add_weight`` without an initializer (Keras
then uses glorot_uniform for float weights: U(+-sqrt(6 / (V + d))) on a [V, d] matrix) and its
projections as Keras ``Dense`` layers (kernel glorot_uniform [in, out], bias zeros): the
separate Q, K, V and output [d, d] kernels, the FFN's [d, f] and [f, d], the output layer's
[d, V] with a zero bias. Layer norms start at gamma 1, beta 0.
"""

import math

import numpy as np
import pytest
import tensorflow as tf

from seqtrain.config import ModelConfig
from seqtrain.layers import LayerNorm
from seqtrain.model import Transformer

D, FFN, SOURCE_VOCAB, TARGET_VOCAB = 64, 256, 1000, 1200
CONFIG = ModelConfig(num_layers=2, num_units=D, num_heads=4, ffn_inner_dim=FFN)


@pytest.fixture(scope="module")
def model():
    return Transformer(CONFIG, SOURCE_VOCAB, TARGET_VOCAB, seed=3)


def assert_glorot_uniform(matrix, fan_in, fan_out, what):
    """Every value in [-limit, limit], limit = sqrt(6 / (fan_in + fan_out)), filling the range,
    mean ~0 and variance ~limit^2 / 3 (a uniform distribution's)."""
    w = np.asarray(matrix, np.float64)
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    assert np.abs(w).max() <= limit, what
    assert np.abs(w).max() > 0.99 * limit, what  # not a narrower distribution
    assert abs(w.mean()) < 4 * limit / math.sqrt(3 * w.size), what
    assert w.var() == pytest.approx(limit**2 / 3, rel=0.05), what


def test_embeddings_are_glorot_uniform_over_vocabulary_and_depth(model):
    assert_glorot_uniform(model.source_embedding.numpy(), SOURCE_VOCAB, D, "source embedding")
    assert_glorot_uniform(model.target_embedding.numpy(), TARGET_VOCAB, D, "target embedding")


def test_output_layer_is_glorot_uniform_with_zero_bias(model):
    assert model.output.kernel.shape == (D, TARGET_VOCAB)
    assert_glorot_uniform(model.output.kernel.numpy(), D, TARGET_VOCAB, "output kernel")
    assert np.all(model.output.bias.numpy() == 0.0)


def blocks(dense, count):
    """The [d, d] blocks of a fused kernel (Q|K|V or K|V), as OpenNMT-tf's separate kernels."""
    return np.split(dense.kernel.numpy(), count, axis=1)


def test_attention_and_ffn_projections_are_glorot_uniform_per_matrix(model):
    for i, layer in enumerate(model.encoder_layers + model.decoder_layers):
        kernels = list(zip("qkv", blocks(layer.self_attention.qkv, 3)))
        kernels.append(("self output", layer.self_attention.output.kernel.numpy()))
        if hasattr(layer, "cross_attention"):
            cross = layer.cross_attention
            kernels.append(("cross query", cross.query.kernel.numpy()))
            kernels += list(zip(("cross key", "cross value"), blocks(cross.key_value, 2)))
            kernels.append(("cross output", cross.output.kernel.numpy()))
        for name, kernel in kernels:
            assert kernel.shape == (D, D)
            assert_glorot_uniform(kernel, D, D, f"layer {i} {name}")
        assert_glorot_uniform(layer.ffn.inner.kernel.numpy(), D, FFN, f"layer {i} ffn inner")
        assert_glorot_uniform(layer.ffn.outer.kernel.numpy(), FFN, D, f"layer {i} ffn outer")


def test_biases_zero_and_layer_norms_identity(model):
    for variable in model.trainable_variables:
        name = variable.name.split(":")[0]
        if name in ("bias", "beta", "output_bias"):
            assert np.all(variable.numpy() == 0.0), name
        elif name == "gamma":
            assert np.all(variable.numpy() == 1.0), name
    norms = [v for v in model.trainable_variables if v.name.startswith("gamma")]
    assert len(norms) == 2 * 2 + 2 * 3 + 2  # encoder 2/layer, decoder 3/layer, two final norms


def test_layer_norm_epsilon_is_keras_default_as_opennmt_tf():
    """OpenNMT-tf's LayerNorm is tf.keras.layers.LayerNormalization with its default epsilon
    1e-3. On an input of variance 1e-4 the epsilon shows: (x - mean) / sqrt(1e-4 + 1e-3)."""
    x = tf.constant([[-0.01, 0.01, -0.01, 0.01]])
    expected = np.array([[-1.0, 1.0, -1.0, 1.0]]) * 0.01 / math.sqrt(1e-4 + 1e-3)
    np.testing.assert_allclose(LayerNorm(4)(x).numpy(), expected, rtol=1e-5)
