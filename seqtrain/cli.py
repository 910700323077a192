"""Command-line front end: argparse, logging set-up and user-error handling, nothing else.

Every subcommand imports its module lazily so that `seqtrain aer` or `seqtrain log` start in a
fraction of a second without importing TensorFlow. A ``SeqtrainError`` anywhere becomes one line
on stderr and exit status 2 (``--debug`` shows the traceback); a training run stopped by
SIGINT/SIGTERM saves a checkpoint, says so in one line and exits with 128 + the signal number.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import typing

from seqtrain import opennmt_keys
from seqtrain.align_words import SYMMETRIZATIONS  # no TensorFlow, no eflomal at import
from seqtrain.config import ExportFormat  # yaml only
from seqtrain.errors import Interrupted, SeqtrainError

logger = logging.getLogger("seqtrain")


def _add_config(parser: argparse.ArgumentParser, required: bool = True) -> None:
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


def _overrides(args) -> dict:
    """Configuration values given as flags (OpenNMT-tf's --model_dir, --seed, --mixed_precision,
    --jit_compile); they win over every --config file."""
    out = {"model_dir": args.model_dir} if getattr(args, "model_dir", None) else {}
    train = {"seed": getattr(args, "seed", None)}
    for flag in ("mixed_precision", "jit_compile"):
        train[flag] = True if getattr(args, flag, False) else None
    train = {k: v for k, v in train.items() if v is not None}
    return {**out, "train": train} if train else out


def _load(args, command: str | None = None):
    from seqtrain import config as cfg
    from seqtrain import presets

    resolve = presets.resolver(args.model_type, args.auto_config)
    config = cfg.load_config(args.config, _overrides(args), resolve=resolve)
    origin = " + ".join(args.config)
    cfg.check(config, origin)
    if command:
        cfg.check_files(config, command, origin)
        from seqtrain import tokenizers  # no TensorFlow: bad tokenizer options fail instantly

        for side in ("source", "target"):
            key = f"{side}_tokenization"
            tokenizers.make_tokenizer(getattr(config.data, key), f"{origin}: data.{key}")
    return config


def cmd_train(args) -> None:
    config = _load(args, "train")  # before importing TensorFlow: config errors stay instant
    if args.with_eval and not (config.data.eval_features_file and config.eval.steps):
        raise SeqtrainError(
            "--with_eval: set data.eval_features_file and eval.steps (seqtrain evaluates "
            "whenever they are set, with or without the flag)"
        )
    from seqtrain import presets, trainer

    if args.model_type:  # later commands on this model_dir may omit --model_type
        presets.remember_model_type(config.model_dir, args.model_type)

    trainer.train(
        config,
        num_devices=args.num_devices,
        checkpoint_path=args.checkpoint_path,
        continue_from_checkpoint=args.continue_from_checkpoint,
    )


def cmd_check_data(args) -> None:
    from seqtrain import alignment, corpus

    config = _load(args, "train")
    summaries = alignment.check_config_data(config)
    for summary, files in zip(summaries, config.data.train_corpora()):
        if files[3]:  # example weights: one valid number per line of the corpus
            corpus.read_example_weights(files[3], files[0], summary.lines)
    for summary in summaries:
        print(alignment.format_summary(summary))


def cmd_build_vocab(args) -> None:
    from seqtrain import tokenizers, vocab

    if args.sentencepiece:
        model, vocab_path = vocab.train_sentencepiece(
            args.data,
            args.save_vocab,
            vocab_size=args.size,
            model_type=args.model_type,
            character_coverage=args.character_coverage,
        )
        print(f"SentencePiece model: {model}\nvocabulary: {vocab_path}")
    else:
        tokenizer = tokenizers.make_tokenizer(args.tokenizer, "--tokenizer")
        vocab.build_vocab(
            args.data,
            args.save_vocab,
            size=args.size,
            min_frequency=args.min_frequency,
            tokenizer=tokenizer,
        )
        print(f"vocabulary: {args.save_vocab}")


def cmd_eval(args) -> None:
    config = _load(args, "infer")
    from seqtrain import evaluate

    metrics = evaluate.evaluate_command(
        config,
        features_file=args.features_file,
        labels_file=args.labels_file,
        alignments_file=args.alignments,
        checkpoint_path=args.checkpoint_path,
    )
    print(evaluate.format_metrics(metrics))


def cmd_translate(args) -> None:
    if args.engine == "ctranslate2":
        _translate_ctranslate2(args)
        return
    if args.inter_threads is not None or args.intra_threads is not None:
        raise SeqtrainError(
            "--inter_threads / --intra_threads set CTranslate2's threads: give them with "
            "--engine ctranslate2 --model_dir EXPORT, or leave them out"
        )
    if not args.config:  # --model_dir then overrides the config's, as OpenNMT-tf
        raise SeqtrainError(
            "give --config (TensorFlow checkpoints), or --engine ctranslate2 --model_dir EXPORT"
        )
    config = _load(args, "infer")
    from seqtrain import translate

    translate.translate_command(
        config,
        features_file=args.features_file,
        predictions_file=args.predictions_file,
        checkpoint_path=args.checkpoint_path,
        with_alignments=args.with_alignments,
        with_scores=args.with_scores,
        n_best=args.n_best,
    )


def cmd_score(args) -> None:
    config = _load(args, "infer")
    from seqtrain import score

    score.score_command(
        config,
        features_file=args.features_file,
        predictions_file=args.predictions_file,
        output_file=args.output_file,
        checkpoint_path=args.checkpoint_path,
        with_alignments=args.with_alignments,
        with_token_level=args.with_token_level,
    )


def _translate_ctranslate2(args) -> None:
    if not args.model_dir or args.checkpoint_path:
        raise SeqtrainError(
            "--engine ctranslate2 needs --model_dir EXPORT (from seqtrain export --format "
            "ctranslate2…), not --checkpoint_path"
        )
    if (args.inter_threads is not None and args.inter_threads < 1) or (
        args.intra_threads is not None and args.intra_threads < 0
    ):
        raise SeqtrainError(
            "--inter_threads takes a number >= 1 and --intra_threads >= 0 (0: CTranslate2's "
            f"default), not {args.inter_threads} / {args.intra_threads}"
        )
    overrides = _load(args) if args.config else None  # its params and infer sections win
    from seqtrain import ctranslate2_translate

    ctranslate2_translate.translate_command(
        args.model_dir,
        features_file=args.features_file,
        predictions_file=args.predictions_file,
        with_alignments=args.with_alignments,
        with_scores=args.with_scores,
        n_best=args.n_best,
        overrides=overrides,
        inter_threads=args.inter_threads,
        intra_threads=1 if args.intra_threads is None else args.intra_threads,
    )


def cmd_plot_alignment(args) -> None:
    config = _load(args, "infer")
    from seqtrain import alignment_plot

    paths = alignment_plot.plot_command(
        config,
        args.output_dir,
        features_file=args.features_file,
        labels_file=args.labels_file,
        alignments_file=args.alignments,
        first=args.first or None,
        checkpoint_path=args.checkpoint_path,
    )
    print(f"{len(paths)} pictures in {args.output_dir}")


def cmd_average(args) -> None:
    if not (args.config or args.model_dir):
        raise SeqtrainError("give --config or --model_dir (whose config.yml is then read)")
    args.config = args.config or [os.path.join(args.model_dir, "config.yml")]
    config = _load(args, "infer")
    if args.model_dir:  # as onmt-main's --model_dir: overrides the configuration's
        config = dataclasses.replace(config, model_dir=args.model_dir)
    from seqtrain import checkpoints

    path = checkpoints.average_checkpoints(config, args.output_dir, max_count=args.max_count)
    print(f"averaged checkpoint: {path}")


def cmd_export(args) -> None:
    config = _load(args, "infer")
    from seqtrain import export

    path = export.export(
        config, args.output_dir, checkpoint_path=args.checkpoint_path, export_format=args.format
    )
    print(f"{'SavedModel' if args.format == 'saved_model' else 'CTranslate2 model'}: {path}")


def cmd_import_opennmt(args) -> None:
    config = _load(args, "infer")
    from seqtrain import import_opennmt

    path = import_opennmt.import_checkpoint(
        config, args.checkpoint, args.output_dir, weights_only=args.weights_only
    )
    print(f"seqtrain checkpoint: {path}")


def cmd_update_vocab(args) -> None:
    config = _load(args)
    if not (args.src_vocab or args.tgt_vocab):
        raise SeqtrainError("give --src_vocab and/or --tgt_vocab (the new vocabularies)")
    from seqtrain import vocab_update

    path = vocab_update.update_vocab(
        config, args.output_dir, args.src_vocab, args.tgt_vocab, args.checkpoint_path
    )
    print(f"updated checkpoint: {path}")


def cmd_aer(args) -> None:
    from seqtrain import aer

    scores = aer.aer_files(
        args.reference,
        args.hypothesis,
        reference_one_based=args.one_based,
        reverse=args.reverse,
    )
    print(aer.format_scores(scores))


def cmd_log(args) -> None:
    from seqtrain import runlog

    print(runlog.table(args.path))
    if args.plot:
        runlog.plot(args.path, args.plot)
        print(f"plot: {args.plot}")


def cmd_align(args) -> None:
    from seqtrain import align_words

    if args.config:
        if args.source or args.target or args.output:
            raise SeqtrainError("give --config or --source/--target/--output, not both")
        config = _load(args)
        align_words.align_config(
            config,
            force=args.force,
            symmetrize=args.symmetrize,
            lowercase=args.lowercase,
            extra_source=args.extra_source,
            extra_target=args.extra_target,
        )
        return
    if not (args.source and args.target and args.output):
        raise SeqtrainError("give --config, or --source, --target and --output")
    align_words.align_files(
        args.source,
        args.target,
        args.output,
        symmetrize=args.symmetrize,
        lowercase=args.lowercase,
        extra_source=args.extra_source,
        extra_target=args.extra_target,
        force=args.force,
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="seqtrain", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks of user errors")
    parser.add_argument("--log_level", default="INFO", help="DEBUG, INFO, WARNING")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model")
    _add_config(p)
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
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("check-data", help="validate text, vocabularies and alignment files")
    _add_config(p)
    p.set_defaults(func=cmd_check_data)

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
    p.set_defaults(func=cmd_build_vocab)

    p = sub.add_parser("eval", help="loss, BLEU/chrF and AER of a checkpoint")
    _add_config(p)
    p.add_argument("--features_file")
    p.add_argument("--labels_file")
    p.add_argument("--alignments", help="gold Pharaoh file (sure i-j, possible ipj)")
    p.add_argument("--checkpoint_path")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser(
        "translate", aliases=["infer"], help="translate a file, optionally with alignments"
    )
    _add_config(p, required=False)
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
    p.set_defaults(func=cmd_translate)

    p = sub.add_parser("score", help="score and align given translations (forced decoding)")
    _add_config(p)
    p.add_argument("--features_file", required=True, help="source lines")
    p.add_argument("--predictions_file", required=True, help="their translations, one per line")
    p.add_argument("--output_file", help="default: standard output")
    p.add_argument("--checkpoint_path")
    p.add_argument("--with_alignments", choices=["hard", "soft"])
    p.add_argument("--with_token_level", action="store_true", help="per-token scores too")
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("plot-alignment", help="heatmaps of the guided head, one PNG per pair")
    _add_config(p)
    p.add_argument("--features_file", help="default: data.eval_features_file")
    p.add_argument("--labels_file", help="default: data.eval_labels_file")
    p.add_argument("--alignments", help="gold Pharaoh file (default with the dev set: eval's)")
    p.add_argument("--first", type=int, default=10, help="first N lines (0 = all)")
    p.add_argument("--output_dir", required=True, help="OUTPUT_DIR/0001.png … (line numbers)")
    p.add_argument("--checkpoint_path")
    p.set_defaults(func=cmd_plot_alignment)

    p = sub.add_parser(
        "average-checkpoints",
        aliases=["average_checkpoints"],
        help="average the last checkpoints' weights",
    )
    _add_config(p, required=False)
    p.add_argument("--output_dir", help="default: MODEL_DIR/avg")
    p.add_argument("--max_count", type=int, default=8)
    p.set_defaults(func=cmd_average)

    p = sub.add_parser("export", help="write a SavedModel or a CTranslate2 model")
    _add_config(p)
    p.add_argument("--output_dir", "--export_dir", required=True)
    p.add_argument(
        "--format", "--export_format", default="saved_model", choices=typing.get_args(ExportFormat)
    )
    p.add_argument("--checkpoint_path")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("import-opennmt", help="convert an OpenNMT-tf Transformer checkpoint")
    _add_config(p)
    p.add_argument("--checkpoint", required=True, help="OpenNMT-tf model_dir or checkpoint prefix")
    p.add_argument("--output_dir", required=True, help="new model_dir for the seqtrain checkpoint")
    p.add_argument("--weights_only", action="store_true", help="no Adam moments, start at step 0")
    p.set_defaults(func=cmd_import_opennmt)

    p = sub.add_parser(
        "update-vocab", aliases=["update_vocab"], help="a checkpoint for new vocabularies"
    )
    _add_config(p)
    p.add_argument("--output_dir", required=True, help="where the updated checkpoint goes")
    p.add_argument("--src_vocab", help="the new source vocabulary")
    p.add_argument("--tgt_vocab", help="the new target vocabulary")
    p.add_argument("--checkpoint_path", help="default: the newest checkpoint of model_dir")
    p.set_defaults(func=cmd_update_vocab)

    p = sub.add_parser("aer", help="alignment error rate of a Pharaoh file against a gold one")
    p.add_argument("--reference", required=True, help="gold: sure i-j, possible ipj or i?j")
    p.add_argument("--hypothesis", required=True, help="Pharaoh i-j links")
    p.add_argument("--one-based", action="store_true", help="the reference indices start at 1")
    p.add_argument("--reverse", action="store_true", help="swap i and j of the hypothesis")
    p.set_defaults(func=cmd_aer)

    p = sub.add_parser("log", help="table (and plot) of a run's metrics")
    p.add_argument("path", help="model_dir, metrics.jsonl or a captured log")
    p.add_argument("--plot", metavar="PNG", help="draw the curves (needs matplotlib)")
    p.set_defaults(func=cmd_log)

    p = sub.add_parser("align", help="word-align parallel text with eflomal (Pharaoh out)")
    _add_config(p, required=False)
    p.add_argument("--source")
    p.add_argument("--target")
    p.add_argument("--output")
    p.add_argument("--symmetrize", default="grow-diag-final-and", choices=SYMMETRIZATIONS)
    p.add_argument("--lowercase", action="store_true")
    p.add_argument("--extra-source", help="more source text for the statistics only")
    p.add_argument("--extra-target", help="more target text for the statistics only")
    p.add_argument("--force", action="store_true", help="overwrite an existing output")
    p.set_defaults(func=cmd_align)
    return parser


def _opennmt_rejection(argv: list[str]) -> str | None:
    """The one-line error for an OpenNMT-tf flag or run type seqtrain does not support."""
    run_type = None
    for i, arg in enumerate(argv):
        if arg.startswith("--"):
            reason = opennmt_keys.rejection(arg.split("=", 1)[0])
        elif run_type is None and (i == 0 or argv[i - 1] != "--log_level"):
            run_type, reason = arg, opennmt_keys.rejection(f"run type {arg}")
        else:
            reason = None
        if reason:
            return reason
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    reason = _opennmt_rejection(argv)
    if reason:
        print(f"seqtrain: error: {reason}", file=sys.stderr)
        return 2
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname).1s %(message)s",
        datefmt="%Y-%m-%d %H:%M:%S",
    )
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TF's C++ banner is noise for users
    for noisy in ("tensorflow", "absl"):  # e.g. "Sharding callback duration: 78 microseconds"
        logging.getLogger(noisy).setLevel(logging.ERROR)
    try:
        args.func(args)
    except SeqtrainError as e:
        if args.debug:
            raise
        if isinstance(e, Interrupted):
            print(f"seqtrain {args.command}: {e}", file=sys.stderr)
            return e.exit_status
        print(f"seqtrain {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"seqtrain {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
