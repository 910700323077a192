"""The ``seqtrain`` argument parser: subcommands, their flags and help texts.

Kept apart from ``seqtrain.cli`` (which runs the commands) so that each stays short; the
handlers are passed in, so this module imports no command code (no TensorFlow at import).
"""

from __future__ import annotations

import argparse
import typing

from seqtrain.align_words import SYMMETRIZATIONS  # no TensorFlow, no eflomal at import
from seqtrain.config import ExportFormat  # yaml only


def add_config(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument(
        "--config",
        nargs="+",
        required=required,
        metavar="YML",
        help="one or more YAML files, merged left to right",
    )
    parser.add_argument("--model_dir", help="overrides model_dir (as OpenNMT-tf)")
    parser.add_argument(
        "--model_type",
        metavar="NAME",
        help="OpenNMT-tf catalog Transformer (TransformerBase, TransformerBig, TransformerTiny, "
        "*SharedEmbeddings, *Relative, ScalingNmtEnDe/EnFr): its model keys, under the "
        "config's model: section; train remembers it in model_dir",
    )
    parser.add_argument(
        "--auto_config",
        action="store_true",
        default=None,
        help="merge the model's recommended params/train/eval/infer values under the config's "
        "(as OpenNMT-tf; default: the config's auto_config key)",
    )


def build_parser(handlers, description: str) -> argparse.ArgumentParser:
    """handlers: the module holding the ``cmd_*`` functions (``seqtrain.cli``); each subcommand
    stores its handler as ``args.func``."""
    parser = argparse.ArgumentParser(prog="seqtrain", description=description)
    parser.add_argument("--debug", action="store_true", help="show tracebacks of user errors")
    parser.add_argument("--log_level", default="INFO", help="DEBUG, INFO, WARNING")
    sub = parser.add_subparsers(dest="command", required=True)
    _training_commands(sub, handlers)
    _decoding_commands(sub, handlers)
    _model_file_commands(sub, handlers)
    _alignment_tools(sub, handlers)
    return parser


def _training_commands(sub, handlers) -> None:
    """train, check-data, build-vocab, eval."""
    p = sub.add_parser("train", help="train a model")
    add_config(p)
    p.add_argument(
        "--num-devices", "--num_gpus", type=int, default=1, help="replicas on this machine"
    )
    p.add_argument(
        "--checkpoint_path",
        help="start from this model (prefix or directory): weights only, step 0, unless "
        "--continue_from_checkpoint; ignored when model_dir holds a checkpoint (resume)",
    )
    p.add_argument(
        "--continue_from_checkpoint",
        action="store_true",
        help="also restore the optimizer state and step of --checkpoint_path",
    )
    p.add_argument("--seed", type=int, help="sets train.seed")
    p.add_argument("--mixed_precision", action="store_true", help="sets train.mixed_precision")
    p.add_argument("--jit_compile", action="store_true", help="sets train.jit_compile")
    p.add_argument("--with_eval", action="store_true", help="require the evaluation settings")
    p.set_defaults(func=handlers.cmd_train)

    p = sub.add_parser("check-data", help="validate text, vocabularies and alignment files")
    add_config(p)
    p.set_defaults(func=handlers.cmd_check_data)

    p = sub.add_parser("build-vocab", help="build a vocabulary or train a SentencePiece model")
    p.add_argument("data", nargs="+", help="text files")
    p.add_argument("--save_vocab", required=True, help="output vocab (or SentencePiece prefix)")
    p.add_argument("--size", type=int, default=None, help="maximum vocabulary size")
    p.add_argument("--min_frequency", type=int, default=1)
    p.add_argument(
        "--tokenizer",
        help="applied before counting: a SentencePiece model, or a tokenization config as "
        "data.source_tokenization takes (YAML file or JSON, e.g. an OpenNMTTokenizer's)",
    )
    p.add_argument("--sentencepiece", action="store_true", help="train a SentencePiece model")
    p.add_argument("--model_type", default="unigram", choices=["unigram", "bpe"])
    p.add_argument("--character_coverage", type=float, default=1.0)
    p.set_defaults(func=handlers.cmd_build_vocab)

    p = sub.add_parser("eval", help="loss, BLEU/chrF and AER of a checkpoint")
    add_config(p)
    p.add_argument("--features_file")
    p.add_argument("--labels_file")
    p.add_argument("--alignments", help="gold Pharaoh file (sure i-j, possible ipj)")
    p.add_argument("--checkpoint_path")
    p.set_defaults(func=handlers.cmd_eval)


def _decoding_commands(sub, handlers) -> None:
    """translate (infer), score, plot-alignment."""
    p = sub.add_parser(
        "translate", aliases=["infer"], help="translate a file, optionally with alignments"
    )
    add_config(p, required=False)
    p.add_argument("--features_file", required=True)
    p.add_argument("--predictions_file", help="default: standard output")
    p.add_argument("--checkpoint_path")
    p.add_argument("--engine", default="tensorflow", choices=["tensorflow", "ctranslate2"])
    p.add_argument("--with_alignments", choices=["hard", "soft"])
    p.add_argument("--with_scores", action="store_true")
    p.add_argument("--n_best", type=int)
    p.add_argument("--inter_threads", type=int, help="ctranslate2: batches decoded in parallel "
                   "(default: the number of CPUs)")  # fmt: skip
    p.add_argument("--intra_threads", type=int, help="ctranslate2: threads per batch (default 1)")
    p.set_defaults(func=handlers.cmd_translate)

    p = sub.add_parser("score", help="score and align given translations (forced decoding)")
    add_config(p)
    p.add_argument("--features_file", required=True, help="source lines")
    p.add_argument("--predictions_file", required=True, help="their translations, one per line")
    p.add_argument("--output_file", help="default: standard output")
    p.add_argument("--checkpoint_path")
    p.add_argument("--with_alignments", choices=["hard", "soft"])
    p.add_argument("--with_token_level", action="store_true", help="per-token scores too")
    p.add_argument(
        "--reverse_config",
        nargs="+",
        metavar="YML",
        help="a model trained in the other direction: average the two guided heads "
        "(needs --with_alignments)",
    )
    p.add_argument("--reverse_checkpoint_path", help="default: the reverse model_dir's newest")
    p.set_defaults(func=handlers.cmd_score)

    p = sub.add_parser("plot-alignment", help="heatmaps of the guided head, one PNG per pair")
    add_config(p)
    p.add_argument("--features_file", help="default: data.eval_features_file")
    p.add_argument("--labels_file", help="default: data.eval_labels_file")
    p.add_argument("--alignments", help="gold Pharaoh file (default with the dev set: eval's)")
    p.add_argument("--first", type=int, default=10, help="first N lines (0 = all)")
    p.add_argument("--output_dir", required=True, help="OUTPUT_DIR/0001.png … (line numbers)")
    p.add_argument("--checkpoint_path")
    p.set_defaults(func=handlers.cmd_plot_alignment)


def _model_file_commands(sub, handlers) -> None:
    """Commands that write model files: average-checkpoints, export, import-opennmt,
    update-vocab."""
    p = sub.add_parser(
        "average-checkpoints",
        aliases=["average_checkpoints"],
        help="average the last checkpoints' weights",
    )
    add_config(p, required=False)
    p.add_argument("--output_dir", help="default: MODEL_DIR/avg")
    p.add_argument("--max_count", type=int, default=8)
    p.set_defaults(func=handlers.cmd_average)

    p = sub.add_parser("export", help="write a SavedModel or a CTranslate2 model")
    add_config(p)
    p.add_argument("--output_dir", "--export_dir", required=True)
    p.add_argument(
        "--format", "--export_format", default="saved_model", choices=typing.get_args(ExportFormat)
    )
    p.add_argument("--checkpoint_path")
    p.set_defaults(func=handlers.cmd_export)

    p = sub.add_parser("import-opennmt", help="convert an OpenNMT-tf Transformer checkpoint")
    add_config(p)
    p.add_argument("--checkpoint", required=True, help="OpenNMT-tf model_dir or checkpoint prefix")
    p.add_argument("--output_dir", required=True, help="new model_dir for the seqtrain checkpoint")
    p.add_argument("--weights_only", action="store_true", help="no Adam moments, start at step 0")
    p.set_defaults(func=handlers.cmd_import_opennmt)

    p = sub.add_parser(
        "update-vocab", aliases=["update_vocab"], help="a checkpoint for new vocabularies"
    )
    add_config(p)
    p.add_argument("--output_dir", required=True, help="where the updated checkpoint goes")
    p.add_argument("--src_vocab", help="the new source vocabulary")
    p.add_argument("--tgt_vocab", help="the new target vocabulary")
    p.add_argument("--checkpoint_path", help="default: the newest checkpoint of model_dir")
    p.set_defaults(func=handlers.cmd_update_vocab)


def _alignment_tools(sub, handlers) -> None:
    """Tools without a model: aer, log, align."""
    p = sub.add_parser("aer", help="alignment error rate of a Pharaoh file against a gold one")
    p.add_argument("--reference", required=True, help="gold: sure i-j, possible ipj or i?j")
    p.add_argument("--hypothesis", required=True, help="Pharaoh i-j links")
    p.add_argument("--one-based", action="store_true", help="the reference indices start at 1")
    p.add_argument("--reverse", action="store_true", help="swap i and j of the hypothesis")
    p.set_defaults(func=handlers.cmd_aer)

    p = sub.add_parser("log", help="table (and plot) of a run's metrics")
    p.add_argument("path", help="model_dir, metrics.jsonl or a captured log")
    p.add_argument("--plot", metavar="PNG", help="draw the curves (needs matplotlib)")
    p.set_defaults(func=handlers.cmd_log)

    p = sub.add_parser("align", help="word-align parallel text with eflomal (Pharaoh out)")
    add_config(p, required=False)
    p.add_argument("--source")
    p.add_argument("--target")
    p.add_argument("--output")
    p.add_argument("--symmetrize", default="grow-diag-final-and", choices=SYMMETRIZATIONS)
    p.add_argument("--lowercase", action="store_true")
    p.add_argument("--extra-source", help="more source text for the statistics only")
    p.add_argument("--extra-target", help="more target text for the statistics only")
    p.add_argument("--force", action="store_true", help="overwrite an existing output")
    p.set_defaults(func=handlers.cmd_align)
