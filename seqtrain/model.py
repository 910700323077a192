"""Transformer encoder-decoder (OpenNMT-tf's ``Transformer``) with a guided-alignment head.

Plain ``tf.Module`` code (see ``seqtrain.layers`` for why not Keras). Architecture, as
OpenNMT-tf 2.x: token embeddings scaled by sqrt(d) plus 1-based sinusoidal position encodings
(none with ``position_encoder_class: null``), dropout; pre-layer-norm blocks (norm -> sublayer
-> dropout -> residual) with a final layer norm in the encoder and the decoder, or with
``pre_norm: false`` post-norm blocks (sublayer -> dropout -> residual -> norm) and no final
norms (``seqtrain.blocks``); ReLU FFN; output projection to the target vocabulary, with a bias
unless ``output_layer_bias: false``. ``maximum_relative_position`` adds Shaw et al.'s clipped
relative position representations to every self-attention, the decoding cache included (the
step being decoded is the newest of the cached positions).

``share_embeddings`` (OpenNMT-tf's EmbeddingsSharingLevel):
  none: three separate matrices; source_target_input: one matrix for source and target input
  (needs equal vocabulary sizes); target: target input embedding = output projection (tied,
  plus a separate bias); all: both.

Gradients: embedding lookups are ``tf.gather`` on the variable, so their gradients are
``tf.IndexedSlices`` (LazyAdam updates only those rows). A matrix tied to the output projection
gets a dense gradient (the projection touches every row).

Alignment attention: the encoder-decoder attention probabilities of decoder layer
``alignment_layer`` (python index, -1 = last) *before* attention dropout, averaged over the first
``alignment_heads`` heads (default 1: head 0, as OpenNMT-tf), or over all heads when 0.

Which decoder step belongs to target token y_t (= ``target_out[t]``) is ``alignment_row``:
  predicting (OpenNMT-tf, Marian, fairseq): step t, whose input is ``target_in[t]`` (``<s>`` or
    y_(t-1)) and whose output is y_t; the link is chosen before y_t is known;
  reading (Chen et al. 2020, "Shift-Att"): step t + 1, whose input is y_t. The last token's row
    is the step that predicts ``</s>``, so every real token has one.
``alignment_context: full`` (Garg et al. 2019) computes the alignment attention in a second pass
through the decoder layers up to the guided one without the future mask (each row sees the
whole target), used for the alignment only; translation logits keep the causal pass.

Every alignment this module returns from a forward pass is in *token order*: row t belongs to
y_t, whatever the convention, so losses, forced decoding and every consumer read row t.
Incremental decoding returns per-*step* attention; ``alignment_shift`` says how searches map it.
"""

import tensorflow as tf

from seqtrain.blocks import DecoderLayer, EncoderLayer
from seqtrain.config_checks import check_model
from seqtrain.errors import SeqtrainError
from seqtrain.layers import (
    Dense,
    Dropout,
    LayerNorm,
    attention_bias,
    causal_bias,
    glorot_uniform,
    sinusoidal_encoding,
)


class Transformer(tf.Module):
    """Encoder-decoder Transformer; see the module docstring.

    Args:
      config: ``seqtrain.config.ModelConfig``.
      source_vocab_size, target_vocab_size: vocabulary sizes (ids 0..V-1, PAD = 0).
      seed: initialization seed; equal seeds give identical weights.
      compute_dtype: tf.float32, or tf.float16 / tf.bfloat16 for mixed precision (variables stay
        float32 and are cast in the forward pass; logits and attention are returned float32).
    """

    def __init__(
        self, config, source_vocab_size, target_vocab_size, seed=0, compute_dtype=tf.float32
    ):
        super().__init__(name="transformer")
        _check(config, source_vocab_size, target_vocab_size)
        d = config.num_units
        self.config = config
        self.compute_dtype = tf.as_dtype(compute_dtype)
        self.alignment_index = config.alignment_layer % config.num_layers
        # Target token t's alignment is the attention row of decoder step t + alignment_shift.
        self.alignment_shift = 1 if config.alignment_row == "reading" else 0
        # Searches may keep the attention of their own steps only for OpenNMT-tf's convention.
        self.incremental_alignment = (
            not self.alignment_shift and config.alignment_context == "causal"
        )
        share = config.share_embeddings
        self.source_embedding = tf.Variable(
            glorot_uniform([source_vocab_size, d], seed, "source_embedding"), name="embedding"
        )
        self.shares_input = share in ("source_target_input", "all")
        self.ties_output = share in ("target", "all")
        if not self.shares_input:
            self.target_embedding = tf.Variable(
                glorot_uniform([target_vocab_size, d], seed, "target_embedding"), name="embedding"
            )
        self.encoder_layers = [
            EncoderLayer(config, seed, f"encoder/layer_{i}", name=f"encoder_layer_{i}")
            for i in range(config.num_layers)
        ]
        # Post-norm layers end with a norm already: no final norms (None) with pre_norm false.
        self.encoder_norm = LayerNorm(d, name="encoder_norm") if config.pre_norm else None
        self.decoder_layers = [
            DecoderLayer(config, seed, f"decoder/layer_{i}", name=f"decoder_layer_{i}")
            for i in range(config.num_layers)
        ]
        self.decoder_norm = LayerNorm(d, name="decoder_norm") if config.pre_norm else None
        if not self.ties_output:
            self.output = Dense(
                d, target_vocab_size, seed, "output", use_bias=config.output_layer_bias,
                name="output",
            )  # fmt: skip
        elif config.output_layer_bias:
            self.output_bias = tf.Variable(tf.zeros([target_vocab_size]), name="output_bias")

    def target_input_embedding(self):
        """The [V_target, d] matrix the decoder input ids are looked up in."""
        return self.source_embedding if self.shares_input else self.target_embedding

    def __call__(self, batch, training=False, seed=None):
        """Teacher-forced forward pass.

        Args:
          batch: dict with source_ids int32 [B, S], source_length int32 [B], target_in int32
            [B, T] and (optional) target_length int32 [B].
          training: apply dropout.
          seed: optional int [2] tensor for reproducible (stateless) dropout; None uses the
            global RNG (``tf.nn.dropout``).

        Returns:
          (logits float32 [B, T, V], alignment attention float32 [B, T, S] in token order: row t
          belongs to ``target_out[t]``; with ``alignment_row: reading`` the last row is 0, as no
          step reads position T-1's token within the batch).
        """
        dropout = Dropout(training, seed)
        memory, memory_mask = self._encode(batch["source_ids"], batch["source_length"], dropout)
        return self._decode(
            batch["target_in"], batch.get("target_length"), memory, memory_mask, dropout
        )

    def decode(self, target_in, target_length, memory, memory_mask):
        """Teacher-forced decoder pass on encoded memory (inference, no dropout).

        Args:
          target_in: int32 [B, T] (``<s>`` then tokens); target_length: int32 [B] real positions;
          memory, memory_mask: from ``encode``.

        Returns:
          (logits float32 [B, T, V], alignment float32 [B, T, S] in token order, as ``__call__``).
        """
        return self._decode(target_in, target_length, memory, memory_mask, Dropout(False))

    def encode(self, source_ids, source_length, training=False, seed=None):
        """source_ids int32 [B, S], source_length [B] -> (memory [B, S, d] of compute dtype,
        memory_mask bool [B, S], True at real tokens)."""
        return self._encode(source_ids, source_length, Dropout(training, seed))

    def _embed(self, ids, embedding, positions, dropout):
        """ids [B, T], positions float32 [T] (1-based) -> [B, T, d] of compute dtype."""
        d = self.config.num_units
        x = tf.gather(embedding, ids) * d**0.5  # gather on the variable: IndexedSlices gradient
        if self.config.position_encoder_class is not None:
            x += sinusoidal_encoding(positions, d)[tf.newaxis]
        return dropout(tf.cast(x, self.compute_dtype), self.config.dropout)

    def _encode(self, source_ids, source_length, dropout):
        length = tf.shape(source_ids)[1]
        mask = tf.sequence_mask(source_length, maxlen=length)
        positions = tf.range(1, length + 1, dtype=tf.float32)
        x = self._embed(source_ids, self.source_embedding, positions, dropout)
        bias = attention_bias(mask)
        for layer in self.encoder_layers:
            x = layer(x, bias, dropout, self.compute_dtype)
        return self.final_norm(x, self.encoder_norm), mask

    def _decode(self, target_in, target_length, memory, memory_mask, dropout):
        dtype = self.compute_dtype
        length = tf.shape(target_in)[1]
        positions = tf.range(1, length + 1, dtype=tf.float32)
        inputs = self._embed(target_in, self.target_input_embedding(), positions, dropout)
        padding_bias = tf.zeros([1, 1, 1, 1])
        if target_length is not None:  # also hide padded keys, as OpenNMT-tf's future mask
            padding_bias = attention_bias(tf.sequence_mask(target_length, maxlen=length))
        memory_bias = attention_bias(memory_mask)
        memory_kvs = [
            layer.cross_attention.project_key_value(memory, dtype) for layer in self.decoder_layers
        ]
        x, attention = self._decoder_stack(
            inputs, causal_bias(length) + padding_bias, memory_kvs, memory_bias, dropout
        )
        if self.config.alignment_context == "full":
            # Same weights, no future mask, stopped at the guided layer: alignment only.
            _, attention = self._decoder_stack(
                inputs, padding_bias, memory_kvs, memory_bias, dropout, self.alignment_index + 1
            )
        return self._project(self.final_norm(x, self.decoder_norm)), self.token_rows(attention)

    def _decoder_stack(self, x, self_bias, memory_kvs, memory_bias, dropout, num_layers=None):
        """Decoder layers [0, num_layers) -> (output [B, T, d], guided attention [B, T, S] by
        step, or None if the guided layer was not reached)."""
        attention = None
        for i, layer in enumerate(self.decoder_layers[:num_layers]):
            x, probs, _ = layer(
                x, self_bias, memory_kvs[i], memory_bias, dropout, self.compute_dtype
            )
            if i == self.alignment_index:
                attention = self._alignment_heads(probs)
        return x, attention

    def final_norm(self, x, norm):
        """A pre-norm stack's closing layer norm (identity with ``pre_norm: false``)."""
        return norm(x) if norm is not None else x

    def token_rows(self, step_attention):
        """Per-step attention [B, T, S] -> token order [B, T, S] (see ``alignment_token_rows``)."""
        return alignment_token_rows(step_attention, self.alignment_shift)

    def _alignment_heads(self, probs):
        """float32 [B, H, T, S] -> [B, T, S]: mean of the guided heads."""
        k = self.config.alignment_heads
        return tf.reduce_mean(probs[:, :k] if k > 0 else probs, axis=1)

    def _project(self, x):
        """[B, T, d] -> float32 logits [B, T, V]."""
        if not self.ties_output:
            return tf.cast(self.output(x, self.compute_dtype), tf.float32)
        shape = tf.shape(x)
        flat = tf.reshape(x, [-1, x.shape[-1]])
        embedding = tf.cast(self.target_input_embedding(), self.compute_dtype)
        logits = tf.matmul(flat, embedding, transpose_b=True)
        if self.config.output_layer_bias:
            logits = tf.nn.bias_add(logits, tf.cast(self.output_bias, self.compute_dtype))
        return tf.cast(tf.reshape(logits, [shape[0], shape[1], -1]), tf.float32)

    def initial_cache(self, memory, memory_mask):
        """Decoding state before the first step.

        Args:
          memory: [B, S, d] and memory_mask: bool [B, S], from ``encode``.

        Returns:
          A nest of tensors, all with batch as leading dimension (beam search tiles/reorders it
          with ``tf.gather``): {"memory_mask": [B, S], "layers": [per decoder layer
          {"self_keys", "self_values": [B, H, t, dh] (t = steps so far, grows by one per step),
          "memory_keys", "memory_values": [B, H, S, dh] (precomputed once)}]}.
          In a ``tf.while_loop`` give the self_* entries a None time dimension.
        """
        dtype = self.compute_dtype
        batch = tf.shape(memory)[0]
        heads = self.config.num_heads
        empty = tf.zeros([batch, heads, 0, self.config.num_units // heads], dtype)
        layers = []
        for layer in self.decoder_layers:
            keys, values = layer.cross_attention.project_key_value(memory, dtype)
            state = {"self_keys": empty, "self_values": empty}
            layers.append({**state, "memory_keys": keys, "memory_values": values})
        return {"memory_mask": memory_mask, "layers": layers}

    def cache_shape_invariants(self, cache):
        """``tf.while_loop`` shape invariants of ``cache``: any batch size (beams), and the
        self-attention time axis grows by one per step."""

        def relaxed(x, grows=False):
            shape = [None] + x.shape.as_list()[1:]
            if grows:
                shape[2] = None
            return tf.TensorShape(shape)

        layers = [
            {key: relaxed(value, grows=key.startswith("self_")) for key, value in state.items()}
            for state in cache["layers"]
        ]
        return {"memory_mask": relaxed(cache["memory_mask"]), "layers": layers}

    def decode_step(self, ids, step, cache):
        """One incremental decoder step (inference, no dropout).

        Args:
          ids: int32 [B], the decoder input at this step (``<s>`` at step 0).
          step: int32 scalar, 0-based position of ``ids``.
          cache: from ``initial_cache`` or the previous step.

        Returns:
          (logits float32 [B, V], alignment attention float32 [B, S] of this *step*: it belongs
          to target token ``step - alignment_shift``, new cache).
        """
        dtype = self.compute_dtype
        dropout = Dropout(False)
        positions = tf.reshape(tf.cast(step, tf.float32) + 1.0, [1])
        x = self._embed(ids[:, tf.newaxis], self.target_input_embedding(), positions, dropout)
        memory_bias = attention_bias(cache["memory_mask"])
        new_layers = []
        attention = None
        for i, (layer, state) in enumerate(zip(self.decoder_layers, cache["layers"])):
            memory_kv = (state["memory_keys"], state["memory_values"])
            past = (state["self_keys"], state["self_values"])
            x, probs, (keys, values) = layer(
                x, None, memory_kv, memory_bias, dropout, dtype, past=past
            )
            new_layers.append(dict(state, self_keys=keys, self_values=values))
            if i == self.alignment_index:
                attention = self._alignment_heads(probs)[:, 0]
        logits = self._project(self.final_norm(x, self.decoder_norm))[:, 0]
        return logits, attention, {"memory_mask": cache["memory_mask"], "layers": new_layers}


def alignment_token_rows(step_attention, shift):
    """Row t of the result is row t + shift of ``step_attention`` [B, T, S]; rows past the last
    step are 0 (with shift 1, the batch's last position: a ``</s>`` or padding, never a link)."""
    if not shift:
        return step_attention
    return tf.concat([step_attention[:, shift:], tf.zeros_like(step_attention[:, :shift])], axis=1)


def _check(config, source_vocab_size, target_vocab_size):
    """Model-level consistency checks (SeqtrainError with what to change)."""
    check_model(config)
    if config.share_embeddings == "auto":
        raise SeqtrainError(
            "model.share_embeddings = auto is resolved from the vocabulary files when the "
            "configuration is loaded; build the model from a loaded configuration, or give a level"
        )
    sharing_inputs = config.share_embeddings in ("source_target_input", "all")
    if sharing_inputs and source_vocab_size != target_vocab_size:
        raise SeqtrainError(
            f"model.share_embeddings = {config.share_embeddings} needs one vocabulary for both "
            f"sides, but the source vocabulary has {source_vocab_size} entries and the target "
            f"{target_vocab_size}; use a joint vocabulary file for data.source_vocabulary and "
            "data.target_vocabulary, or set model.share_embeddings to none or target"
        )
