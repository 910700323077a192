"""seqtrain log --plot: the panels and curves drawn from a run's records."""

import pytest

from seqtrain import runlog
from seqtrain.errors import SeqtrainError

pytest.importorskip("matplotlib")

TRAIN = [
    {"kind": "train", "step": s, "loss": 4.0 / s, "ce": 3.5 / s, "learning_rate": 1e-4 * s}
    for s in (10, 20, 30, 40)
]
EVALS = [
    {"kind": "eval", "step": 20, "loss": 2.0, "bleu": 10.0, "aer": 40.0},
    {"kind": "eval", "step": 40, "loss": 1.5, "bleu": 25.0, "aer": 30.0},
]


def curves(ax):
    return {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in ax.lines}


def test_without_evaluations_one_panel_with_the_learning_rate_on_a_second_axis():
    fig = runlog.figure(TRAIN)
    losses, rate = fig.axes  # the losses and their twin axis; no empty dev panel
    assert rate.get_shared_x_axes().joined(losses, rate)
    assert curves(losses) == {
        "loss": ([10, 20, 30, 40], [0.4, 0.2, 4.0 / 30, 0.1]),
        "ce": ([10, 20, 30, 40], [0.35, 0.175, 3.5 / 30, 0.0875]),
    }
    assert curves(rate) == {"learning rate": ([10, 20, 30, 40], [1e-3, 2e-3, 3e-3, 4e-3])}
    assert rate.get_ylabel() == "learning rate"
    assert {t.get_text() for t in losses.get_legend().get_texts()} == {
        "loss",
        "ce",
        "learning rate",
    }


def test_with_evaluations_dev_metrics_at_their_steps():
    fig = runlog.figure(TRAIN + EVALS)
    losses, rate, dev = fig.axes  # the twin axis is made before the dev panel
    assert curves(losses)["dev loss"] == ([20, 40], [2.0, 1.5])
    assert curves(dev) == {"bleu": ([20, 40], [10.0, 25.0]), "aer": ([20, 40], [40.0, 30.0])}
    assert list(dev.get_xticks()) == [20, 40]
    assert "learning rate" in curves(rate) and dev.get_title() == "dev set (%)"


def test_nothing_to_plot_is_a_user_error():
    with pytest.raises(SeqtrainError, match="nothing|no training"):
        runlog.figure([])
