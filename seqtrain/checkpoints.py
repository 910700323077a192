"""Checkpoints: saving with tf.train.CheckpointManager, restoring, and averaging weights.

TensorFlow writes a checkpoint's data and index files into ``ckpt-N_temp/`` first, renames them
and updates the small ``checkpoint`` state file last, so a process killed mid-save (or a full
disk) leaves the state file pointing at the previous, complete checkpoint: restarting with the
same command resumes from it. A checkpoint that is damaged later (truncated file, missing index)
is named in a warning and the newest readable one is used instead; when checkpoints exist but
none reads, that is an error, never a silent restart from scratch.

In a multi-worker run every worker must take part in a save (the variables are synchronised
collectively), but only the chief writes into model_dir; the others write to a scratch folder
that is deleted after each save. Every worker restores from model_dir (shared storage): a worker
that started from other weights or another step would silently diverge.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import logging
import os
import re
import shutil
import tempfile

import numpy as np
import tensorflow as tf

from seqtrain import config as cfg
from seqtrain.errors import SeqtrainError
from seqtrain.model import Transformer
from seqtrain.moving_average import CHECKPOINT_KEY
from seqtrain.vocab import Vocab

logger = logging.getLogger(__name__)

# What reading a damaged checkpoint raises: OpError (DataLoss: checksum, NotFound: missing index
# or data file, "not an sstable"), IndexError ("Read less bytes than requested": a truncated data
# file, TF 2.21), OSError.
UNREADABLE = (tf.errors.OpError, IndexError, OSError)


class Saver:
    """A CheckpointManager in model_dir (chief) or in a scratch folder (other workers)."""

    def __init__(
        self, checkpoint: tf.train.Checkpoint, model_dir: str, max_to_keep: int, chief=True
    ):
        self.chief = chief
        self.model_dir = model_dir
        directory = model_dir if chief else tempfile.mkdtemp(prefix="seqtrain-worker-")
        self.manager = tf.train.CheckpointManager(checkpoint, directory, max_to_keep=max_to_keep)
        self.checkpoint = checkpoint
        self.swap = contextlib.nullcontext  # what surrounds a save (the moving average's swap)

    def keep_average(self, moving_average) -> None:
        """Saves ``moving_average``'s weights as the model's and the training weights beside
        them (see seqtrain.moving_average)."""
        setattr(self.checkpoint, CHECKPOINT_KEY, moving_average.trackable)
        self.swap = moving_average.swapped

    def restore(self, path: str | None = None) -> str | None:
        """Restores ``path``, else the newest readable checkpoint of model_dir; returns what was
        restored, None when there is nothing to restore."""

        def read(prefix):
            try:
                # expect_partial: a checkpoint may also hold a moving average's weights.
                self.checkpoint.restore(prefix).expect_partial().assert_existing_objects_matched()
            except (AssertionError, ValueError) as e:
                raise SeqtrainError(mismatch_message(prefix, e)) from e

        if path:
            read_or_explain(read, path)
        else:
            path = restore_newest(read, self.model_dir)
        if path:
            logger.info("Restored checkpoint %s", path)
        return path

    def save(self, step: int) -> str:
        """Writes ckpt-STEP; on a write error (full disk) removes what it left and stops."""
        directory = self.manager.directory
        try:
            with self.swap():
                path = self.manager.save(checkpoint_number=step)
        except (tf.errors.OpError, OSError) as e:
            shutil.rmtree(os.path.join(directory, f"ckpt-{step}_temp"), ignore_errors=True)
            if not self.chief:
                raise
            previous = latest(directory)
            kept = f"the previous one, {previous}, is intact" if previous else "none was saved"
            raise SeqtrainError(
                f"{directory}: cannot write checkpoint ckpt-{step} ({reason(e)}); {kept}: free "
                "disk space and run the same command again to resume"
            ) from e
        if not self.chief:
            shutil.rmtree(directory, ignore_errors=True)
        else:
            logger.info("Saved checkpoint %s", path)
        return path


def latest(model_dir: str | None) -> str | None:
    return tf.train.latest_checkpoint(model_dir) if model_dir else None


def reason(error: BaseException) -> str:
    """The useful part of an error's message: TF's first line without its op decorations."""
    text = getattr(error, "message", None) or str(error) or type(error).__name__
    lines = [line for line in text.splitlines() if line.strip()]
    # A graph's error starts with "Graph execution error:" and the Python stack of the node.
    skip = ("Graph execution error", "Detected at node", " ", "\t")
    useful = [line for line in lines if not line.startswith(skip)] or lines
    text = useful[0] + (f" {useful[1]}" if useful[0].endswith(":") and len(useful) > 1 else "")
    text = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", text)
    return re.sub(r"\s*\[Op:\w+\]$", "", text)


def replace_directory(output_dir: str, write, what: str, errors=(OSError,)) -> str:
    """Writes a directory as a whole: ``write(tmp)`` fills a sibling temporary directory, which
    then replaces output_dir. On ``errors`` (a full disk, a read-only folder) the temporary one is
    removed and a SeqtrainError naming ``what`` says whether a previous output_dir is unchanged;
    on anything else it is removed too and the error goes on. Returns the absolute output_dir."""
    output_dir = os.path.abspath(output_dir)
    tmp = f"{output_dir}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        write(tmp)
    except errors as e:
        shutil.rmtree(tmp, ignore_errors=True)  # never leave a half-written export behind
        kept = "the previous export there is unchanged" if os.path.exists(output_dir) else ""
        raise SeqtrainError(
            f"{output_dir}: cannot write the {what} ({reason(e)}); "
            f"{kept or 'nothing was written'}: free disk space and run export again"
        ) from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if os.path.exists(output_dir):
        shutil.rmtree(output_dir)
    os.replace(tmp, output_dir)
    return output_dir


def mismatch_message(path: str, error: BaseException) -> str:
    return (
        f"{path} does not match the model of this configuration ({reason(error)}); use the "
        "configuration the checkpoint was trained with (model_dir/config.yml)"
    )


def candidates(model_dir: str) -> list[str]:
    """Checkpoint prefixes of model_dir, newest step first: those the ``checkpoint`` state file
    lists plus every ``ckpt-N.index`` on disk (the state file itself may be lost or damaged)."""
    paths = []
    try:
        state = tf.train.get_checkpoint_state(model_dir)  # None when missing or unparsable
    except UNREADABLE:
        state = None
    if state is not None:
        paths += [*state.all_model_checkpoint_paths, state.model_checkpoint_path]
    paths += [
        i[: -len(".index")] for i in glob.glob(os.path.join(glob.escape(model_dir), "ckpt-*.index"))
    ]
    # Both kinds of path already start with model_dir (TF joins the state file's relative ones);
    # one entry per checkpoint, whether the state file holds absolute or relative paths.
    found = {os.path.abspath(p): os.path.normpath(p) for p in paths if p}
    return sorted(found.values(), key=checkpoint_step, reverse=True)


def restore_newest(read, model_dir: str) -> str | None:
    """Calls ``read(prefix)`` on the newest checkpoint of model_dir that reads; each unreadable
    one is named in a warning. None when model_dir holds no checkpoint; SeqtrainError when it
    holds some and none reads."""
    broken = []
    for path in candidates(model_dir):
        try:
            read(path)
        except UNREADABLE as e:
            broken.append(describe(path, e))
            logger.warning("Checkpoint %s is unreadable: %s", path, broken[-1])
            continue
        if broken:
            logger.warning("Using %s, the newest readable checkpoint", path)
        return path
    if broken:
        raise SeqtrainError(
            f"{model_dir}: none of its {len(broken)} checkpoint(s) is readable "
            f"({'; '.join(broken)}); restore them from a backup, give --checkpoint_path, or move "
            "them away to start over"
        )
    return None


def read_or_explain(read, path: str) -> None:
    """``read(path)`` for a checkpoint the user named: unreadable is an error naming it."""
    try:
        read(path)
    except UNREADABLE as e:
        raise SeqtrainError(f"{path}: unreadable checkpoint: {describe(path, e)}") from e


def describe(path: str, error: BaseException) -> str:
    """Which file of checkpoint ``path`` is missing, else the reading error."""
    if not os.path.exists(f"{path}.index"):
        return f"{os.path.basename(path)}.index is missing"
    if not glob.glob(f"{glob.escape(path)}.data-*"):
        return f"{os.path.basename(path)}.data-* is missing"
    return f"{os.path.basename(path)}.index or .data-*: {reason(error)}"


def checkpoint_step(path: str) -> int:
    """The step number in a checkpoint prefix ``…/ckpt-STEP``."""
    try:
        return int(path.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return -1


def average_checkpoints(config, output_dir: str | None = None, max_count: int = 8) -> str:
    """Averages the model weights of the last ``max_count`` checkpoints of model_dir.

    The average is written as a model-only checkpoint (step of the newest input) in output_dir
    (default model_dir/avg), with a config.yml whose model_dir is output_dir: ``translate``,
    ``eval`` and ``export`` read it through ``--checkpoint_path OUTPUT_DIR`` or that config, and
    ``train --checkpoint_path OUTPUT_DIR`` fine-tunes from it.
    """
    state = tf.train.get_checkpoint_state(config.model_dir)
    if state is None or not state.all_model_checkpoint_paths:
        raise SeqtrainError(f"{config.model_dir}: no checkpoints to average; train first")
    paths = list(state.all_model_checkpoint_paths)[-max_count:]
    output_dir = output_dir or os.path.join(config.model_dir, "avg")
    if os.path.abspath(output_dir) == os.path.abspath(config.model_dir):
        raise SeqtrainError("--output_dir must differ from model_dir (it would mix checkpoints)")
    path = average_into(build_model(config), paths, output_dir)
    config_path = os.path.join(output_dir, "config.yml")  # as runguard writes it in model_dir
    cfg.save_config(dataclasses.replace(config, model_dir=output_dir), config_path)
    return path


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
