"""Training losses: label-smoothed cross-entropy, guided alignment, normalizers, log figures.

Everything here is a pure function of tensors (no model, no Keras). The trainer computes, per
replica and per accumulation micro-batch, ``loss_terms`` (sums over that micro-batch); the
normalizers come from ``batch_normalizers`` (the batch alone), all-reduced (SUM) *before* the
forward pass; ``objective`` divides each micro-batch's terms by those global normalizers, so the
gradients summed over replicas and micro-batches are the gradient of the whole global batch
(see DESIGN.md, "Losses (exact semantics)"). ``params`` is any object with the attributes of
``seqtrain.config.ParamsConfig`` (``label_smoothing``, ``average_loss_in_time``,
``guided_alignment_type``, ``guided_alignment_weight``, ``guided_alignment_normalization``).
"""

import tensorflow as tf

# The reference clips attention probabilities to [EPSILON, 1 - EPSILON] (Keras' epsilon).
EPSILON = 1e-7


def cross_entropy_sequence_loss(
    logits,
    labels,
    sequence_length=None,
    label_smoothing=0.0,
    training=True,
    average_in_time=False,
    sequence_weight=None,
):
    """Summed (label-smoothed) cross-entropy over the real time steps of a batch.

    Args:
      logits: [B, T, V] any float dtype (cast to float32 first: mixed-precision safe).
      labels: int [B, T] gold ids (padding positions may hold any valid id).
      sequence_length: int [B] real steps per sentence; None means all T steps are real.
      label_smoothing: ε, only when ``training``: target 1-ε on the label, ε/(V-1) elsewhere.
      training: False gives the unsmoothed loss, normalized per token.
      average_in_time: normalize by tokens (True) or by sentences (False) when training.
      sequence_weight: float [B] example weights (data.example_weights) or None. As OpenNMT-tf:
        each token's CE and its count in token_normalizer are multiplied by its example's
        weight; loss_normalizer by sentences is then Σ weights.

    Returns:
      (loss_sum, loss_normalizer, token_normalizer), float32 scalars.
    """
    logits = tf.cast(logits, tf.float32)
    labels = tf.cast(labels, tf.int32)
    if training and label_smoothing > 0:
        ce = smoothed_cross_entropy(logits, labels, label_smoothing)
    else:
        # Fused op: its gradient is softmax - one_hot without materializing a [B, T, V] target.
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    if sequence_length is None:
        mask = tf.ones_like(ce)
    else:
        mask = tf.sequence_mask(sequence_length, maxlen=tf.shape(ce)[1], dtype=tf.float32)
    if sequence_weight is not None:
        mask *= tf.cast(sequence_weight, tf.float32)[:, tf.newaxis]
    loss_sum = tf.reduce_sum(ce * mask)
    token_normalizer = tf.reduce_sum(mask)
    if average_in_time or not training:
        loss_normalizer = token_normalizer
    elif sequence_weight is not None:
        loss_normalizer = tf.reduce_sum(tf.cast(sequence_weight, tf.float32))
    else:
        loss_normalizer = tf.cast(tf.shape(ce)[0], tf.float32)
    return loss_sum, loss_normalizer, token_normalizer


def smoothed_cross_entropy(logits, labels, epsilon: float):
    """Label-smoothed cross-entropy of every position, with a hand-written gradient.

    Args:
      logits: float32 [B, T, V]; labels: int32 [B, T]; epsilon: ε > 0.

    Returns:
      ce float32 [B, T]: with δ = ε/(V-1) and a = 1-ε-δ, ce = lse(z) - a·z_y - δ·Σ_v z_v, which is
      -Σ_v q_v log p_v for the target q = 1-ε on y and δ elsewhere.

    The gradient ∂ce/∂z = softmax(z) - a·onehot(y) - δ reuses the forward's exp: one pass over
    the [B, T, V] logits each way instead of a sparse-CE op, a logsumexp and a sum, whose three
    gradients autodiff would add up: 8 % less CPU per step of a small model in float32, 13 % in
    bfloat16 (bench/README.md).
    """
    shape = tf.shape(logits)
    vocab = shape[-1]
    flat = tf.reshape(logits, [-1, vocab])  # [N, V]
    flat_labels = tf.reshape(labels, [-1])  # [N]
    delta = epsilon / (tf.cast(vocab, tf.float32) - 1.0)
    on_label = 1.0 - epsilon - delta

    @tf.custom_gradient
    def rows(z):
        peak = tf.stop_gradient(tf.reduce_max(z, axis=-1, keepdims=True))
        exp = tf.exp(z - peak)
        total = tf.reduce_sum(exp, axis=-1)  # [N]
        lse = tf.math.log(total) + peak[:, 0]
        label_logit = tf.gather(z, flat_labels, batch_dims=1)
        value = lse - on_label * label_logit - delta * tf.reduce_sum(z, axis=-1)

        def grad(upstream):  # upstream [N]
            g = exp * (upstream / total)[:, None] - (delta * upstream)[:, None]
            indices = tf.stack([tf.range(tf.shape(flat_labels)[0]), flat_labels], axis=1)
            return tf.tensor_scatter_nd_sub(g, indices, on_label * upstream)

        return value, grad

    return tf.reshape(rows(flat), shape[:-1])


def _alignment_rows(attention, gold, target_length_without_eos, sequence_weight=None):
    """Drops the last decoder step and masks rows t >= len_t.

    Row t of both attention and gold is the step predicting y_t, so they line up row for row; the
    last step only ever predicts ``</s>`` (or padding) and never carries a gold link.

    Returns:
      (A [B, T-1, S] float32, G [B, T-1, S] float32, row_mask [B, T-1] float32 (each real row
      holds its example's weight: 1 without sequence_weight [B]), lengths [B] int32 clipped at 0
      so an empty sentence (target_length 0) counts as 0 rows, not -1).
    """
    attention = tf.cast(attention, tf.float32)[:, :-1]
    gold = tf.cast(gold, tf.float32)[:, :-1]
    lengths = tf.maximum(tf.cast(target_length_without_eos, tf.int32), 0)
    row_mask = tf.sequence_mask(lengths, maxlen=tf.shape(attention)[1], dtype=tf.float32)
    if sequence_weight is not None:
        row_mask *= tf.cast(sequence_weight, tf.float32)[:, tf.newaxis]
    return attention, gold, row_mask, lengths


def _renormalized_log(attention):
    """log of each attention row renormalized to sum 1 and clipped to [ε, 1-ε]. [B, T, S]."""
    total = tf.reduce_sum(attention, axis=-1, keepdims=True)
    probs = tf.math.divide_no_nan(attention, total)
    return tf.math.log(tf.clip_by_value(probs, EPSILON, 1.0 - EPSILON))


def guided_alignment_cost(
    attention, gold, target_length_without_eos, cost_type="ce", weight=1.0, sequence_weight=None
):
    """OpenNMT-tf's guided-alignment cost of one batch (the ``opennmt`` normalization).

    Args:
      attention: [B, T, S] probabilities of the guided head (pre-dropout).
      gold: [B, T, S] binary gold links, row t = target token y_t.
      target_length_without_eos: int [B] target tokens without ``</s>`` (len_t).
      cost_type: "ce" (-Σ_s G·log A, A renormalized and clipped) or "mse" (mean over the padded
        source length S of (G - A)²).
      weight: multiplies the cost.
      sequence_weight: float [B] example weights w_b or None (all 1).

    Returns:
      float32 scalar: weight · Σ_b w_b Σ_{t < len_t(b)} rowcost / Σ_b w_b·len_t(b) (0 when the
      denominator is 0): a weighted mean over the rows, so weights 1 change nothing.
    """
    attention, gold, row_mask, _ = _alignment_rows(
        attention, gold, target_length_without_eos, sequence_weight
    )
    if cost_type == "ce":
        row_cost = -tf.reduce_sum(gold * _renormalized_log(attention), axis=-1)
    elif cost_type == "mse":
        row_cost = tf.reduce_mean(tf.square(gold - attention), axis=-1)
    else:
        raise ValueError(f"unknown guided alignment cost type: {cost_type!r}")
    total = tf.reduce_sum(row_cost * row_mask)
    normalizer = tf.reduce_sum(row_mask)  # Σ_b w_b·len_t(b)
    return weight * tf.math.divide_no_nan(total, normalizer)


def _aligned_row_mask(gold, row_mask):
    """[B, T-1] float32: 1 for real rows with at least one gold link."""
    has_link = tf.cast(tf.reduce_sum(gold, axis=-1) > 0, tf.float32)
    return has_link * row_mask


def guided_alignment_sum(
    attention, gold, target_length_without_eos, source_length, cost_type, sequence_weight=None
):
    """Unweighted guided-alignment cost summed over aligned target tokens (``aligned_tokens``).

    Each gold row is normalized to sum 1 (1/#links); only real rows (t < len_t) with at least one
    link count. ``ce``: -Σ_s Gn·log A (A renormalized, clipped); ``mse``: mean over the real source
    positions (s < source_length) of (Gn - A)².

    Args:
      attention: [B, T, S] probabilities; gold: [B, T, S] binary links;
      target_length_without_eos: int [B]; source_length: int [B]; cost_type: "ce" or "mse";
      sequence_weight: float [B] example weights w_b or None (all 1).

    Returns:
      (ga_sum, aligned_tokens), float32 scalars: Σ w_b·rowcost and Σ w_b over the aligned rows.
    """
    attention, gold, row_mask, _ = _alignment_rows(
        attention, gold, target_length_without_eos, sequence_weight
    )
    gold_norm = tf.math.divide_no_nan(gold, tf.reduce_sum(gold, axis=-1, keepdims=True))
    aligned = _aligned_row_mask(gold, row_mask)
    if cost_type == "ce":
        row_cost = -tf.reduce_sum(gold_norm * _renormalized_log(attention), axis=-1)
    elif cost_type == "mse":
        source_mask = tf.sequence_mask(
            source_length, maxlen=tf.shape(attention)[2], dtype=tf.float32
        )[:, tf.newaxis, :]
        squares = tf.reduce_sum(tf.square(gold_norm - attention) * source_mask, axis=-1)
        source_count = tf.cast(source_length, tf.float32)[:, tf.newaxis]
        row_cost = tf.math.divide_no_nan(squares, source_count)
    else:
        raise ValueError(f"unknown guided alignment cost type: {cost_type!r}")
    return tf.reduce_sum(row_cost * aligned), tf.reduce_sum(aligned)


def batch_normalizers(batch, params):
    """Normalizers of one batch, from the batch dict alone (no forward pass), to all-reduce first.

    Returns:
      dict of float32 scalars: ``tokens`` (Σ target_length), ``loss_normalizer`` (tokens if
      ``params.average_loss_in_time`` else the batch size) and ``aligned_tokens`` (rows
      t < target_length - 1 with at least one gold link; 0 without alignments or guided alignment).
      With a ``weight`` [B] key (example weights) each example counts its weight times.
    """
    target_length = tf.cast(batch["target_length"], tf.int32)
    weight = batch.get("weight")
    ones = tf.ones_like(target_length, tf.float32)
    examples = ones if weight is None else tf.cast(weight, tf.float32)
    tokens = tf.reduce_sum(tf.cast(target_length, tf.float32) * examples)
    if params.average_loss_in_time:
        loss_normalizer = tokens
    else:
        loss_normalizer = tf.reduce_sum(examples)
    aligned_tokens = tf.constant(0.0, tf.float32)
    if params.guided_alignment_type and "alignment" in batch:
        gold = batch["alignment"]
        _, gold, row_mask, _ = _alignment_rows(gold, gold, target_length - 1, weight)
        aligned_tokens = tf.reduce_sum(_aligned_row_mask(gold, row_mask))
    return {"tokens": tokens, "loss_normalizer": loss_normalizer, "aligned_tokens": aligned_tokens}


def loss_terms(logits, attention, batch, params, training):
    """Per-micro-batch sums that ``objective`` and ``report`` combine.

    Args:
      logits: [B, T, V]; attention: [B, T, S] guided-head probabilities (None without guided
        alignment); batch: the batch dict (see seqtrain.data; its optional ``weight`` [B]
        scales every example's terms and counts); training: smoothing on/off.

    Returns:
      dict of float32 scalars: ``ce_sum``, ``tokens``, ``loss_normalizer``; with guided alignment
      on and an ``alignment`` key in the batch also ``ga_cost`` (opennmt normalization, weighted)
      or ``ga_sum`` (unweighted) and ``aligned_tokens`` (aligned_tokens normalization).
    """
    target_length = tf.cast(batch["target_length"], tf.int32)
    ce_sum, loss_normalizer, tokens = cross_entropy_sequence_loss(
        logits,
        batch["target_out"],
        target_length,
        label_smoothing=params.label_smoothing,
        training=training,
        average_in_time=params.average_loss_in_time,
        sequence_weight=batch.get("weight"),
    )
    terms = {"ce_sum": ce_sum, "tokens": tokens, "loss_normalizer": loss_normalizer}
    cost_type = params.guided_alignment_type
    if not cost_type or "alignment" not in batch:
        return terms
    length_without_eos = target_length - 1
    if params.guided_alignment_normalization == "aligned_tokens":
        terms["ga_sum"], terms["aligned_tokens"] = guided_alignment_sum(
            attention,
            batch["alignment"],
            length_without_eos,
            batch["source_length"],
            cost_type,
            sequence_weight=batch.get("weight"),
        )
    else:
        terms["ga_cost"] = guided_alignment_cost(
            attention,
            batch["alignment"],
            length_without_eos,
            cost_type=cost_type,
            weight=params.guided_alignment_weight,
            sequence_weight=batch.get("weight"),
        )
    return terms


def objective(terms, global_normalizers, params):
    """The scalar to differentiate for one (replica, micro-batch): gradients SUMMED over all of
    them equal the DESIGN gradient of the global batch.

    opennmt: (ce_sum + ga_cost) / global loss_normalizer (the reference: the micro-batch's
    alignment cost is added to its summed CE). aligned_tokens: ce_sum / global loss_normalizer +
    weight · ga_sum / global aligned_tokens (1 when that is 0) — independent of how the batch
    is split.
    """
    normalizer = tf.cast(global_normalizers["loss_normalizer"], tf.float32)
    total = terms["ce_sum"]
    if "ga_cost" in terms:
        total = total + terms["ga_cost"]
    value = total / normalizer
    if "ga_sum" in terms:
        # A zero count means no aligned row anywhere (every ga_sum is 0): divide by 1 then. Not
        # max(count, 1): weighted counts (example weights) may be fractions below 1.
        aligned = tf.cast(global_normalizers["aligned_tokens"], tf.float32)
        aligned = tf.where(aligned > 0, aligned, 1.0)
        value = value + params.guided_alignment_weight * terms["ga_sum"] / aligned
    return value


def _div(numerator, denominator):
    """numerator / denominator, 0 when the denominator is 0; tensors or Python/numpy numbers."""
    if tf.is_tensor(numerator) or tf.is_tensor(denominator):
        return tf.math.divide_no_nan(
            tf.cast(numerator, tf.float32), tf.cast(denominator, tf.float32)
        )
    denominator = float(denominator)
    return float(numerator) / denominator if denominator else 0.0


def report(sums, num_micro_batches, params):
    """Log figures (Loss, CE, Alignment) from ``loss_terms`` dicts summed over replicas and
    micro-batches.

    Args:
      sums: dict with the keys of ``loss_terms``, each summed (tensors or numbers).
      num_micro_batches: number of (replica, micro-batch) pairs summed, for the opennmt
        "mean of the micro-batches' alignment costs".
      params: for ``guided_alignment_weight`` (aligned_tokens normalization only).

    Returns:
      dict(loss=…, ce=…, alignment=…), all per target token; no ``alignment`` without guided
      alignment terms. opennmt: loss = (Σce_sum + Σga_cost) / Σtokens, alignment = Σga_cost /
      num_micro_batches. aligned_tokens: alignment = weight · Σga_sum / Σaligned_tokens,
      loss = Σce_sum / Σtokens + alignment.
    """
    ce = _div(sums["ce_sum"], sums["tokens"])
    if "ga_cost" in sums:
        loss = _div(sums["ce_sum"] + sums["ga_cost"], sums["tokens"])
        return {"loss": loss, "ce": ce, "alignment": _div(sums["ga_cost"], num_micro_batches)}
    if "ga_sum" in sums:
        alignment = params.guided_alignment_weight * _div(sums["ga_sum"], sums["aligned_tokens"])
        return {"loss": ce + alignment, "ce": ce, "alignment": alignment}
    return {"loss": ce, "ce": ce}
