"""eval.save_eval_predictions and eval.max_exports_to_keep (seqtrain.eval_outputs)."""

import os

from conftest import write_lines
from test_evaluate import make_run

from seqtrain import eval_outputs, evaluate, translate
from seqtrain.export import restore_model
from seqtrain.vocab import read_text_lines


def test_prune_exports_keeps_the_newest_steps(tmp_path):
    exports = tmp_path / "export"
    for name in ("900", "1000", "50", "200", "notes"):  # numeric order != name order
        os.makedirs(exports / name)
    write_lines(exports / "200" / "saved_model.pb", ["x"])
    removed = eval_outputs.prune_exports(str(tmp_path), 2)
    assert sorted(removed) == [str(exports / "200"), str(exports / "50")]
    assert sorted(os.listdir(exports)) == ["1000", "900", "notes"]  # other entries stay
    assert eval_outputs.prune_exports(str(tmp_path), None) == []
    assert eval_outputs.prune_exports(str(tmp_path / "none"), 1) == []


def test_save_eval_predictions_writes_the_dev_translations_per_step(tmp_path):
    """model_dir/eval/predictions.txt.STEP holds what ``translate`` prints for the dev source
    (the same decoding settings), one line per dev line; without scorers too."""
    config, files = make_run(
        str(tmp_path), lines=6, overrides={"eval": {"save_eval_predictions": True, "scorers": []}}
    )
    model, _ = restore_model(config)
    evaluator = evaluate.Evaluator.for_training(config, model)
    metrics = evaluator(7)
    assert "bleu" not in metrics
    expected = str(tmp_path / "translate.txt")
    translate.translate_command(config, files["src"], expected)
    path = os.path.join(config.model_dir, "eval", "predictions.txt.7")
    assert list(read_text_lines(path)) == list(read_text_lines(expected))
    assert len(list(read_text_lines(path))) == 6
    # Off by default; the evaluation of another worker never writes.
    os.makedirs(tmp_path / "off")
    config, _ = make_run(str(tmp_path / "off"), lines=6)
    evaluate.Evaluator.for_training(config, restore_model(config)[0])(7)
    assert not os.path.exists(os.path.join(config.model_dir, "eval"))
