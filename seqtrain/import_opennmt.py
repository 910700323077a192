"""``seqtrain import-opennmt``: an OpenNMT-tf 2.x Transformer checkpoint as a seqtrain checkpoint.

Reads the checkpoint with ``tf.train.load_checkpoint`` only (no OpenNMT-tf, no TensorFlow Addons)
and maps OpenNMT-tf's pre-norm ``Transformer`` variables onto the model of the configuration:

  examples_inputter/{features,labels}_inputter/embedding  -> source / target embedding
  {encoder,decoder}/layers/i/self_attention/layer/linear_{queries,keys,values} -> qkv (fused
    on the output axis, in that order), linear_output -> output
  decoder/layers/i/attention/0/layer/linear_queries -> cross query; linear_{keys,values} ->
    key_value (fused); .../input_layer_norm -> the norm before each sublayer
  {encoder,decoder}/layers/i/ffn/layer/{inner,outer}; {encoder,decoder}/layer_norm
  decoder/output_layer/{kernel,bias} -> output projection (no kernel: tied to the target
    embedding, model.share_embeddings target/all)

Vocabulary ids differ: OpenNMT-tf numbers the lines of the vocabulary file (``<blank> <s> </s>``
must be the first three) and appends ``<unk>`` after the last one; seqtrain puts ``<unk>`` at id 3
(``seqtrain.vocab``). Embedding rows and output columns are permuted token by token, so the
vocabulary files are used as they are. The Adam moments (``m``, ``v``, permuted the same way) and
the step (``optimizer/iter``) are carried over unless ``weights_only``, so ``train`` with
model_dir = the output directory continues the run. Any variable that does not fit (missing,
left over, other shape) is a ``SeqtrainError`` naming it and both shapes; nothing is written then.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from seqtrain import config as cfg
from seqtrain.checkpoints import UNREADABLE, build_model, describe
from seqtrain.errors import SeqtrainError
from seqtrain.trainer import make_optimizer
from seqtrain.vocab import BOS_TOKEN, EOS_TOKEN, PAD_TOKEN, UNK_TOKEN, Vocab, read_text_lines

logger = logging.getLogger(__name__)

VALUE = "/.ATTRIBUTES/VARIABLE_VALUE"
SLOT = "/.OPTIMIZER_SLOT/optimizer/{}/.ATTRIBUTES/VARIABLE_VALUE"
STEP = "optimizer/iter" + VALUE
INPUTTERS = "model/examples_inputter"


@dataclass(frozen=True)
class Source:
    """How one seqtrain variable is made from OpenNMT-tf variables: ``names`` (paths without
    the ``/.ATTRIBUTES`` suffix) concatenated on the last axis, then ``order`` (seqtrain id ->
    OpenNMT-tf id) taken along ``axis`` when set."""

    names: tuple[str, ...]
    label: str  # the seqtrain variable, for messages
    order: np.ndarray | None = None
    axis: int = 0


def import_checkpoint(
    config: cfg.Config, checkpoint: str, output_dir: str, weights_only: bool = False
) -> str:
    """Writes OUTPUT_DIR/ckpt-STEP (model, optimizer moments and step) and OUTPUT_DIR/config.yml
    (this configuration with model_dir = output_dir); returns the checkpoint prefix."""
    prefix = _prefix(checkpoint)
    _check_output_dir(output_dir)
    try:
        reader = tf.train.load_checkpoint(prefix)
        model, optimizer, with_slots = _restore(config, reader, weights_only)
    except UNREADABLE as e:
        raise SeqtrainError(f"{prefix}: unreadable checkpoint: {describe(prefix, e)}") from e
    os.makedirs(output_dir, exist_ok=True)
    saved = tf.train.CheckpointManager(
        tf.train.Checkpoint(model=model, optimizer=optimizer), output_dir, max_to_keep=None
    ).save(checkpoint_number=int(optimizer.iterations.numpy()))
    cfg.save_config(
        cfg.build({**cfg.to_dict(config), "model_dir": output_dir}, "<import>"),
        os.path.join(output_dir, "config.yml"),
    )
    what = "weights, Adam moments and step" if with_slots else "weights (step 0, fresh moments)"
    logger.info("Imported %s of %s into %s", what, prefix, saved)
    return saved


def _restore(config: cfg.Config, reader, weights_only: bool):
    """(model, optimizer, whether moments and step were read) set from the checkpoint."""
    shapes = reader.get_variable_to_shape_map()
    model = build_model(config)
    optimizer = make_optimizer(config.params)
    optimizer.build(model.trainable_variables)
    source_order = vocabulary_order(config.data.source_vocabulary)
    target_order = vocabulary_order(config.data.target_vocabulary)
    pairs = variable_map(model, shapes, source_order, target_order, config.model)
    _check_consumed(pairs, shapes, config.model)
    with_slots = not weights_only and _has_slots(pairs, shapes)
    for variable, source in pairs:
        variable.assign(_value(reader, shapes, source, variable, VALUE))
        if with_slots:
            m, v = optimizer.slots(variable)
            m.assign(_value(reader, shapes, source, variable, SLOT.format("m")))
            v.assign(_value(reader, shapes, source, variable, SLOT.format("v")))
    optimizer.iterations.assign(int(reader.get_tensor(STEP)) if with_slots else 0)
    _warn_optimizer_params(reader, shapes, config.params)
    return model, optimizer, with_slots


def _prefix(checkpoint: str) -> str:
    """The checkpoint prefix of a directory (its newest checkpoint) or of a prefix."""
    if os.path.isdir(checkpoint):
        prefix = tf.train.latest_checkpoint(checkpoint)
        if prefix is None:
            raise SeqtrainError(
                f"{checkpoint}: no checkpoint in this directory (no 'checkpoint' state file); "
                "give the prefix of one, e.g. model_dir/ckpt-5000"
            )
        return prefix
    if not os.path.exists(f"{checkpoint}.index"):
        raise SeqtrainError(
            f"{checkpoint}: no such checkpoint ({checkpoint}.index is missing); give an "
            "OpenNMT-tf model_dir or a prefix such as model_dir/ckpt-5000"
        )
    return checkpoint


def _check_output_dir(output_dir: str) -> None:
    if os.path.isdir(output_dir) and tf.train.latest_checkpoint(output_dir):
        raise SeqtrainError(
            f"{output_dir} already holds checkpoints; import into a new or empty --output_dir"
        )


def vocabulary_order(path: str) -> np.ndarray:
    """int [V]: the OpenNMT-tf id (row) of each seqtrain id of the vocabulary file ``path``."""
    lines = list(read_text_lines(path))
    while lines and not lines[-1]:
        lines.pop()
    specials = [PAD_TOKEN, BOS_TOKEN, EOS_TOKEN]
    if lines[:3] != specials:
        raise SeqtrainError(
            f"{path}: starts with {lines[:3]}, but OpenNMT-tf numbers the lines of its vocabulary "
            f"and needs {' '.join(specials)} as ids 0-2; give the vocabulary files the checkpoint "
            "was trained with"
        )
    if UNK_TOKEN in lines:
        raise SeqtrainError(
            f"{path} line {lines.index(UNK_TOKEN) + 1}: {UNK_TOKEN} is a vocabulary entry; "
            f"OpenNMT-tf gives it an id besides its out-of-vocabulary id and seqtrain has one "
            f"{UNK_TOKEN}, so this model cannot be converted row for row"
        )
    row = {}
    for i, token in enumerate(lines):
        row.setdefault(token, i)
    tokens = Vocab.load(path).as_list()
    if len(row) != len(lines):
        raise SeqtrainError(f"{path}: has repeated or empty lines; OpenNMT-tf would not load it")
    return np.array([row.get(t, len(lines)) for t in tokens], dtype=np.int64)  # <unk> last


def variable_map(model, shapes: dict, source_order, target_order, m: cfg.ModelConfig):
    """[(seqtrain variable, Source)] for every variable of ``model``."""
    pairs = []

    def dense(layer, *paths, order=None):
        for name, axis in (("kernel", 1), ("bias", 0)):
            names = tuple(f"{p}/{name}" for p in paths)
            pairs.append((getattr(layer, name), Source(names, label(layer, name), order, axis)))

    def norm(layer, path):
        for name in ("gamma", "beta"):
            pairs.append((getattr(layer, name), Source((f"{path}/{name}",), label(layer, name))))

    paths = {
        variable.ref(): "/".join(map(str, path))
        for path, variable in model._flatten(  # attribute paths, e.g. encoder_layers/0/ffn/...
            predicate=lambda x: isinstance(x, tf.Variable), with_path=True
        )
    }

    def label(module, name):
        return paths[getattr(module, name).ref()]

    def attention(block, path, cross):
        a = f"{path}/layer"
        if cross:
            dense(block.query, f"{a}/linear_queries")
            dense(block.key_value, f"{a}/linear_keys", f"{a}/linear_values")
        else:
            dense(block.qkv, f"{a}/linear_queries", f"{a}/linear_keys", f"{a}/linear_values")
        dense(block.output, f"{a}/linear_output")

    for side, layers in (("encoder", model.encoder_layers), ("decoder", model.decoder_layers)):
        for i, layer in enumerate(layers):
            path = f"model/{side}/layers/{i}"
            norm(layer.self_attention_norm, f"{path}/self_attention/input_layer_norm")
            attention(layer.self_attention, f"{path}/self_attention", cross=False)
            if side == "decoder":
                norm(layer.cross_attention_norm, f"{path}/attention/0/input_layer_norm")
                attention(layer.cross_attention, f"{path}/attention/0", cross=True)
            norm(layer.ffn_norm, f"{path}/ffn/input_layer_norm")
            dense(layer.ffn.inner, f"{path}/ffn/layer/inner")
            dense(layer.ffn.outer, f"{path}/ffn/layer/outer")
        norm(getattr(model, f"{side}_norm"), f"model/{side}/layer_norm")
    _embeddings(pairs, model, shapes, source_order, target_order, m)
    if model.ties_output:
        bias = Source(("model/decoder/output_layer/bias",), "output_bias", target_order)
        pairs.append((model.output_bias, bias))
    else:
        dense(model.output, "model/decoder/output_layer", order=target_order)
    return pairs


def _embeddings(pairs, model, shapes, source_order, target_order, m: cfg.ModelConfig):
    source = f"{INPUTTERS}/features_inputter/embedding"
    target = f"{INPUTTERS}/labels_inputter/embedding"
    if source + VALUE not in shapes:
        raise SeqtrainError(
            f"the checkpoint has no variable {source}: is it an OpenNMT-tf Transformer checkpoint?"
        )
    onmt_shares_input = source + VALUE in shapes and target + VALUE not in shapes
    onmt_ties_output = "model/decoder/output_layer/kernel" + VALUE not in shapes
    if onmt_shares_input != model.shares_input or onmt_ties_output != model.ties_output:
        level = {(False, False): "none", (True, False): "source_target_input"}
        level.update({(False, True): "target", (True, True): "all"})
        raise SeqtrainError(
            f"the checkpoint shares its embeddings as model.share_embeddings: "
            f"{level[onmt_shares_input, onmt_ties_output]} (variables {source}, {target}, "
            f"model/decoder/output_layer/kernel present or not), the configuration says "
            f"{m.share_embeddings}; set model.share_embeddings to match"
        )
    if model.shares_input and not np.array_equal(source_order, target_order):
        raise SeqtrainError(
            "the checkpoint shares one embedding between source and target: give the same "
            "vocabulary file as data.source_vocabulary and data.target_vocabulary"
        )
    pairs.append((model.source_embedding, Source((source,), "source_embedding", source_order)))
    if not model.shares_input:
        pairs.append((model.target_embedding, Source((target,), "target_embedding", target_order)))


def _check_consumed(pairs, shapes: dict, m: cfg.ModelConfig) -> None:
    """Every model variable of the checkpoint has a place in seqtrain's model, and vice versa."""
    needed = {name for _, source in pairs for name in source.names}
    for name in sorted(needed):
        if name + VALUE not in shapes:
            raise SeqtrainError(
                f"the checkpoint has no variable {name}, which the configured model "
                f"({m.num_layers} layers, pre-norm Transformer) needs: is it another architecture "
                "or another num_layers?"
            )
    left = sorted(
        name[: -len(VALUE)]
        for name in shapes
        if name.startswith("model/")
        and name.endswith(VALUE)
        and ".OPTIMIZER_SLOT" not in name
        and name[: -len(VALUE)] not in needed
    )
    if left:
        hint = (
            "relative position representations (maximum_relative_position) are not supported"
            if any("relative_position" in n for n in left)
            else "is the checkpoint another architecture (post-norm, more layers)?"
        )
        raise SeqtrainError(
            f"the checkpoint's variable {left[0]} {shapes[left[0] + VALUE]} (and "
            f"{len(left) - 1} more) has no place in the configured model: {hint}"
        )


def _has_slots(pairs, shapes: dict) -> bool:
    names = [name for _, source in pairs for name in source.names]
    found = [n + SLOT.format(k) in shapes for n in names for k in "mv"]
    if all(found) and STEP in shapes:
        return True
    logger.warning(
        "The checkpoint has no Adam moments for every variable (another optimizer, or averaged "
        "weights): importing the weights only; training starts at step 0"
    )
    return False


def _value(reader, shapes: dict, source: Source, variable, suffix: str) -> np.ndarray:
    """The seqtrain value of ``variable`` from the checkpoint tensors ``source.names + suffix``."""
    parts = [reader.get_tensor(name + suffix) for name in source.names]
    value = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=-1)
    expected = tuple(variable.shape.as_list())
    if value.shape != expected:
        found = " + ".join(f"{n} {shapes[n + VALUE]}" for n in source.names)
        by_vocabulary = source.order is not None and value.shape[:-1] == expected[:-1]
        by_vocabulary |= source.order is not None and value.shape[1:] == expected[1:]
        hint = (
            "the vocabulary files are not the checkpoint's (give those it was trained with)"
            if by_vocabulary
            else "set the model section (num_units, num_heads, ffn_inner_dim) to the checkpoint's"
        )
        raise SeqtrainError(
            f"{found} does not fit seqtrain's {source.label} {list(expected)}: {hint}"
        )
    return value if source.order is None else np.take(value, source.order, axis=source.axis)


def _warn_optimizer_params(reader, shapes: dict, params: cfg.ParamsConfig) -> None:
    """OpenNMT-tf stores the Adam betas; a run that continues with others is logged."""
    p = params.optimizer_params
    for key, configured in (("beta_1", p.beta_1), ("beta_2", p.beta_2)):
        name = f"optimizer/{key}{VALUE}"
        if name in shapes and not np.isclose(float(reader.get_tensor(name)), configured):
            logger.warning(
                "The checkpoint was trained with %s = %g; params.optimizer_params.%s is %g",
                key,
                float(reader.get_tensor(name)),
                key,
                configured,
            )
