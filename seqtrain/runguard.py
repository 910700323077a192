"""Guards of a long training run: one run per model_dir, a checked configuration on resume,
and a clean stop on SIGINT/SIGTERM.

* ``RunLock``: ``model_dir/seqtrain.lock`` holds the PID and host of the run that trains there;
  a second run refuses to start. The lock of a process that no longer runs (a crash, ``kill
  -9``) is taken over with a warning; a lock from another host cannot be checked and must be
  removed by hand.
* ``check_resume``: the checkpoints of model_dir were written with ``model_dir/config.yml``; a
  new start may change what is safe (batch size, learning rate, max_step, eval settings: logged)
  but not what the weights depend on (the model section, the vocabularies and tokenizers).
  Every resolved configuration is kept: the previous ``config.yml`` becomes ``config.N.yml``.
* ``check_same_step``: the workers of a multi-worker run must all resume from the same step.
* ``StopRequest``: the first signal lets the current step finish, then the loop saves and stops;
  the second restores the default action, so it ends the process at once.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import threading
import time

import yaml

from seqtrain import config as cfg
from seqtrain.errors import SeqtrainError

logger = logging.getLogger(__name__)

LOCK_FILE = "seqtrain.lock"
CONFIG_FILE = "config.yml"
# Keys that the checkpoint's weights depend on: a change makes the checkpoints unusable or wrong
# (a vocabulary of the same size but another order would silently scramble the embeddings).
FROZEN_PREFIXES = ("model.", "data.source_vocabulary", "data.target_vocabulary")
FROZEN_PREFIXES += ("data.source_tokenization", "data.target_tokenization")
# Model keys that only act during training: changing them on resume is safe.
SAFE_MODEL_KEYS = ("model.dropout", "model.attention_dropout", "model.ffn_dropout")


class RunLock:
    """``with RunLock(model_dir):`` — model_dir belongs to this process until the block ends."""

    def __init__(self, model_dir: str):
        self.path = os.path.join(model_dir, LOCK_FILE)
        self.owner = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}

    def __enter__(self):
        for _ in range(3):  # another process may take over a stale lock at the same time
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._take_over_if_stale()
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(self.owner, f)
            return self
        raise SeqtrainError(f"{self.path}: could not take the lock; try again")

    def __exit__(self, *exc):
        if _read_owner(self.path) == self.owner:  # never remove another run's lock
            os.remove(self.path)

    def _take_over_if_stale(self) -> None:
        owner = _read_owner(self.path)
        if owner is not None and _may_run(owner):
            raise SeqtrainError(
                f"{os.path.dirname(self.path)} is in use by another training run (PID "
                f"{owner.get('pid')} on {owner.get('host')}, since "
                f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(owner.get('started', 0)))})"
                f": wait for it, stop it, or use another model_dir; if that run is dead, delete "
                f"{self.path}"
            )
        what = "an unreadable lock" if owner is None else f"the lock of PID {owner['pid']}"
        logger.warning("%s: taking over %s, which no longer runs", self.path, what)
        try:
            os.remove(self.path)
        except FileNotFoundError:
            pass


def _read_owner(path: str) -> dict | None:
    try:
        with open(path, encoding="utf-8") as f:
            owner = json.load(f)
    except (OSError, ValueError):
        return None
    return owner if isinstance(owner, dict) and isinstance(owner.get("pid"), int) else None


def _may_run(owner: dict) -> bool:
    """False only when the lock's process surely no longer runs (same host, no such PID)."""
    if owner.get("host") != socket.gethostname():
        return True  # another machine's process cannot be checked from here
    if owner["pid"] == os.getpid():
        return False  # a restarted container may get the PID of the run that left the lock
    try:
        os.kill(owner["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    return True


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _frozen(key: str) -> bool:
    return key.startswith(FROZEN_PREFIXES) and key not in SAFE_MODEL_KEYS


def check_resume(config: cfg.Config, resuming: bool) -> None:
    """Compares ``config`` with model_dir/config.yml: on resume a change of a frozen key is an
    error naming the key and both values; other changes are logged. Then keeps the old file as
    config.N.yml (when it differs) and writes the new one."""
    path = os.path.join(config.model_dir, CONFIG_FILE)
    new = _flat(cfg.to_dict(config))
    old, changed = _saved(path), []
    if old is not None:
        changed = sorted(k for k in set(old) | set(new) if old.get(k, new.get(k)) != new.get(k))
        frozen = [k for k in changed if _frozen(k)]
        if resuming and frozen:
            changes = "; ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in frozen)
            raise SeqtrainError(
                f"{path}: the checkpoints in {config.model_dir} were trained with other values "
                f"({changes}); restore them, or train into a new model_dir"
            )
        for key in changed:
            logger.info("Configuration change: %s %r -> %r", key, old.get(key), new.get(key))
    try:
        if old is not None and (changed or not old):  # not old: unreadable, kept as it is
            os.replace(path, _free_history_name(config.model_dir))
        cfg.save_config(config, path)
    except OSError as e:
        raise SeqtrainError(f"{path}: cannot write it ({e.strerror}); free disk space") from e


def _saved(path: str) -> dict | None:
    """The flat keys of a saved config.yml (defaults filled in), or None if there is none."""
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            raw = yaml.safe_load(f) or {}
        return _flat(cfg.to_dict(cfg.build(raw, path)))
    except (OSError, yaml.YAMLError, SeqtrainError) as e:
        # Written by another version (or damaged): compare nothing, but keep it.
        logger.warning("%s: cannot compare with it (%s)", path, " ".join(str(e).split()))
        return {}


def _free_history_name(model_dir: str) -> str:
    number = 1
    while os.path.exists(os.path.join(model_dir, f"config.{number}.yml")):
        number += 1
    return os.path.join(model_dir, f"config.{number}.yml")


class StopRequest:
    """``with StopRequest() as stop:`` — ``stop.signal`` is the first SIGINT/SIGTERM's number
    (None before): the loop polls it between steps. A no-op outside the main thread."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signal: int | None = None
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum, frame) -> None:
        self.signal = signum
        # The default action acts in the kernel, even while TensorFlow runs C++ code: a second
        # signal ends the process at once (a checkpoint being written is never listed: TF
        # renames its files and updates the state file last).
        for s in self.SIGNALS:
            signal.signal(s, signal.SIG_DFL)
        logger.warning(
            "%s: stopping after this step with a checkpoint; send it again to stop at once",
            signal.Signals(signum).name,
        )


def check_same_step(strategy, step: int) -> None:
    """Every worker must resume from the same checkpoint (else their weights silently differ)."""
    import tensorflow as tf  # training only: `seqtrain log` must stay light

    def gather():
        context = tf.distribute.get_replica_context()
        return context.all_gather(tf.constant([step], tf.int64), axis=0)

    steps = strategy.experimental_local_results(strategy.run(gather))[0].numpy().tolist()
    if min(steps) != max(steps):
        raise SeqtrainError(
            f"the workers restored different steps ({steps}): model_dir must be on storage that "
            "every worker reads, with the same path"
        )
