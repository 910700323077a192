"""Relative position representations, post-norm and no output bias (OpenNMT-tf's
``maximum_relative_position``, ``pre_norm: false``, ``output_layer_bias: false``): the forward
pass against a numpy reference written element by element, incremental decoding against
teacher forcing, the guided-alignment cost, gradients and the variables' checkpoint names."""

import dataclasses
import math

import numpy as np
import pytest
import tensorflow as tf

from seqtrain.config import ModelConfig
from seqtrain.decoding import BOS_ID, EOS_ID, compile_search, forced_decoding
from seqtrain.layers import relative_one_hot
from seqtrain.losses import guided_alignment_cost
from seqtrain.model import Transformer

VOCAB = 20
BASE = ModelConfig(num_layers=2, num_units=16, num_heads=4, ffn_inner_dim=32)
RELATIVE = {"maximum_relative_position": 2, "position_encoder_class": None}
VARIANTS = {
    "relative": RELATIVE,
    "post_norm": {"pre_norm": False},
    "relative_post_norm_no_bias": {**RELATIVE, "pre_norm": False, "output_layer_bias": False},
    "relative_and_sinusoidal_tied": {"maximum_relative_position": 3, "share_embeddings": "all"},
}


def make_model(variant, seed=3, **overrides):
    config = dataclasses.replace(BASE, **VARIANTS[variant], **overrides)
    return Transformer(config, VOCAB, VOCAB, seed=seed)


def make_batch():
    """Two sentences (source 5 and 3 tokens, target 6 and 2 steps): lengths beyond M = 2."""
    return {
        "source_ids": tf.constant([[4, 5, 6, 7, 8], [9, 10, 11, 0, 0]], tf.int32),
        "source_length": tf.constant([5, 3], tf.int32),
        "target_in": tf.constant([[1, 12, 13, 14, 15, 16], [1, 17, 0, 0, 0, 0]], tf.int32),
        "target_length": tf.constant([6, 2], tf.int32),
    }


# ---- numpy reference of one sentence, relative terms written per (query, key) pair ----


def np_norm(x, norm):
    mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + 1e-3) * norm.gamma.numpy() + norm.beta.numpy()


def np_dense(x, dense):
    y = x @ dense.kernel.numpy()
    return y + dense.bias.numpy() if dense.bias is not None else y


def np_attention(x, memory, attention, heads, causal, maximum):
    """Returns (output [Tq, d], probs [H, Tq, Tk]); Shaw et al.: a_ts = q_t.(k_s + K[c(s-t)]),
    out_t = sum_s p_ts (v_s + V[c(s-t)]), c = clip to [-M, M] (+M as row index)."""
    if memory is None:
        q, k, v = np.split(np_dense(x, attention.qkv), 3, axis=-1)
    else:
        q = np_dense(x, attention.query)
        k, v = np.split(np_dense(memory, attention.key_value), 2, axis=-1)
    dh = q.shape[-1] // heads
    tq, tk = q.shape[0], k.shape[0]
    outputs, all_probs = [], []
    for h in range(heads):
        cols = slice(h * dh, (h + 1) * dh)
        logits = np.zeros((tq, tk))
        for t in range(tq):
            for s in range(tk):
                key = k[s, cols].copy()
                if maximum is not None:
                    key += attention.relative_position_keys.numpy()[
                        min(max(s - t, -maximum), maximum) + maximum
                    ]
                logits[t, s] = q[t, cols] @ key / math.sqrt(dh)
                if causal and s > t:
                    logits[t, s] = -np.inf
        probs = np.exp(logits - logits.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        out = probs @ v[:, cols]
        if maximum is not None:
            table = attention.relative_position_values.numpy()
            for t in range(tq):
                for s in range(tk):
                    out[t] += probs[t, s] * table[min(max(s - t, -maximum), maximum) + maximum]
        outputs.append(out)
        all_probs.append(probs)
    return np_dense(np.concatenate(outputs, -1), attention.output), np.stack(all_probs)


def np_position(length, d):
    half = d // 2
    inv = np.exp(-np.arange(half) * math.log(10000.0) / (half - 1))
    scaled = np.arange(1, length + 1)[:, None] * inv[None, :]
    return np.concatenate([np.sin(scaled), np.cos(scaled)], axis=1)


def np_sublayer(x, fn, norm, pre_norm):
    return x + fn(np_norm(x, norm)) if pre_norm else np_norm(x + fn(x), norm)


def np_forward(model, source, target_in):
    """Logits [T, V] and the decoder layers' cross-attention probs [H, T, S] of one sentence."""
    c = model.config
    d, heads, m, pre = c.num_units, c.num_heads, c.maximum_relative_position, c.pre_norm

    def embed(matrix, ids):
        x = matrix[ids] * math.sqrt(d)
        return x + np_position(len(ids), d) if c.position_encoder_class else x

    def ffn(layer):
        return lambda y: np_dense(np.maximum(np_dense(y, layer.ffn.inner), 0), layer.ffn.outer)

    x = embed(model.source_embedding.numpy(), source)
    for layer in model.encoder_layers:
        att = layer.self_attention
        x = np_sublayer(x, lambda y, att=att: np_attention(y, None, att, heads, False, m)[0],
                        layer.self_attention_norm, pre)  # fmt: skip
        x = np_sublayer(x, ffn(layer), layer.ffn_norm, pre)
    memory = np_norm(x, model.encoder_norm) if pre else x
    embedding = model.target_input_embedding().numpy()
    x, cross = embed(embedding, target_in), []
    for layer in model.decoder_layers:
        att = layer.self_attention
        x = np_sublayer(x, lambda y, att=att: np_attention(y, None, att, heads, True, m)[0],
                        layer.self_attention_norm, pre)  # fmt: skip

        def cross_fn(y, layer=layer):
            out, probs = np_attention(y, memory, layer.cross_attention, heads, False, None)
            cross.append(probs)
            return out

        x = np_sublayer(x, cross_fn, layer.cross_attention_norm, pre)
        x = np_sublayer(x, ffn(layer), layer.ffn_norm, pre)
    x = np_norm(x, model.decoder_norm) if pre else x
    if model.ties_output:
        bias = model.output_bias.numpy() if c.output_layer_bias else 0.0
        return x @ embedding.T + bias, cross
    return np_dense(x, model.output), cross


def test_relative_one_hot_full_and_cached():
    """Rows: queries; columns: keys; entry = clip(key - query, -1, 1) + 1 (M = 1)."""
    full = np.argmax(relative_one_hot(4, 4, 1, tf.float32).numpy(), -1)
    np.testing.assert_array_equal(full, [[1, 2, 2, 2], [0, 1, 2, 2], [0, 0, 1, 2], [0, 0, 0, 1]])
    step = np.argmax(relative_one_hot(1, 4, 1, tf.float32).numpy(), -1)  # query = position 3
    np.testing.assert_array_equal(step, [[0, 0, 0, 1]])
    assert relative_one_hot(1, 4, 1, tf.float32).numpy().sum() == 4  # exactly one-hot


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_forward_matches_numpy_reference(variant):
    model = make_model(variant, alignment_heads=0, alignment_layer=0)
    # Random (not zero) output bias and layer norms so that a skipped term shows.
    for var in model.trainable_variables:
        if var.name.startswith(("bias", "beta", "gamma", "output_bias")):
            var.assign(var + tf.random.stateless_normal(var.shape, [5, var.shape[0]]) * 0.2)
    batch = make_batch()
    logits, attention = model(batch, training=False)
    for b in range(2):
        s_len, t_len = int(batch["source_length"][b]), int(batch["target_length"][b])
        source = batch["source_ids"].numpy()[b, :s_len]
        target = batch["target_in"].numpy()[b, :t_len]
        ref_logits, cross = np_forward(model, source, target)
        np.testing.assert_allclose(logits[b, :t_len], ref_logits, atol=2e-5)
        np.testing.assert_allclose(attention[b, :t_len, :s_len], cross[0].mean(0), atol=1e-6)


def test_variables_and_checkpoint_names(tmp_path):
    """The names another tool maps to (OpenNMT-tf: .../self_attention/relative_position_keys)."""
    model = make_model("relative_post_norm_no_bias")
    path = tf.train.Checkpoint(model=model).write(str(tmp_path / "ckpt"))
    names = {name for name, _ in tf.train.list_variables(path)}
    suffix = "/.ATTRIBUTES/VARIABLE_VALUE"
    for stack in ("encoder_layers", "decoder_layers"):
        for i in range(2):
            for table in ("relative_position_keys", "relative_position_values"):
                name = f"model/{stack}/{i}/self_attention/{table}{suffix}"
                assert name in names
                assert dict(tf.train.list_variables(path))[name] == [5, 4]  # [2M+1, d/heads]
    relative = [n for n in names if "relative_position" in n]
    assert len(relative) == 8 and not any("cross_attention" in n for n in relative)
    assert not any(n.startswith(("model/encoder_norm", "model/decoder_norm")) for n in names)
    assert f"model/output/kernel{suffix}" in names and f"model/output/bias{suffix}" not in names
    # Pre-norm and sinusoidal models keep exactly their previous variables.
    plain = Transformer(BASE, VOCAB, VOCAB, seed=3)
    assert not any("relative" in v.name for v in plain.variables)
    assert plain.encoder_norm is not None and plain.output.bias is not None


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_incremental_decoding_matches_teacher_forcing(variant):
    """decode_step with the cache (the relative positions of the step being decoded) gives the
    logits and guided attention of the full teacher-forced pass, step by step."""
    model = make_model(variant, alignment_layer=0, alignment_heads=2)
    batch = make_batch()
    logits, attention = model(batch, training=False)
    memory, memory_mask = model.encode(batch["source_ids"], batch["source_length"])
    cache = model.initial_cache(memory, memory_mask)
    for step in range(6):
        ids = batch["target_in"][:, step]
        step_logits, step_attention, cache = model.decode_step(ids, tf.constant(step), cache)
        rows = [0, 1] if step < 2 else [0]  # sentence 1 has 2 real steps
        np.testing.assert_allclose(
            tf.gather(step_logits, rows), tf.gather(logits[:, step], rows), atol=2e-5
        )
        np.testing.assert_allclose(
            tf.gather(step_attention, rows), tf.gather(attention[:, step], rows), atol=2e-6
        )


@pytest.mark.parametrize("row,context", [("predicting", "causal"), ("reading", "full")])
def test_greedy_search_agrees_with_teacher_forcing(row, context):
    """Compiled greedy search (tf.while_loop, growing cache) on a relative post-norm model:
    each token is the argmax of the teacher-forced logits on the hypothesis, the score is their
    log-probability sum and the returned links are the forced pass's rows (predicting/causal:
    the search keeps its own steps' attention; reading/full: a pass after the search)."""
    model = make_model(
        "relative_post_norm_no_bias", seed=11, alignment_row=row, alignment_context=context
    )
    ids = tf.constant([[4, 5, 6, 7, 8], [9, 10, 11, 0, 0]], tf.int32)
    lengths = tf.constant([5, 3], tf.int32)
    result = compile_search(model)(ids, lengths, tf.constant(7))
    n = result.lengths.numpy()[:, 0]
    steps = [list(result.ids.numpy()[b, 0, : n[b]]) + [EOS_ID] * int(n[b] < 7) for b in range(2)]
    width = max(map(len, steps))
    batch = {
        "source_ids": ids,
        "source_length": lengths,
        "target_in": tf.constant([[BOS_ID] + s[:-1] + [0] * (width - len(s)) for s in steps]),
        "target_out": tf.constant([s + [0] * (width - len(s)) for s in steps]),
        "target_length": tf.constant([len(s) for s in steps]),
    }
    logits, _ = model(batch, training=False)
    log_probs, _ = forced_decoding(model, batch)
    # Links: a pass over <s> + the tokens (no </s> step: with alignment_context full every row
    # sees the whole target; reading rows of token t are step t + 1).
    tokens = [list(result.ids.numpy()[b, 0, : n[b]]) for b in range(2)]
    _, attention = model({
        "source_ids": ids,
        "source_length": lengths,
        "target_in": tf.constant([[BOS_ID] + t + [0] * (max(n) - len(t)) for t in tokens]),
        "target_length": tf.constant(n + 1),
    }, training=False)  # fmt: skip
    for b in range(2):
        np.testing.assert_array_equal(np.argmax(logits[b, : len(steps[b])], -1), steps[b])
        np.testing.assert_allclose(attention[b, : n[b]], result.attention[b, 0, : n[b]], atol=1e-5)
    np.testing.assert_allclose(tf.reduce_sum(log_probs, 1), result.scores[:, 0], atol=1e-5)
    assert max(n) > 2 * 2  # hypotheses longer than 2M: the clipped distances are exercised


def test_guided_alignment_cost_and_its_gradient():
    """The cost on a relative post-norm model equals the numpy reference's attention put
    through the cost formula; its gradient reaches the relative tables below the guided
    layer and nothing above it."""
    model = make_model("relative_post_norm_no_bias", alignment_layer=0)
    batch = make_batch()
    gold = np.zeros((2, 6, 5), np.float32)
    for b, t, s in [(0, 0, 1), (0, 1, 0), (0, 2, 3), (0, 3, 2), (0, 4, 4), (1, 0, 2)]:
        gold[b, t, s] = 1.0
    lengths = tf.constant([5, 1])  # target tokens without </s>
    with tf.GradientTape() as tape:
        _, attention = model(batch, training=False)
        cost = guided_alignment_cost(attention, tf.constant(gold), lengths)
    expected, rows = 0.0, 0
    for b, t_len in ((0, 5), (1, 1)):
        s_len = int(batch["source_length"][b])
        source = batch["source_ids"].numpy()[b, :s_len]
        _, cross = np_forward(model, source, batch["target_in"].numpy()[b, : t_len + 1])
        probs = np.clip(cross[0][0], 1e-7, 1 - 1e-7)  # head 0 of layer 0
        expected -= sum(np.log(probs[t, gold[b, t, :s_len] > 0]).sum() for t in range(t_len))
        rows += t_len
    assert float(cost) == pytest.approx(expected / rows, rel=1e-5)
    first, second = model.decoder_layers
    variables = [
        first.self_attention.relative_position_keys,
        model.encoder_layers[1].self_attention.relative_position_values,
        second.self_attention.relative_position_keys,
    ]
    grads = tape.gradient(cost, variables)
    assert isinstance(grads[0], tf.Tensor)  # dense: [2M+1, dh] tables, no per-pair slices
    assert np.abs(grads[0].numpy()).sum() > 0 and np.abs(grads[1].numpy()).sum() > 0
    assert grads[2] is None  # layer 1 is above the guided layer 0
