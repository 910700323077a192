"""``seqtrain translate --engine ctranslate2``: decoding with a CTranslate2 export, same output.

The export directory (``seqtrain export --format ctranslate2*``) holds the weights, the
vocabularies, the SentencePiece models and ``seqtrain.yml`` (data, model, params and infer
settings of the run); a ``--config`` given as well overrides params and infer. Lines are
``seqtrain.translate``'s (``[SCORE ||| ]TRANSLATION[ ||| ALIGNMENT]``, word-level links with
``data.alignment_level: words``, ``params.alignment_extraction``).

Decoding follows ``seqtrain.translate.Translator``:

* ``params.beam_width`` (1 = greedy), ``infer.n_best``, ``infer.batch_size`` sentences per batch
  sorted by length; empty inputs are not decoded;
* ``params.minimum_decoding_length`` N is CTranslate2's ``min_decoding_length`` N: in CTranslate2
  4.8 too ``</s>`` is forbidden at the steps 0 .. N-1 (N tokens, then ``</s>``: its minimum does
  not count the end token). Where N exceeds a batch's decoding length it is lowered to it (the
  limit wins, as in the TensorFlow searches). CTranslate2 then scores a step over the tokens
  left (its probabilities renormalized without ``</s>``), seqtrain and OpenNMT-tf with the
  model's: the hypotheses are rescored (below), and beam search may rank them differently;
* length limits: each sentence gets ``decoding.length_limits``' limit L = min(hard cap,
  floor(factor × S) + offset); CTranslate2 has one limit per batch, so the batch decodes up to
  its largest L + 1 tokens and each hypothesis is cut to its own L (``cut`` when it has L
  tokens, as the TensorFlow searches). For greedy search this is exactly the output of a search
  stopped at L (a greedy prefix does not depend on the limit); a beam search may keep other
  hypotheses than one limited to L. Scores of cut hypotheses are recomputed on their L tokens
  (``score_batch``, run by the workers too), and n-best lists re-sorted by the scores printed;
* scores: greedy, the sum of the token log-probabilities (``</s>`` included), as seqtrain;
  beam search, CTranslate2's length normalization sum / length^``params.length_penalty`` (it
  has no GNMT penalty), so beam scores and, rarely, choices differ from the TensorFlow engine;
* alignments: CTranslate2 returns, per output token, the guided head's attention of the step
  that *predicts* it (with ``return_end_token`` the ``</s>`` step too). With
  ``model.alignment_row: predicting`` target token t takes row t, with ``reading`` row t + 1
  (the step that reads it; the last token's is the ``</s>`` step, or the step after the cut):
  the rows training supervised, as every engine of seqtrain. ``model.alignment_context: full``
  models were supervised on a non-causal pass CTranslate2 cannot run: alignments are refused;
* ``params.replace_unknown_target``: each ``<unk>`` becomes the source piece its row (above)
  attends to most, by ``translate``'s own code (attention is requested for it);
* threads: all batches are submitted at once (``asynchronous``) to ``inter_threads`` workers
  (default: the CPUs this process may use) of ``intra_threads`` threads each (default 1), and
  collected in order: a batch's output does not depend on the worker that decodes it. On a
  small model one thread per batch and one batch per core is faster than several threads on
  one batch (measured: README, CTranslate2).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time

import numpy as np
import yaml

from seqtrain import config as cfg
from seqtrain import translate
from seqtrain.alignment import load_tokenizers_and_vocabs
from seqtrain.ctranslate2_export import SETTINGS_FILE, require_ctranslate2
from seqtrain.errors import SeqtrainError
from seqtrain.translate import Hypothesis
from seqtrain.vocab import EOS_TOKEN, Vocab, read_text_lines

logger = logging.getLogger(__name__)

# Keys of the export's data section that name files inside the export directory.
DATA_FILES = (
    "source_vocabulary",
    "target_vocabulary",
    "source_tokenization",
    "target_tokenization",
)


def load_settings(model_dir: str, overrides=None):
    """The ``Config`` of an export directory (data paths resolved inside it); ``overrides``, a
    user's Config, replaces params and infer."""
    path = os.path.join(model_dir, SETTINGS_FILE)
    if not os.path.isfile(path):
        raise SeqtrainError(
            f"{model_dir}: not a seqtrain CTranslate2 export ({SETTINGS_FILE} is missing); "
            "write one with seqtrain export --config run.yml --format ctranslate2 --output_dir D"
        )
    with open(path, encoding="utf-8") as f:
        raw = yaml.safe_load(f)
    if not isinstance(raw, dict) or not isinstance(raw.get("data"), dict):
        raise SeqtrainError(f"{path}: no data section; export the model again")
    for key in DATA_FILES:
        if raw["data"].get(key):
            raw["data"][key] = os.path.join(model_dir, raw["data"][key])
    config = cfg.build(dict(raw, model_dir=model_dir), path)
    if overrides is not None:
        config = dataclasses.replace(config, params=overrides.params, infer=overrides.infer)
    return config


def length_limit(source_length: int, params) -> int:
    """``decoding.length_limits`` for one sentence, in Python."""
    if params.maximum_decoding_length_factor is None:
        return params.maximum_decoding_length
    relative = math.floor(params.maximum_decoding_length_factor * source_length)
    return max(
        min(params.maximum_decoding_length, relative + params.maximum_decoding_length_offset), 1
    )


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


class CTranslate2Translator:
    """Decodes token lists with ``ctranslate2.Translator``; ``translate.Hypothesis`` results."""

    def __init__(
        self,
        model_dir: str,
        config,
        n_best: int = 1,
        with_attention=False,
        inter_threads: int | None = None,
        intra_threads: int = 1,
    ):
        """config: the export's settings (``load_settings``); with_attention: compute the rows
        of the guided head (alignments, replace_unknown_target); inter_threads: batches decoded
        in parallel (None: ``usable_cpus()``); intra_threads: threads per batch (0: CTranslate2's
        default)."""
        params = config.params
        if n_best > params.beam_width:
            raise SeqtrainError(
                f"n_best ({n_best}) cannot exceed params.beam_width ({params.beam_width}); lower "
                "--n_best / infer.n_best or raise params.beam_width"
            )
        ctranslate2 = require_ctranslate2()
        self.inter_threads = inter_threads or usable_cpus()
        self.translator = ctranslate2.Translator(
            model_dir, device="cpu", inter_threads=self.inter_threads, intra_threads=intra_threads
        )
        self.target_vocab = Vocab.load(config.data.target_vocabulary)
        self.params, self.n_best, self.batch_size = params, n_best, config.infer.batch_size
        self.with_attention = with_attention
        # Target token t's row is CTranslate2's row t + shift (see the module docstring).
        self.shift = 1 if config.model.alignment_row == "reading" else 0
        self.length_penalty = params.length_penalty if params.beam_width > 1 else 0.0

    def __call__(self, source_token_lists) -> list[list[Hypothesis]]:
        """source_token_lists: token lists (no BOS/EOS) -> n_best Hypothesis per input, in order.

        Every batch is queued before the first is read, so the workers decode them in parallel.
        """
        empty = Hypothesis(np.zeros(0, np.int32), 0.0, np.zeros((0, 0), np.float32))
        results = [[empty] * self.n_best for _ in source_token_lists]
        nonempty = [i for i, tokens in enumerate(source_token_lists) if tokens]
        order = sorted(nonempty, key=lambda i: len(source_token_lists[i]))
        sources = [source_token_lists[i] for i in order]
        size = self.batch_size
        batches = [sources[k : k + size] for k in range(0, len(sources), size)]
        pending = [self._submit(batch) for batch in batches]
        hyps = [row for batch, job in zip(batches, pending) for row in self._collect(batch, job)]
        self._rescore(sources, hyps)
        for i, row in zip(order, hyps):
            results[i] = [h for h, _ in row]
        return results

    def _submit(self, sources):
        """Queues one batch -> (per-sentence length limits, its async results)."""
        limits = [length_limit(len(tokens), self.params) for tokens in sources]
        longest = max(limits) + 1  # + 1: the reading row of a cut last token
        futures = self.translator.translate_batch(
            sources,
            asynchronous=True,
            beam_size=self.params.beam_width,
            num_hypotheses=self.n_best,
            length_penalty=self.length_penalty,
            max_decoding_length=longest,
            min_decoding_length=min(self.params.minimum_decoding_length, longest),
            max_input_length=0,  # never truncate a source silently
            return_scores=True,
            return_attention=self.with_attention,
            return_end_token=True,
        )
        return limits, futures

    def _collect(self, sources, pending):
        """Waits for one batch -> per sentence, n_best (Hypothesis, its tokens)."""
        limits, futures = pending
        return [
            [self._hypothesis(future.result(), j, limit, len(src)) for j in range(self.n_best)]
            for future, limit, src in zip(futures, limits, sources)
        ]

    def _hypothesis(self, output, j: int, limit: int, source_length: int):
        """(Hypothesis, its tokens) of hypothesis j: cut to ``limit`` tokens, alignment rows of
        the trained convention over the real source columns."""
        tokens = output.hypotheses[j]
        ended = bool(tokens) and tokens[-1] == EOS_TOKEN
        length = len(tokens) - ended
        cut = length >= limit
        length = min(length, limit)
        tokens = tokens[:length]
        attention = np.zeros((length, source_length), np.float32)
        if self.with_attention:
            rows = np.asarray(output.attention[j], np.float32).reshape(-1, source_length)
            attention = rows[self.shift : self.shift + length]
        ids = self.target_vocab.ids(tokens)
        return Hypothesis(ids, float(output.scores[j]), attention, cut), tokens

    def _rescore(self, sources, hyps) -> None:
        """Model scores of the hypotheses CTranslate2 scored otherwise: cut ones on their first
        L tokens (their decoding ran further), and with a minimum length all of them (CTranslate2
        renormalizes a step's probabilities without ``</s>``; seqtrain, as OpenNMT-tf, keeps the
        model's). Normalized as CTranslate2: by the length, ``</s>`` included when it ends.
        The n-best lists stay best first (by the scores printed)."""
        minimum = self.params.minimum_decoding_length > 0
        picked = [
            (b, j) for b, row in enumerate(hyps) for j, (h, _) in enumerate(row) if h.cut or minimum
        ]
        if not picked:
            return
        scored = self.translator.score_batch(  # split into batches run by the workers
            [sources[b] for b, _ in picked],
            [hyps[b][j][1] for b, j in picked],
            max_batch_size=self.batch_size,
            max_input_length=0,
        )
        for (b, j), result in zip(picked, scored):
            hyp, tokens = hyps[b][j]
            length = len(tokens) + (not hyp.cut)  # the appended </s> counts unless cut
            total = float(sum(result.log_probs[:length]))
            norm = length**self.length_penalty if self.length_penalty else 1.0
            hyps[b][j] = (dataclasses.replace(hyp, score=total / norm), tokens)
        for b in {b for b, _ in picked}:
            hyps[b].sort(key=lambda pair: -pair[0].score)  # stable: ties keep CTranslate2's order


def refuse_full_context(config, model_dir: str) -> None:
    """Alignment rows (alignments, replace_unknown_target) need a causal guided head."""
    if config.model.alignment_context == "full":
        raise SeqtrainError(
            f"{model_dir}: the model was trained with model.alignment_context: full (alignments "
            "from a non-causal decoder pass that CTranslate2 cannot run); translate without "
            "--with_alignments and params.replace_unknown_target, or with the TensorFlow "
            "engine (seqtrain translate --config)"
        )


def refuse_unsupported_search(params, model_dir: str) -> None:
    """Decoding keys this engine does not apply are refused rather than silently ignored."""
    unsupported = [
        f"params.{key} = {value}"
        for key, value, default in (
            ("sampling_topk", params.sampling_topk, 1),
            ("sampling_temperature", params.sampling_temperature, 1.0),
            ("coverage_penalty", params.coverage_penalty, 0.0),
        )
        if value != default
    ]
    if unsupported:
        raise SeqtrainError(
            f"{model_dir}: {', '.join(unsupported)} is not applied by the CTranslate2 engine "
            "(its sampling and coverage penalty differ from seqtrain's); reset it to its default "
            "or translate with the TensorFlow engine (seqtrain translate --config)"
        )


def translate_command(
    model_dir: str,
    features_file: str,
    predictions_file: str | None = None,
    with_alignments: str | None = None,
    with_scores: bool = False,
    n_best: int | None = None,
    overrides=None,
    inter_threads: int | None = None,
    intra_threads: int = 1,
) -> None:
    """``seqtrain translate --engine ctranslate2 --model_dir EXPORT``: ``seqtrain.translate``'s
    output lines; options unset fall back to the export's (or ``overrides``') infer section.
    inter_threads / intra_threads: ``CTranslate2Translator``'s."""
    config = load_settings(model_dir, overrides)
    infer = config.infer
    with_alignments = with_alignments or infer.with_alignments
    with_scores = with_scores or infer.with_scores
    n_best = n_best or infer.n_best
    copy = config.params.replace_unknown_target
    refuse_unsupported_search(config.params, model_dir)
    if with_alignments or copy:
        refuse_full_context(config, model_dir)
    src_tok, tgt_tok, _, tgt_vocab = load_tokenizers_and_vocabs(config)
    word_level = with_alignments == "hard" and config.data.alignment_level == "words"
    lines = list(read_text_lines(features_file))
    pieces, source_words = translate.tokenize_lines(lines, src_tok, word_level, features_file)
    translator = CTranslate2Translator(
        model_dir, config, n_best, bool(with_alignments or copy), inter_threads, intra_threads
    )
    start = time.time()
    hypotheses = translator(pieces)
    elapsed = time.time() - start
    translate.count_cut(hypotheses, config.params)
    target = translate.TargetText(tgt_tok, tgt_vocab)
    translate.write_lines(hypotheses, pieces, source_words, target, config.params,
                          predictions_file, with_alignments, with_scores)  # fmt: skip
    tokens = sum(len(hyps[0].ids) for hyps in hypotheses)
    logger.info(
        "Translated %d lines with CTranslate2 (%s, %d x %d threads) in %.1f s (%.0f target "
        "tokens/s)", len(lines), model_dir, translator.inter_threads, intra_threads, elapsed,
        tokens / max(elapsed, 1e-9),
    )  # fmt: skip
