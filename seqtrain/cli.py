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

from seqtrain import cli_parser, opennmt_keys
from seqtrain.errors import Interrupted, SeqtrainError

logger = logging.getLogger("seqtrain")


def _overrides(args) -> dict:
    """Configuration values given as flags (OpenNMT-tf's --model_dir, --seed, --mixed_precision,
    --jit_compile); they win over every --config file."""
    out = {"model_dir": args.model_dir} if getattr(args, "model_dir", None) else {}
    train = {"seed": getattr(args, "seed", None)}
    for flag in ("mixed_precision", "jit_compile"):
        train[flag] = True if getattr(args, flag, False) else None
    train = {k: v for k, v in train.items() if v is not None}
    return {**out, "train": train} if train else out


def _load(args, command: str | None = None, files=None):
    """The --config files' Config; files: other YAML files (score's --reverse_config), read
    without the command line's overrides and --model_type."""
    from seqtrain import config as cfg
    from seqtrain import config_checks, presets

    if files:
        config = cfg.load_config(files, {}, resolve=presets.resolver(None, args.auto_config))
    else:
        resolve = presets.resolver(args.model_type, args.auto_config)
        config = cfg.load_config(args.config, _overrides(args), resolve=resolve)
    origin = " + ".join(files or args.config)
    config_checks.check(config, origin)
    if command:
        config_checks.check_files(config, command, origin)
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
    options = dict(
        features_file=args.features_file,
        predictions_file=args.predictions_file,
        output_file=args.output_file,
        checkpoint_path=args.checkpoint_path,
        with_alignments=args.with_alignments,
        with_token_level=args.with_token_level,
    )
    if args.reverse_checkpoint_path and not args.reverse_config:
        raise SeqtrainError("--reverse_checkpoint_path needs --reverse_config (the reverse model)")
    if not args.reverse_config:
        from seqtrain import score

        return score.score_command(config, **options)
    reverse = _load(args, "infer", files=args.reverse_config)
    from seqtrain import score_bidir

    score_bidir.bidir_score_command(
        config, reverse, reverse_checkpoint_path=args.reverse_checkpoint_path, **options
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
    return cli_parser.build_parser(sys.modules[__name__], __doc__.splitlines()[0])


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
