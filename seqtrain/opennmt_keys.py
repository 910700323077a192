"""Every OpenNMT-tf 2.32 key and flag for sequence-to-sequence Transformers, and what seqtrain does.

One table, ``seqtrain/opennmt_keys.yml``, written from OpenNMT-tf's ``docs/configuration.md``,
``config.py``, ``runner.py``, ``bin/main.py``, ``evaluation.py`` and ``utils/scorers.py``. Each
entry is a key (``params.dropout``), a key and one of its values (``eval.scorers: rouge``), a
command-line flag (``--num_gpus``) or a run type (``run type score``), with its status:

- ``SAME``: implemented with OpenNMT-tf's meaning (the note says where seqtrain's default is the
  Transformer ``--auto_config`` value rather than OpenNMT-tf's bare default);
- ``ALIAS``: accepted under OpenNMT-tf's name, read as the seqtrain key the note names;
- ``MERGE``: implemented by another issue-14 branch (lands when the lead merges it);
- ``REJECTED``: the configuration parser (``seqtrain/config.py``) and the command line
  (``seqtrain/cli.py``) stop with a one-line error built from the note (what to use instead).

The README's key table is rendered from this table (``markdown``); a test keeps them equal.
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass
from typing import Optional

import yaml


class Status(enum.Enum):
    SAME = "implemented"  # OpenNMT-tf's meaning
    ALIAS = "alias"  # accepted under OpenNMT-tf's name, read as the seqtrain key of the note
    MERGE = "implemented (other issue-14 branch, lands at merge)"  # for the lead to reconcile
    REJECTED = "rejected"  # one-line error: the note says what to use instead


@dataclass(frozen=True)
class Key:
    name: str  # dotted key, "key: value", "--flag" or "run type NAME"
    status: Status
    onmt_default: str  # OpenNMT-tf 2.32's default ("" = none / not applicable)
    note: str  # SAME/ALIAS/MERGE: what seqtrain does; REJECTED: what to use instead


TABLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "opennmt_keys.yml")


def load(path: str = TABLE) -> tuple[Key, ...]:
    """The table's entries, in file order (a malformed table is a programming error)."""
    with open(path, encoding="utf-8") as f:
        rows = yaml.safe_load(f)
    keys = tuple(
        Key(name, Status[status.upper()], default, note) for name, status, default, note in rows
    )
    names = [key.name for key in keys]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"{path}: duplicate entries {duplicates}")
    return keys


KEYS = load()
_BY_NAME = {key.name: key for key in KEYS}


def find(name: str) -> Optional[Key]:
    """The entry of a key, 'key: value', flag or run type, or None."""
    return _BY_NAME.get(name)


def rejection(name: str) -> Optional[str]:
    """One-line reason for a rejected configuration key or flag, None if not rejected."""
    key = _BY_NAME.get(name)
    if key is None or key.status is not Status.REJECTED:
        return None
    kind = "flag" if name.startswith("--") else "run type" if name.startswith("run ") else "key"
    shown = name.removeprefix("run type ")
    return f"'{shown}' is an OpenNMT-tf {kind} that seqtrain does not support: {key.note}"


def value_rejection(name: str, value) -> Optional[str]:
    """One-line reason for a rejected value of a key (``params.decay_type: ExponentialDecay``)."""
    key = _BY_NAME.get(f"{name}: {value}")
    if key is None or key.status is not Status.REJECTED:
        return None
    return f"{name} = {value!r} is an OpenNMT-tf value that seqtrain does not support: {key.note}"


def rejected_flags() -> list[str]:
    return [k.name for k in KEYS if k.status is Status.REJECTED and k.name.startswith("--")]


def markdown(defaults: dict) -> str:
    """The README table. defaults: seqtrain's resolved defaults as a nested dict
    (``config.to_dict``), for the "seqtrain default" column of implemented keys."""
    lines = [
        "| OpenNMT-tf | OpenNMT-tf default | seqtrain | seqtrain default | notes |",
        "| --- | --- | --- | --- | --- |",
    ]
    for key in KEYS:
        name = key.name if key.name.startswith(("--", "run ")) else f"`{key.name}`"
        default = "" if key.status is Status.REJECTED else _default_text(defaults, key.name)
        cells = (name, key.onmt_default, key.status.value, default, key.note.replace("|", "\\|"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _default_text(defaults: dict, name: str) -> str:
    """The default of a dotted configuration key as YAML text ('' for anything else)."""
    value = defaults
    for part in name.split("."):
        if not isinstance(value, dict) or part not in value:
            return ""
        value = value[part]
    if isinstance(value, dict):
        return ""
    text = yaml.safe_dump(value, default_flow_style=True).strip()
    return text.removesuffix("...").strip()
