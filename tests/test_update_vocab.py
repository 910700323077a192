"""``seqtrain update-vocab`` (OpenNMT-tf's update_vocab): rows of kept tokens copied from the old
checkpoint with their LazyAdam moments, rows of new tokens freshly initialized with zero moments,
every other variable and the step kept; and the user's path: train with ``single_pass`` ->
update-vocab -> train on with the new vocabularies."""

import os

import numpy as np
import pytest
import tensorflow as tf
import yaml
from conftest import SOURCE_WORDS, TARGET_WORDS, run_cli, tiny_config, write_config

from seqtrain import config as cfg
from seqtrain import data, vocab_update
from seqtrain.trainer import _datasets

SPECIALS = ["<blank>", "<s>", "</s>", "<unk>"]
NEW_SOURCE = SPECIALS + list(reversed(SOURCE_WORDS[4:])) + ["n1", "n2", "n3"]  # 27 tokens
NEW_TARGET = SPECIALS + list(TARGET_WORDS.values())[4:] + ["m1"]  # 25 tokens
OLD_SOURCE = SPECIALS + SOURCE_WORDS
OLD_TARGET = SPECIALS + list(TARGET_WORDS.values())


def write_vocab(path, tokens):
    path.write_text("\n".join(tokens) + "\n", encoding="utf-8")
    return str(path)


def read(path):
    reader = tf.train.load_checkpoint(path)
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}


def slot_names(values, shape):
    """The m and v slot names of the variable with this (vocabulary-sized) shape."""
    names = sorted(n for n, v in values.items() if n.startswith("optimizer/_slots/"))
    return [n for n in names if values[n].shape == tuple(shape)]


def check_update(old_path, new_path, units):
    """The assertions of the module docstring, on two checkpoint files."""
    old, new = read(old_path), read(new_path)
    src_map = [OLD_SOURCE.index(t) if t in OLD_SOURCE else -1 for t in NEW_SOURCE]
    tgt_map = [OLD_TARGET.index(t) if t in OLD_TARGET else -1 for t in NEW_TARGET]
    vocab_vars = {  # name -> (row map, axis, new rows: "init" or "zero")
        "model/source_embedding/.ATTRIBUTES/VARIABLE_VALUE": (src_map, 0, "init"),
        "model/target_embedding/.ATTRIBUTES/VARIABLE_VALUE": (tgt_map, 0, "init"),
        "model/output/kernel/.ATTRIBUTES/VARIABLE_VALUE": (tgt_map, 1, "init"),
        "model/output/bias/.ATTRIBUTES/VARIABLE_VALUE": (tgt_map, 0, "zero"),
    }
    sizes = {"source": len(NEW_SOURCE), "target": len(NEW_TARGET)}
    slots = {
        "model/source_embedding/.ATTRIBUTES/VARIABLE_VALUE": [sizes["source"], units],
        "model/target_embedding/.ATTRIBUTES/VARIABLE_VALUE": [sizes["target"], units],
        "model/output/kernel/.ATTRIBUTES/VARIABLE_VALUE": [units, sizes["target"]],
        "model/output/bias/.ATTRIBUTES/VARIABLE_VALUE": [sizes["target"]],
    }
    checked = set()
    for name, (rows, axis, fresh) in vocab_vars.items():
        pairs = [(name, fresh)] + [(s, "zero") for s in slot_names(new, slots[name])]
        assert len(pairs) == 3, pairs  # the variable, m and v
        for key, new_rows in pairs:
            a, b = np.moveaxis(old[key], axis, 0), np.moveaxis(new[key], axis, 0)
            assert b.shape[0] == len(rows)
            for j, i in enumerate(rows):
                if i >= 0:
                    np.testing.assert_array_equal(b[j], a[i], err_msg=f"{key} row {j}")
                elif new_rows == "zero":
                    assert not b[j].any(), f"{key} row {j}"
                else:  # glorot-uniform row of the new model: non-zero, within the bound
                    limit = np.sqrt(6.0 / sum(new[name].shape))
                    assert b[j].any() and np.abs(b[j]).max() <= limit, f"{key} row {j}"
            checked.add(key)
    # Moments of kept rows are not zero (else copying them would prove nothing).
    assert old[slot_names(new, slots[next(iter(slots))])[0]].any()
    for key in set(new) - checked:
        if key.startswith(("model/", "optimizer/")):
            np.testing.assert_array_equal(new[key], old[key], err_msg=key)
    assert new["optimizer/iterations/.ATTRIBUTES/VARIABLE_VALUE"] > 0


@pytest.fixture
def eager():
    tf.config.run_functions_eagerly(True)
    yield
    tf.config.run_functions_eagerly(False)


def test_update_vocab_rows_slots_and_step(corpus, tmp_path, eager):
    """In process: 2 training steps (non-zero moments), then update_vocab."""
    from seqtrain.trainer import train

    train_cfg = {"max_step": 2, "save_checkpoints_steps": 2, "save_summary_steps": 1}
    raw = tiny_config(corpus, tmp_path / "run", train=train_cfg)
    config = cfg.build(raw, "test")
    train(config)
    src = write_vocab(tmp_path / "new.src.vocab", NEW_SOURCE)
    tgt = write_vocab(tmp_path / "new.tgt.vocab", NEW_TARGET)
    out = str(tmp_path / "updated")
    path = vocab_update.update_vocab(config, out, src, tgt)
    assert path == os.path.join(out, "ckpt-2")
    check_update(tf.train.latest_checkpoint(str(tmp_path / "run")), path, units=32)
    with open(os.path.join(out, "config.yml"), encoding="utf-8") as f:
        saved = yaml.safe_load(f)
    assert saved["model_dir"] == out
    assert (saved["data"]["source_vocabulary"], saved["data"]["target_vocabulary"]) == (src, tgt)


@pytest.mark.slow
def test_single_pass_then_update_vocab_then_train_on(corpus, tmp_path):
    """The command line, as an OpenNMT-tf user runs it (update_vocab spelled their way)."""
    train_cfg = {"single_pass": True, "max_step": 10000, "save_checkpoints_steps": 10000}
    raw = tiny_config(corpus, tmp_path / "run", train=train_cfg)
    run_yml = write_config(tmp_path / "run.yml", raw)
    proc = run_cli("train", "--config", run_yml)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "End of the training data (train.single_pass)" in proc.stderr
    config = cfg.build(raw, "test")
    batches = sum(1 for _ in _datasets(config, tf.distribute.get_strategy(), *_corpus(config)))
    old = tf.train.latest_checkpoint(str(tmp_path / "run"))
    assert old.endswith(f"ckpt-{batches}") and 1 < batches < 10000
    src = write_vocab(tmp_path / "new.src.vocab", NEW_SOURCE)
    tgt = write_vocab(tmp_path / "new.tgt.vocab", NEW_TARGET)
    new_dir = str(tmp_path / "updated")
    proc = run_cli(
        "update_vocab", "--config", run_yml, "--output_dir", new_dir,
        "--src_vocab", src, "--tgt_vocab", tgt,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    new = tf.train.latest_checkpoint(new_dir)
    check_update(old, new, units=32)
    raw["model_dir"] = new_dir
    raw["data"].update(source_vocabulary=src, target_vocabulary=tgt)
    raw["train"] = {**raw["train"], "single_pass": False, "max_step": batches + 2}
    proc = run_cli("train", "--config", write_config(tmp_path / "new.yml", raw))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert tf.train.latest_checkpoint(new_dir).endswith(f"ckpt-{batches + 2}")


def _corpus(config):
    return data.load_corpus(config, "train"), 0
