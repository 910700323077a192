"""average-checkpoints: identical inputs give the same weights, two known ones give their mean."""

import os

import numpy as np
import tensorflow as tf
from conftest import run_cli, tiny_config, write_config

from seqtrain.checkpoints import average_into, build_model
from seqtrain.config import load_config


def _save(model, directory, step):
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(model=model), directory, 10)
    return manager.save(checkpoint_number=step)


def _config(corpus, tmp_path):
    return load_config([write_config(tmp_path / "run.yml", tiny_config(corpus, tmp_path / "run"))])


def test_average_of_two_known_checkpoints_is_their_mean(corpus, tmp_path):
    config = _config(corpus, tmp_path)
    model = build_model(config)
    first = [v.numpy() for v in model.variables]
    path_a = _save(model, str(tmp_path / "ckpts"), 1)
    for variable in model.variables:
        variable.assign(variable * 3.0 + 1.0)
    second = [v.numpy() for v in model.variables]
    path_b = _save(model, str(tmp_path / "ckpts"), 2)

    fresh = build_model(config)
    output = average_into(fresh, [path_a, path_b], str(tmp_path / "avg"))
    assert output.endswith("ckpt-2")
    restored = build_model(config)
    tf.train.Checkpoint(model=restored).read(output).expect_partial()
    for variable, a, b in zip(restored.variables, first, second):
        np.testing.assert_allclose(variable.numpy(), (a + b) / 2, rtol=1e-6, atol=1e-7)
    assert any(not np.allclose(a, b) for a, b in zip(first, second))


def test_average_of_identical_checkpoints_is_unchanged(corpus, tmp_path):
    config = _config(corpus, tmp_path)
    model = build_model(config)
    for variable in model.variables:  # weights unlike a fresh model's, so restoring matters
        variable.assign(variable * 0.5 - 0.25)
    paths = [_save(model, str(tmp_path / "ckpts"), step) for step in (1, 2, 3)]
    output = average_into(build_model(config), paths, str(tmp_path / "avg"))
    restored = build_model(config)
    tf.train.Checkpoint(model=restored).read(output).expect_partial()
    for variable, original in zip(restored.variables, model.variables):
        np.testing.assert_allclose(variable.numpy(), original.numpy(), rtol=1e-6, atol=1e-7)


def test_average_checkpoints_command_after_training(corpus, tmp_path):
    train = {"save_checkpoints_steps": 2, "max_step": 4}
    config = write_config(tmp_path / "run.yml", tiny_config(corpus, tmp_path / "run", train=train))
    assert run_cli("train", "--config", config).returncode == 0
    proc = run_cli("average-checkpoints", "--config", config, "--max_count", "2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    output = proc.stdout.strip().rsplit(" ", 1)[1]
    assert output.endswith(os.path.join("avg", "ckpt-4"))
    reader_2 = tf.train.load_checkpoint(str(tmp_path / "run" / "ckpt-2"))
    reader_4 = tf.train.load_checkpoint(str(tmp_path / "run" / "ckpt-4"))
    averaged = tf.train.load_checkpoint(output)
    names = [n for n in averaged.get_variable_to_shape_map() if n.startswith("model/")]
    assert names
    for name in names:
        expected = (reader_2.get_tensor(name) + reader_4.get_tensor(name)) / 2
        np.testing.assert_allclose(averaged.get_tensor(name), expected, rtol=1e-6, atol=1e-7)


def test_average_without_checkpoints_is_a_user_error(corpus, tmp_path):
    config = write_config(tmp_path / "run.yml", tiny_config(corpus, tmp_path / "run"))
    proc = run_cli("average-checkpoints", "--config", config)
    assert proc.returncode == 2 and "no checkpoints" in proc.stderr.strip().splitlines()[-1]
