"""Evaluation (loss, BLEU, chrF, AER), early stopping and the best weights.

BLEU/chrF score the 1-best translations of the dev sources (``seqtrain.translate.Translator``,
the ``translate`` command's decoding) against the raw references. Evaluation aligns the
*references* by forced decoding (the teacher-forced forward pass) to score the guided head
against gold links (AER), so alignment quality is measured apart from translation quality.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import tempfile
import time
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from seqtrain import aer, alignment, alignment_plot, data, decoding, eval_outputs, losses, scorers
from seqtrain import config as cfg
from seqtrain.ctranslate2_export import require_ctranslate2
from seqtrain.errors import SeqtrainError
from seqtrain.export import export_model, restore_model
from seqtrain.translate import TargetText, Translator, count_cut, merge_to_words, tokenize_lines
from seqtrain.vocab import read_text_lines

logger = logging.getLogger(__name__)

METRICS = cfg.EVAL_METRICS
# All other metrics: higher is better.
LOWER_IS_BETTER = frozenset({"loss", "perplexity", "aer"}) | scorers.LOWER_IS_BETTER
BEST_DIR = "best"  # model_dir/best/: weights (ckpt) and best.json of the best evaluation


# ---------------------------------------------------------------- early stopping


def is_better(metric: str, value, reference, min_improvement: float = 0.0) -> bool:
    """Whether ``value`` improves on ``reference`` by more than min_improvement (None/NaN-safe).

    Lower is better for loss, perplexity, aer, ter and wer; higher for the others.
    """
    if value is None or math.isnan(value):
        return False
    if reference is None or math.isnan(reference):
        return True
    if metric in LOWER_IS_BETTER:
        return value < reference - min_improvement
    return value > reference + min_improvement


class Patience:
    """Early stopping: stop after ``steps`` evaluations in a row that do not improve ``metric``
    by more than ``min_improvement`` over the last evaluation that did (the first always does)."""

    def __init__(self, metric: str, min_improvement: float = 0.0, steps: int = 4):
        self.metric, self.min_improvement, self.steps = metric, min_improvement, steps
        self.reference = None  # value of the last evaluation that counted as an improvement
        self.stale = 0  # evaluations since then

    def update(self, value) -> bool:
        """Records one evaluation; returns whether it counted as an improvement."""
        if is_better(self.metric, value, self.reference, self.min_improvement):
            self.reference, self.stale = value, 0
            return True
        self.stale += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.stale >= self.steps

    @property
    def reason(self) -> str:
        return (
            f"{self.metric} did not improve by more than {self.min_improvement} in the last "
            f"{self.stale} evaluations (reference {self.reference})"
        )


# ---------------------------------------------------------------- evaluation


@dataclass
class EvalSet:
    """An encoded dev set with its raw references and, optionally, gold links for AER.

    corpus: ``data.EncodedCorpus`` (example k = line k); references: raw target lines;
    sure/possible: gold link sets (i, j) per line, or None; word maps: per line, the word of each
    source/target piece (alignment_level words), or None (gold indices count model tokens).
    """

    corpus: data.EncodedCorpus
    references: list[str]
    sure: list | None = None
    possible: list | None = None
    source_words: list | None = None
    target_words: list | None = None

    @classmethod
    def load(cls, config, cache_dir: str | None = None) -> EvalSet:
        """From data.eval_features_file / eval_labels_file / eval_alignments."""
        d = config.data
        if not (d.eval_features_file and d.eval_labels_file):
            raise SeqtrainError(
                "evaluation needs data.eval_features_file and data.eval_labels_file (or "
                "--features_file and --labels_file)"
            )
        corpus = data.load_corpus(config, "eval", cache_dir=cache_dir)  # validates the files
        references = list(read_text_lines(d.eval_labels_file))
        if not d.eval_alignments:
            return cls(corpus, references)
        gold = list(aer.read_links(d.eval_alignments))
        sure, possible = [g[0] for g in gold], [g[1] for g in gold]
        if d.alignment_level != "words":
            return cls(corpus, references, sure, possible)
        src_tok, tgt_tok, _, _ = alignment.load_tokenizers_and_vocabs(config)
        sources = list(read_text_lines(d.eval_features_file))
        _, source_words = tokenize_lines(sources, src_tok, True, d.eval_features_file)
        _, target_words = tokenize_lines(references, tgt_tok, True, d.eval_labels_file)
        return cls(corpus, references, sure, possible, source_words, target_words)


class Evaluator:
    """Loss/perplexity, BLEU/chrF and AER of a live model on a dev set; early stopping; best
    weights (model_dir/best/) and best SavedModels (model_dir/export/STEP) when ``keep_best``."""

    def __init__(
        self, config, model, eval_set: EvalSet, keep_best: bool = False, chief: bool = True
    ):
        """keep_best: track early stopping, the best weights and export_on_best (training).

        chief: False on the other workers of a multi-worker run. They evaluate the same weights,
        so they track the same best values and stop at the same step, but write nothing to
        model_dir (the weights are mirrored on write: saving them needs no collective op).
        """
        self.config, self.model, self.eval_set, self.keep_best = config, model, eval_set, keep_best
        self.chief = chief
        self.scorers = set(config.eval.scorers)
        self.patience, self.stop_reason, self.export_best = None, "", None
        stopping = config.eval.early_stopping if keep_best else None
        self.best_metric = stopping.metric if stopping is not None else "loss"
        if keep_best:
            wanted = (self.best_metric, config.eval.export_on_best)
            if wanted[1] not in (None, *METRICS):
                raise SeqtrainError(
                    f"eval.export_on_best = '{wanted[1]}'; allowed: {', '.join(METRICS)}"
                )
            if "aer" in wanted and eval_set.sure is None:
                raise SeqtrainError("eval metric 'aer' needs data.eval_alignments (a gold file)")
            self.scorers |= {m for m in wanted if m in cfg.SCORERS}
            if wanted[1] and config.eval.export_format != "saved_model":
                require_ctranslate2()  # fail now, not at the first best evaluation
        if stopping is not None:
            self.patience = Patience(stopping.metric, stopping.min_improvement, stopping.steps)
        self.best_value = self._previous_best() if keep_best else None
        self._forward = _compile_forward(model)
        self._translator, self.translations_of_last = None, None
        self.save_predictions = keep_best and chief and config.eval.save_eval_predictions
        if self.scorers or self.save_predictions:
            self._translator = Translator(
                model, config.params, config.eval.batch_size, batching=config.eval
            )
        _, tgt_tok, _, tgt_vocab = alignment.load_tokenizers_and_vocabs(config)
        self._target = TargetText(tgt_tok, tgt_vocab)
        self._image_pairs = self._pairs_to_draw() if keep_best and chief else None

    @classmethod
    def for_training(cls, config, model, chief: bool = True) -> Evaluator | None:
        """The evaluator run every eval.steps by the trainer; None without an eval set.

        chief: whether this worker writes best/ and the best export (see ``__init__``).
        """
        if not config.data.eval_features_file:
            return None
        return cls(config, model, EvalSet.load(config), keep_best=True, chief=chief)

    def __call__(self, step: int) -> dict[str, float]:
        """Evaluates the model as it is now; tracks the best result and early stopping."""
        start = time.time()
        metrics = self.evaluate()
        logger.debug("evaluation took %.1f s", time.time() - start)
        if self.save_predictions:
            eval_outputs.save_predictions(self.config.model_dir, step, self.translations_of_last)
        if self.keep_best:
            self._track(step, metrics)
        if self.patience is not None:
            self.patience.update(metrics.get(self.patience.metric))
            if self.patience.should_stop:
                self.stop_reason = self.patience.reason
        return metrics

    def should_stop(self) -> bool:
        return self.patience is not None and self.patience.should_stop

    def evaluate(self) -> dict[str, float]:
        """``loss`` (unsmoothed CE per target token, </s> included), ``perplexity`` = exp(loss),
        then the eval.scorers (``seqtrain.scorers``) with ``cut`` (how many of those translations
        the length limit cut, see ``translate.count_cut``) and ``aer``/``precision``/``recall``
        (gold set); bleu, chrf, chrf++, ter and the alignment scores in percent, wer a fraction."""
        ce_sum, tokens, links = self._forced()
        loss = ce_sum / tokens if tokens else math.nan
        metrics = {"loss": loss, "perplexity": math.exp(loss) if loss < 700 else math.inf}
        if self._translator is not None:
            hypotheses, cut = self._translate()
            self.translations_of_last = hypotheses  # eval.save_eval_predictions
            references = self.eval_set.references
            metrics.update(scorers.score_translations(hypotheses, references, self.scorers))
            metrics["cut"] = float(cut)
        if links is not None:
            scores = aer.score(links, self.eval_set.sure, self.eval_set.possible)
            metrics.update({k: 100.0 * scores[k] for k in ("aer", "precision", "recall")})
        return metrics

    def translations(self) -> list[str]:
        """Detokenized 1-best translations of the dev sources, in file order."""
        return self._translate()[0]

    def _translate(self) -> tuple[list[str], int]:
        """(1-best translations in file order, how many were cut at the length limit)."""
        corpus = self.eval_set.corpus
        sources = np.split(corpus.source_ids, corpus.source_splits[1:-1])
        hypotheses = self._translator(sources)
        cut = count_cut(hypotheses, self.config.params, "dev translations")
        return [self._target.text(hyps[0].ids) for hyps in hypotheses], cut

    def _forced(self):
        """(Σ ce_sum, Σ tokens, hard links per line or None) by teacher forcing the references."""
        es = self.eval_set
        links = [set() for _ in range(len(es.corpus))] if es.sure is not None else None
        ce_total, tokens_total = 0.0, 0.0
        extraction = self.config.params.alignment_extraction
        ev = self.config.eval
        batches = data.eval_dataset(
            es.corpus, ev.batch_size, False, ev.batch_type, ev.length_bucket_width
        )
        for batch in batches:
            ce_sum, tokens, attention = self._forward(
                batch["source_ids"], batch["source_length"], batch["target_in"],
                batch["target_out"], batch["target_length"],
            )  # fmt: skip
            ce_total += float(ce_sum)
            tokens_total += float(tokens)
            if links is None:
                continue
            attention = attention.numpy()
            target_lengths = batch["target_length"].numpy() - 1  # without </s>
            source_lengths = batch["source_length"].numpy()
            for row, index in enumerate(batch["index"].numpy()):
                pairs = decoding.hard_alignments(
                    attention[row], target_lengths[row], source_lengths[row], extraction
                )
                if es.source_words is not None:
                    pairs = merge_to_words(pairs, es.source_words[index], es.target_words[index])
                links[index] = set(pairs)
        return ce_total, tokens_total, links

    def _pairs_to_draw(self):
        """read_pairs of the first eval.alignment_images dev lines, or None (off/no matplotlib)."""
        d, count = self.config.data, self.config.eval.alignment_images
        if not count:
            return None
        try:
            alignment_plot.require_matplotlib()
        except SeqtrainError as e:
            logger.warning("%s; no alignment images in TensorBoard (eval.alignment_images)", e)
            return None
        return alignment_plot.read_pairs(
            d.eval_features_file, d.eval_labels_file, d.eval_alignments, count
        )

    def alignment_images(self, step: int) -> list[tuple[str, bytes]]:
        """(tag, PNG) per drawn dev line for TensorBoard; [] when off or not the chief."""
        if not self._image_pairs:
            return []
        numbers, pairs, gold = self._image_pairs
        pictures = alignment_plot.alignment_pictures(
            self.config, self.model, pairs, gold, line_numbers=numbers
        )
        return [
            (f"alignment/dev_line_{n:04d}", alignment_plot.render(p, title=f"step {step}"))
            for n, p in zip(numbers, pictures)
        ]

    def _previous_best(self):
        """The best value of an earlier run in this model_dir (resumed training), or None."""
        path = os.path.join(self.config.model_dir, BEST_DIR, "best.json")
        if not os.path.isfile(path):
            return None
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
        if record.get("metric") != self.best_metric:
            return None
        return record["metrics"].get(self.best_metric)

    def _track(self, step: int, metrics: dict) -> None:
        """Best weights + best.json on a new best; SavedModel when export_on_best improves.

        Only the chief writes them; every worker updates the best values.
        """
        value = metrics.get(self.best_metric)
        if is_better(self.best_metric, value, self.best_value):
            self.best_value = value
            if self.chief:
                write_best(self.model, self.config.model_dir, step, self.best_metric, metrics)
        export_metric = self.config.eval.export_on_best
        if export_metric and is_better(export_metric, metrics.get(export_metric), self.export_best):
            self.export_best = value = metrics[export_metric]
            if self.chief:
                path = eval_outputs.export_path(self.config.model_dir, step)
                export_model(self.config, self.model, path, self.config.eval.export_format)
                logger.info("New best %s = %.4f: exported %s", export_metric, value, path)
                eval_outputs.prune_exports(
                    self.config.model_dir, self.config.eval.max_exports_to_keep
                )


def _compile_forward(model):
    """tf.function (any batch shape) -> (ce_sum, tokens, attention [B, T, S]) without dropout."""

    def forward(batch):
        logits, attention = model(batch, training=False)
        ce_sum, _, tokens = losses.cross_entropy_sequence_loss(
            logits, batch["target_out"], batch["target_length"], training=False
        )
        return ce_sum, tokens, attention

    return decoding.compile_on_batches(forward)


def write_best(model, model_dir: str, step: int, metric: str, metrics: dict) -> str:
    """model_dir/best/ckpt (model weights only) and model_dir/best/best.json."""
    directory = os.path.join(model_dir, BEST_DIR)
    os.makedirs(directory, exist_ok=True)
    path = tf.train.Checkpoint(model=model).write(os.path.join(directory, "ckpt"))
    record = {"step": int(step), "metric": metric, "checkpoint": path, "metrics": metrics}
    tmp = os.path.join(directory, "best.json.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=1)
    os.replace(tmp, os.path.join(directory, "best.json"))
    logger.info("New best %s = %.4f at step %d: weights in %s", metric, metrics[metric], step, path)
    return path


def evaluate_command(
    config,
    features_file: str | None = None,
    labels_file: str | None = None,
    alignments_file: str | None = None,
    checkpoint_path: str | None = None,
) -> dict:
    """``seqtrain eval``: metrics of a checkpoint on the configured dev set or on given files."""
    d = config.data
    if bool(features_file) != bool(labels_file):
        raise SeqtrainError("give both --features_file and --labels_file (or neither)")
    with tempfile.TemporaryDirectory(prefix="seqtrain-eval-") as scratch:
        cache_dir = None  # the dev set's cache in model_dir
        if features_file or alignments_file:
            gold = alignments_file or (None if features_file else d.eval_alignments)
            d = dataclasses.replace(
                d, eval_features_file=features_file or d.eval_features_file,
                eval_labels_file=labels_file or d.eval_labels_file, eval_alignments=gold,
            )  # fmt: skip
            cache_dir = scratch  # other files must not replace the dev set's cache
        config = dataclasses.replace(config, data=d)
        model, path = restore_model(config, checkpoint_path)
        eval_set = EvalSet.load(config, cache_dir=cache_dir)
    metrics = Evaluator(config, model, eval_set).evaluate()
    logger.info("Evaluated %s on %s", path, config.data.eval_features_file)
    return metrics


def format_metrics(metrics: dict) -> str:
    """``loss = 2.345678 ; perplexity = 10.44 ; bleu = 23.10 ; cut = 0 ; aer = 12.30 ; ...``."""
    decimals = {"loss": 6, "cut": 0}  # 2 for the others
    return " ; ".join(
        f"{name} = {value:.{decimals.get(name, 2)}f}" for name, value in metrics.items()
    )
