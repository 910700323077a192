"""``seqtrain import-opennmt`` against OpenNMT-tf 2.32's own numbers (tests/data/opennmt_fixture).

The fixture (tools/make_opennmt_fixture.py) is a 2-layer, 32-unit, 2-head Transformer trained
by OpenNMT-tf with guided alignment, its evaluated batch and what OpenNMT-tf computed for it:
the evaluation loss, the guided-alignment cost, the first sentence's logits, greedy translations
with hard alignments, and the weights after one more update by its Trainer. The commands run
in-process through ``seqtrain.cli.main`` (argparse, error handling, exit status included).
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import yaml
from conftest import HANG_GUARD

from seqtrain import cli, losses
from seqtrain import config as cfg
from seqtrain.data import batch_from_examples
from seqtrain.export import restore_model
from seqtrain.vocab import Vocab

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "opennmt_fixture")
with open(os.path.join(FIXTURE, "reference.json"), encoding="utf-8") as _f:
    REFERENCE = json.load(_f)
STEP = REFERENCE["step"]
RTOL = 1e-5


def fixture_path(name):
    return os.path.join(FIXTURE, name)


def seqtrain_config(tmp_path, model_dir, name="run.yml", **sections):
    """The fixture's OpenNMT-tf run as a seqtrain configuration (same model and schedule)."""
    onmt = REFERENCE["opennmt_config"]["params"]
    config = {
        "model_dir": str(model_dir),
        "data": {
            "train_features_file": fixture_path("train.src"),
            "train_labels_file": fixture_path("train.tgt"),
            "train_alignments": fixture_path("train.align"),
            "source_vocabulary": fixture_path("src.vocab"),
            "target_vocabulary": fixture_path("tgt.vocab"),
        },
        "model": dict(REFERENCE["model"]),
        "params": {
            "learning_rate": onmt["learning_rate"],
            "decay_params": onmt["decay_params"],
            "label_smoothing": onmt["label_smoothing"],
            # explicit: seqtrain's default now follows OpenNMT-tf's (true only for token batches)
            "average_loss_in_time": onmt["average_loss_in_time"],
            "guided_alignment_type": "ce",
            "beam_width": 1,
            "alignment_extraction": "argmax",  # OpenNMT-tf's hard alignments
            "maximum_decoding_length": onmt["maximum_decoding_length"],
            "maximum_decoding_length_factor": None,
        },
        "train": {"batch_size": 32, "batch_type": "examples", "save_summary_steps": 1},
        "eval": {"steps": None, "scorers": []},
    }
    for section, values in sections.items():
        config[section].update(values)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return str(path)


def run(*args):
    return cli.main([*args])


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """(config path, model_dir) of the fixture imported once through the CLI."""
    tmp = tmp_path_factory.mktemp("imported")
    config = seqtrain_config(tmp, tmp / "run")
    assert run("import-opennmt", "--config", config, "--checkpoint", FIXTURE,
               "--output_dir", str(tmp / "run")) == 0  # fmt: skip
    return config, str(tmp / "run")


def read_lines(name):
    with open(fixture_path(name), encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f]


def opennmt_column(vocab_file):
    """int [V]: OpenNMT-tf's id of each seqtrain id (its ids are the file's line numbers and
    <unk> comes after the last line)."""
    lines = read_lines(vocab_file)
    return np.array([lines.index(t) if t in lines else len(lines) for t in Vocab.load(
        fixture_path(vocab_file)).as_list()])  # fmt: skip


def fixture_batch():
    """The evaluated batch in seqtrain's batch contract."""
    source, target = Vocab.load(fixture_path("src.vocab")), Vocab.load(fixture_path("tgt.vocab"))
    examples = []
    for src, tgt, align in zip(read_lines("batch.src"), read_lines("batch.tgt"),
                               read_lines("batch.align")):  # fmt: skip
        links = np.array([[int(p.split("-")[1]), int(p.split("-")[0])] for p in align.split()])
        examples.append((source.ids(src.split()), target.ids(tgt.split()), links))
    return batch_from_examples(examples)


def test_vocabulary_ids_differ_from_opennmt_tf():
    """The point of the permutation: OpenNMT-tf's <unk> is its last id, seqtrain's is 3."""
    column = opennmt_column("tgt.vocab")
    assert column[3] == len(read_lines("tgt.vocab"))
    assert list(column[:3]) == [0, 1, 2] and column[4] == 3


def test_imported_model_gives_opennmt_loss_alignment_cost_and_logits(imported):
    config_path, model_dir = imported
    config = cfg.load_config([config_path])
    model, _ = restore_model(config, model_dir)
    batch = fixture_batch()
    logits, attention = model(batch, training=False)
    ce_sum, _, tokens = losses.cross_entropy_sequence_loss(
        logits, batch["target_out"], batch["target_length"], training=False
    )
    assert float(tokens) == REFERENCE["tokens"]
    np.testing.assert_allclose(float(ce_sum), REFERENCE["ce_sum"], rtol=RTOL)
    cost = losses.guided_alignment_cost(
        attention, batch["alignment"], batch["target_length"] - 1, "ce", 1.0
    )
    np.testing.assert_allclose(float(cost), REFERENCE["alignment_cost"], rtol=RTOL)
    smoothed, _, _ = losses.cross_entropy_sequence_loss(
        logits, batch["target_out"], batch["target_length"], label_smoothing=0.1, training=True
    )
    train_loss = (float(smoothed) + float(cost)) / float(tokens)
    np.testing.assert_allclose(train_loss, REFERENCE["train_loss"], rtol=RTOL)
    expected = np.load(fixture_path("first_logits.npy"))  # [T, V] in OpenNMT-tf's ids
    length = REFERENCE["first_sentence_length"]
    ours = logits[0, :length].numpy()
    np.testing.assert_allclose(ours, expected[:, opennmt_column("tgt.vocab")], rtol=RTOL, atol=1e-5)


def test_eval_command_prints_opennmt_loss(imported, capsys):
    config, model_dir = imported
    assert run("eval", "--config", config, "--features_file", fixture_path("batch.src"),
               "--labels_file", fixture_path("batch.tgt")) == 0  # fmt: skip
    line = capsys.readouterr().out.strip().splitlines()[-1]
    loss = float(line.split("loss = ")[1].split()[0])
    np.testing.assert_allclose(loss, REFERENCE["eval_loss"], rtol=RTOL)


def test_greedy_translations_and_hard_alignments_equal_opennmt(imported, tmp_path):
    config, _ = imported
    output = tmp_path / "greedy.txt"
    assert run("translate", "--config", config, "--features_file", fixture_path("batch.src"),
               "--predictions_file", str(output), "--with_alignments", "hard") == 0  # fmt: skip
    assert output.read_text(encoding="utf-8").splitlines() == read_lines("greedy.txt")


@pytest.mark.slow
def test_first_update_equals_opennmt_next_step(tmp_path):
    """One more update on the batch (dropout 0) from the imported moments and step: OpenNMT-tf
    2.32's Trainer accumulates gradients densely, so its LazyAdam updates every row as Adam."""
    model_dir = tmp_path / "run"
    config = seqtrain_config(
        tmp_path, model_dir,
        data={"train_features_file": fixture_path("batch.src"),
              "train_labels_file": fixture_path("batch.tgt"),
              "train_alignments": fixture_path("batch.align")},
        model={"dropout": 0.0, "attention_dropout": 0.0, "ffn_dropout": 0.0},
        params={"optimizer": "Adam"},
        train={"batch_size": 6, "length_bucket_width": 0, "max_step": STEP + 1},
    )  # fmt: skip
    assert run("import-opennmt", "--config", config, "--checkpoint", FIXTURE,
               "--output_dir", str(model_dir)) == 0  # fmt: skip
    assert run("train", "--config", config) == 0
    reader = tf.train.load_checkpoint(str(model_dir / f"ckpt-{STEP + 1}"))
    assert int(reader.get_tensor("optimizer/iterations/.ATTRIBUTES/VARIABLE_VALUE")) == STEP + 1
    expected = np.load(fixture_path("next_step.npz"))
    # Why Adam: OpenNMT-tf moved the rows of source words absent from the batch too.
    name = "model/examples_inputter/features_inputter/embedding/.ATTRIBUTES/VARIABLE_VALUE"
    before = tf.train.load_checkpoint(fixture_path(REFERENCE["checkpoint"])).get_tensor(name)
    lines, used = read_lines("src.vocab"), set(" ".join(read_lines("batch.src")).split())
    absent = [i for i, token in enumerate(lines) if token.startswith("s") and token not in used]
    assert absent and np.all(np.abs(expected[name][absent] - before[absent]).max(axis=1) > 1e-4)
    for ours, theirs, transform in _compared_variables():
        value = reader.get_tensor(f"model/{ours}/.ATTRIBUTES/VARIABLE_VALUE")
        want = transform(expected, theirs)
        np.testing.assert_allclose(value, want, rtol=RTOL, atol=1e-6, err_msg=ours)


def _compared_variables():
    """(seqtrain checkpoint path, OpenNMT-tf name(s), how to build seqtrain's value)."""
    value = "/.ATTRIBUTES/VARIABLE_VALUE"
    src, tgt = opennmt_column("src.vocab"), opennmt_column("tgt.vocab")

    def plain(npz, name):
        return npz[f"model/{name}{value}"]

    def rows(order):
        return lambda npz, name: plain(npz, name)[order]

    def columns(order):
        return lambda npz, name: plain(npz, name)[..., order]

    def fused(npz, names):
        return np.concatenate([plain(npz, n) for n in names], axis=-1)

    enc, dec = "encoder/layers/0", "decoder/layers/1"
    qkv = [f"{enc}/self_attention/layer/linear_{p}/kernel" for p in ("queries", "keys", "values")]
    # Not the key biases: their true gradient is 0 (softmax ignores a shift common to all keys),
    # so both updates are Adam-amplified rounding noise.
    kv = [f"{dec}/attention/0/layer/linear_{p}/kernel" for p in ("keys", "values")]
    return [
        ("source_embedding", "examples_inputter/features_inputter/embedding", rows(src)),
        ("target_embedding", "examples_inputter/labels_inputter/embedding", rows(tgt)),
        ("output/kernel", "decoder/output_layer/kernel", columns(tgt)),
        ("output/bias", "decoder/output_layer/bias", columns(tgt)),
        ("encoder_layers/0/self_attention/qkv/kernel", qkv, fused),
        ("decoder_layers/1/cross_attention/key_value/kernel", kv, fused),
        ("decoder_layers/1/self_attention/output/bias",
         f"{dec}/self_attention/layer/linear_output/bias", plain),
        ("decoder_layers/1/cross_attention/query/kernel",
         f"{dec}/attention/0/layer/linear_queries/kernel", plain),
        ("decoder_layers/1/cross_attention_norm/gamma",
         f"{dec}/attention/0/input_layer_norm/gamma", plain),
        ("encoder_layers/0/ffn/outer/kernel", f"{enc}/ffn/layer/outer/kernel", plain),
        ("decoder_norm/beta", "decoder/layer_norm/beta", plain),
    ]  # fmt: skip


@pytest.mark.slow
def test_finetuning_the_import_lowers_the_loss(tmp_path, capsys):
    """Continue the OpenNMT-tf run (moments and step imported) on its own training data."""
    model_dir = tmp_path / "run"
    config = seqtrain_config(tmp_path, model_dir, train={"max_step": STEP + 40})
    assert run("import-opennmt", "--config", config, "--checkpoint", FIXTURE,
               "--output_dir", str(model_dir)) == 0  # fmt: skip
    before = _eval_loss(config, capsys)
    assert run("train", "--config", config) == 0
    assert os.path.exists(model_dir / f"ckpt-{STEP + 40}.index")
    assert _eval_loss(config, capsys) < before


def _eval_loss(config, capsys):
    """The loss that ``seqtrain eval`` prints for the fixture's training data."""
    capsys.readouterr()
    assert run("eval", "--config", config, "--features_file", fixture_path("train.src"),
               "--labels_file", fixture_path("train.tgt")) == 0  # fmt: skip
    return float(capsys.readouterr().out.split("loss = ")[1].split()[0])


def test_vocabulary_of_another_size_is_one_line_error(tmp_path, capsys):
    vocab = tmp_path / "tgt.vocab"
    vocab.write_text("\n".join(read_lines("tgt.vocab") + ["t_extra"]) + "\n", encoding="utf-8")
    config = seqtrain_config(tmp_path, tmp_path / "run", data={"target_vocabulary": str(vocab)})
    status = run("import-opennmt", "--config", config, "--checkpoint", FIXTURE,
                 "--output_dir", str(tmp_path / "run"))  # fmt: skip
    error = capsys.readouterr().err.strip()
    assert status == 2 and len(error.splitlines()) == 1
    assert "model/examples_inputter/labels_inputter/embedding [24, 32]" in error
    assert "target_embedding [25, 32]" in error and "vocabulary" in error
    assert not os.path.exists(tmp_path / "run")


def test_other_shape_is_one_line_error_naming_both_shapes(tmp_path, capsys):
    config = seqtrain_config(tmp_path, tmp_path / "run", model={"ffn_inner_dim": 128})
    status = run("import-opennmt", "--config", config, "--checkpoint", FIXTURE,
                 "--output_dir", str(tmp_path / "run"))  # fmt: skip
    error = capsys.readouterr().err.strip()
    assert status == 2 and len(error.splitlines()) == 1
    assert "model/encoder/layers/0/ffn/layer/inner/kernel [32, 64]" in error
    assert "[32, 128]" in error


def test_more_layers_or_vocabulary_without_specials_are_refused(tmp_path, capsys):
    config = seqtrain_config(tmp_path, tmp_path / "run", model={"num_layers": 3})
    assert run("import-opennmt", "--config", config, "--checkpoint", FIXTURE,
               "--output_dir", str(tmp_path / "run")) == 2  # fmt: skip
    assert "no variable model/decoder/layers/2/" in capsys.readouterr().err
    vocab = tmp_path / "plain.vocab"
    vocab.write_text("\n".join(read_lines("src.vocab")[3:]) + "\n", encoding="utf-8")
    config = seqtrain_config(tmp_path, tmp_path / "run", data={"source_vocabulary": str(vocab)})
    assert run("import-opennmt", "--config", config, "--checkpoint", FIXTURE,
               "--output_dir", str(tmp_path / "run")) == 2  # fmt: skip
    error = capsys.readouterr().err
    assert "plain.vocab" in error and "<blank> <s> </s>" in error


def test_weights_only_starts_at_step_zero_with_fresh_moments(imported, tmp_path):
    config = seqtrain_config(tmp_path, tmp_path / "run")
    assert run("import-opennmt", "--config", config, "--checkpoint", FIXTURE, "--output_dir",
               str(tmp_path / "run"), "--weights_only") == 0  # fmt: skip
    light = tf.train.load_checkpoint(str(tmp_path / "run" / "ckpt-0"))
    full = tf.train.load_checkpoint(os.path.join(imported[1], f"ckpt-{STEP}"))
    step = "optimizer/iterations/.ATTRIBUTES/VARIABLE_VALUE"
    assert int(light.get_tensor(step)) == 0 and int(full.get_tensor(step)) == STEP
    name = "model/target_embedding/.ATTRIBUTES/VARIABLE_VALUE"
    np.testing.assert_array_equal(light.get_tensor(name), full.get_tensor(name))
    moments = [n for n, _ in tf.train.list_variables(str(tmp_path / "run" / "ckpt-0"))]
    moments = [n for n in moments if n.startswith("optimizer/_slots/")]
    assert moments and all(not np.any(light.get_tensor(n)) for n in moments)
    assert any(np.any(full.get_tensor(n)) for n in moments)


def test_missing_or_damaged_checkpoint_is_one_line_error(tmp_path, capsys):
    config = seqtrain_config(tmp_path, tmp_path / "run")
    missing = str(tmp_path / "nothing" / "ckpt-5")
    assert run("import-opennmt", "--config", config, "--checkpoint", missing,
               "--output_dir", str(tmp_path / "run")) == 2  # fmt: skip
    assert f"{missing}: no such checkpoint" in capsys.readouterr().err
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    prefix = f"ckpt-{STEP}"
    (damaged / f"{prefix}.index").write_bytes(b"not an index")
    assert run("import-opennmt", "--config", config, "--checkpoint", str(damaged / prefix),
               "--output_dir", str(tmp_path / "run")) == 2  # fmt: skip
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "unreadable checkpoint" in error
    assert not os.path.exists(tmp_path / "run")


def tied_checkpoint(directory):
    """The fixture without its output kernel: OpenNMT-tf's layout for share_embeddings TARGET
    (the output layer reuses the target embedding; only its bias is a variable)."""
    reader = tf.train.load_checkpoint(fixture_path(REFERENCE["checkpoint"]))
    names = [n for n, _ in tf.train.list_variables(fixture_path(REFERENCE["checkpoint"]))]
    names = [n for n in names if "output_layer/kernel" not in n and "OBJECT_GRAPH" not in n]
    prefix = str(directory / "ckpt-7")
    tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names, shape_and_slices=[""] * len(names),
                      tensors=[reader.get_tensor(n) for n in names])  # fmt: skip
    return prefix


def test_tied_output_layer_maps_to_share_embeddings_target(tmp_path, capsys):
    prefix = tied_checkpoint(tmp_path)
    config = seqtrain_config(tmp_path, tmp_path / "none")
    assert run("import-opennmt", "--config", config, "--checkpoint", prefix,
               "--output_dir", str(tmp_path / "none")) == 2  # fmt: skip
    error = capsys.readouterr().err
    assert "model.share_embeddings: target" in error and "says none" in error
    config = seqtrain_config(tmp_path, tmp_path / "run", model={"share_embeddings": "target"})
    assert run("import-opennmt", "--config", config, "--checkpoint", prefix,
               "--output_dir", str(tmp_path / "run")) == 0  # fmt: skip
    ours = tf.train.load_checkpoint(str(tmp_path / "run" / f"ckpt-{STEP}"))
    theirs = tf.train.load_checkpoint(prefix)
    value, tgt = "/.ATTRIBUTES/VARIABLE_VALUE", opennmt_column("tgt.vocab")
    np.testing.assert_array_equal(
        ours.get_tensor(f"model/target_embedding{value}"),
        theirs.get_tensor(f"model/examples_inputter/labels_inputter/embedding{value}")[tgt],
    )
    np.testing.assert_array_equal(
        ours.get_tensor(f"model/output_bias{value}"),
        theirs.get_tensor(f"model/decoder/output_layer/bias{value}")[tgt],
    )
    assert not any(n.startswith("model/output/") for n, _ in tf.train.list_variables(
        str(tmp_path / "run" / f"ckpt-{STEP}")))  # fmt: skip


@pytest.mark.slow
def test_exported_import_translates_as_opennmt(imported, tmp_path):
    """The SavedModel of the import, loaded by plain TensorFlow, gives OpenNMT-tf's greedy
    translations and hard alignments."""
    config, _ = imported
    assert run("export", "--config", config, "--output_dir", str(tmp_path / "export")) == 0
    loader = (
        "import json, sys; import tensorflow as tf; "
        "f = tf.saved_model.load(sys.argv[1]).signatures['translate']; "
        "out = f(sentences=tf.constant(json.loads(sys.argv[2]))); "
        "print(json.dumps({k: [x.decode() for x in out[k].numpy()] "
        "for k in ('translations', 'alignments')}))"
    )
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    sources = json.dumps(read_lines("batch.src"))
    result = subprocess.run(
        [sys.executable, "-c", loader, str(tmp_path / "export"), sources],
        capture_output=True, text=True, env=env, timeout=HANG_GUARD, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    lines = [f"{t} ||| {a}" for t, a in zip(out["translations"], out["alignments"])]
    assert lines == read_lines("greedy.txt")
