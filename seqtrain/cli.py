"""Command-line front end: argparse, logging set-up and user-error handling, nothing else.

Every subcommand imports its module lazily so that `seqtrain aer` or `seqtrain log` start in a
fraction of a second without importing TensorFlow. A ``SeqtrainError`` anywhere becomes one line
on stderr and exit status 2 (``--debug`` shows the traceback); a training run stopped by
SIGINT/SIGTERM saves a checkpoint, says so in one line and exits with 128 + the signal number.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from seqtrain.align_words import SYMMETRIZATIONS  # no TensorFlow, no eflomal at import
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


def _load(args, command: str | None = None):
    from seqtrain import config as cfg

    config = cfg.load_config(args.config)
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
    from seqtrain import trainer

    trainer.train(config, num_devices=args.num_devices, checkpoint_path=args.checkpoint_path)


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
    config = _load(args)
    from seqtrain import checkpoints

    path = checkpoints.average_checkpoints(config, args.output_dir, max_count=args.max_count)
    print(f"averaged checkpoint: {path}")


def cmd_export(args) -> None:
    config = _load(args, "infer")
    from seqtrain import export

    path = export.export(config, args.output_dir, checkpoint_path=args.checkpoint_path)
    print(f"SavedModel: {path}")


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
    p.add_argument("--num-devices", type=int, default=1, help="replicas on this machine")
    p.add_argument("--checkpoint_path", help="initialize from this checkpoint")
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

    p = sub.add_parser("translate", help="translate a file, optionally with alignments")
    _add_config(p)
    p.add_argument("--features_file", required=True)
    p.add_argument("--predictions_file", help="default: standard output")
    p.add_argument("--checkpoint_path")
    p.add_argument("--with_alignments", choices=["hard", "soft"])
    p.add_argument("--with_scores", action="store_true")
    p.add_argument("--n_best", type=int)
    p.set_defaults(func=cmd_translate)

    p = sub.add_parser("plot-alignment", help="heatmaps of the guided head, one PNG per pair")
    _add_config(p)
    p.add_argument("--features_file", help="default: data.eval_features_file")
    p.add_argument("--labels_file", help="default: data.eval_labels_file")
    p.add_argument("--alignments", help="gold Pharaoh file (default with the dev set: eval's)")
    p.add_argument("--first", type=int, default=10, help="first N lines (0 = all)")
    p.add_argument("--output_dir", required=True, help="OUTPUT_DIR/0001.png … (line numbers)")
    p.add_argument("--checkpoint_path")
    p.set_defaults(func=cmd_plot_alignment)

    p = sub.add_parser("average-checkpoints", help="average the last checkpoints' weights")
    _add_config(p)
    p.add_argument("--output_dir", help="default: MODEL_DIR/avg")
    p.add_argument("--max_count", type=int, default=8)
    p.set_defaults(func=cmd_average)

    p = sub.add_parser("export", help="write a SavedModel with a translate signature")
    _add_config(p)
    p.add_argument("--output_dir", required=True)
    p.add_argument("--checkpoint_path")
    p.set_defaults(func=cmd_export)

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


def main(argv: list[str] | None = None) -> int:
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
