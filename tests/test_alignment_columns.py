"""params.guided_alignment_columns: the column term of the aligned_tokens cost, by hand."""

import math

import numpy as np
import pytest

from seqtrain import config as cfg
from seqtrain import config_checks, losses
from seqtrain.errors import SeqtrainError


def example():
    """Two sentences, 3 decoder steps (the last is dropped), 3 source positions.

    Sentence 0: len_t 2, source length 2, links (0,0), (0,1), (1,1). Sentence 1: len_t 1, source
    length 3, link (2,0); its row 1 is past the sentence and its link there must be ignored.
    """
    attention = np.zeros([2, 3, 3], np.float32)
    attention[0, 0, :2] = [0.8, 0.2]
    attention[0, 1, :2] = [0.4, 0.6]
    attention[0, 2, :2] = [0.5, 0.5]  # the dropped last step
    attention[1, 0] = [0.1, 0.2, 0.7]
    attention[1, 1] = [0.3, 0.3, 0.4]  # past len_t
    gold = np.zeros([2, 3, 3], np.float32)
    gold[0, 0, 0] = gold[0, 1, 0] = gold[0, 1, 1] = 1
    gold[1, 0, 2] = 1
    gold[1, 1, 0] = 1  # past len_t: not supervised
    return attention, gold, np.array([2, 1]), np.array([2, 3])


def test_column_cost_by_hand():
    attention, gold, length, source_length = example()
    rows = [-math.log(0.8), -0.5 * math.log(0.4) - 0.5 * math.log(0.6), -math.log(0.7)]
    # Sentence 0: column 0 holds rows 0 and 1 (0.8, 0.4 → 2/3, 1/3), column 1 row 1 alone
    # (0.2, 0.6 → 1/4, 3/4). Sentence 1: column 2 has one real row (0.7 → 1).
    columns = [-0.5 * math.log(2 / 3) - 0.5 * math.log(1 / 3), -math.log(3 / 4), 0.0]
    plain = losses.guided_alignment_sum(attention, gold, length, source_length, "ce")
    both = losses.guided_alignment_sum(attention, gold, length, source_length, "ce", columns=True)
    assert float(plain[1]) == float(both[1]) == 3.0  # aligned target tokens, unchanged
    np.testing.assert_allclose(float(plain[0]), sum(rows), rtol=1e-6)
    np.testing.assert_allclose(float(both[0]), sum(rows) + sum(columns), rtol=1e-6)


def test_column_cost_carries_example_weights():
    attention, gold, length, source_length = example()
    weight = np.array([2.0, 0.5], np.float32)
    rows = [-math.log(0.8), -0.5 * math.log(0.4) - 0.5 * math.log(0.6), -math.log(0.7)]
    columns = -0.5 * math.log(2 / 3) - 0.5 * math.log(1 / 3) - math.log(3 / 4)
    total, aligned = losses.guided_alignment_sum(
        attention, gold, length, source_length, "ce", sequence_weight=weight, columns=True
    )
    assert float(aligned) == 2.0 * 2 + 0.5
    expected = 2.0 * (rows[0] + rows[1] + columns) + 0.5 * rows[2]
    np.testing.assert_allclose(float(total), expected, rtol=1e-6)


def test_padding_does_not_change_the_column_cost():
    attention, gold, length, source_length = example()
    padded = np.zeros([2, 5, 6], np.float32)
    padded_gold = np.zeros([2, 5, 6], np.float32)
    padded[:, :3, :3], padded_gold[:, :3, :3] = attention, gold
    base = losses.guided_alignment_sum(attention, gold, length, source_length, "ce", columns=True)
    big = losses.guided_alignment_sum(
        padded, padded_gold, length, source_length, "ce", columns=True
    )
    np.testing.assert_allclose(float(big[0]), float(base[0]), rtol=1e-6)


@pytest.mark.parametrize(
    "params", ["{guided_alignment_type: ce}", "{guided_alignment_type: mse, "
               "guided_alignment_normalization: aligned_tokens}"],
)  # fmt: skip
def test_columns_need_ce_and_aligned_tokens(tmp_path, params):
    path = tmp_path / "run.yml"
    text = f"model_dir: r\ndata: {{train_alignments: a}}\nparams: {params[:-1]}, "
    path.write_text(text + "guided_alignment_columns: true}\n", encoding="utf-8")
    with pytest.raises(SeqtrainError, match="guided_alignment_columns needs"):
        config_checks.check(cfg.load_config([str(path)]))
