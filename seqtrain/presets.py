"""OpenNMT-tf's model catalog (``--model_type``) and ``auto_config``, as seqtrain config values.

What a run's configuration is made of, lowest priority first (``resolve``):

  1. seqtrain's defaults (``seqtrain.config``);
  2. with ``auto_config`` (``--auto_config``, or ``auto_config: true`` in a YAML file): the
     model's recommended ``params``/``train``/``eval``/``infer`` values, exactly as OpenNMT-tf
     2.32's ``Transformer.auto_config`` returns them;
  3. the user's files, merged over (2) as OpenNMT-tf merges them: mappings merge key by key,
     except ``optimizer_params`` and ``decay_params``, which the user's value replaces whole
     (a user's ``decay_params: {warmup_steps: 4000}`` drops the recommended ``model_dim``;
     seqtrain's default fills it).

The ``model`` section: the preset's keys (``--model_type``; without it, the ``Transformer``
defaults) with the user's ``model:`` keys over them, key by key. The recommended
``decay_params.model_dim`` is the resolved ``num_units`` (what OpenNMT-tf's model reports).

``--model_type`` is remembered in ``model_dir/model_type`` by ``train`` (OpenNMT-tf keeps a
``model_description.py`` there), so later commands on that model_dir may omit it.

Transformers' recommended values do not depend on the number of replicas (OpenNMT-tf passes
``num_replicas`` to ``auto_config`` but its Transformers ignore it); ``effective_batch_size``
is what keeps the global batch constant across replica counts.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import typing

from seqtrain import config as cfg
from seqtrain.errors import SeqtrainError

logger = logging.getLogger(__name__)

# Remembers --model_type in model_dir (OpenNMT-tf: model_description.py).
MODEL_TYPE_FILE = "model_type"

_BASE = {
    "num_layers": 6,
    "num_units": 512,
    "num_heads": 8,
    "ffn_inner_dim": 2048,
    "dropout": 0.1,
    "attention_dropout": 0.1,
    "ffn_dropout": 0.1,
    "share_embeddings": "none",
    "position_encoder_class": cfg.SINUSOIDAL,
    "maximum_relative_position": None,
    "pre_norm": True,
    "output_layer_bias": True,
}
_BIG = {**_BASE, "num_units": 1024, "num_heads": 16, "ffn_inner_dim": 4096}
_RELATIVE = {"position_encoder_class": None, "maximum_relative_position": 20}
_SCALING = {  # Ott et al. 2018 (fairseq transformer_wmt_en_de_big)
    **_BIG,
    "pre_norm": False,
    "dropout": 0.3,
    "attention_dropout": 0.1,
    "ffn_dropout": 0.0,
    "share_embeddings": "auto",
    "output_layer_bias": False,
}

# OpenNMT-tf 2.32 catalog names of Transformers -> seqtrain ``model`` keys (models/catalog.py).
CATALOG = {
    "TransformerBase": _BASE,
    "Transformer": _BASE,  # alias
    "TransformerBig": _BIG,
    "TransformerTiny": {
        **_BASE,
        "num_layers": 2,
        "num_units": 64,
        "num_heads": 2,
        "ffn_inner_dim": 64,
    },
    "TransformerBaseSharedEmbeddings": {**_BASE, "share_embeddings": "all"},
    "TransformerBigSharedEmbeddings": {**_BIG, "share_embeddings": "all"},
    "TransformerBaseRelative": {**_BASE, **_RELATIVE},
    "TransformerRelative": {**_BASE, **_RELATIVE},  # alias
    "TransformerBigRelative": {**_BIG, **_RELATIVE},
    "ScalingNmtEnDe": _SCALING,
    "ScalingNmtEnFr": {**_SCALING, "dropout": 0.1, "attention_dropout": 0.0},
}
# The rest of OpenNMT-tf 2.32's catalog: RNN, tagging and language models.
NOT_TRANSFORMERS = (
    "ListenAttendSpell",
    "LuongAttention",
    "NMTBigV1",
    "NMTMediumV1",
    "NMTSmallV1",
    "LstmCnnCrfTagger",
    "GPT2Small",
)
# OpenNMT-tf's merge_config replaces these mappings instead of merging them.
REPLACED_WHOLE = ("optimizer_params", "decay_params")


def model_preset(name: str) -> dict:
    """The ``model`` keys of catalog model ``name`` (SeqtrainError for other names)."""
    if name in CATALOG:
        return dict(CATALOG[name])
    choices = ", ".join(CATALOG)
    if name in NOT_TRANSFORMERS:
        raise SeqtrainError(
            f"--model_type {name}: seqtrain trains Transformers only and does not support "
            f"OpenNMT-tf's {name}; use one of: {choices}"
        )
    raise SeqtrainError(
        f"--model_type {name} is not an OpenNMT-tf catalog model; use one of: {choices}"
    )


# auto_config() of OpenNMT-tf 2.32, class by class (each merged over its parent's).
SEQUENCE_TO_SEQUENCE_AUTO = {
    "params": {"beam_width": 4},
    "train": {"sample_buffer_size": -1, "max_step": 500000},
    "eval": {"length_bucket_width": 5},
    "score": {"length_bucket_width": 5},
    "infer": {"batch_size": 32, "length_bucket_width": 5},
}
TRANSFORMER_AUTO = {  # decay_params.model_dim: the model's num_units, filled in by auto_config
    "params": {
        "average_loss_in_time": True,
        "label_smoothing": 0.1,
        "optimizer": "LazyAdam",
        "optimizer_params": {"beta_1": 0.9, "beta_2": 0.998},
        "learning_rate": 2.0,
        "decay_type": "NoamDecay",
        "decay_params": {"warmup_steps": 8000},
    },
    "train": {
        "effective_batch_size": 25000,
        "batch_size": 3072,
        "batch_type": "tokens",
        "maximum_features_length": 100,
        "maximum_labels_length": 100,
        "keep_checkpoint_max": 8,
        "average_last_checkpoints": 8,
    },
}
SCALING_NMT_EN_DE_AUTO = {  # without train.batch_size 0 and save_checkpoint_steps (auto_config)
    "data": {"source_sequence_controls": {"end": True}},
    "params": {
        "optimizer": "Adam",
        "optimizer_params": {"beta_1": 0.9, "beta_2": 0.98, "epsilon": 1e-8},
        "learning_rate": 0.001,
        "decay_type": "InvSqrtDecay",
        "decay_params": {"warmup_steps": 4000, "initial_learning_rate": 1e-7},
    },
    "train": {
        "effective_batch_size": 458752,  # 3584 * 128
        "maximum_features_length": 175,
        "maximum_labels_length": 175,
        "keep_checkpoint_max": 10,
        "average_last_checkpoints": 10,
    },
}
SCALING_NMT_EN_FR_AUTO = {
    "params": {"learning_rate": 0.0007},
    "train": {"effective_batch_size": 655360},  # 5120 * 128
}


def auto_config(name: str, num_units: int) -> dict:
    """OpenNMT-tf 2.32's ``auto_config()`` of catalog model ``name`` (any replica count).

    Values as its code returns them (SequenceToSequence, then Transformer, then ScalingNmt*,
    each merged with OpenNMT-tf's ``merge_config``), with two exceptions: ScalingNmtEnDe's
    ``train.batch_size: 0`` (search for the largest batch that fits the GPU) is left out, so the
    Transformer value 3072 stays; and its ``train.save_checkpoint_steps: 1000`` is left out
    because OpenNMT-tf reads ``save_checkpoints_steps`` (the misspelled key has no effect there).
    """
    values = onmt_merge(SEQUENCE_TO_SEQUENCE_AUTO, TRANSFORMER_AUTO)
    decay = {"decay_params": {"model_dim": num_units, **TRANSFORMER_AUTO["params"]["decay_params"]}}
    values = onmt_merge(values, {"params": decay})
    if name.startswith("ScalingNmt"):
        values = onmt_merge(values, SCALING_NMT_EN_DE_AUTO)
    if name == "ScalingNmtEnFr":
        values = onmt_merge(values, SCALING_NMT_EN_FR_AUTO)
    return copy.deepcopy(values)  # callers may edit it; the tables above stay as written


def onmt_merge(a: dict, b: dict) -> dict:
    """OpenNMT-tf's ``merge_config(a, b)`` (without mutating ``a``): values of ``b`` win,
    mappings merge recursively except under ``REPLACED_WHOLE`` keys, which ``b`` replaces."""
    out = dict(a)
    for key, value in b.items():
        if isinstance(value, dict) and key not in REPLACED_WHOLE:
            out[key] = onmt_merge(out.get(key) or {}, value)
        else:
            out[key] = value
    return out


def known_keys(values: dict, cls=cfg.Config, prefix: str = "") -> tuple[dict, list[str]]:
    """Split ``values`` into what ``cls`` has keys for and the dotted names of the rest."""
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    kept, dropped = {}, []
    for key, value in values.items():
        if key not in fields:
            dropped.append(f"{prefix}{key}")
            continue
        hint = hints[key]
        if isinstance(value, dict) and dataclasses.is_dataclass(hint):
            kept[key], more = known_keys(value, hint, f"{prefix}{key}.")
            dropped += more
        else:
            kept[key] = value
    return kept, dropped


def resolver(model_type: str | None = None, auto: bool | None = None):
    """The ``resolve`` hook of ``config.load_config`` for a command line's --model_type and
    --auto_config (None: not given; auto_config then comes from the YAML, as OpenNMT-tf)."""

    def resolve(user: dict, origin: str) -> tuple[dict, str]:
        return resolve_dict(user, origin, model_type, auto)

    return resolve


def resolve_dict(user: dict, origin: str, model_type=None, auto=None) -> tuple[dict, str]:
    """Merged user dict -> the dict to validate (see the module docstring for the order)."""
    if model_type is None:
        model_type = remembered_model_type(user.get("model_dir"))
    model = cfg.merge(model_preset(model_type) if model_type else {}, user.get("model") or {})
    if model.get("share_embeddings") == "auto":  # OpenNMT-tf: same vocabulary file -> all
        data = user.get("data") or {}
        same = _same_file(data.get("source_vocabulary"), data.get("target_vocabulary"))
        model["share_embeddings"] = "all" if same else "target"
    resolved = dict(user, model=model)
    if auto is None:
        auto = user.get("auto_config", False) is True
    elif "auto_config" in user or auto:  # the flag wins; the saved config says what was done
        resolved["auto_config"] = auto
    if auto:
        name = model_type or "Transformer"
        num_units = model.get("num_units", cfg.ModelConfig().num_units)
        recommended, dropped = known_keys(auto_config(name, num_units))
        if dropped:
            logger.warning(
                "auto_config of %s: seqtrain has no equivalent of OpenNMT-tf's %s; not applied",
                name,
                ", ".join(dropped),
            )
        resolved = onmt_merge(recommended, resolved)
        origin = f"{origin} (with the auto_config of {name})"
    return resolved, origin


def _same_file(a, b) -> bool:
    return bool(a) and bool(b) and os.path.abspath(a) == os.path.abspath(b)


def remembered_model_type(model_dir) -> str | None:
    """The --model_type a previous ``train`` wrote into ``model_dir``, or None."""
    if not isinstance(model_dir, str) or not model_dir:
        return None
    path = os.path.join(model_dir, MODEL_TYPE_FILE)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        name = f.read().strip()
    logger.info("Model type %s (from %s)", name, path)
    return name


def remember_model_type(model_dir: str, name: str) -> None:
    """Write ``name`` to ``model_dir/model_type`` (atomically)."""
    os.makedirs(model_dir, exist_ok=True)
    path = os.path.join(model_dir, MODEL_TYPE_FILE)
    with open(f"{path}.tmp", "w", encoding="utf-8") as f:
        f.write(name + "\n")
    os.replace(f"{path}.tmp", path)
