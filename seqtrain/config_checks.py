"""Cross-field rules of a parsed ``Config`` (what single keys cannot express), the learning-rate
schedule's resolved arguments and the files a command needs: checked once, before anything runs.

``seqtrain.config`` parses and types each key; this module checks how they fit together.
"""

from __future__ import annotations

import dataclasses
import os

from seqtrain import opennmt_keys
from seqtrain.config import (
    EVAL_METRICS,
    REQUIRED,
    REQUIRED_FILES,
    SCHEDULES,
    SCORERS,
    Config,
    DataConfig,
    DecayParams,
    ModelConfig,
    ParamsConfig,
)
from seqtrain.errors import SeqtrainError


def check_model(m: ModelConfig, origin: str = "<config>") -> None:
    """Architecture rules (also checked by the model itself when built from code)."""
    if m.num_units % m.num_heads or m.num_units % 2:
        raise SeqtrainError(
            f"{origin}: model.num_units ({m.num_units}) must be even and divisible by "
            f"model.num_heads ({m.num_heads})"
        )
    if not -m.num_layers <= m.alignment_layer < m.num_layers:
        raise SeqtrainError(
            f"{origin}: model.alignment_layer = {m.alignment_layer} is out of range for "
            f"{m.num_layers} layers; use -1 (last) to {m.num_layers - 1}"
        )
    if m.alignment_heads > m.num_heads:
        raise SeqtrainError(
            f"{origin}: model.alignment_heads = {m.alignment_heads} exceeds model.num_heads "
            f"({m.num_heads}); use 1..{m.num_heads}, or 0 for all heads"
        )


def check(config: Config, origin: str = "<config>") -> None:
    """Cross-field rules that single keys cannot express."""
    check_model(config.model, origin)
    for scorer in config.eval.scorers:
        if scorer not in SCORERS:
            reason = opennmt_keys.value_rejection("eval.scorers", scorer)
            raise SeqtrainError(
                f"{origin}: {reason}"
                if reason
                else f"{origin}: eval.scorers has '{scorer}'; allowed: {', '.join(SCORERS)}"
            )
    decay_arguments(config.params, origin)
    optimizer = config.params.optimizer_params
    clips = [k for k in ("clipnorm", "global_clipnorm") if getattr(optimizer, k) is not None]
    if config.params.clip_gradients is not None:
        clips.append("clip_gradients")
    if len(clips) > 1:
        raise SeqtrainError(
            f"{origin}: set only one of params.optimizer_params.clipnorm, "
            f"params.optimizer_params.global_clipnorm and params.clip_gradients (got {clips})"
        )
    stopping = config.eval.early_stopping
    for key, metric in (
        ("eval.early_stopping.metric", stopping.metric if stopping else None),
        ("eval.export_on_best", config.eval.export_on_best),
    ):
        if metric is not None and metric not in EVAL_METRICS:
            raise SeqtrainError(f"{origin}: {key} = '{metric}'; allowed: {', '.join(EVAL_METRICS)}")
    if "aer" in (stopping.metric if stopping else None, config.eval.export_on_best):
        if not config.data.eval_alignments:
            raise SeqtrainError(f"{origin}: AER as a criterion needs data.eval_alignments (gold)")
    check_decoding(config.params, origin)
    if config.params.guided_alignment_type and not config.data.train_alignments:
        raise SeqtrainError(
            f"{origin}: params.guided_alignment_type is '{config.params.guided_alignment_type}' "
            "but data.train_alignments is not set; give a Pharaoh file or set it to null"
        )
    check_corpora(config.data, origin)


def check_corpora(data: DataConfig, origin: str = "<config>") -> None:
    """The training lists are parallel: one labels, alignments, example_weights file and one
    train_files_weights entry per train_features_file."""

    def size(value):
        return 1 if isinstance(value, str) else len(value or ())

    count = size(data.train_features_file)
    lists = ("train_labels_file", "train_alignments", "example_weights", "train_files_weights")
    for key in lists:
        value = getattr(data, key)
        if value is not None and count and size(value) != count:
            raise SeqtrainError(
                f"{origin}: data.{key} has {size(value)} entries but data.train_features_file "
                f"has {count}; give one per training corpus, in the same order"
            )
    weights = data.train_files_weights
    if weights is not None and (min(weights) < 0 or not sum(weights)):
        raise SeqtrainError(
            f"{origin}: data.train_files_weights = {list(weights)}; weights must be >= 0 and "
            "not all 0"
        )


def decay_arguments(params: ParamsConfig, origin: str = "<config>") -> dict:
    """The arguments of params.decay_type ({} without one); see ``schedule_arguments``."""
    if params.decay_type is None:
        return {}
    given = {
        f.name: getattr(params.decay_params, f.name)
        for f in dataclasses.fields(DecayParams)
        if getattr(params.decay_params, f.name) is not None
    }
    return schedule_arguments(params.decay_type, given, params.learning_rate, origin)


def schedule_arguments(decay_type: str, given: dict, learning_rate: float, origin: str) -> dict:
    """``given`` over SCHEDULES's defaults; the first argument defaults to ``learning_rate``
    (OpenNMT-tf fills it from params.learning_rate unless decay_params sets it)."""
    if decay_type not in SCHEDULES:
        raise SeqtrainError(
            f"{origin}: params.decay_type = {decay_type!r}; allowed: {', '.join(SCHEDULES)}"
        )
    accepted = SCHEDULES[decay_type]
    unknown = sorted(set(given) - set(accepted))
    missing = sorted(k for k, v in accepted.items() if v == REQUIRED and k not in given)
    if unknown or missing:
        raise SeqtrainError(
            f"{origin}: params.decay_params for {decay_type} takes {', '.join(accepted)} "
            f"(unknown: {', '.join(unknown) or 'none'}; missing: {', '.join(missing) or 'none'})"
        )
    first = next(iter(accepted))
    return {**accepted, first: learning_rate, **given}


def check_decoding(p: ParamsConfig, origin: str = "<config>") -> None:
    """Decoding keys that only make sense together."""
    if p.sampling_temperature <= 0:
        raise SeqtrainError(f"{origin}: params.sampling_temperature must be > 0 (1 = unchanged)")
    if p.sampling_topk != 1 and p.beam_width != 1:
        raise SeqtrainError(
            f"{origin}: params.sampling_topk = {p.sampling_topk} samples with greedy search only; "
            f"set params.beam_width to 1 (it is {p.beam_width}) or sampling_topk to 1"
        )


def check_files(config: Config, command: str, origin: str = "<config>") -> None:
    """Every file the command needs is set and readable (before anything is written)."""
    data = config.data
    for key in REQUIRED_FILES.get(command, ()):
        if not getattr(data, key):
            raise SeqtrainError(f"{origin}: data.{key} is required for '{command}'")
    for fld in dataclasses.fields(DataConfig):
        value = getattr(data, fld.name)
        paths = value if isinstance(value, tuple) else (value,)
        for path in paths:
            # A tokenization can also be a mapping or a JSON string (checked when it is built).
            if not fld.metadata.get("path") or not isinstance(path, str) or path.startswith("{"):
                continue
            if not os.path.isfile(path):
                raise SeqtrainError(
                    f"{origin}: data.{fld.name} = '{path}' does not exist (paths are relative "
                    f"to the directory seqtrain runs in: {os.getcwd()})"
                )
