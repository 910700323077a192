"""Evaluation and inference batches: which examples go together (``batch_type``,
``length_bucket_width`` of the ``eval`` and ``infer`` sections, as OpenNMT-tf).

Training batches are made by ``data.train_dataset``; these are the finite, unshuffled ones.
"""

from __future__ import annotations

import numpy as np


def batch_groups(
    lengths: np.ndarray, batch_size: int, batch_type: str = "examples", length_bucket_width: int = 0
) -> list[np.ndarray]:
    """Example indices of each batch, in the order the batches are made.

    lengths [N]: the padded size an example needs (its longest side). length_bucket_width 0:
    file order; w > 0: examples sorted (stably) by bucket (length - 1) // w, and a batch never
    mixes buckets. batch_type ``examples``: at most batch_size examples per batch; ``tokens``:
    at most batch_size padded tokens, B × (longest length in the batch) (one example at least).
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    if length_bucket_width:
        keys = (lengths - 1) // length_bucket_width  # floor: an empty line is bucket -1
        order = np.argsort(keys, kind="stable")
    else:
        keys, order = np.zeros_like(lengths), np.arange(len(lengths))
    groups, current, longest = [], [], 0
    for index in order:
        grown = max(longest, int(lengths[index]))
        full = (
            len(current) >= batch_size
            if batch_type == "examples"
            else (len(current) + 1) * grown > batch_size
        )
        if current and (full or keys[index] != keys[current[0]]):
            groups.append(np.array(current, dtype=np.int64))
            current, grown = [], int(lengths[index])
        current.append(index)
        longest = grown
    if current:
        groups.append(np.array(current, dtype=np.int64))
    return groups
