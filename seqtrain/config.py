"""Typed run configuration: YAML files -> frozen dataclasses, parsed and validated once.

Sections and keys follow OpenNMT-tf where the feature is the same (``model_dir``, ``data``,
``params``, ``train``, ``eval``, ``infer``); ``model`` holds the Transformer's constructor
arguments. Every default is written once, here, next to a one-line comment;
``config/reference.yml`` lists them all and a test keeps the two identical.

Several files merge left to right (later files override earlier ones, dictionaries merge
recursively). Unknown keys, wrong types and out-of-range values raise ``SeqtrainError`` with the
file, the key, the allowed values and, for unknown keys, the closest valid key.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Literal, Optional, Union

import yaml

from seqtrain import yamltypes
from seqtrain.errors import SeqtrainError


def _meta(minimum=None, maximum=None, path=False):
    """Field metadata: numeric bounds (inclusive) and whether the value is a file path."""
    return {"min": minimum, "max": maximum, "path": path}


def _opt(default, **meta):
    return field(default=default, metadata=_meta(**meta))


TOKENIZER_TYPES = (
    "OpenNMTTokenizer",
    "SentencePieceTokenizer",
    "SpaceTokenizer",
    "CharacterTokenizer",
)


@dataclass(frozen=True)
class TokenizationConfig:
    type: Literal[TOKENIZER_TYPES] = "OpenNMTTokenizer"  # OpenNMT-tf tokenizer class name
    params: dict = field(default_factory=dict)  # its arguments (OpenNMTTokenizer: pyonmttok's)

    @staticmethod
    def normalize_yaml(value):
        """OpenNMT-tf's legacy form: a mapping without ``type`` is OpenNMTTokenizer's params."""
        if isinstance(value, dict) and "type" not in value:
            return {"type": "OpenNMTTokenizer", "params": value}
        return value


# A tokenization is a SentencePiece model path, a YAML file path, a JSON string or a mapping.
Tokenization = Optional[Union[str, TokenizationConfig]]
Files = Optional[tuple[str, ...]]  # one path, or a list of paths (several training corpora)


@dataclass(frozen=True)
class DataConfig:
    train_features_file: Files = _opt(None, path=True)  # training source text(s)
    train_labels_file: Files = _opt(None, path=True)  # training target text(s), one per source
    train_alignments: Files = _opt(None, path=True)  # Pharaoh i-j (source-target), one per corpus
    train_files_weights: Optional[tuple[float, ...]] = None  # corpus sampling weights, each
    # multiplied by its corpus size (OpenNMT-tf); null = in proportion to size
    example_weights: Files = _opt(None, path=True)  # one number per line scaling each example's
    # loss terms (CE and guided alignment), one file per corpus
    eval_features_file: Optional[str] = _opt(None, path=True)  # dev source text
    eval_labels_file: Optional[str] = _opt(None, path=True)  # dev target references
    eval_alignments: Optional[str] = _opt(None, path=True)  # dev gold links (sure/possible) for AER
    source_vocabulary: Optional[str] = _opt(None, path=True)  # one token per line, <blank> <s> </s>
    target_vocabulary: Optional[str] = _opt(None, path=True)  # one token per line, <blank> <s> </s>
    source_tokenization: Tokenization = _opt(None, path=True)  # SentencePiece model path, or an
    # OpenNMT-tf tokenizer config {type, params} (or a YAML file of it); null = spaces
    target_tokenization: Tokenization = _opt(None, path=True)  # as source_tokenization
    alignment_level: Literal["tokens", "words"] = "tokens"  # indices count model tokens or words

    def train_corpora(self) -> list[tuple]:
        """(features, labels, alignments or None, example weights or None) per training corpus."""

        def listed(paths):  # a plain string too (a DataConfig built in code)
            return [paths] if isinstance(paths, str) else list(paths or ())

        count = len(listed(self.train_features_file))

        def each(paths):
            return listed(paths) if paths else [None] * count

        features, labels = each(self.train_features_file), each(self.train_labels_file)

        return list(zip(features, labels, each(self.train_alignments), each(self.example_weights)))


SharingLevel = Literal["none", "source_target_input", "target", "all", "auto"]
PositionEncoder = Literal["SinusoidalPositionEncoder"]
SINUSOIDAL = "SinusoidalPositionEncoder"


@dataclass(frozen=True)
class ModelConfig:
    num_layers: int = _opt(6, minimum=1)  # encoder and decoder layers each
    num_units: int = _opt(512, minimum=1)  # model dimension d
    num_heads: int = _opt(8, minimum=1)  # attention heads (must divide num_units)
    ffn_inner_dim: int = _opt(2048, minimum=1)  # feed-forward inner size
    dropout: float = _opt(0.1, minimum=0.0, maximum=1.0)  # on embeddings and sublayer outputs
    attention_dropout: float = _opt(0.1, minimum=0.0, maximum=1.0)  # on attention probabilities
    ffn_dropout: float = _opt(0.1, minimum=0.0, maximum=1.0)  # after the FFN's ReLU
    share_embeddings: SharingLevel = "none"  # tied matrices (OpenNMT-tf levels):
    # source_target_input, target (input+output), all; auto: all if data.source_vocabulary and
    # data.target_vocabulary are one file, else target (resolved when the config is loaded)
    position_encoder_class: Optional[PositionEncoder] = SINUSOIDAL  # absolute positions added
    # to the embeddings (OpenNMT-tf's class name); null = none (the *Relative models)
    maximum_relative_position: Optional[int] = _opt(None, minimum=1)  # Shaw et al. 2018 clipped
    # relative keys/values in self-attention (OpenNMT-tf's *Relative models: 20); null = off
    pre_norm: bool = True  # layer norm before each sublayer (+ final norms), false: after it
    output_layer_bias: bool = True  # bias on the vocabulary projection (ScalingNmt*: false)
    alignment_layer: int = -1  # decoder layer whose cross-attention is guided (-1 = last)
    alignment_heads: int = _opt(1, minimum=0)  # guided heads: first k averaged, 0 = all heads
    alignment_row: Literal["predicting", "reading"] = "predicting"  # decoder step of target
    # token t: predicting (OpenNMT-tf: the step whose output is t) or reading (input is t)
    alignment_context: Literal["causal", "full"] = "causal"  # full: the guided layer also runs
    # without the future mask (Garg et al. 2019), for the alignment only


@dataclass(frozen=True)
class OptimizerParams:
    beta_1: float = _opt(0.9, minimum=0.0, maximum=1.0)  # first-moment decay
    beta_2: float = _opt(0.998, minimum=0.0, maximum=1.0)  # second-moment decay (recipe value)
    epsilon: float = _opt(1e-7, minimum=0.0)  # denominator fuzz
    clipnorm: Optional[float] = _opt(None, minimum=0.0)  # per-gradient norm clip (Keras); null off
    global_clipnorm: Optional[float] = _opt(None, minimum=0.0)  # global-norm clip; null off


@dataclass(frozen=True)
class DecayParams:
    """Arguments of params.decay_type; null = the schedule's default (SCHEDULES)."""

    scale: Optional[float] = None  # NoamDecay, RsqrtDecay, RNMTPlusDecay: factor (learning_rate)
    learning_rate: Optional[float] = None  # InvSqrtDecay: peak learning rate (learning_rate)
    eta_max: Optional[float] = None  # CosineAnnealing: maximum learning rate (learning_rate)
    model_dim: Optional[int] = _opt(None, minimum=1)  # NoamDecay: d in d^-0.5
    warmup_steps: Optional[int] = _opt(None, minimum=0)  # linear warm-up length (steps)
    initial_learning_rate: Optional[float] = None  # InvSqrtDecay: learning rate at step 0
    eta_min: Optional[float] = None  # CosineAnnealing: minimum learning rate
    max_step: Optional[int] = _opt(None, minimum=1)  # CosineAnnealing: last step of the cosine
    num_replicas: Optional[int] = _opt(None, minimum=1)  # RNMTPlusDecay: n (concurrent replicas)
    start_step: Optional[int] = _opt(None, minimum=0)  # RNMTPlusDecay: exponential decay start
    end_step: Optional[int] = _opt(None, minimum=1)  # RNMTPlusDecay: exponential decay end


DecayType = Literal["NoamDecay", "RsqrtDecay", "InvSqrtDecay", "CosineAnnealing", "RNMTPlusDecay"]
REQUIRED = "required"
# decay_type -> its arguments and their defaults (OpenNMT-tf's constructors; the first argument,
# null here, defaults to params.learning_rate). NoamDecay's 512/8000 are seqtrain's defaults
# (the Transformer recipe); OpenNMT-tf requires them.
SCHEDULES = {
    "NoamDecay": {"scale": None, "model_dim": 512, "warmup_steps": 8000},
    "RsqrtDecay": {"scale": None, "warmup_steps": REQUIRED},
    "InvSqrtDecay": {"learning_rate": None, "warmup_steps": REQUIRED, "initial_learning_rate": 0.0},
    "CosineAnnealing": {"eta_max": None, "eta_min": 0.0, "max_step": 1000000, "warmup_steps": None},
    "RNMTPlusDecay": {
        "scale": None,
        "num_replicas": REQUIRED,
        "warmup_steps": 500,
        "start_step": 600000,
        "end_step": 1200000,
    },
}


@dataclass(frozen=True)
class ParamsConfig:
    optimizer: Literal["LazyAdam", "Adam"] = "LazyAdam"  # LazyAdam updates only seen embedding rows
    optimizer_params: OptimizerParams = field(default_factory=OptimizerParams)  # Adam betas, eps
    learning_rate: float = _opt(2.0, minimum=0.0)  # constant LR, or the scale of the decay
    decay_type: Optional[DecayType] = "NoamDecay"  # null = constant LR; DecayType, SCHEDULES
    decay_params: DecayParams = field(default_factory=DecayParams)  # arguments of decay_type
    start_decay_steps: int = _opt(0, minimum=0)  # steps before the schedule starts counting
    decay_step_duration: int = _opt(1, minimum=1)  # optimizer steps per schedule step
    minimum_learning_rate: float = _opt(0.0, minimum=0.0)  # floor of the decayed LR
    label_smoothing: float = _opt(0.1, minimum=0.0, maximum=1.0)  # epsilon, training only
    average_loss_in_time: Optional[bool] = None  # normalize by tokens (true) or by sentences
    # (false); null = true when train.batch_type is tokens (OpenNMT-tf)
    dropout: Optional[float] = _opt(None, minimum=0.0, maximum=1.0)  # overrides the 3 model
    # dropouts (OpenNMT-tf); null = keep them
    guided_alignment_type: Optional[Literal["ce", "mse"]] = None  # null = no guided alignment
    guided_alignment_weight: float = _opt(1.0, minimum=0.0)  # weight of the alignment cost
    guided_alignment_normalization: Literal["opennmt", "aligned_tokens"] = "opennmt"  # reference
    # (cost added to the summed CE) or aligned_tokens (per aligned token, split-invariant)
    clip_gradients: Optional[float] = _opt(None, minimum=0.0)  # global-norm clip, null = off
    beam_width: int = _opt(4, minimum=1)  # 1 = greedy decoding
    length_penalty: float = _opt(0.6, minimum=0.0)  # GNMT alpha for beam search (0 = off)
    maximum_decoding_length: int = _opt(250, minimum=1)  # hard cap on output tokens
    maximum_decoding_length_factor: Optional[float] = _opt(2.0, minimum=0.0)  # relative cap:
    # at most factor * S + offset output tokens for S source tokens (Marian's
    # --max-length-factor, fairseq's --max-len-a/b); null = maximum_decoding_length only
    maximum_decoding_length_offset: int = _opt(10, minimum=0)  # added to factor * S
    alignment_extraction: Literal["argmax", "intersection"] = "intersection"  # hard links: only
    # mutual best (source, target) pairs, or argmax: every target token's best source (OpenNMT-tf)
    replace_unknown_target: bool = False  # each output <unk> -> the source token it aligns to
    coverage_penalty: float = _opt(0.0, minimum=0.0)  # GNMT beta, beam search only (0 = off)
    minimum_decoding_length: int = _opt(0, minimum=0)  # no </s> before this many output tokens
    sampling_topk: int = _opt(1, minimum=0)  # 1 = argmax; k: sample among the k best; 0 = all
    sampling_temperature: float = _opt(1.0, minimum=0.0)  # sampling: logits / temperature (> 0)


@dataclass(frozen=True)
class TrainConfig:
    batch_size: int = _opt(3072, minimum=1)  # per replica, in batch_type units
    batch_type: Literal["tokens", "examples"] = "tokens"  # tokens: padded size of longest side
    effective_batch_size: Optional[int] = _opt(None, minimum=1)  # accumulate up to this, all reps
    maximum_features_length: Optional[int] = _opt(100, minimum=1)  # drop longer source lines
    maximum_labels_length: Optional[int] = _opt(100, minimum=1)  # drop longer target lines
    length_bucket_width: int = _opt(1, minimum=0)  # bucket by target length; 0 = no buckets
    sample_buffer_size: int = _opt(500000, minimum=-1)  # shuffle buffer, -1 = whole corpus
    save_checkpoints_steps: int = _opt(5000, minimum=1)  # checkpoint period (steps)
    keep_checkpoint_max: int = _opt(8, minimum=1)  # checkpoints kept on disk
    average_last_checkpoints: int = _opt(0, minimum=0)  # at the end, average the last N
    # checkpoints into model_dir/avg (keeps at least N); 0 = off
    moving_average_decay: Optional[float] = _opt(None, minimum=0.0, maximum=1.0)  # exponential
    # moving average of the weights (e.g. 0.9999), used by eval, export, checkpoints; null = off
    save_summary_steps: int = _opt(100, minimum=1)  # log line / TensorBoard period (steps)
    max_step: Optional[int] = _opt(500000, minimum=1)  # stop after this many updates
    single_pass: bool = False  # one pass over the training data, then stop
    seed: int = 1234  # shuffling, initialization and dropout seed
    mixed_precision: bool = False  # GPU: float16 + dynamic loss scaling; CPU: bfloat16
    jit_compile: bool = False  # XLA-compile the forward/backward (fixed bucket shapes only)
    worker_timeout: float = _opt(600.0, minimum=1.0)  # multi-worker: seconds a collective waits
    # for the other workers before the run stops with an error (a dead or hung worker)


# seqtrain export --format and eval.export_format (OpenNMT-tf's names).
ExportFormat = Literal[
    "saved_model",
    "ctranslate2",
    "ctranslate2_int8",
    "ctranslate2_int16",
    "ctranslate2_float16",
    "ctranslate2_int8_float16",
]


@dataclass(frozen=True)
class EarlyStopping:
    metric: str = "loss"  # loss, perplexity, a scorer (SCORERS), aer, precision or recall
    min_improvement: float = 0.0  # smallest change that counts as better
    steps: int = _opt(4, minimum=1)  # evaluations without improvement before stopping


@dataclass(frozen=True)
class EvalConfig:
    steps: Optional[int] = _opt(5000, minimum=1)  # evaluate every N steps, null = never
    batch_size: int = _opt(32, minimum=1)  # per evaluation batch, in batch_type units
    batch_type: Literal["examples", "tokens"] = "examples"  # tokens: B x longest source
    length_bucket_width: int = _opt(5, minimum=0)  # batch similar source lengths; 0 = file order
    scorers: tuple[str, ...] = ("bleu",)  # bleu, chrf, chrf++, ter, wer on detokenized text
    early_stopping: Optional[EarlyStopping] = None  # {metric, min_improvement, steps}
    export_on_best: Optional[str] = None  # metric whose best value exports a SavedModel
    export_format: ExportFormat = "saved_model"  # what export_on_best writes: a SavedModel or a
    # CTranslate2 model (ctranslate2 = float32, or the quantization named after it)
    alignment_images: int = _opt(3, minimum=0)  # first dev pairs drawn to TensorBoard, 0 = off
    save_eval_predictions: bool = False  # dev translations to model_dir/eval/predictions.txt.STEP
    max_exports_to_keep: Optional[int] = _opt(5, minimum=1)  # export_on_best exports kept
    # (model_dir/export/STEP, oldest removed first); null = all


@dataclass(frozen=True)
class InferConfig:
    batch_size: int = _opt(32, minimum=1)  # per decoding batch, in batch_type units
    batch_type: Literal["examples", "tokens"] = "examples"  # tokens: B x longest source
    length_bucket_width: int = _opt(5, minimum=0)  # batch similar source lengths; 0 = file order
    with_alignments: Optional[Literal["hard", "soft"]] = None  # print alignments after |||
    with_scores: bool = False  # print the hypothesis score first
    n_best: int = _opt(1, minimum=1)  # hypotheses printed per input


@dataclass(frozen=True)
class ScoreConfig:
    batch_size: int = _opt(64, minimum=1)  # pairs (or tokens) per scoring batch
    batch_type: Literal["examples", "tokens"] = "examples"  # unit of batch_size
    length_bucket_width: Optional[int] = _opt(None, minimum=1)  # batches hold pairs of one
    # length bucket of this width (pairs are always length-sorted); null = no bucket boundaries
    with_alignments: Optional[Literal["hard", "soft"]] = None  # print alignments after |||
    with_token_level: bool = False  # print each target token's negative log-likelihood


@dataclass(frozen=True)
class Config:
    model_dir: str = _opt("", path=True)  # checkpoints, logs, caches (required)
    auto_config: bool = False  # merge the model's recommended settings under the user's keys
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    params: ParamsConfig = field(default_factory=ParamsConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    infer: InferConfig = field(default_factory=InferConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)


SCORERS = ("bleu", "chrf", "chrf++", "ter", "wer")
EVAL_METRICS = ("loss", "perplexity", *SCORERS, "aer", "precision", "recall")
# Replaced as a whole, not merged key by key, when a later file sets them (OpenNMT-tf's rule).
OVERRIDE_KEYS = ("optimizer_params", "decay_params")

# Files each command needs, checked before anything is written to model_dir.
REQUIRED_FILES = {
    "train": ("train_features_file", "train_labels_file", "source_vocabulary", "target_vocabulary"),
    "infer": ("source_vocabulary", "target_vocabulary"),
}


def load_config(paths: list[str], overrides: Optional[dict] = None, resolve=None) -> Config:
    """Read, merge (left to right) and validate YAML files; ``overrides`` merge last.

    ``resolve(merged, origin) -> (dict, origin)`` rewrites the merged user dict before it is
    validated (``seqtrain.presets``: --model_type and auto_config values under the user's keys).
    """
    merged: dict = {}
    origin = "<config>"
    for path in paths:
        try:
            with open(path, encoding="utf-8") as f:
                content = yaml.safe_load(f)
        except OSError as e:
            raise SeqtrainError(f"{path}: cannot read the configuration: {e.strerror}") from e
        except yaml.YAMLError as e:
            raise SeqtrainError(f"{path}: invalid YAML: {_one_line(e)}") from e
        if content is None:
            content = {}
        if not isinstance(content, dict):
            raise SeqtrainError(f"{path}: the top level must be a mapping of sections")
        # Check each file alone first so errors name the file that holds the bad key.
        # Paths stay relative to the working directory, as in OpenNMT-tf.
        build(content, path)
        merged = merge(merged, content)
        origin = path if origin == "<config>" else f"{origin} + {path}"
    if overrides:
        merged = merge(merged, overrides)
    if resolve is not None:
        merged, origin = resolve(merged, origin)
    config = build(merged, origin)
    if not config.model_dir:
        raise SeqtrainError(f"{origin}: model_dir is required (where checkpoints and logs go)")
    return config


def merge(a: dict, b: dict) -> dict:
    """Recursive dict merge: values of ``b`` win, nested mappings merge (but OVERRIDE_KEYS)."""
    out = dict(a)
    for key, value in b.items():
        if key in OVERRIDE_KEYS:
            out[key] = value
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def build(raw: dict, origin: str) -> Config:
    """Validate ``raw`` against ``Config`` (model_dir is checked after merging); OpenNMT-tf's
    aliases are renamed and its derived defaults resolved (average_loss_in_time, dropout)."""
    config = yamltypes.build_dataclass(Config, _aliases(raw, origin), origin, "")
    params = config.params
    if params.average_loss_in_time is None:
        tokens = config.train.batch_type == "tokens"
        params = dataclasses.replace(params, average_loss_in_time=tokens)
    model = config.model
    if params.dropout is not None:
        d = params.dropout
        model = dataclasses.replace(model, dropout=d, attention_dropout=d, ffn_dropout=d)
    scorers = tuple(s.lower() for s in config.eval.scorers)  # case-insensitive, as OpenNMT-tf
    evaluation = dataclasses.replace(config.eval, scorers=scorers)
    return dataclasses.replace(config, params=params, model=model, eval=evaluation)


def _aliases(raw: dict, origin: str) -> dict:
    """eval.external_evaluators (OpenNMT-tf's older name) -> eval.scorers."""
    section = raw.get("eval") if isinstance(raw, dict) else None
    if not isinstance(section, dict) or "external_evaluators" not in section:
        return raw
    if "scorers" in section:
        raise SeqtrainError(
            f"{origin}: eval.external_evaluators is OpenNMT-tf's older name of eval.scorers; "
            "set only eval.scorers"
        )
    section = dict(section)
    section["scorers"] = section.pop("external_evaluators")
    return {**raw, "eval": section}


def tokenization_from_mapping(mapping: dict, where: str) -> TokenizationConfig:
    """A tokenization mapping read from a YAML file or a JSON string, validated as in a config."""
    return yamltypes.convert(TokenizationConfig, mapping, None, where, "tokenization")


def to_dict(config: Config) -> dict:
    """Plain nested dict (tuples as lists) for YAML output."""

    def plain(value):
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, tuple):
            return [plain(v) for v in value]
        return value

    return plain(config)


def save_config(config: Config, path: str) -> None:
    """Write the resolved configuration (every key, defaults included) atomically."""
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        yaml.safe_dump(to_dict(config), f, sort_keys=False)
    os.replace(tmp, path)


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())
