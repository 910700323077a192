"""Checkpoints: saving with tf.train.CheckpointManager, restoring, and averaging weights.

TensorFlow writes a checkpoint's data and index files first and updates the small ``checkpoint``
state file last, so a process killed mid-save leaves the state file pointing at the previous,
complete checkpoint: restarting with the same command resumes from it.

In a multi-worker run every worker must take part in a save (the variables are synchronised
collectively), but only the chief writes into model_dir; the others write to a scratch folder
that is deleted after each save.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile

import numpy as np
import tensorflow as tf

from seqtrain.errors import SeqtrainError
from seqtrain.model import Transformer
from seqtrain.vocab import Vocab

logger = logging.getLogger(__name__)


class Saver:
    """A CheckpointManager in model_dir (chief) or in a scratch folder (other workers)."""

    def __init__(
        self, checkpoint: tf.train.Checkpoint, model_dir: str, max_to_keep: int, chief=True
    ):
        self.chief = chief
        directory = model_dir if chief else tempfile.mkdtemp(prefix="seqtrain-worker-")
        self.manager = tf.train.CheckpointManager(checkpoint, directory, max_to_keep=max_to_keep)
        self.checkpoint = checkpoint

    def restore(self, path: str | None = None) -> str | None:
        """Restores ``path`` or the latest checkpoint of model_dir; returns what was restored."""
        path = path or latest(self.manager.directory if self.chief else None)
        if path is None:
            return None
        self.checkpoint.restore(path).assert_existing_objects_matched()
        logger.info("Restored checkpoint %s", path)
        return path

    def save(self, step: int) -> str:
        path = self.manager.save(checkpoint_number=step)
        if not self.chief:
            shutil.rmtree(self.manager.directory, ignore_errors=True)
        else:
            logger.info("Saved checkpoint %s", path)
        return path


def latest(model_dir: str | None) -> str | None:
    return tf.train.latest_checkpoint(model_dir) if model_dir else None


def checkpoint_step(path: str) -> int:
    """The step number in a checkpoint prefix ``…/ckpt-STEP``."""
    try:
        return int(path.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return -1


def average_checkpoints(config, output_dir: str | None = None, max_count: int = 8) -> str:
    """Averages the model weights of the last ``max_count`` checkpoints of model_dir.

    The average is written as a model-only checkpoint (step of the newest input) in output_dir,
    loadable by ``translate``, ``eval`` and ``export`` through ``--checkpoint_path``.
    """
    state = tf.train.get_checkpoint_state(config.model_dir)
    if state is None or not state.all_model_checkpoint_paths:
        raise SeqtrainError(f"{config.model_dir}: no checkpoints to average; train first")
    paths = list(state.all_model_checkpoint_paths)[-max_count:]
    output_dir = output_dir or os.path.join(config.model_dir, "avg")
    if os.path.abspath(output_dir) == os.path.abspath(config.model_dir):
        raise SeqtrainError("--output_dir must differ from model_dir (it would mix checkpoints)")
    return average_into(build_model(config), paths, output_dir)


def build_model(config, compute_dtype=tf.float32) -> Transformer:
    """The model of ``config`` with its vocabulary sizes (weights not yet restored)."""
    source_size = len(Vocab.load(config.data.source_vocabulary))
    target_size = len(Vocab.load(config.data.target_vocabulary))
    return Transformer(
        config.model, source_size, target_size, seed=config.train.seed, compute_dtype=compute_dtype
    )


def average_into(model, paths: list[str], output_dir: str) -> str:
    """Sets ``model``'s weights to their mean over ``paths`` and saves them in output_dir."""
    checkpoint = tf.train.Checkpoint(model=model)
    sums = None
    for path in paths:
        checkpoint.restore(path).expect_partial().assert_existing_objects_matched()
        values = [v.numpy().astype(np.float64) for v in model.variables]
        sums = values if sums is None else [a + b for a, b in zip(sums, values)]
    for variable, total in zip(model.variables, sums):
        variable.assign((total / len(paths)).astype(variable.dtype.as_numpy_dtype))
    logger.info("Averaged %d checkpoints: %s", len(paths), ", ".join(paths))
    manager = tf.train.CheckpointManager(checkpoint, output_dir, max_to_keep=1)
    return manager.save(checkpoint_number=checkpoint_step(paths[-1]))
