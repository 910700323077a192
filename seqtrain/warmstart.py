"""Where a training run starts: model_dir's own checkpoint, another model, or nothing.

``seqtrain train`` (OpenNMT-tf 2.32's flags, one difference noted):

* model_dir holds a checkpoint: the run resumes from it (weights, optimizer slots, step, data
  position, moving average); ``--checkpoint_path`` is then ignored with a warning, so re-running
  the same fine-tuning command resumes it. (OpenNMT-tf loads ``--checkpoint_path`` again on every
  start: its re-run restarts the fine-tuning at step 0.)
* else ``--checkpoint_path P`` (a prefix ``DIR/ckpt-N`` or a directory: its newest checkpoint)
  loads the model weights only: fresh optimizer slots, step 0, so the learning-rate schedule
  restarts too (fine-tuning a trained or averaged model on new data);
* ``--continue_from_checkpoint`` also restores P's optimizer slots, step and moving average;
  the data are read from their start (P's step counted batches of another run).

Before anything is written to model_dir, P is checked against the configuration: each model
variable's shape (the variable is named with both shapes), and, when P's directory has the
``config.yml`` of the run that wrote it, the vocabularies token by token (the same size in
another order would silently scramble the embeddings).
"""

from __future__ import annotations

import collections
import logging
import os
from typing import NamedTuple

import tensorflow as tf
import yaml

from seqtrain import checkpoints
from seqtrain import config as cfg
from seqtrain.checkpoints import build_model
from seqtrain.errors import SeqtrainError
from seqtrain.moving_average import MovingAverage, load_training_weights
from seqtrain.vocab import Vocab

logger = logging.getLogger(__name__)

VALUE = "/.ATTRIBUTES/VARIABLE_VALUE"  # suffix of a variable's key in a TF2 checkpoint


class Started(NamedTuple):
    path: str | None  # the checkpoint restored, None when training from scratch
    resumed: bool  # from model_dir's own checkpoint (the data position is restored too)
    moving_average: MovingAverage | None  # with train.moving_average_decay


def initial_checkpoint(
    config: cfg.Config, checkpoint_path: str | None, continue_from_checkpoint: bool = False
) -> str | None:
    """The checkpoint prefix to start from (None: resume from model_dir, or from scratch).

    Called before model_dir is created or written: every error here leaves it untouched.
    """
    if continue_from_checkpoint and not checkpoint_path:
        raise SeqtrainError("--continue_from_checkpoint needs --checkpoint_path")
    if not checkpoint_path:
        return None
    if checkpoints.candidates(config.model_dir):
        logger.warning(
            "%s already holds checkpoints: resuming from them; --checkpoint_path %s is ignored "
            "(use a new model_dir to start again from it)",
            config.model_dir,
            checkpoint_path,
        )
        return None
    prefix = resolve(checkpoint_path)
    check_vocabularies(config, prefix)
    try:
        check_shapes(config, prefix)
        has_optimizer = _has_optimizer(prefix)
    except checkpoints.UNREADABLE as e:
        what = checkpoints.describe(prefix, e)
        raise SeqtrainError(f"{prefix}: unreadable checkpoint: {what}") from e
    if continue_from_checkpoint and not has_optimizer:
        raise SeqtrainError(
            f"{prefix} holds model weights only (an averaged or best checkpoint): drop "
            "--continue_from_checkpoint to fine-tune from it with a fresh optimizer"
        )
    return prefix


def restore(saver, model, optimizer, config, source: str | None, full: bool) -> Started:
    """Restores model_dir's newest checkpoint, else ``source`` (all of it when ``full``, else
    the model weights only); sets up the moving average. Returns what was done."""
    if source is None:
        path, full, resumed = saver.restore(), True, True
    elif full:
        path, resumed = saver.restore(source), False
    else:
        checkpoints.read_or_explain(lambda p: _read_weights(model, p), source)
        path, resumed = source, False
        logger.info("Fine-tuning from the model weights of %s: new optimizer state, step 0", path)
    average = None
    decay = config.train.moving_average_decay
    if decay is not None:
        average = MovingAverage(model.trainable_variables, decay, optimizer.iterations)
        if path and full and average.restore(path):
            logger.info("Moving average restored from %s", path)
        saver.keep_average(average)
    elif path and full and load_training_weights(model.trainable_variables, path):
        logger.info("%s has a moving average: training continues from its training weights", path)
    return Started(path, resumed, average)


def _read_weights(model, prefix: str) -> None:
    try:
        tf.train.Checkpoint(model=model).read(
            prefix
        ).expect_partial().assert_existing_objects_matched()
    except (AssertionError, ValueError) as e:
        raise SeqtrainError(checkpoints.mismatch_message(prefix, e)) from e


def resolve(path: str) -> str:
    """A checkpoint prefix from a prefix or a directory (its newest checkpoint)."""
    if os.path.isdir(path):
        found = checkpoints.candidates(path)
        if found:
            return found[0]
        if os.path.exists(os.path.join(path, "ckpt.index")):
            return os.path.join(path, "ckpt")  # model_dir/best/ (written without a state file)
        raise SeqtrainError(f"--checkpoint_path {path}: no checkpoint in this directory")
    if not os.path.exists(f"{path}.index"):
        raise SeqtrainError(
            f"--checkpoint_path {path}: no such checkpoint ({path}.index is missing); give a "
            "prefix such as MODEL_DIR/ckpt-5000 or a directory holding checkpoints"
        )
    return path


def _has_optimizer(prefix: str) -> bool:
    return any(name.startswith("optimizer/") for name, _ in tf.train.list_variables(prefix))


def checkpoint_keys(root) -> dict:
    """{checkpoint key (without the VALUE suffix): variable} of a trackable ``root``, each
    variable under its first breadth-first path, as TensorFlow's checkpoint writer names it."""
    seen, keys = set(), {}
    queue = collections.deque([(root, "")])
    while queue:
        node, path = queue.popleft()
        for name, child in tf.train.TrackableView.children(node).items():
            if id(child) in seen:
                continue
            seen.add(id(child))
            key = path + name.replace(".", "..").replace("/", ".S")  # TF's escaping
            if isinstance(child, tf.Variable):
                keys[key] = child
            else:
                queue.append((child, key + "/"))
    return keys


def expected_shapes(config: cfg.Config) -> dict[str, list[int]]:
    """{key: shape} of the model of ``config`` as a checkpoint would hold it (``model/...``).
    Built in a throwaway graph: no weights are allocated."""
    with tf.Graph().as_default():
        model = build_model(config)
        keys = checkpoint_keys(tf.train.Checkpoint(model=model))
        return {key: variable.shape.as_list() for key, variable in keys.items()}


def check_shapes(config: cfg.Config, prefix: str) -> None:
    """Every model variable exists in ``prefix`` with the same shape, and nothing more."""
    held = {
        name[: -len(VALUE)]: shape
        for name, shape in tf.train.list_variables(prefix)
        if name.startswith("model/") and name.endswith(VALUE)
    }
    wanted = expected_shapes(config)
    differ = [k for k in wanted if k in held and list(held[k]) != wanted[k]]
    missing = [k for k in wanted if k not in held]
    extra = [k for k in held if k not in wanted]
    hint = "fine-tune with the model section it was trained with (its model_dir/config.yml)"
    if differ:
        k = differ[0]
        more = f"; {len(differ) - 1} more variable(s) differ" if len(differ) > 1 else ""
        raise SeqtrainError(
            f"{prefix}: variable {k} has shape {list(held[k])} there but {wanted[k]} in the "
            f"model of this configuration{more}{_vocab_hint(k)}; {hint}"
        )
    if missing or extra:
        k, where = (
            (missing[0], "the model of this configuration") if missing else (extra[0], prefix)
        )
        count = len(missing) + len(extra)
        raise SeqtrainError(
            f"{prefix}: variable {k} exists only in {where} ({count} variable(s) unmatched: "
            f"other num_layers or share_embeddings?); {hint}"
        )


def _vocab_hint(key: str) -> str:
    if key.endswith(("source_embedding", "target_embedding", "output/kernel", "output/bias")):
        return " (a vocabulary of another size)"
    return ""


def check_vocabularies(config: cfg.Config, prefix: str) -> None:
    """The vocabularies of ``config`` equal those of the run that wrote ``prefix`` (read from
    the config.yml beside it); a warning when they cannot be compared."""
    saved = os.path.join(os.path.dirname(prefix), "config.yml")
    try:
        with open(saved, encoding="utf-8") as f:
            old = cfg.build(yaml.safe_load(f) or {}, saved).data
    except (OSError, yaml.YAMLError, SeqtrainError) as e:
        logger.warning(
            "Vocabularies not compared with %s's (%s): only shapes are checked", prefix, e
        )
        return
    for key in ("source_vocabulary", "target_vocabulary"):
        theirs, ours = getattr(old, key), getattr(config.data, key)
        if not theirs or not os.path.isfile(theirs):
            logger.warning("data.%s of %s (%s) is not readable: not compared", key, saved, theirs)
            continue
        if os.path.samefile(theirs, ours):
            continue
        a, b = Vocab.load(theirs).as_list(), Vocab.load(ours).as_list()
        if a != b:
            i = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            first = f"id {i}: {_token(b, i)} vs {_token(a, i)}"
            raise SeqtrainError(
                f"data.{key}: {ours} differs from {theirs}, the vocabulary {prefix} was trained "
                f"with ({len(b)} vs {len(a)} tokens; first difference at {first}); train with "
                "the checkpoint's vocabulary"
            )


def _token(tokens: list[str], i: int) -> str:
    return repr(tokens[i]) if i < len(tokens) else "(end)"
