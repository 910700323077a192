"""The Transformer's encoder and decoder layers (``seqtrain.model`` stacks them).

Each sublayer (self-attention, encoder-decoder attention, FFN) has a residual connection and a
layer norm, placed as OpenNMT-tf's ``pre_norm`` says (``residual``). The attribute names are the
checkpoint names and do not depend on the placement: ``self_attention_norm``,
``cross_attention_norm`` and ``ffn_norm`` are the norm of that sublayer, applied to its input
(pre-norm: OpenNMT-tf's ``input_layer_norm``) or to the residual sum (post-norm:
``output_layer_norm``). With ``maximum_relative_position`` the self-attentions (encoder and
decoder) own ``relative_position_keys`` / ``relative_position_values`` (``seqtrain.layers``).
"""

import tensorflow as tf

from seqtrain.layers import FeedForward, LayerNorm, MultiHeadAttention


class EncoderLayer(tf.Module):
    """Self-attention block then FFN block, each with a residual and a layer norm."""

    def __init__(self, config, seed, path, name=None):
        super().__init__(name=name)
        d = config.num_units
        self.config = config
        self.self_attention_norm = LayerNorm(d, name="self_attention_norm")
        self.self_attention = MultiHeadAttention(
            d, config.num_heads, seed, f"{path}/self_attention", cross=False,
            relative=config.maximum_relative_position, name="self_attention",
        )  # fmt: skip
        self.ffn_norm = LayerNorm(d, name="ffn_norm")
        self.ffn = FeedForward(d, config.ffn_inner_dim, seed, f"{path}/ffn", name="ffn")

    def __call__(self, x, bias, dropout, dtype):
        """x: [B, S, d]; bias: float32 [B, 1, 1, S] -> [B, S, d]."""
        c = self.config

        def attention(y):
            q, k, v = self.self_attention.project_self(y, dtype)
            return self.self_attention.attend(q, k, v, bias, dropout, c.attention_dropout, dtype)[0]

        x = residual(x, attention, self.self_attention_norm, c, dropout)
        return residual(
            x, lambda y: self.ffn(y, dropout, c.ffn_dropout, dtype), self.ffn_norm, c, dropout
        )


class DecoderLayer(tf.Module):
    """Causal self-attention, encoder-decoder attention, FFN; each with residual and norm."""

    def __init__(self, config, seed, path, name=None):
        super().__init__(name=name)
        d = config.num_units
        self.config = config
        self.self_attention_norm = LayerNorm(d, name="self_attention_norm")
        self.self_attention = MultiHeadAttention(
            d, config.num_heads, seed, f"{path}/self_attention", cross=False,
            relative=config.maximum_relative_position, name="self_attention",
        )  # fmt: skip
        self.cross_attention_norm = LayerNorm(d, name="cross_attention_norm")
        self.cross_attention = MultiHeadAttention(
            d, config.num_heads, seed, f"{path}/cross_attention", cross=True, name="cross_attention"
        )
        self.ffn_norm = LayerNorm(d, name="ffn_norm")
        self.ffn = FeedForward(d, config.ffn_inner_dim, seed, f"{path}/ffn", name="ffn")

    def __call__(self, x, self_bias, memory_kv, memory_bias, dropout, dtype, past=None):
        """One decoder layer.

        Args:
          x: [B, T, d] inputs (T = 1 in incremental decoding).
          self_bias: float32 broadcastable to [B, H, T, T'] or None (incremental: all past keys).
          memory_kv: (keys, values) [B, H, S, dh] from ``cross_attention.project_key_value``.
          memory_bias: float32 [B, 1, 1, S].
          past: None, or (keys, values) [B, H, t, dh] of earlier steps (incremental decoding;
            with relative positions the T new queries are positions t .. t+T-1).

        Returns:
          (output [B, T, d], cross-attention probabilities float32 [B, H, T, S] before dropout,
          (keys, values) [B, H, T', dh] of the self-attention including the new steps).
        """
        c = self.config
        out = {}

        def self_attention(y):
            q, k, v = self.self_attention.project_self(y, dtype)
            if past is not None:
                k = tf.concat([past[0], k], axis=2)
                v = tf.concat([past[1], v], axis=2)
            out["kv"] = (k, v)
            rate = c.attention_dropout
            return self.self_attention.attend(q, k, v, self_bias, dropout, rate, dtype)[0]

        def cross_attention(y):
            q = self.cross_attention.project_query(y, dtype)
            keys, values = memory_kv
            rate = c.attention_dropout
            y, out["probs"] = self.cross_attention.attend(
                q, keys, values, memory_bias, dropout, rate, dtype
            )
            return y

        x = residual(x, self_attention, self.self_attention_norm, c, dropout)
        x = residual(x, cross_attention, self.cross_attention_norm, c, dropout)
        x = residual(
            x, lambda y: self.ffn(y, dropout, c.ffn_dropout, dtype), self.ffn_norm, c, dropout
        )
        return x, out["probs"], out["kv"]


def residual(x, sublayer, norm, config, dropout):
    """One sublayer with its residual: pre_norm x + drop(f(norm(x))) (then a final norm after
    the stack), post-norm (``pre_norm: false``) norm(x + drop(f(x))) as the original paper."""
    if config.pre_norm:
        return x + dropout(sublayer(norm(x)), config.dropout)
    return norm(x + dropout(sublayer(x), config.dropout))
