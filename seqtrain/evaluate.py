"""Translation with alignments, evaluation (loss, BLEU, chrF, AER) and early stopping.

``seqtrain translate`` writes one line per hypothesis, in OpenNMT-tf's format:

    [SCORE ||| ]TRANSLATION[ ||| ALIGNMENT]

* SCORE (``--with_scores``): ``%f`` of the decoding score (beam search: sum of the token
  log-probabilities, ``</s>`` included, divided by the GNMT length penalty; greedy: the plain sum).
* hard ALIGNMENT: Pharaoh pairs ``s-t`` (0-based source index, dash, 0-based target index),
  space-separated, sorted by target then source index. Target token t (``</s>`` excluded) is
  linked to the source token the guided head attends to most (argmax over the real source
  tokens). With ``data.alignment_level: words`` the indices count whitespace words instead:
  words of the raw input line and of the printed translation; two words are linked if any of
  their pieces are (source words of pieces: ``Tokenizer.tokenize_with_words``; target words: a
  piece starting with "▁" opens a word, or one word per token without SentencePiece).
* soft ALIGNMENT: the guided head's attention, one row per target token (``</s>`` excluded),
  each row S source-token probabilities ``%.6f`` separated by spaces, rows separated by `` ; ``.
  Always over model tokens, whatever ``alignment_level``.
* ``n_best`` N: N consecutive lines per input, best first. An empty input line is not decoded:
  its N lines are empty translations with score 0 and no links.

Inputs are decoded in batches of similar length (less padding); outputs keep the input order.
Evaluation aligns the *references* by forced decoding (the teacher-forced forward pass) to score
the guided head against gold links (AER), so alignment quality is measured apart from
translation quality.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from seqtrain import aer, alignment, data, decoding, losses
from seqtrain.errors import SeqtrainError
from seqtrain.export import export_model, restore_model
from seqtrain.vocab import SP_MARKER, read_text_lines

logger = logging.getLogger(__name__)

LOWER_IS_BETTER = frozenset({"loss", "perplexity", "aer"})  # all other metrics: higher is better
BEST_DIR = "best"  # model_dir/best/: weights (ckpt) and best.json of the best evaluation


# ---------------------------------------------------------------- decoding and output lines


@dataclass
class Hypothesis:
    ids: np.ndarray  # int32 [n]: target ids without </s>
    score: float
    attention: np.ndarray  # float32 [n, S]: guided-head rows of the n tokens, real source columns


class Translator:
    """Decodes lists of source ids in length-sorted batches; results come back in input order."""

    def __init__(self, model, params, batch_size: int, n_best: int = 1, beam_width=None):
        """params: ``config.params`` (beam_width, length_penalty, maximum_decoding_length)."""
        beam_width = params.beam_width if beam_width is None else beam_width
        if n_best > beam_width:
            raise SeqtrainError(
                f"n_best ({n_best}) cannot exceed params.beam_width ({beam_width}); lower "
                "--n_best / infer.n_best or raise params.beam_width"
            )
        self.n_best, self.batch_size = n_best, batch_size
        self.maximum_length = tf.constant(params.maximum_decoding_length, tf.int32)
        self._search = decoding.compile_search(model, beam_width, params.length_penalty, n_best)

    def __call__(self, source_id_lists) -> list[list[Hypothesis]]:
        """source_id_lists: int sequences (no BOS/EOS) -> n_best Hypothesis per input."""
        results: list = [None] * len(source_id_lists)
        nonempty = [i for i, ids in enumerate(source_id_lists) if len(ids)]
        for i in set(range(len(source_id_lists))) - set(nonempty):
            results[i] = [Hypothesis(np.zeros(0, np.int32), 0.0, np.zeros((0, 0), np.float32))]
            results[i] *= self.n_best
        dataset = data.inference_dataset(
            [source_id_lists[i] for i in nonempty], self.batch_size, sort_by_length=True
        )
        for batch in dataset:
            out = self._search(batch["source_ids"], batch["source_length"], self.maximum_length)
            ids, lengths, scores, attention = (x.numpy() for x in out)
            source_lengths = batch["source_length"].numpy()
            for row, k in enumerate(batch["index"].numpy()):
                results[nonempty[k]] = [
                    Hypothesis(
                        ids[row, j, : lengths[row, j]],
                        float(scores[row, j]),
                        attention[row, j, : lengths[row, j], : source_lengths[row]],
                    )
                    for j in range(self.n_best)
                ]
        return results


def target_word_of_piece(pieces, is_subword: bool) -> list[int]:
    """Word index of each output piece: "▁" opens a word (SentencePiece), else one word each.

    A first piece without "▁" still belongs to word 0.
    """
    if not is_subword:
        return list(range(len(pieces)))
    words, word = [], -1
    for piece in pieces:
        if word < 0 or piece.startswith(SP_MARKER):
            word += 1
        words.append(word)
    return words


def merge_to_words(links, source_word_of_piece, target_word_of_piece) -> set[tuple[int, int]]:
    """Piece links (s, t) -> word links (i, j): words i and j are linked if any pieces are."""
    return {(source_word_of_piece[s], target_word_of_piece[t]) for s, t in links}


def format_links(links) -> str:
    """(s, t) links -> ``"s-t s-t"`` sorted by target then source index."""
    return " ".join(f"{s}-{t}" for s, t in sorted(links, key=lambda link: (link[1], link[0])))


def format_soft(attention) -> str:
    """[n, S] probabilities -> rows of ``%.6f`` separated by spaces, rows joined by `` ; ``."""
    return " ; ".join(" ".join(f"{p:.6f}" for p in row) for row in attention)


def format_line(translation: str, score: float | None = None, alignment: str | None = None):
    """``[SCORE ||| ]TRANSLATION[ ||| ALIGNMENT]`` (OpenNMT-tf's translate output)."""
    line = translation if score is None else f"{score:f} ||| {translation}"
    return line if alignment is None else f"{line} ||| {alignment}"


class _Target:
    """Target vocabulary + tokenizer: ids -> pieces -> text, and word indices of pieces."""

    def __init__(self, tokenizer, vocab):
        self.tokenizer, self.vocab = tokenizer, vocab

    def pieces(self, ids) -> list[str]:
        return self.vocab.tokens(ids)

    def text(self, ids) -> str:
        return self.tokenizer.detokenize(self.pieces(ids))


def _render(hyp, target, with_alignments, with_scores, source_words=None) -> str:
    """One output line of ``hyp``; source_words: word of each source piece (words level)."""
    pieces = target.pieces(hyp.ids)
    text = target.tokenizer.detokenize(pieces)
    links = None
    if with_alignments == "soft":
        links = format_soft(hyp.attention)
    elif with_alignments == "hard":
        pairs = decoding.hard_alignments(hyp.attention, *hyp.attention.shape)
        if source_words is not None:
            tgt_words = target_word_of_piece(pieces, target.tokenizer.is_subword)
            pairs = merge_to_words(pairs, source_words, tgt_words)
        links = format_links(pairs)
    return format_line(text, hyp.score if with_scores else None, links)


def _tokenize(lines, tokenizer, with_words: bool, path: str):
    """Raw lines -> (pieces per line, word_of_piece per line or None)."""
    if not with_words:
        return [tokenizer.tokenize(line) for line in lines], None
    pieces, words = [], []
    for number, line in enumerate(lines, 1):
        try:
            line_pieces, word_of_piece = tokenizer.tokenize_with_words(line)
        except ValueError as e:
            raise SeqtrainError(f"{path} line {number}: {e}") from e
        pieces.append(line_pieces)
        words.append(word_of_piece)
    return pieces, words


def translate_command(
    config,
    features_file: str,
    predictions_file: str | None = None,
    checkpoint_path: str | None = None,
    with_alignments: str | None = None,
    with_scores: bool = False,
    n_best: int | None = None,
) -> None:
    """``seqtrain translate``: see the module docstring for the output format.

    Unset options fall back to ``config.infer`` (with_alignments, with_scores, n_best,
    batch_size) and ``config.params`` (beam_width, length_penalty, maximum_decoding_length).
    """
    infer = config.infer
    with_alignments = with_alignments or infer.with_alignments
    with_scores = with_scores or infer.with_scores
    n_best = n_best or infer.n_best
    model, path = restore_model(config, checkpoint_path)
    src_tok, tgt_tok, src_vocab, tgt_vocab = alignment.load_tokenizers_and_vocabs(config)
    word_level = with_alignments == "hard" and config.data.alignment_level == "words"
    lines = list(read_text_lines(features_file))
    pieces, source_words = _tokenize(lines, src_tok, word_level, features_file)
    translator = Translator(model, config.params, infer.batch_size, n_best)
    start = time.time()
    hypotheses = translator([src_vocab.ids(p) for p in pieces])
    elapsed = time.time() - start
    target = _Target(tgt_tok, tgt_vocab)
    if predictions_file:
        out = open(predictions_file, "w", encoding="utf-8")  # noqa: SIM115 (closed below)
    else:
        out = contextlib.nullcontext(sys.stdout)
    with out as stream:
        for i, hyps in enumerate(hypotheses):
            words = source_words[i] if source_words is not None else None
            for hyp in hyps:
                stream.write(_render(hyp, target, with_alignments, with_scores, words) + "\n")
    tokens = sum(len(hyps[0].ids) for hyps in hypotheses)
    logger.info(
        "Translated %d lines with %s in %.1f s (%.0f target tokens/s)",
        len(lines), path, elapsed, tokens / max(elapsed, 1e-9),
    )  # fmt: skip


# ---------------------------------------------------------------- early stopping


def is_better(metric: str, value, reference, min_improvement: float = 0.0) -> bool:
    """Whether ``value`` improves on ``reference`` by more than min_improvement (None/NaN-safe).

    Lower is better for loss, perplexity and aer; higher for the others.
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
        _, source_words = _tokenize(sources, src_tok, True, d.eval_features_file)
        _, target_words = _tokenize(references, tgt_tok, True, d.eval_labels_file)
        return cls(corpus, references, sure, possible, source_words, target_words)


class Evaluator:
    """Loss/perplexity, BLEU/chrF and AER of a live model on a dev set; early stopping; best
    weights (model_dir/best/) and best SavedModel (model_dir/export/best) when ``keep_best``."""

    def __init__(self, config, model, eval_set: EvalSet, keep_best: bool = False):
        """keep_best: track early stopping, the best weights and export_on_best (training)."""
        self.config, self.model, self.eval_set, self.keep_best = config, model, eval_set, keep_best
        self.scorers = set(config.eval.scorers)
        self.patience, self.stop_reason, self.export_best = None, "", None
        stopping = config.eval.early_stopping if keep_best else None
        self.best_metric = stopping.metric if stopping is not None else "loss"
        if keep_best:
            wanted = (self.best_metric, config.eval.export_on_best)
            if "aer" in wanted and eval_set.sure is None:
                raise SeqtrainError("eval metric 'aer' needs data.eval_alignments (a gold file)")
            self.scorers |= {m for m in wanted if m in ("bleu", "chrf")}
        if stopping is not None:
            self.patience = Patience(stopping.metric, stopping.min_improvement, stopping.steps)
        self.best_value = self._previous_best() if keep_best else None
        self._forward = _compile_forward(model)
        self._translator = None
        if self.scorers:
            self._translator = Translator(model, config.params, config.eval.batch_size)
        _, tgt_tok, _, tgt_vocab = alignment.load_tokenizers_and_vocabs(config)
        self._target = _Target(tgt_tok, tgt_vocab)

    @classmethod
    def for_training(cls, config, model) -> Evaluator | None:
        """The evaluator run every eval.steps by the trainer; None without an eval set."""
        if not config.data.eval_features_file:
            return None
        return cls(config, model, EvalSet.load(config), keep_best=True)

    def __call__(self, step: int) -> dict[str, float]:
        """Evaluates the model as it is now; tracks the best result and early stopping."""
        start = time.time()
        metrics = self.evaluate()
        logger.debug("evaluation took %.1f s", time.time() - start)
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
        then ``bleu``/``chrf`` (eval.scorers) and ``aer``/``precision``/``recall`` (gold set),
        the last five in percent."""
        ce_sum, tokens, links = self._forced()
        loss = ce_sum / tokens if tokens else math.nan
        metrics = {"loss": loss, "perplexity": math.exp(loss) if loss < 700 else math.inf}
        if self.scorers:
            hypotheses, references = self.translations(), self.eval_set.references
            metrics.update(score_translations(hypotheses, references, self.scorers))
        if links is not None:
            scores = aer.score(links, self.eval_set.sure, self.eval_set.possible)
            metrics.update({k: 100.0 * scores[k] for k in ("aer", "precision", "recall")})
        return metrics

    def translations(self) -> list[str]:
        """Detokenized 1-best translations of the dev sources, in file order."""
        corpus = self.eval_set.corpus
        sources = np.split(corpus.source_ids, corpus.source_splits[1:-1])
        return [self._target.text(hyps[0].ids) for hyps in self._translator(sources)]

    def _forced(self):
        """(Σ ce_sum, Σ tokens, hard links per line or None) by teacher forcing the references."""
        es = self.eval_set
        links = [set() for _ in range(len(es.corpus))] if es.sure is not None else None
        ce_total, tokens_total = 0.0, 0.0
        batches = data.eval_dataset(es.corpus, self.config.eval.batch_size, with_alignment=False)
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
                    attention[row], target_lengths[row], source_lengths[row]
                )
                if es.source_words is not None:
                    pairs = merge_to_words(pairs, es.source_words[index], es.target_words[index])
                links[index] = set(pairs)
        return ce_total, tokens_total, links

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
        """Best weights + best.json on a new best; SavedModel when export_on_best improves."""
        value = metrics.get(self.best_metric)
        if is_better(self.best_metric, value, self.best_value):
            self.best_value = value
            write_best(self.model, self.config.model_dir, step, self.best_metric, metrics)
        export_metric = self.config.eval.export_on_best
        if export_metric and is_better(export_metric, metrics.get(export_metric), self.export_best):
            self.export_best = metrics[export_metric]
            path = os.path.join(self.config.model_dir, "export", "best")
            export_model(self.config, self.model, path)
            logger.info("New best %s = %.4f: exported %s", export_metric, self.export_best, path)


def _compile_forward(model):
    """tf.function (any batch shape) -> (ce_sum, tokens, attention [B, T, S]) without dropout."""
    matrix, vector = tf.TensorSpec([None, None], tf.int32), tf.TensorSpec([None], tf.int32)

    @tf.function(input_signature=[matrix, vector, matrix, matrix, vector])
    def forward(source_ids, source_length, target_in, target_out, target_length):
        batch = {
            "source_ids": source_ids,
            "source_length": source_length,
            "target_in": target_in,
            "target_out": target_out,
            "target_length": target_length,
        }
        logits, attention = model(batch, training=False)
        ce_sum, _, tokens = losses.cross_entropy_sequence_loss(
            logits, target_out, target_length, training=False
        )
        return ce_sum, tokens, attention

    return forward


def score_translations(hypotheses, references, scorers) -> dict[str, float]:
    """sacrebleu corpus BLEU / chrF (0-100) of detokenized hypotheses against raw references."""
    import sacrebleu  # only evaluation needs it

    metrics = {}
    if "bleu" in scorers:
        metrics["bleu"] = float(sacrebleu.corpus_bleu(hypotheses, [references]).score)
    if "chrf" in scorers:
        metrics["chrf"] = float(sacrebleu.corpus_chrf(hypotheses, [references]).score)
    return metrics


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
    """``loss = 2.345678 ; perplexity = 10.44 ; bleu = 23.10 ; aer = 12.30 ; ...``."""
    return " ; ".join(
        f"{name} = {value:.6f}" if name == "loss" else f"{name} = {value:.2f}"
        for name, value in metrics.items()
    )
