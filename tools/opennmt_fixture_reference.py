"""OpenNMT-tf's own numbers for the fixture batch; runs INSIDE the OpenNMT-tf 2.32 venv.

Called by ``tools/make_opennmt_fixture.py`` with the work directory holding config.yml, model.py,
the vocabularies, the trained run and batch.src/.tgt/.align. Writes into that directory:

* numbers.json: ``ce_sum``, ``tokens`` and ``eval_loss`` of ``compute_loss(training=False)``
  (unsmoothed CE, no alignment term), ``alignment_cost`` of ``losses.guided_alignment_cost`` on
  the evaluation-mode attention, ``train_loss`` = ``compute_loss(training=True)`` / tokens on
  the same outputs (label smoothing + alignment cost, as the trainer's first reported loss
  without dropout), ``step``;
* logits.npy: float32 [T, V] logits of the first sentence (OpenNMT-tf ids: <unk> is the last);
* next_step.npz: every model variable after ONE more update by ``opennmt.training.Trainer`` on
  the batch with dropout 0 (keys: the checkpoint names), and ``learning_rate`` of that update.
"""

import importlib.util
import json
import os
import sys

import numpy as np
import opennmt
import tensorflow as tf
import yaml
from opennmt.data import text
from opennmt.utils import losses


def load_model(work):
    spec = importlib.util.spec_from_file_location("fixture_model", os.path.join(work, "model.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.model(dropout=0.0)  # same variables; no randomness in any pass


def make_batch(model, work):
    """(features, labels) of batch.* padded as one batch, the way OpenNMT-tf builds them."""

    def example(src, tgt, align):
        features = model.features_inputter.make_features(src)
        labels = model.labels_inputter.make_features(tgt)
        labels["alignment"] = text.alignment_matrix_from_pharaoh(
            align,
            model.features_inputter.get_length(features, ignore_special_tokens=True),
            model.labels_inputter.get_length(labels, ignore_special_tokens=True),
        )
        return features, labels

    lines = []
    for ext in ("src", "tgt", "align"):
        with open(os.path.join(work, f"batch.{ext}"), encoding="utf-8") as f:
            lines.append([line.rstrip("\n") for line in f])
    dataset = tf.data.Dataset.from_tensor_slices(tuple(lines)).map(example)
    return dataset.padded_batch(len(lines[0]))


def main(work):
    with open(os.path.join(work, "config.yml"), encoding="utf-8") as f:
        config = yaml.safe_load(f)
    params = config["params"]
    model = load_model(work)
    model.initialize(
        {"source_vocabulary": config["data"]["source_vocabulary"],
         "target_vocabulary": config["data"]["target_vocabulary"]},
        params=params,
    )  # fmt: skip
    model.create_variables()
    schedule = opennmt.schedules.make_learning_rate_schedule(
        params["learning_rate"], params["decay_type"], schedule_params=dict(params["decay_params"])
    )
    optimizer = opennmt.optimizers.make_optimizer(
        params["optimizer"], schedule, **params["optimizer_params"]
    )
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer)
    path = tf.train.latest_checkpoint(config["model_dir"])
    checkpoint.restore(path).assert_existing_objects_matched()
    dataset = make_batch(model, work)
    features, labels = next(iter(dataset))

    outputs, _ = model(features, labels, training=False)
    ce_sum, tokens, _ = model.compute_loss(outputs, labels, training=False)
    train_sum, _, _ = model.compute_loss(outputs, labels, training=True)
    alignment_cost = losses.guided_alignment_cost(
        outputs["attention"][:, :-1],
        labels["alignment"],
        sequence_length=model.labels_inputter.get_length(labels, ignore_special_tokens=True),
        cost_type=params["guided_alignment_type"],
        weight=params["guided_alignment_weight"],
    )
    first_length = int(labels["length"][0])
    np.save(os.path.join(work, "logits.npy"), outputs["logits"][0, :first_length].numpy())
    step = int(optimizer.iterations.numpy())
    numbers = {
        "checkpoint": os.path.basename(path),
        "step": step,
        "ce_sum": float(ce_sum),
        "tokens": float(tokens),
        "eval_loss": float(ce_sum / tokens),
        "alignment_cost": float(alignment_cost),
        "train_loss": float(train_sum / tokens),
        "first_sentence_length": first_length,
        "vocabulary_sizes": [
            int(model.features_inputter.vocabulary_size),
            int(model.labels_inputter.vocabulary_size),
        ],
    }
    learning_rate = float(schedule(optimizer.iterations))
    trainer = opennmt.training.Trainer(model, optimizer)
    trainer(dataset.repeat(), max_step=step + 1, report_steps=1, save_steps=None, eval_steps=None)
    scratch = checkpoint.write(os.path.join(work, "next", "ckpt"))
    reader = tf.train.load_checkpoint(scratch)
    weights = {
        name: reader.get_tensor(name)
        for name, _ in tf.train.list_variables(scratch)
        if name.startswith("model/") and "OPTIMIZER_SLOT" not in name
    }
    weights["learning_rate"] = np.float32(learning_rate)
    np.savez_compressed(os.path.join(work, "next_step.npz"), **weights)
    numbers["next_step"] = int(optimizer.iterations.numpy())
    numbers["next_step_learning_rate"] = learning_rate
    with open(os.path.join(work, "numbers.json"), "w", encoding="utf-8") as f:
        json.dump(numbers, f, indent=1)
    print(json.dumps(numbers, indent=1))


if __name__ == "__main__":
    main(sys.argv[1])
