"""Tests of seqtrain.model / seqtrain.layers on a tiny Transformer (2+2 layers, d16, 4 heads)."""

import dataclasses
import math

import numpy as np
import pytest
import tensorflow as tf

from seqtrain.config import ModelConfig
from seqtrain.errors import SeqtrainError
from seqtrain.layers import stateless_dropout
from seqtrain.model import Transformer

VOCAB = 20
CONFIG = ModelConfig(num_layers=2, num_units=16, num_heads=4, ffn_inner_dim=32)


def make_model(seed=1, source_vocab=VOCAB, target_vocab=VOCAB, **overrides):
    config = dataclasses.replace(CONFIG, **overrides)
    return Transformer(config, source_vocab, target_vocab, seed=seed)


def make_batch(extra_source_pad=0, extra_target_pad=0):
    """Two sentences of different lengths, PAD = 0 after the real tokens."""
    source = [[4, 5, 6, 7, 8], [9, 10, 11, 0, 0]]
    target = [[1, 12, 13, 14], [1, 15, 0, 0]]
    source = [row + [0] * extra_source_pad for row in source]
    target = [row + [0] * extra_target_pad for row in target]
    return {
        "source_ids": tf.constant(source, tf.int32),
        "source_length": tf.constant([5, 3], tf.int32),
        "target_in": tf.constant(target, tf.int32),
        "target_length": tf.constant([4, 2], tf.int32),
    }


# ---- numpy reference of one sentence (no padding at all) ----


def np_layer_norm(x, norm):
    mean = x.mean(-1, keepdims=True)
    var = x.var(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + 1e-3) * norm.gamma.numpy() + norm.beta.numpy()


def np_dense(x, dense):
    return x @ dense.kernel.numpy() + dense.bias.numpy()


def np_position(length, d):
    half = d // 2
    inv = np.exp(-np.arange(half) * math.log(10000.0) / (half - 1))
    scaled = np.arange(1, length + 1)[:, None] * inv[None, :]
    return np.concatenate([np.sin(scaled), np.cos(scaled)], axis=1)


def np_attention(x, memory, attention, heads, causal):
    """Returns (output [Tq, d], probs [H, Tq, Tk])."""
    if memory is None:
        q, k, v = np.split(np_dense(x, attention.qkv), 3, axis=-1)
    else:
        q = np_dense(x, attention.query)
        k, v = np.split(np_dense(memory, attention.key_value), 2, axis=-1)
    dh = q.shape[-1] // heads
    outputs, all_probs = [], []
    for h in range(heads):
        cols = slice(h * dh, (h + 1) * dh)
        logits = q[:, cols] @ k[:, cols].T / math.sqrt(dh)
        if causal:
            logits = np.where(np.tril(np.ones_like(logits)) > 0, logits, -np.inf)
        probs = np.exp(logits - logits.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        outputs.append(probs @ v[:, cols])
        all_probs.append(probs)
    return np_dense(np.concatenate(outputs, -1), attention.output), np.stack(all_probs)


def np_forward(model, source, target_in):
    """Logits [T, V] and every decoder layer's cross-attention probs [H, T, S] of one sentence."""
    c = model.config
    d, heads = c.num_units, c.num_heads
    x = model.source_embedding.numpy()[source] * math.sqrt(d) + np_position(len(source), d)
    for layer in model.encoder_layers:
        y, _ = np_attention(np_layer_norm(x, layer.self_attention_norm), None,
                            layer.self_attention, heads, causal=False)  # fmt: skip
        x = x + y
        y = np_layer_norm(x, layer.ffn_norm)
        x = x + np_dense(np.maximum(np_dense(y, layer.ffn.inner), 0), layer.ffn.outer)
    memory = np_layer_norm(x, model.encoder_norm)
    embedding = model.target_input_embedding().numpy()
    x = embedding[target_in] * math.sqrt(d) + np_position(len(target_in), d)
    cross = []
    for layer in model.decoder_layers:
        y, _ = np_attention(np_layer_norm(x, layer.self_attention_norm), None,
                            layer.self_attention, heads, causal=True)  # fmt: skip
        x = x + y
        y, probs = np_attention(np_layer_norm(x, layer.cross_attention_norm), memory,
                                layer.cross_attention, heads, causal=False)  # fmt: skip
        x, cross = x + y, cross + [probs]
        y = np_layer_norm(x, layer.ffn_norm)
        x = x + np_dense(np.maximum(np_dense(y, layer.ffn.inner), 0), layer.ffn.outer)
    x = np_layer_norm(x, model.decoder_norm)
    if model.ties_output:
        logits = x @ embedding.T + model.output_bias.numpy()
    else:
        logits = np_dense(x, model.output)
    return logits, cross


@pytest.mark.parametrize("alignment_layer,alignment_heads", [(-1, 1), (0, 2), (1, 0)])
def test_forward_matches_numpy_reference(alignment_layer, alignment_heads):
    model = make_model(alignment_layer=alignment_layer, alignment_heads=alignment_heads)
    batch = make_batch()
    logits, attention = model(batch, training=False)
    assert logits.shape == (2, 4, VOCAB) and logits.dtype == tf.float32
    assert attention.shape == (2, 4, 5) and attention.dtype == tf.float32
    for b in range(2):
        s_len, t_len = int(batch["source_length"][b]), int(batch["target_length"][b])
        source = batch["source_ids"].numpy()[b, :s_len]
        target = batch["target_in"].numpy()[b, :t_len]
        ref_logits, cross = np_forward(model, source, target)
        probs = cross[alignment_layer]
        heads = alignment_heads if alignment_heads > 0 else probs.shape[0]
        ref_attention = probs[:heads].mean(0)
        np.testing.assert_allclose(logits[b, :t_len], ref_logits, atol=1e-5)
        np.testing.assert_allclose(attention[b, :t_len, :s_len], ref_attention, atol=1e-6)


def test_attention_rows_sum_to_one_and_ignore_padding():
    model = make_model(alignment_heads=0)
    _, attention = model(make_batch(), training=True)
    np.testing.assert_allclose(tf.reduce_sum(attention, -1), np.ones((2, 4)), atol=1e-6)
    assert np.all(attention.numpy()[1, :, 3:] < 1e-9)


def test_padding_invariance():
    model = make_model()
    logits, attention = model(make_batch(), training=False)
    padded_logits, padded_attention = model(make_batch(3, 2), training=False)
    assert padded_logits.shape == (2, 6, VOCAB) and padded_attention.shape == (2, 6, 8)
    for b, (t_len, s_len) in enumerate([(4, 5), (2, 3)]):
        np.testing.assert_allclose(padded_logits[b, :t_len], logits[b, :t_len], atol=1e-5)
        np.testing.assert_allclose(
            padded_attention[b, :t_len, :s_len], attention[b, :t_len, :s_len], atol=1e-6
        )
        assert np.all(padded_attention.numpy()[b, :, s_len:] < 1e-9)


@pytest.mark.parametrize("share", ["none", "all"])
def test_incremental_decoding_matches_teacher_forcing(share):
    model = make_model(share_embeddings=share, alignment_layer=0, alignment_heads=2)
    batch = make_batch()
    logits, attention = model(batch, training=False)
    memory, memory_mask = model.encode(batch["source_ids"], batch["source_length"])
    cache = model.initial_cache(memory, memory_mask)
    for step in range(4):
        ids = batch["target_in"][:, step]
        step_logits, step_attention, cache = model.decode_step(ids, tf.constant(step), cache)
        assert step_logits.shape == (2, VOCAB) and step_attention.shape == (2, 5)
        # Sentence 1 has target length 2: its later teacher-forced rows hide padded keys, so
        # compare only real steps there.
        rows = [0, 1] if step < 2 else [0]
        np.testing.assert_allclose(
            tf.gather(step_logits, rows), tf.gather(logits[:, step], rows), atol=1e-5
        )
        np.testing.assert_allclose(
            tf.gather(step_attention, rows), tf.gather(attention[:, step], rows), atol=1e-5
        )
        assert cache["layers"][0]["self_keys"].shape == (2, 4, step + 1, 4)


def embedding_gradients(model):
    batch = make_batch()
    with tf.GradientTape() as tape:
        logits, _ = model(batch, training=True, seed=tf.constant([1, 2]))
        loss = tf.reduce_sum(logits * tf.random.stateless_normal(logits.shape, [3, 4]))
    return tape.gradient(loss, [model.source_embedding, model.target_input_embedding()])


def test_embedding_gradients_are_sparse_when_untied():
    source_grad, target_grad = embedding_gradients(make_model())
    assert isinstance(source_grad, tf.IndexedSlices)
    assert isinstance(target_grad, tf.IndexedSlices)
    assert set(source_grad.indices.numpy()) == {0, 4, 5, 6, 7, 8, 9, 10, 11}
    assert set(target_grad.indices.numpy()) == {0, 1, 12, 13, 14, 15}
    shared_grad, _ = embedding_gradients(make_model(share_embeddings="source_target_input"))
    assert isinstance(shared_grad, tf.IndexedSlices)


@pytest.mark.parametrize("share", ["target", "all"])
def test_embedding_gradient_is_dense_when_tied(share):
    model = make_model(share_embeddings=share)
    _, target_grad = embedding_gradients(model)
    assert isinstance(target_grad, tf.Tensor) and target_grad.shape == (VOCAB, 16)
    assert np.all(np.abs(target_grad.numpy()[16:19]).sum(-1) > 0)  # unseen rows too


def test_sharing_levels_create_the_right_variables():
    counts = {}
    for share in ["none", "source_target_input", "target", "all"]:
        model = make_model(share_embeddings=share)
        counts[share] = sum(v.shape == (VOCAB, 16) for v in model.trainable_variables)
    assert counts == {"none": 2, "source_target_input": 1, "target": 2, "all": 1}
    with pytest.raises(SeqtrainError, match="joint vocabulary"):
        make_model(share_embeddings="source_target_input", target_vocab=21)
    make_model(share_embeddings="target", target_vocab=21)


def alignment_gradients(model):
    batch = make_batch()
    with tf.GradientTape() as tape:
        _, attention = model(batch, training=True, seed=tf.constant([5, 6]))
        loss = tf.reduce_sum(attention * tf.random.stateless_uniform(attention.shape, [7, 8]))
    variables = model.trainable_variables
    return {v.ref(): g for v, g in zip(variables, tape.gradient(loss, variables))}


def column_norms(grad, heads=4):
    """[d, k*d] gradient -> per block, per head: L1 norm of that head's columns."""
    grad = np.abs(grad.numpy())
    blocks = np.split(grad, grad.shape[1] // grad.shape[0], axis=1)
    return [[col.sum() for col in np.split(block, heads, axis=1)] for block in blocks]


def test_alignment_gradient_reaches_only_the_guided_head():
    model = make_model(alignment_layer=0, alignment_heads=1)
    grads = alignment_gradients(model)
    cross = model.decoder_layers[0].cross_attention
    (query,) = column_norms(grads[cross.query.kernel.ref()])
    keys, values = column_norms(grads[cross.key_value.kernel.ref()])
    assert query[0] > 0 and keys[0] > 0
    assert query[1:] == [0, 0, 0] and keys[1:] == [0, 0, 0] and values == [0, 0, 0, 0]
    above = model.decoder_layers[1].trainable_variables + model.decoder_norm.trainable_variables
    above += model.output.trainable_variables + model.decoder_layers[0].ffn.trainable_variables
    for variable in above:
        grad = grads[variable.ref()]
        assert grad is None or not np.any(tf.convert_to_tensor(grad).numpy())
    # The encoder and the layer's own self-attention do feed the guided head.
    assert np.any(grads[model.encoder_layers[0].ffn.inner.kernel.ref()].numpy())
    assert np.any(grads[model.decoder_layers[0].self_attention.qkv.kernel.ref()].numpy())


def test_alignment_gradient_with_all_heads():
    model = make_model(alignment_layer=-1, alignment_heads=0)
    grads = alignment_gradients(model)
    cross = model.decoder_layers[1].cross_attention
    (query,) = column_norms(grads[cross.query.kernel.ref()])
    keys, _ = column_norms(grads[cross.key_value.kernel.ref()])
    assert min(query) > 0 and min(keys) > 0


def test_checkpoint_round_trip(tmp_path):
    model = make_model(seed=1)
    batch = make_batch()
    expected = model(batch, training=False)
    path = tf.train.Checkpoint(model=model).write(str(tmp_path / "ckpt"))
    other = make_model(seed=2)
    assert not np.allclose(other(batch, training=False)[0], expected[0])
    tf.train.Checkpoint(model=other).read(path).assert_consumed()
    for got, want in zip(other(batch, training=False), expected):
        np.testing.assert_array_equal(got, want)


def test_same_seed_same_weights():
    a, b, c = make_model(seed=3), make_model(seed=3), make_model(seed=4)
    assert len(a.trainable_variables) == len(b.trainable_variables) == 72
    for va, vb, vc in zip(a.trainable_variables, b.trainable_variables, c.trainable_variables):
        np.testing.assert_array_equal(va.numpy(), vb.numpy())
        if "kernel" in va.name or "embedding" in va.name:
            assert not np.array_equal(va.numpy(), vc.numpy())
    limit = math.sqrt(6 / (16 + 16))  # glorot of each [d, d] block of the fused Q|K|V kernel
    qkv = a.encoder_layers[0].self_attention.qkv.kernel.numpy()
    assert qkv.shape == (16, 48) and np.abs(qkv).max() <= limit and np.abs(qkv).max() > 0.8 * limit


def teststateless_dropout_is_reproducible():
    model = make_model(dropout=0.3, attention_dropout=0.3, ffn_dropout=0.3)
    batch = make_batch()
    first = model(batch, training=True, seed=tf.constant([1, 1]))[0]
    again = model(batch, training=True, seed=tf.constant([1, 1]))[0]
    other = model(batch, training=True, seed=tf.constant([1, 2]))[0]
    inference = model(batch, training=False)[0]
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other) and not np.allclose(first, inference)
    np.testing.assert_array_equal(inference, model(batch, training=False)[0])


@pytest.mark.parametrize("dtype", [tf.float32, tf.bfloat16])
def test_dropout_rate_and_scale(dtype):
    x = tf.ones([1001, 999], dtype)  # odd size: the last 32-bit word is half used
    out = stateless_dropout(x, 0.1, tf.constant([5, 6])).numpy().astype(np.float64)
    dropped = float(np.mean(out == 0))
    # 1e6 Bernoulli(0.1000061) draws: standard deviation 3e-4.
    assert abs(dropped - 6554 / 65536) < 1.5e-3
    kept = np.unique(out[out != 0])
    np.testing.assert_allclose(
        kept, [65536 / (65536 - 6554)], rtol=1e-2 if dtype != tf.float32 else 1e-7
    )
    again = stateless_dropout(x, 0.1, tf.constant([5, 6])).numpy().astype(np.float64)
    np.testing.assert_array_equal(out, again)
    other = stateless_dropout(x, 0.1, tf.constant([5, 7])).numpy()
    assert np.mean((out == 0) != (other == 0)) > 0.1  # another seed, another mask


def test_mixed_precision_close_to_float32():
    batch = make_batch()
    reference = make_model()(batch, training=False)
    config = dataclasses.replace(CONFIG)
    half = Transformer(config, VOCAB, VOCAB, seed=1, compute_dtype=tf.float16)
    logits, attention = half(batch, training=True, seed=tf.constant([1, 1]))
    assert logits.dtype == tf.float32 and attention.dtype == tf.float32
    assert half.source_embedding.dtype == tf.float32
    logits, attention = half(batch, training=False)
    assert np.all(np.isfinite(logits.numpy()))
    np.testing.assert_allclose(logits, reference[0], atol=1e-2)
    np.testing.assert_allclose(attention, reference[1], atol=1e-2)
