"""Files the evaluations during training leave in model_dir, as OpenNMT-tf lays them out.

* ``eval.save_eval_predictions``: ``model_dir/eval/predictions.txt.STEP``, the detokenized 1-best
  dev translations of the evaluation at STEP, one per dev line, in file order.
* ``eval.export_on_best``: ``model_dir/export/STEP`` per new best; ``eval.max_exports_to_keep``
  of them are kept, the oldest (lowest step) removed first.
"""

from __future__ import annotations

import logging
import os
import shutil

logger = logging.getLogger(__name__)

PREDICTIONS_DIR = "eval"  # model_dir/eval/predictions.txt.STEP
EXPORTS_DIR = "export"  # model_dir/export/STEP


def predictions_path(model_dir: str, step: int) -> str:
    return os.path.join(model_dir, PREDICTIONS_DIR, f"predictions.txt.{step}")


def save_predictions(model_dir: str, step: int, lines) -> str:
    """Writes the lines (whole or nothing: a temporary file renamed); returns the path."""
    path = predictions_path(model_dir, step)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(f"{path}.tmp", "w", encoding="utf-8") as f:
        f.writelines(line + "\n" for line in lines)
    os.replace(f"{path}.tmp", path)
    logger.info("Evaluation predictions saved to %s", path)
    return path


def export_path(model_dir: str, step: int) -> str:
    return os.path.join(model_dir, EXPORTS_DIR, str(step))


def prune_exports(model_dir: str, keep: int | None) -> list[str]:
    """Removes all but the ``keep`` newest ``model_dir/export/STEP`` directories (None: keep
    all); other entries of export/ are left alone. Returns the removed paths."""
    directory = os.path.join(model_dir, EXPORTS_DIR)
    if keep is None or not os.path.isdir(directory):
        return []
    steps = sorted(int(name) for name in os.listdir(directory) if name.isdigit())
    removed = [os.path.join(directory, str(step)) for step in steps[: max(len(steps) - keep, 0)]]
    for path in removed:
        shutil.rmtree(path)
        logger.info("Removed the older export %s (eval.max_exports_to_keep = %d)", path, keep)
    return removed
