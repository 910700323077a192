"""``seqtrain update-vocab`` (OpenNMT-tf's ``update_vocab`` run type): a checkpoint for new
vocabularies, so that training continues with tokens added or removed.

For every vocabulary-sized matrix (source and target embeddings, the output projection's kernel
columns and bias), the row of a token present in both vocabularies is copied from the old
checkpoint, the row of a new token keeps the new model's fresh initialization (zeros for
biases); LazyAdam's m and v follow the same rows (zeros for new tokens), every other variable
and slot is copied, and the optimizer step is kept. The result is written to ``output_dir``
(``ckpt-STEP`` plus the resolved ``config.yml`` with the new vocabularies).
"""

from __future__ import annotations

import dataclasses
import logging
import os

import numpy as np
import tensorflow as tf

from seqtrain import config as cfg
from seqtrain.checkpoints import Saver, build_model
from seqtrain.errors import SeqtrainError
from seqtrain.optim import make_optimizer
from seqtrain.vocab import Vocab

logger = logging.getLogger(__name__)


def update_vocab(
    config: cfg.Config,
    output_dir: str,
    src_vocab: str | None = None,
    tgt_vocab: str | None = None,
    checkpoint_path: str | None = None,
) -> str:
    """Writes the updated checkpoint in output_dir; returns its path."""
    if os.path.abspath(output_dir) == os.path.abspath(config.model_dir):
        raise SeqtrainError("--output_dir must differ from model_dir (it would mix checkpoints)")
    for path in (src_vocab, tgt_vocab):
        if path and not os.path.isfile(path):
            raise SeqtrainError(f"{path}: vocabulary file not found")
    data = dataclasses.replace(
        config.data,
        source_vocabulary=src_vocab or config.data.source_vocabulary,
        target_vocabulary=tgt_vocab or config.data.target_vocabulary,
    )
    new_config = dataclasses.replace(config, data=data, model_dir=output_dir)
    old_model, old_optimizer, old_checkpoint = _build(config)
    restored = Saver(old_checkpoint, config.model_dir, 1).restore(checkpoint_path)
    if restored is None:
        raise SeqtrainError(f"{config.model_dir}: no checkpoint to update; train first")
    new_model, new_optimizer, new_checkpoint = _build(new_config)
    mapping = {
        "source": _row_map(config.data.source_vocabulary, data.source_vocabulary),
        "target": _row_map(config.data.target_vocabulary, data.target_vocabulary),
    }
    mapping["shared"] = mapping["source"]  # share_embeddings: one vocabulary (checked by the model)
    old_axes, new_axes = vocab_axes(old_model), vocab_axes(new_model)
    pairs = zip(old_model.trainable_variables, new_model.trainable_variables)
    for old_var, new_var in pairs:
        side_axis = new_axes.get(new_var.ref())
        assert side_axis == old_axes.get(old_var.ref()), "the two models differ"
        rows = None if side_axis is None else (mapping[side_axis[0]], side_axis[1])
        _transfer(old_var, new_var, rows)
        for old_slot, new_slot in zip(old_optimizer.slots(old_var), new_optimizer.slots(new_var)):
            _transfer(old_slot, new_slot, rows)
    new_optimizer.iterations.assign(old_optimizer.iterations)
    os.makedirs(output_dir, exist_ok=True)
    step = int(old_optimizer.iterations.numpy())
    path = Saver(new_checkpoint, output_dir, 1).save(step)
    cfg.save_config(new_config, os.path.join(output_dir, "config.yml"))
    kept = {side: int((m >= 0).sum()) for side, m in mapping.items()}
    logger.info("Updated %s -> %s (tokens kept: %s)", restored, path, kept)
    return path


def vocab_axes(model) -> dict:
    """{variable ref: ("source" | "target", axis)} of the model's vocabulary-sized variables."""
    axes = {model.source_embedding.ref(): ("source", 0)}
    if model.shares_input:  # one matrix for both sides: the vocabularies must be the same
        axes[model.source_embedding.ref()] = ("shared", 0)
    else:
        axes[model.target_embedding.ref()] = ("target", 0)
    if model.ties_output:
        axes[model.output_bias.ref()] = ("target", 0)
    else:
        axes[model.output.kernel.ref()] = ("target", 1)
        axes[model.output.bias.ref()] = ("target", 0)
    return axes


def _build(config: cfg.Config):
    model = build_model(config)
    optimizer = make_optimizer(config.params)
    optimizer.build(model.trainable_variables)
    return model, optimizer, tf.train.Checkpoint(model=model, optimizer=optimizer)


def _row_map(old_path: str, new_path: str) -> np.ndarray:
    """int64 [V_new]: the old id of each new token, -1 for a token the old vocabulary lacks."""
    old, new = Vocab.load(old_path), Vocab.load(new_path)
    return np.array([old.id(t) if t in old else -1 for t in new.as_list()], dtype=np.int64)


def _transfer(old_var, new_var, rows) -> None:
    """new_var <- old_var; with rows = (row map, axis), only the kept rows along that axis."""
    old_value = old_var.numpy()
    if rows is None:
        new_var.assign(old_value)
        return
    mapping, axis = rows
    value = np.moveaxis(new_var.numpy(), axis, 0)
    kept = np.flatnonzero(mapping >= 0)
    value[kept] = np.moveaxis(old_value, axis, 0)[mapping[kept]]
    new_var.assign(np.moveaxis(value, 0, axis))
