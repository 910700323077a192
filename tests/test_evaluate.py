"""seqtrain.evaluate: eval metrics, early stopping, best weights (translate: test_translate)."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import sacrebleu
import tensorflow as tf
from conftest import TOY, write_lines

from seqtrain import aer, data, decoding, evaluate, losses, translate
from seqtrain import config as cfg
from seqtrain.checkpoints import build_model
from seqtrain.errors import SeqtrainError
from seqtrain.export import restore_model
from seqtrain.vocab import Vocab, build_vocab, read_text_lines

LINES = 12
EOS = 2


def make_run(root, lines=LINES, overrides=None):
    """A tiny untrained (seeded) model checkpoint on the first toy dev lines: (config, files)."""
    files = {}
    for name, source in (("src", "dev.src"), ("tgt", "dev.tgt"), ("align", "dev.src-tgt.align")):
        files[name] = os.path.join(root, f"dev.{name}")
        write_lines(files[name], list(read_text_lines(os.path.join(TOY, source)))[:lines])
    build_vocab([files["src"]], os.path.join(root, "src.vocab"))
    build_vocab([files["tgt"]], os.path.join(root, "tgt.vocab"))
    raw = {
        "model_dir": os.path.join(root, "model"),
        "data": {
            "source_vocabulary": os.path.join(root, "src.vocab"),
            "target_vocabulary": os.path.join(root, "tgt.vocab"),
            "eval_features_file": files["src"],
            "eval_labels_file": files["tgt"],
            "eval_alignments": files["align"],
        },
        "model": {"num_layers": 1, "num_units": 16, "num_heads": 2, "ffn_inner_dim": 32},
        "params": {"beam_width": 2, "maximum_decoding_length": 6},
        "eval": {"scorers": ["bleu", "chrf"], "batch_size": 5},
        "infer": {"batch_size": 5},
    }
    config = cfg.build(cfg.merge(raw, overrides or {}), "test")
    model = build_model(config)
    tf.train.Checkpoint(model=model).save(os.path.join(config.model_dir, "ckpt"))
    return config, files


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_run(str(tmp_path_factory.mktemp("run")))


# ---------------------------------------------------------------- pure functions


def test_is_better_directions_and_margin():
    assert evaluate.is_better("loss", 1.0, 2.0) and not evaluate.is_better("loss", 2.0, 1.0)
    assert evaluate.is_better("aer", 10.0, 12.0) and evaluate.is_better("perplexity", 3.0, 4.0)
    assert evaluate.is_better("bleu", 20.0, 10.0) and not evaluate.is_better("chrf", 10.0, 20.0)
    assert not evaluate.is_better("loss", 1.0, 1.0)  # equal is no improvement
    assert not evaluate.is_better("loss", 1.9, 2.0, min_improvement=0.1)
    assert evaluate.is_better("loss", 1.85, 2.0, min_improvement=0.1)
    assert not evaluate.is_better("bleu", 10.5, 10.0, min_improvement=0.5)
    assert evaluate.is_better("bleu", 10.6, 10.0, min_improvement=0.5)
    assert evaluate.is_better("bleu", 0.0, None) and not evaluate.is_better("aer", math.nan, 5.0)
    assert evaluate.is_better("aer", 5.0, math.nan)


@pytest.mark.parametrize(
    "metric, values, min_improvement, steps, stop_after",
    [
        ("loss", [5.0, 4.0, 4.5, 4.2, 4.1], 0.0, 3, 5),  # 3 evaluations without a new best
        ("loss", [5.0, 4.0, 3.95, 3.92, 3.91], 0.1, 3, 5),  # gains under 0.1 do not count
        ("loss", [5.0, 4.0, 3.95, 3.85, 3.8], 0.1, 3, None),  # 3.85 is 0.15 below 4.0: resets
        ("bleu", [10.0, 12.0, 11.0, 12.0], 0.0, 2, 4),  # equal to the best is no improvement
        ("bleu", [10.0, 9.0, 8.0, 11.0, 10.0], 0.0, 3, None),
        ("aer", [30.0, math.nan, 40.0], 0.0, 2, 3),  # NaN never improves
    ],
)
def test_patience(metric, values, min_improvement, steps, stop_after):
    patience = evaluate.Patience(metric, min_improvement, steps)
    stopped = None
    for count, value in enumerate(values, 1):
        patience.update(value)
        if patience.should_stop and stopped is None:
            stopped = count
    assert stopped == stop_after
    if stopped:
        assert metric in patience.reason and f"last {steps} evaluations" in patience.reason


def read(path):
    return list(read_text_lines(path))


# ---------------------------------------------------------------- evaluation


def reference_batch(config, files):
    """All dev lines in one batch (batch contract), built without the eval pipeline."""
    source_vocab = Vocab.load(config.data.source_vocabulary)
    target_vocab = Vocab.load(config.data.target_vocabulary)
    examples = [
        (source_vocab.ids(s.split()), target_vocab.ids(t.split()), None)
        for s, t in zip(read(files["src"]), read(files["tgt"]))
    ]
    return data.batch_from_examples(examples)


def test_forced_decoding_attention_equals_forward_and_incremental(run):
    config, files = run
    model, _ = restore_model(config)
    batch = reference_batch(config, files)
    logits, attention = model(batch, training=False)
    _, forced = decoding.forced_decoding(model, batch)
    mask = tf.sequence_mask(batch["target_length"], tf.shape(logits)[1], tf.float32).numpy()
    np.testing.assert_allclose(forced.numpy(), attention.numpy() * mask[..., None], atol=1e-6)
    # The incremental decoder fed the reference gives the same rows as the teacher-forced pass.
    memory, memory_mask = model.encode(batch["source_ids"], batch["source_length"])
    cache = model.initial_cache(memory, memory_mask)
    target_in = batch["target_in"].numpy()
    for t in range(target_in.shape[1]):
        _, step_attention, cache = model.decode_step(tf.constant(target_in[:, t]), t, cache)
        np.testing.assert_allclose(
            step_attention.numpy() * mask[:, t, None], forced.numpy()[:, t], atol=1e-5
        )


def test_eval_metrics_match_independent_computations(run, tmp_path):
    config, files = run
    metrics = evaluate.evaluate_command(config)
    assert set(metrics) == {
        "loss", "perplexity", "bleu", "chrf", "cut", "aer", "precision", "recall"
    }  # fmt: skip
    assert all(isinstance(v, float) for v in metrics.values())
    model, _ = restore_model(config)
    batch = reference_batch(config, files)
    logits, attention = model(batch, training=False)
    # Loss: numpy log-softmax CE over real target tokens (</s> included), one batch.
    z = logits.numpy().astype(np.float64)
    log_softmax = z - np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1, keepdims=True))
    log_softmax -= z.max(-1, keepdims=True)
    labels, lengths = batch["target_out"].numpy(), batch["target_length"].numpy()
    nll = [-log_softmax[b, t, labels[b, t]] for b in range(len(lengths)) for t in range(lengths[b])]
    assert metrics["loss"] == pytest.approx(np.mean(nll), rel=1e-5)
    ce_sum, _, tokens = losses.cross_entropy_sequence_loss(
        logits, batch["target_out"], batch["target_length"], training=False
    )
    assert metrics["loss"] == pytest.approx(float(ce_sum / tokens), rel=1e-5)
    assert metrics["perplexity"] == pytest.approx(math.exp(metrics["loss"]), rel=1e-6)
    # BLEU / chrF: sacrebleu on translate's output (a separate decoding path) vs raw references.
    out = str(tmp_path / "hyp.txt")
    translate.translate_command(config, files["src"], out)
    hyps, refs = read(out), read(files["tgt"])
    assert metrics["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score, abs=1e-9)
    assert metrics["chrf"] == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs]).score, abs=1e-9)
    # cut: translations as long as their limit, min(6, 2 S + 10) = 6 tokens, never ended.
    assert metrics["cut"] == sum(len(h.split()) == 6 for h in hyps)
    # AER: links of the forced attention (params.alignment_extraction: intersection, the default:
    # the row's argmax source s whose column argmax over the real rows is t), by aer.score.
    att, sources = attention.numpy(), batch["source_length"].numpy()
    assert config.params.alignment_extraction == "intersection"
    links = []
    for b in range(len(lengths)):
        real = att[b, : lengths[b] - 1, : sources[b]]
        links.append(
            {(int(s), t) for t, s in enumerate(real.argmax(1)) if real[:, s].argmax() == t}
        )
    gold = [aer.parse_gold_line(line) for line in read(files["align"])]
    expected = aer.score(links, [g[0] for g in gold], [g[1] for g in gold])
    for key in ("aer", "precision", "recall"):
        assert metrics[key] == pytest.approx(100.0 * expected[key], abs=1e-9)


def test_eval_with_other_files_and_without_gold(run, tmp_path):
    config, files = run
    sources, targets = read(files["src"]), read(files["tgt"])
    write_lines(tmp_path / "a.src", sources[:4])
    write_lines(tmp_path / "a.tgt", targets[:4])
    metrics = evaluate.evaluate_command(
        config, features_file=str(tmp_path / "a.src"), labels_file=str(tmp_path / "a.tgt")
    )
    assert set(metrics) == {"loss", "perplexity", "bleu", "chrf", "cut"}
    with pytest.raises(SeqtrainError, match="labels_file"):
        evaluate.evaluate_command(config, features_file=str(tmp_path / "a.src"))


def read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def scripted(evaluator, values):
    """Replace the expensive evaluate() by a script of metric dicts."""
    script = iter(values)
    evaluator.evaluate = lambda: dict(next(script))


def test_best_weights_and_early_stopping(tmp_path):
    config, _ = make_run(str(tmp_path), lines=4, overrides={
        "eval": {"early_stopping": {"metric": "bleu", "min_improvement": 0.5, "steps": 2}},
    })  # fmt: skip
    model, _ = restore_model(config)
    evaluator = evaluate.Evaluator.for_training(config, model)
    scripted(evaluator, [{"loss": 3.0, "bleu": 10.0}, {"loss": 2.0, "bleu": 12.0},
                         {"loss": 1.0, "bleu": 12.2}, {"loss": 1.0, "bleu": 11.0}])  # fmt: skip
    best = os.path.join(config.model_dir, "best", "best.json")
    kernel = model.trainable_variables[0]
    original = kernel.numpy()
    evaluator(100)
    assert read_json(best)["step"] == 100 and not evaluator.should_stop()
    kernel.assign(original + 1.0)  # "training" changes the weights
    evaluator(200)
    record = read_json(best)
    assert record["step"] == 200 and record["metric"] == "bleu"
    assert record["metrics"] == {"loss": 2.0, "bleu": 12.0}
    kernel.assign(original + 2.0)
    evaluator(300)  # best BLEU (12.2) but not by more than 0.5: a new best, no reset of patience
    assert read_json(best)["step"] == 300 and not evaluator.should_stop()
    evaluator(400)
    assert evaluator.should_stop() and "bleu" in evaluator.stop_reason
    assert read_json(best)["step"] == 300
    restored, _ = restore_model(config, os.path.join(config.model_dir, "best"))
    np.testing.assert_array_equal(restored.trainable_variables[0].numpy(), original + 2.0)
    # A resumed run knows the earlier best: a worse first evaluation does not replace it.
    again = evaluate.Evaluator.for_training(config, model)
    scripted(again, [{"loss": 1.0, "bleu": 12.1}])
    again(500)
    assert read_json(best)["step"] == 300


def test_only_the_chief_writes_best_and_export(tmp_path):
    """Other workers of a multi-worker run track the same best values and early stopping but
    write neither model_dir/best/ nor model_dir/export/STEP."""
    config, _ = make_run(str(tmp_path), lines=4, overrides={
        "eval": {"early_stopping": {"metric": "loss", "steps": 1}, "export_on_best": "loss"},
    })  # fmt: skip
    model, _ = restore_model(config)
    worker = evaluate.Evaluator.for_training(config, model, chief=False)
    scripted(worker, [{"loss": 3.0}, {"loss": 2.0}, {"loss": 2.5}])
    for step in (1, 2, 3):
        worker(step)
    assert worker.best_value == 2.0 and worker.export_best == 2.0 and worker.should_stop()
    assert not os.path.exists(os.path.join(config.model_dir, "best"))
    assert not os.path.exists(os.path.join(config.model_dir, "export"))
    chief = evaluate.Evaluator.for_training(config, model)
    scripted(chief, [{"loss": 3.0}])
    chief(1)
    assert read_json(os.path.join(config.model_dir, "best", "best.json"))["step"] == 1
    assert os.path.isfile(os.path.join(config.model_dir, "export", "1", "saved_model.pb"))


def test_evaluator_is_none_without_eval_files(run):
    config, _ = run
    data_section = {**cfg.to_dict(config)["data"], "eval_features_file": None}
    bare = cfg.build({"model_dir": config.model_dir, "data": data_section}, "test")
    assert evaluate.Evaluator.for_training(bare, None) is None


def test_aer_metric_needs_gold(tmp_path):
    config, _ = make_run(str(tmp_path), lines=3, overrides={
        "data": {"eval_alignments": None}, "eval": {"early_stopping": {"metric": "aer"}},
    })  # fmt: skip
    with pytest.raises(SeqtrainError, match="eval_alignments"):
        evaluate.Evaluator.for_training(config, restore_model(config)[0])


def test_format_metrics():
    line = evaluate.format_metrics(
        {"loss": 2.5, "perplexity": 12.182494, "bleu": 23.456, "cut": 3.0}
    )
    assert line == "loss = 2.500000 ; perplexity = 12.18 ; bleu = 23.46 ; cut = 3"


# ---------------------------------------------------------------- training quality (slow)


def toy_dir(tmp_path):
    """data/toy, or a freshly generated copy when the repository lacks it."""
    if os.path.isfile(os.path.join(TOY, "train.src")):
        return TOY
    script = os.path.join(os.path.dirname(TOY), "..", "tools", "make_toy_data.py")
    subprocess.run([sys.executable, script, "--output-dir", str(tmp_path / "toy")], check=True)
    return str(tmp_path / "toy")


@pytest.mark.slow
def test_guided_alignment_lowers_dev_aer(tmp_path):
    """Same data, seed and steps; only guided alignment differs: the guided head must align the
    dev references clearly better. The trainer's own evaluation must agree with ``eval``."""
    from seqtrain import trainer

    toy = toy_dir(tmp_path)
    build_vocab([os.path.join(toy, "train.src")], str(tmp_path / "src.vocab"))
    build_vocab([os.path.join(toy, "train.tgt")], str(tmp_path / "tgt.vocab"))
    steps, results = 250, {}
    for guided in (True, False):
        config = cfg.build({
            "model_dir": str(tmp_path / f"guided_{guided}"),
            "data": {
                "train_features_file": os.path.join(toy, "train.src"),
                "train_labels_file": os.path.join(toy, "train.tgt"),
                "train_alignments": os.path.join(toy, "train.src-tgt.align"),
                "eval_features_file": os.path.join(toy, "dev.src"),
                "eval_labels_file": os.path.join(toy, "dev.tgt"),
                "eval_alignments": os.path.join(toy, "dev.src-tgt.align"),
                "source_vocabulary": str(tmp_path / "src.vocab"),
                "target_vocabulary": str(tmp_path / "tgt.vocab"),
            },
            "model": {"num_layers": 2, "num_units": 64, "num_heads": 4, "ffn_inner_dim": 128},
            "params": {
                "decay_params": {"model_dim": 64, "warmup_steps": 200},
                "guided_alignment_type": "ce" if guided else None,
                "guided_alignment_normalization": "aligned_tokens",
            },
            "train": {"batch_size": 2048, "max_step": steps, "save_checkpoints_steps": steps,
                      "save_summary_steps": 50, "length_bucket_width": 2},
            "eval": {"steps": steps, "scorers": [], "batch_size": 64},
        }, "test")  # fmt: skip
        trainer.train(config)
        results[guided] = evaluate.evaluate_command(config)
        with open(os.path.join(config.model_dir, "metrics.jsonl"), encoding="utf-8") as f:
            (logged,) = [r for r in map(json.loads, f) if r["kind"] == "eval"]
        assert logged["step"] == steps
        assert logged["aer"] == pytest.approx(results[guided]["aer"], abs=1e-6)
        assert read_json(os.path.join(config.model_dir, "best", "best.json"))["step"] == steps
    assert results[True]["aer"] < results[False]["aer"] - 5.0, results


def test_unknown_export_metric(run):
    config, _ = run
    raw = cfg.to_dict(config)
    raw["eval"]["export_on_best"] = "blue"
    with pytest.raises(SeqtrainError, match="export_on_best"):
        evaluate.Evaluator.for_training(cfg.build(raw, "test"), restore_model(config)[0])
