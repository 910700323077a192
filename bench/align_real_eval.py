"""Scores every checkpoint of one bench/align_real.py run (run by it, one process per run).

For each checkpoint: on the gold set (the run's data.eval_* files) the guided head's links by
forced decoding of the references as ``seqtrain eval`` extracts them (the run's
``params.alignment_extraction``, intersection by default), and from the head's rows: argmax
per target token, intersection, and every source token whose row-normalized attention is ≥
``--threshold`` (token-level runs only: with ``alignment_level: words`` the rows are pieces and
only the evaluator's word links are reported); the gold-set BLEU; dev CE on the valid subset (per
model token: pieces for a subword run), and its BLEU (beam 4) at the last checkpoint.

    python bench/align_real_eval.py MODEL_DIR --valid VALID.de VALID.en --output scores.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

import numpy as np
import tensorflow as tf

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from seqtrain import aer, data, decoding  # noqa: E402
from seqtrain.config import load_config  # noqa: E402
from seqtrain.evaluate import EvalSet, Evaluator  # noqa: E402
from seqtrain.export import restore_model  # noqa: E402


def soft_rows(model, eval_set: EvalSet, batch_size: int) -> list[np.ndarray]:
    """Per gold sentence, the guided head's rows [target tokens, source tokens] (no </s>)."""
    rows = [None] * len(eval_set.corpus)
    for batch in data.eval_dataset(eval_set.corpus, batch_size, with_alignment=False):
        _, attention = decoding.forced_decoding(model, batch)
        attention = attention.numpy()
        target = batch["target_length"].numpy() - 1
        source = batch["source_length"].numpy()
        for row, index in enumerate(batch["index"].numpy()):
            rows[index] = attention[row, : target[row], : source[row]]
    return rows


def threshold_links(matrix: np.ndarray, threshold: float) -> set:
    """(s, t) links where the row-normalized attention is ≥ threshold."""
    normalized = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1e-9)
    return {(int(s), int(t)) for t, s in zip(*np.nonzero(normalized >= threshold))}


def intersection_links(matrix: np.ndarray) -> set:
    """``seqtrain eval``'s links with params.alignment_extraction: intersection."""
    return set(decoding.hard_alignments(matrix, *matrix.shape, "intersection"))


def row_figures(model, gold_set: EvalSet, config, args, step: int) -> dict:
    """AER / precision / recall of the threshold and intersection links of the head's rows
    (token-level runs); saves the rows to MODEL_DIR/gold-attention-STEP.npz."""
    rows = soft_rows(model, gold_set, config.eval.batch_size)
    figures = {}
    for name, links in (
        ("threshold", [threshold_links(m, args.threshold) for m in rows]),
        ("intersection", [intersection_links(m) for m in rows]),
    ):
        scores = aer.score(links, gold_set.sure, gold_set.possible)
        for key in ("aer", "precision", "recall"):
            figures[f"{key}_{name}"] = 100 * scores[key]
    np.savez_compressed(
        os.path.join(args.model_dir, f"gold-attention-{step}.npz"),
        *[m.astype(np.float16) for m in rows],
    )
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir")
    parser.add_argument("--valid", nargs=2, required=True, metavar=("SOURCE", "TARGET"))
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--output", required=True)
    args = parser.parse_args()
    config = load_config([os.path.join(args.model_dir, "config.yml")])
    no_bleu = dataclasses.replace(config.eval, scorers=())
    valid = dataclasses.replace(
        config,
        data=dataclasses.replace(
            config.data,
            eval_features_file=args.valid[0],
            eval_labels_file=args.valid[1],
            eval_alignments=None,
        ),
    )
    cache = os.path.join(args.model_dir, "cache")
    gold_set = EvalSet.load(config, cache_dir=cache)
    valid_set = EvalSet.load(valid, cache_dir=os.path.join(args.model_dir, "cache-valid"))
    paths = tf.train.get_checkpoint_state(args.model_dir).all_model_checkpoint_paths
    results = []
    for k, path in enumerate(paths):
        step = int(path.rsplit("-", 1)[1])
        model, _ = restore_model(config, path)
        gold = Evaluator(config, model, gold_set).evaluate()
        record = {"step": step, "gold_bleu": gold["bleu"], "gold_ce": gold["loss"]}
        last = k == len(paths) - 1
        valid_config = valid if last else dataclasses.replace(valid, eval=no_bleu)
        figures = Evaluator(valid_config, model, valid_set).evaluate()
        record["valid_ce"] = figures["loss"]
        if "bleu" in figures:
            record["valid_bleu"] = figures["bleu"]
        if "aer" in gold:
            record.update({k: gold[k] for k in ("aer", "precision", "recall")})
            if config.data.alignment_level == "tokens":
                record.update(row_figures(model, gold_set, config, args, step))
            elif config.params.alignment_extraction == "intersection":
                # The model's rows are pieces: only the evaluator's word links (its extraction,
                # merged to the gold's words) are comparable; the piece-level columns are left out.
                record.update(
                    {f"{k}_intersection": gold[k] for k in ("aer", "precision", "recall")}
                )
        results.append(record)
        print(json.dumps(record), flush=True)
    with open(args.output, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
