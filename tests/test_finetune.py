"""Starting from a model: --checkpoint_path (weights only) and --continue_from_checkpoint, the
shape and vocabulary checks, average_last_checkpoints and average-checkpoints --model_dir.

A source run (4 steps, checkpoints at 2 and 4, averaged at the end) is trained once per module;
the fine-tuning runs are trained in-process with a hook on ``Trainer.step`` that records the
model and optimizer state before each update.
"""

import os
import re

import numpy as np
import pytest
import tensorflow as tf
from conftest import make_corpus, run_cli, tiny_config, write_config, write_lines

from seqtrain import trainer, warmstart
from seqtrain.checkpoints import build_model
from seqtrain.config import load_config
from seqtrain.errors import SeqtrainError
from seqtrain.trainer import make_optimizer


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """(corpus paths, source model_dir, its config path), trained in-process."""
    root = tmp_path_factory.mktemp("source")
    corpus = make_corpus(str(root / "data"))
    train = {"save_checkpoints_steps": 2, "max_step": 4, "keep_checkpoint_max": 1}
    train["average_last_checkpoints"] = 2  # keeps 2 checkpoints although keep_checkpoint_max is 1
    config = write_config(root / "run.yml", tiny_config(corpus, root / "run", train=train))
    trainer.train(load_config([config]))
    return corpus, str(root / "run"), config


def _config(corpus, tmp_path, name="new", **sections):
    raw = tiny_config(corpus, tmp_path / name, **sections)
    return load_config([write_config(tmp_path / f"{name}.yml", raw)])


def _restored(config, prefix, with_optimizer=False):
    """A fresh model (and optimizer) with ``prefix`` read by TensorFlow itself."""
    model = build_model(config)
    optimizer = make_optimizer(config.params)
    optimizer.build(model.trainable_variables)
    objects = {"model": model, "optimizer": optimizer} if with_optimizer else {"model": model}
    tf.train.Checkpoint(**objects).read(prefix).expect_partial()
    return model, optimizer


def _state(model, optimizer):
    """Numpy copies: (model variables, [m, v] of each trainable variable, step)."""
    slots = [s.numpy() for v in model.trainable_variables for s in optimizer.slots(v)]
    return [v.numpy() for v in model.variables], slots, int(optimizer.iterations.numpy())


@pytest.fixture
def before_updates(monkeypatch):
    """The (weights, slots, step) seen before each update of an in-process training run."""
    seen = []
    original = trainer.Trainer.step

    def step(self, micro_batches):
        seen.append(_state(self.model, self.optimizer))
        return original(self, micro_batches)

    monkeypatch.setattr(trainer.Trainer, "step", step)
    return seen


def test_fine_tuning_starts_at_step_0_with_the_given_weights(source, tmp_path, before_updates):
    corpus, run, _ = source
    config = _config(corpus, tmp_path, train={"max_step": 1, "save_checkpoints_steps": 1})
    trainer.train(config, checkpoint_path=os.path.join(run, "ckpt-4"))

    (weights, slots, step), *_ = before_updates
    expected, _ = _restored(config, os.path.join(run, "ckpt-4"))
    assert step == 0
    for value, variable in zip(weights, expected.variables):
        np.testing.assert_array_equal(value, variable.numpy())
    assert all(not s.any() for s in slots)  # fresh Adam moments
    first = tf.train.load_checkpoint(os.path.join(config.model_dir, "ckpt-1"))
    assert first.get_tensor("optimizer/iterations/.ATTRIBUTES/VARIABLE_VALUE") == 1


@pytest.mark.slow
def test_the_same_fine_tuning_command_resumes(source, tmp_path, before_updates):
    """model_dir's own checkpoint wins over --checkpoint_path: a re-run resumes at its step."""
    corpus, run, _ = source
    config = _config(corpus, tmp_path, train={"max_step": 2, "save_checkpoints_steps": 1})
    trainer.train(config, checkpoint_path=os.path.join(run, "ckpt-4"))
    before_updates.clear()
    config = _config(corpus, tmp_path, train={"max_step": 3, "save_checkpoints_steps": 1})
    trainer.train(config, checkpoint_path=os.path.join(run, "ckpt-4"))
    assert [state[2] for state in before_updates] == [2]


def test_continue_from_checkpoint_keeps_slots_and_step(source, tmp_path, before_updates):
    corpus, run, _ = source
    config = _config(corpus, tmp_path, train={"max_step": 5})
    trainer.train(config, checkpoint_path=run, continue_from_checkpoint=True)  # a directory

    weights, slots, step = before_updates[0]
    model, optimizer = _restored(config, os.path.join(run, "ckpt-4"), with_optimizer=True)
    expected_weights, expected_slots, expected_step = _state(model, optimizer)
    assert step == expected_step == 4
    assert any(s.any() for s in expected_slots)
    for value, expected in zip(weights + slots, expected_weights + expected_slots):
        np.testing.assert_array_equal(value, expected)
    assert os.path.exists(os.path.join(config.model_dir, "ckpt-5.index"))


def test_keys_of_the_model_are_those_tensorflow_writes(corpus, tmp_path):
    """The shape check names variables by their checkpoint keys: the same as TF's writer, for
    every embedding-sharing level (a shared matrix is saved once, under its first path)."""
    for share in ("none", "source_target_input", "target", "all"):
        config = _config(corpus, tmp_path, model={"share_embeddings": share})
        path = tf.train.Checkpoint(model=build_model(config)).write(str(tmp_path / share))
        written = {
            name[: -len(warmstart.VALUE)]: shape
            for name, shape in tf.train.list_variables(path)
            if name.startswith("model/")
        }
        assert warmstart.expected_shapes(config) == written


def test_a_variable_of_another_shape_is_named_with_both_shapes(source, tmp_path):
    corpus, run, _ = source
    config = _config(corpus, tmp_path, model={"ffn_inner_dim": 48})
    with pytest.raises(SeqtrainError) as error:
        warmstart.initial_checkpoint(config, run)
    message = str(error.value)
    match = re.search(r"variable (model/\S+) has shape (\[.*?\]) there but (\[.*?\])", message)
    assert match, message
    name, held, wanted = match.groups()
    written = dict(tf.train.list_variables(os.path.join(run, "ckpt-4")))
    assert str(written[name + warmstart.VALUE]) == held
    assert "/ffn/" in name and "64" in held and "48" in wanted
    assert "more variable(s) differ" in message  # every layer's FFN differs


def test_another_number_of_layers_names_a_variable(source, tmp_path):
    corpus, run, _ = source
    config = _config(corpus, tmp_path, model={"num_layers": 1})
    with pytest.raises(SeqtrainError, match=r"variable model/\w+_layers/1/\S+ exists only in "):
        warmstart.initial_checkpoint(config, run)


def test_a_reordered_vocabulary_is_an_error_naming_the_first_difference(source, tmp_path):
    """Same size, two tokens swapped: the shapes agree, the embeddings would be scrambled."""
    corpus, run, _ = source
    tokens = open(corpus["tgt.vocab"], encoding="utf-8").read().split()
    tokens[5], tokens[6] = tokens[6], tokens[5]
    write_lines(tmp_path / "swapped.vocab", tokens)
    config = _config(
        corpus, tmp_path, data={**tiny_config(corpus, "x")["data"],
                                "target_vocabulary": str(tmp_path / "swapped.vocab")},
    )  # fmt: skip
    with pytest.raises(SeqtrainError) as error:
        warmstart.initial_checkpoint(config, os.path.join(run, "ckpt-2"))
    message = str(error.value)
    assert message.startswith("data.target_vocabulary: ")
    assert f"first difference at id 5: {tokens[5]!r} vs {tokens[6]!r}" in message


def test_mismatch_from_the_cli_is_one_line_and_writes_nothing(source, tmp_path):
    corpus, run, _ = source
    new_dir = tmp_path / "new"
    raw = tiny_config(corpus, new_dir, model={"num_units": 16, "num_heads": 2})
    config = write_config(tmp_path / "new.yml", raw)
    proc = run_cli("train", "--config", config, "--checkpoint_path", run)
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert re.match(r"seqtrain train: error: \S+ckpt-4: variable model/\S+ has shape \[", last)
    assert "Traceback" not in proc.stderr
    assert not new_dir.exists()


def test_continue_needs_optimizer_state_and_a_checkpoint_path(source, tmp_path):
    corpus, run, _ = source
    config = _config(corpus, tmp_path)
    with pytest.raises(SeqtrainError, match="holds model weights only"):
        warmstart.initial_checkpoint(config, os.path.join(run, "avg"), True)
    with pytest.raises(SeqtrainError, match="--continue_from_checkpoint needs --checkpoint_path"):
        warmstart.initial_checkpoint(config, None, True)
    with pytest.raises(SeqtrainError, match="no such checkpoint"):
        warmstart.initial_checkpoint(config, os.path.join(run, "ckpt-3"))


def test_an_unreadable_checkpoint_path_is_named(corpus, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "ckpt-4.index").write_bytes(b"not an index")
    with pytest.raises(SeqtrainError, match=r"broken/ckpt-4: unreadable checkpoint: ckpt-4\.data"):
        warmstart.initial_checkpoint(_config(corpus, tmp_path), str(broken))


def test_average_last_checkpoints_is_the_mean_of_the_last_two(source):
    _, run, config = source
    readers = [tf.train.load_checkpoint(os.path.join(run, f"ckpt-{s}")) for s in (2, 4)]
    averaged = tf.train.load_checkpoint(os.path.join(run, "avg", "ckpt-4"))
    names = [n for n in averaged.get_variable_to_shape_map() if n.startswith("model/")]
    assert len(names) == len(build_model(load_config([config])).variables)
    for name in names:
        mean = (readers[0].get_tensor(name) + readers[1].get_tensor(name)) / 2
        np.testing.assert_allclose(averaged.get_tensor(name), mean, rtol=1e-6, atol=1e-7)
    assert not any(n.startswith("optimizer/") for n in averaged.get_variable_to_shape_map())
    saved = load_config([os.path.join(run, "avg", "config.yml")])
    assert saved.model_dir == os.path.join(run, "avg")


def test_average_checkpoints_command_with_model_dir(source, tmp_path):
    """``--model_dir`` alone (its config.yml is read); the result fine-tunes and translates."""
    corpus, run, _ = source
    out = str(tmp_path / "avg1")
    proc = run_cli(
        "average-checkpoints", "--model_dir", run, "--output_dir", out, "--max_count", "1"
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == f"averaged checkpoint: {os.path.join(out, 'ckpt-4')}"
    mine, theirs = tf.train.load_checkpoint(out), tf.train.load_checkpoint(f"{run}/ckpt-4")
    for name in (n for n in mine.get_variable_to_shape_map() if n.startswith("model/")):
        np.testing.assert_array_equal(mine.get_tensor(name), theirs.get_tensor(name))
    assert warmstart.initial_checkpoint(_config(corpus, tmp_path), out) == f"{out}/ckpt-4"
