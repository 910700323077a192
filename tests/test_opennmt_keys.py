"""OpenNMT-tf 2.32 keys: the table (seqtrain/opennmt_keys.yml) drives the rejections and the
README; a configuration written from OpenNMT-tf's documentation with every supported key loads
with those values; every unsupported key, value, flag and run type stops with its one line."""

import os
import sys

import pytest
import yaml

from seqtrain import cli, config_checks, opennmt_keys
from seqtrain import config as cfg
from seqtrain.errors import SeqtrainError
from seqtrain.opennmt_keys import Status

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import make_opennmt_keys_table  # noqa: E402

CONFIG_KEYS = [k for k in opennmt_keys.KEYS if not k.name.startswith(("--", "run type "))]


def nested(dotted: str, value) -> dict:
    raw = value
    for part in reversed(dotted.split(".")):
        raw = {part: raw}
    return raw


def flat_keys(raw: dict, prefix="") -> set:
    keys = set()
    for key, value in raw.items():
        keys.add(prefix + key)
        if isinstance(value, dict):
            keys |= flat_keys(value, f"{prefix}{key}.")
    return keys


def load(tmp_path, *documents):
    paths = []
    for i, document in enumerate(documents):
        path = tmp_path / f"run{i}.yml"
        path.write_text(yaml.safe_dump(document), encoding="utf-8")
        paths.append(str(path))
    config = cfg.load_config(paths)
    config_checks.check(config, " + ".join(paths))
    return config, " + ".join(paths)


def test_readme_table_is_the_generated_one():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    start, end = make_opennmt_keys_table.START, make_opennmt_keys_table.END
    section = readme.split(start, 1)[1].split(end, 1)[0]
    assert section == make_opennmt_keys_table.table()
    for key in opennmt_keys.KEYS:  # every entry is a row, with its status
        name = key.name if key.name.startswith(("--", "run ")) else f"`{key.name}`"
        assert f"| {name} | {key.onmt_default} | {key.status.value} |" in section


def test_table_statuses_match_the_parser():
    """An implemented dotted key is a field of the typed config (or a documented alias); a
    rejected one is not (the parser would accept it silently otherwise)."""
    defaults = cfg.to_dict(cfg.Config(eval=cfg.EvalConfig(early_stopping=cfg.EarlyStopping())))
    fields = flat_keys(defaults)
    for key in CONFIG_KEYS:
        if ": " in key.name:
            continue
        if key.status is Status.SAME:
            assert key.name in fields, key.name
        elif key.status is Status.REJECTED:
            assert key.name not in fields, key.name
    assert "eval.external_evaluators" not in fields  # an alias, renamed before parsing


@pytest.mark.parametrize(
    "key", [k for k in CONFIG_KEYS if k.status is Status.REJECTED], ids=lambda k: k.name
)
def test_each_unsupported_key_or_value_gives_its_one_line_error(tmp_path, key):
    name, _, value = key.name.partition(": ")
    raw = nested(name, yaml.safe_load(value) if value else 1)
    with pytest.raises(SeqtrainError) as error:
        load(tmp_path, {"model_dir": "run", **raw})
    reason = opennmt_keys.value_rejection(name, yaml.safe_load(value)) if value else None
    reason = reason or opennmt_keys.rejection(name)
    assert str(error.value) == f"{tmp_path / 'run0.yml'}: {reason}"
    assert "\n" not in str(error.value) and "OpenNMT-tf" in reason


def test_unsupported_key_through_the_command_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "run.yml"
    path.write_text(yaml.safe_dump({"model_dir": "run", "params": {"freeze_layers": ["x"]}}))
    assert cli.main(["train", "--config", "run.yml"]) == 2
    reason = opennmt_keys.rejection("params.freeze_layers")
    assert capsys.readouterr().err == f"seqtrain train: error: run.yml: {reason}\n"
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "key",
    [k for k in opennmt_keys.KEYS if k.status is Status.REJECTED and k.name[:2] in ("--", "ru")],
    ids=lambda k: k.name,
)
def test_each_unsupported_flag_or_run_type_gives_its_one_line_error(capsys, key):
    if key.name.startswith("--"):
        argv = ["train", "--config", "run.yml", key.name, "x"]
    else:
        argv = [key.name.removeprefix("run type "), "--config", "run.yml"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err == f"seqtrain: error: {opennmt_keys.rejection(key.name)}\n"


# Written from OpenNMT-tf's docs/configuration.md: every key seqtrain implements, with values
# that differ from seqtrain's defaults so that each one is seen to arrive.
EVERY_KEY = {
    "model_dir": "run/ende",
    "auto_config": True,  # read as a key here; presets.resolver applies it (tests/test_presets.py)
    "model": {"pre_norm": False, "maximum_relative_position": 8, "position_encoder_class": None},
    "data": {
        "train_features_file": "src-train.txt",
        "train_labels_file": "tgt-train.txt",
        "train_alignments": "alignments-train.txt",
        "eval_features_file": "src-val.txt",
        "eval_labels_file": "tgt-val.txt",
        "source_vocabulary": "src-vocab.txt",
        "target_vocabulary": "tgt-vocab.txt",
        "source_tokenization": "src.model",
        "target_tokenization": "tgt.model",
    },
    "params": {
        "optimizer": "Adam",
        "optimizer_params": {"beta_1": 0.8, "beta_2": 0.997, "epsilon": 1e-8, "clipnorm": 3.0},
        "learning_rate": 0.5,
        "dropout": 0.3,
        "average_loss_in_time": False,
        "decay_type": "RNMTPlusDecay",
        "decay_params": {"num_replicas": 4, "warmup_steps": 600, "start_step": 7, "end_step": 9},
        "decay_step_duration": 2,
        "start_decay_steps": 50,
        "minimum_learning_rate": 0.0001,
        "label_smoothing": 0.2,
        "beam_width": 5,
        "length_penalty": 0.2,
        "maximum_decoding_length": 200,
        "guided_alignment_type": "mse",
        "guided_alignment_weight": 0.5,
        "coverage_penalty": 0.2,
        "minimum_decoding_length": 3,
        "replace_unknown_target": True,
    },
    "train": {
        "batch_size": 64,
        "batch_type": "examples",
        "effective_batch_size": 1024,
        "save_checkpoints_steps": 1000,
        "keep_checkpoint_max": 3,
        "save_summary_steps": 50,
        "max_step": 1000000,
        "single_pass": True,
        "maximum_features_length": 70,
        "maximum_labels_length": 80,
        "length_bucket_width": 3,
        "sample_buffer_size": 0,
        "moving_average_decay": 0.9999,
        "average_last_checkpoints": 4,
    },
    "eval": {
        "batch_size": 30,
        "batch_type": "tokens",
        "steps": 2000,
        "scorers": ["bleu", "chrf", "chrf++", "ter", "wer"],
        "length_bucket_width": 0,
        "export_on_best": "ter",
        "early_stopping": {"metric": "wer", "min_improvement": 0.01, "steps": 6},
        "save_eval_predictions": True,
        "max_exports_to_keep": 3,
        "export_format": "ctranslate2_int8",
    },
    "infer": {
        "batch_size": 10,
        "batch_type": "tokens",
        "n_best": 2,
        "with_scores": True,
        "with_alignments": "soft",
        "length_bucket_width": 7,
    },
    "score": {
        "batch_size": 16,
        "batch_type": "tokens",
        "length_bucket_width": 2,
        "with_alignments": "hard",
        "with_token_level": True,
    },
}
# Keys that cannot sit in one file with the ones above (one clip at a time; an alias and its key).
VARIANTS = [
    {"params": {"optimizer_params": {"global_clipnorm": 5.0}}},
    {"params": {"clip_gradients": 2.5}},
    {"eval": {"external_evaluators": "ChrF"}},  # scorer names are case-insensitive
    {"params": {"beam_width": 1, "sampling_topk": 5, "sampling_temperature": 0.7}},
    {
        "data": {
            "train_features_file": ["a.src", "b.src"],
            "train_labels_file": ["a.tgt", "b.tgt"],
            "train_alignments": ["a.align", "b.align"],
            "train_files_weights": [3, 1],
            "example_weights": ["a.weights", "b.weights"],
        }
    },
]


def test_every_supported_key_at_once(tmp_path):
    implemented = {
        k.name
        for k in CONFIG_KEYS
        if k.status in (Status.SAME, Status.ALIAS) and ": " not in k.name
    }
    written = set().union(*(flat_keys(d) for d in [EVERY_KEY, *VARIANTS]))
    assert implemented - written == set()  # the test covers the whole table
    c, _ = load(tmp_path, EVERY_KEY)
    assert c.model_dir == "run/ende" and c.auto_config is True
    assert (c.model.pre_norm, c.model.maximum_relative_position) == (False, 8)
    assert (c.data.train_features_file, c.data.train_labels_file) == (
        ("src-train.txt",),  # one file = a list of one corpus
        ("tgt-train.txt",),
    )
    assert (c.data.train_alignments, c.data.eval_features_file) == (
        ("alignments-train.txt",),
        "src-val.txt",
    )
    assert (c.data.eval_labels_file, c.data.source_vocabulary) == ("tgt-val.txt", "src-vocab.txt")
    assert (c.data.target_vocabulary, c.data.source_tokenization) == ("tgt-vocab.txt", "src.model")
    assert c.data.target_tokenization == "tgt.model"
    p = c.params
    assert p.optimizer == "Adam" and p.learning_rate == 0.5
    o = p.optimizer_params
    assert (o.beta_1, o.beta_2, o.epsilon, o.clipnorm, o.global_clipnorm) == (
        0.8,
        0.997,
        1e-8,
        3.0,
        None,
    )
    assert (c.model.dropout, c.model.attention_dropout, c.model.ffn_dropout) == (0.3, 0.3, 0.3)
    assert p.average_loss_in_time is False
    assert p.decay_type == "RNMTPlusDecay"
    assert config_checks.decay_arguments(p) == {
        "scale": 0.5, "num_replicas": 4, "warmup_steps": 600, "start_step": 7, "end_step": 9
    }  # fmt: skip
    assert (p.decay_step_duration, p.start_decay_steps, p.minimum_learning_rate) == (2, 50, 0.0001)
    assert (p.label_smoothing, p.beam_width, p.length_penalty) == (0.2, 5, 0.2)
    assert p.maximum_decoding_length == 200
    assert (p.guided_alignment_type, p.guided_alignment_weight) == ("mse", 0.5)
    assert (p.coverage_penalty, p.minimum_decoding_length) == (0.2, 3)
    assert p.replace_unknown_target is True
    t = c.train
    assert (t.batch_size, t.batch_type, t.effective_batch_size) == (64, "examples", 1024)
    assert (t.save_checkpoints_steps, t.keep_checkpoint_max, t.save_summary_steps) == (1000, 3, 50)
    assert (t.max_step, t.single_pass) == (1000000, True)
    assert (t.maximum_features_length, t.maximum_labels_length) == (70, 80)
    assert (t.length_bucket_width, t.sample_buffer_size) == (3, 0)
    assert (t.moving_average_decay, t.average_last_checkpoints) == (0.9999, 4)
    e = c.eval
    assert (e.batch_size, e.batch_type, e.steps, e.length_bucket_width) == (30, "tokens", 2000, 0)
    assert e.scorers == ("bleu", "chrf", "chrf++", "ter", "wer") and e.export_on_best == "ter"
    assert e.early_stopping == cfg.EarlyStopping("wer", 0.01, 6)
    assert (e.save_eval_predictions, e.max_exports_to_keep) == (True, 3)
    assert e.export_format == "ctranslate2_int8"
    i = c.infer
    assert (i.batch_size, i.batch_type, i.n_best, i.length_bucket_width) == (10, "tokens", 2, 7)
    assert (i.with_scores, i.with_alignments) == (True, "soft")
    s = c.score
    assert (s.batch_size, s.batch_type, s.length_bucket_width) == (16, "tokens", 2)
    assert (s.with_alignments, s.with_token_level) == ("hard", True)
    # A later optimizer_params replaces the whole mapping (OpenNMT-tf's merge rule).
    c, _ = load(tmp_path, EVERY_KEY, VARIANTS[0])
    o = c.params.optimizer_params
    assert (o.beta_1, o.beta_2, o.clipnorm, o.global_clipnorm) == (0.9, 0.998, None, 5.0)
    with pytest.raises(SeqtrainError, match="set only one of"):
        load(tmp_path, EVERY_KEY, VARIANTS[1])
    c, _ = load(tmp_path, {**EVERY_KEY, "params": {"clip_gradients": 2.5}})
    assert c.params.clip_gradients == 2.5
    eval_alias = {k: v for k, v in EVERY_KEY["eval"].items() if k != "scorers"}
    c, _ = load(tmp_path, {**EVERY_KEY, "eval": {**eval_alias, **VARIANTS[2]["eval"]}})
    assert c.eval.scorers == ("chrf",)
    c, _ = load(tmp_path, EVERY_KEY, VARIANTS[3])  # sampling needs greedy search
    assert (c.params.sampling_topk, c.params.sampling_temperature) == (5, 0.7)
    c, _ = load(tmp_path, EVERY_KEY, VARIANTS[4])  # several corpora
    d = c.data
    assert (d.train_features_file, d.train_labels_file) == (("a.src", "b.src"), ("a.tgt", "b.tgt"))
    assert d.train_alignments == ("a.align", "b.align") and tuple(d.train_files_weights) == (3, 1)
    assert d.example_weights == ("a.weights", "b.weights")


def test_alias_and_its_key_together_is_an_error(tmp_path):
    with pytest.raises(SeqtrainError, match="older name of eval.scorers; set only eval.scorers"):
        load(
            tmp_path, {"model_dir": "r", "eval": {"scorers": "bleu", "external_evaluators": "ter"}}
        )


def test_opennmt_derived_defaults(tmp_path):
    c, _ = load(tmp_path, {"model_dir": "r"})
    assert c.params.average_loss_in_time is True  # batch_type tokens (seqtrain's default)
    assert config_checks.decay_arguments(c.params) == {
        "scale": 2.0,
        "model_dim": 512,
        "warmup_steps": 8000,
    }
    c, _ = load(tmp_path, {"model_dir": "r", "train": {"batch_type": "examples"}})
    assert c.params.average_loss_in_time is False  # OpenNMT-tf: true only with tokens
    c, _ = load(tmp_path, {"model_dir": "r", "params": {"decay_type": "CosineAnnealing"}})
    assert config_checks.decay_arguments(c.params) == {
        "eta_max": 2.0, "eta_min": 0.0, "max_step": 1000000, "warmup_steps": None
    }  # fmt: skip
    with pytest.raises(SeqtrainError, match=r"RsqrtDecay takes scale, warmup_steps \(unknown: "):
        load(tmp_path, {"model_dir": "r", "params": {"decay_type": "RsqrtDecay"}})


def test_num_gpus_and_other_flag_aliases():
    parser = cli._parser()
    args = parser.parse_args(["train", "--config", "a.yml", "--num_gpus", "2", "--seed", "7"])
    assert args.num_devices == 2
    assert cli._overrides(args) == {"train": {"seed": 7}}
    args = parser.parse_args(
        ["train", "--config", "a.yml", "--mixed_precision", "--model_dir", "m"]
    )
    assert cli._overrides(args) == {"model_dir": "m", "train": {"mixed_precision": True}}
    assert parser.parse_args(["export", "--config", "a", "--export_dir", "d"]).output_dir == "d"
    for run_type, function in (
        ("infer", cli.cmd_translate),
        ("average_checkpoints", cli.cmd_average),
        ("update_vocab", cli.cmd_update_vocab),
    ):
        extra = ["--features_file", "f"] if run_type == "infer" else ["--output_dir", "o"]
        assert parser.parse_args([run_type, "--config", "a", *extra]).func is function


def test_with_eval_requires_the_evaluation_settings(corpus, tmp_path, capsys):
    from conftest import tiny_config, write_config

    path = write_config(tmp_path / "run.yml", tiny_config(corpus, tmp_path / "run"))
    assert cli.main(["train", "--config", path, "--with_eval"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("seqtrain train: error: --with_eval: set data.eval_features_file")
    assert not (tmp_path / "run").exists()
