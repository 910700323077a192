"""``translate --engine ctranslate2``: params.minimum_decoding_length,
params.replace_unknown_target and the worker threads (--inter_threads / --intra_threads) give the
TensorFlow engine's lines.

Fast tests use a seeded untrained model; the slow ones train test_score's copy model (its target
vocabulary lacks w20..w23) and compare the engines along the CLI path.
"""

import os

import pytest
import tensorflow as tf
from conftest import make_corpus, write_config, write_lines
from test_ctranslate2 import seeded_config, seeded_model, teacher_forced
from test_score import COPY_WORDS, IN_TARGET_VOCAB, copy_model  # noqa: F401 (copy_model: a fixture)

from seqtrain import cli, export, translate
from seqtrain import config as cfg
from seqtrain import ctranslate2_translate as engine
from seqtrain.vocab import Vocab, read_text_lines


def read(path):
    return list(read_text_lines(path))


def test_minimum_length_gives_the_lines_of_tensorflow(tmp_path):
    """A model that ends at once (</s> bias +6): with minimum_decoding_length 4 both engines
    print the same lines (texts, links, scores to 1e-5); every output has 4 tokens, or its
    length limit (1 x source length + 1) when that is lower: the limit wins in both."""
    paths = make_corpus(str(tmp_path / "data"))
    params = {"beam_width": 1, "alignment_extraction": "argmax",
              "maximum_decoding_length_factor": 1.0,
              "maximum_decoding_length_offset": 1}  # fmt: skip
    config = seeded_config(paths, tmp_path / "m", {"alignment_row": "reading"}, params)
    model = seeded_model(config, perturb=False, eos_bias=6.0)
    tf.train.Checkpoint(model=model).save(os.path.join(config.model_dir, "ckpt"))
    directory = export.export(config, str(tmp_path / "ct2"), export_format="ctranslate2")
    options = {"with_alignments": "hard", "with_scores": True}
    outputs = {}
    for minimum in (0, 4):
        params["minimum_decoding_length"] = minimum
        config = seeded_config(paths, tmp_path / "m", {"alignment_row": "reading"}, params)
        out_tf, out_ct2 = str(tmp_path / f"tf{minimum}.txt"), str(tmp_path / f"ct2{minimum}.txt")
        translate.translate_command(config, paths["dev.src"], out_tf, **options)
        engine.translate_command(directory, paths["dev.src"], out_ct2, **options, overrides=config)
        tf_lines, ct2_lines = read(out_tf), read(out_ct2)
        assert [line.split(" ||| ")[1:] for line in ct2_lines] == [
            line.split(" ||| ")[1:] for line in tf_lines
        ]
        for a, b in zip(ct2_lines, tf_lines):
            assert float(a.split(" ||| ")[0]) == pytest.approx(float(b.split(" ||| ")[0]), abs=1e-5)
        outputs[minimum] = [line.split(" ||| ")[1].split() for line in ct2_lines]
    assert all(not tokens for tokens in outputs[0])  # without a minimum the model stops at once
    sources = [line.split() for line in read(paths["dev.src"])]
    expected = [min(4, len(source) + 1) for source in sources]
    assert [len(tokens) for tokens in outputs[4]] == expected
    assert min(expected) < 4 and max(expected) == 4  # both cases occur (sources of 2-9 words)


def test_minimum_length_beam_scores_are_the_model_log_probabilities(tmp_path):
    """Beam 3, 3-best, length penalty 0.6, minimum length 4, a limit of 1 x source + 1: each
    printed score is TensorFlow's teacher-forced log-probability of the printed tokens (with
    </s> when the output ended) / length^0.6 (CTranslate2's renormalized scores are replaced),
    every output has min(4, its limit) tokens or more, and each 3-best list is best first."""
    paths = make_corpus(str(tmp_path / "data"))
    params = {"beam_width": 3, "length_penalty": 0.6, "minimum_decoding_length": 4,
              "maximum_decoding_length_factor": 1.0,
              "maximum_decoding_length_offset": 1}  # fmt: skip
    config = seeded_config(paths, tmp_path / "m", params=params)
    model = seeded_model(config, eos_bias=4.0)
    directory = export.export_model(config, model, str(tmp_path / "ct2"), "ctranslate2")
    out = str(tmp_path / "beam.txt")
    engine.translate_command(directory, paths["dev.src"], out, with_scores=True, n_best=3)
    printed = [line.split(" ||| ") for line in read(out)]
    sources = [line.split() for line in read(paths["dev.src"]) for _ in range(3)]
    targets = [text.split() for _, text in printed]
    vocabs = Vocab.load(paths["src.vocab"]), Vocab.load(paths["tgt.vocab"])
    log_probs, _ = teacher_forced(model, *vocabs, sources, targets)
    ended = 0
    for k, (source, target) in enumerate(zip(sources, targets)):
        limit = len(source) + 1
        assert min(4, limit) <= len(target) <= limit
        length = len(target) + (len(target) < limit)  # </s> scored when the output ended
        ended += len(target) < limit
        expected = log_probs[k, :length].sum() / length**0.6
        assert float(printed[k][0]) == pytest.approx(expected, abs=1e-4), k
    assert ended > 0  # outputs that ended with </s> after the minimum, not only cut ones
    scores = [float(score) for score, _ in printed]
    assert all(scores[k] >= scores[k + 1] >= scores[k + 2] for k in range(0, len(scores), 3))


def test_thread_options_belong_to_the_ctranslate2_engine(tmp_path, capsys):
    paths = make_corpus(str(tmp_path / "data"))
    config = seeded_config(paths, tmp_path / "m")
    run = write_config(tmp_path / "run.yml", cfg.to_dict(config))
    argv = ["translate", "--config", run, "--features_file", paths["dev.src"]]
    assert cli.main(argv + ["--inter_threads", "2"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("seqtrain translate: error: --inter_threads / --intra_threads")
    assert "--engine ctranslate2" in error and len(error.splitlines()) == 1
    directory = export.export_model(config, seeded_model(config), str(tmp_path / "ct2"),
                                    "ctranslate2")  # fmt: skip
    argv = ["translate", "--engine", "ctranslate2", "--model_dir", directory,
            "--features_file", paths["dev.src"]]  # fmt: skip
    assert cli.main(argv + ["--inter_threads", "0"]) == 2
    assert "--inter_threads takes a number >= 1" in capsys.readouterr().err
    assert cli.main(argv + ["--inter_threads", "2", "--intra_threads", "1"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 40


@pytest.mark.parametrize(
    "override, named",
    [
        ({"beam_width": 1, "sampling_topk": 5}, "params.sampling_topk = 5"),
        ({"beam_width": 1, "sampling_temperature": 0.5}, "params.sampling_temperature = 0.5"),
        ({"coverage_penalty": 0.2}, "params.coverage_penalty = 0.2"),
    ],
)
def test_keys_the_engine_cannot_apply_are_refused(tmp_path, capsys, override, named):
    """Sampling and the coverage penalty: one line naming the key, exit 2, no output file."""
    paths = make_corpus(str(tmp_path / "data"))
    config = seeded_config(paths, tmp_path / "m")
    directory = export.export_model(config, seeded_model(config), str(tmp_path / "ct2"),
                                    "ctranslate2")  # fmt: skip
    raw = cfg.to_dict(config)
    raw["params"].update(override)
    run = write_config(tmp_path / "run.yml", raw)
    out = tmp_path / "out.txt"
    argv = ["translate", "--engine", "ctranslate2", "--model_dir", directory, "--config", run,
            "--features_file", paths["dev.src"], "--predictions_file", str(out)]  # fmt: skip
    assert cli.main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and named in error and "TensorFlow engine" in error
    assert not out.exists()


# ---------------------------------------------------------------- trained copy model (slow)


@pytest.fixture(scope="module")
def copy_export(copy_model, tmp_path_factory):  # noqa: F811 (the imported fixture)
    """(run config dict, paths, float32 CTranslate2 export of the trained copy model)."""
    raw, paths = copy_model
    root = tmp_path_factory.mktemp("copy_export")
    run = write_config(root / "run.yml", raw)
    directory = str(root / "ct2")
    assert cli.main(["export", "--config", run, "--format", "ctranslate2",
                     "--output_dir", directory]) == 0  # fmt: skip
    return raw, paths, directory


def both_engines(tmp_path, raw, directory, inputs, *options, name="out"):
    """Runs ``seqtrain translate`` with the TensorFlow engine and with the export (the run
    config given as well: its params and infer win) -> (TensorFlow lines, CTranslate2 lines)."""
    run = write_config(tmp_path / f"{name}.yml", raw)
    lines = []
    for engine_args in (["--config", run], ["--engine", "ctranslate2", "--model_dir", directory,
                                            "--config", run]):  # fmt: skip
        out = str(tmp_path / f"{name}.{len(lines)}.txt")
        argv = ["translate", *engine_args, "--features_file", inputs, "--predictions_file", out]
        assert cli.main(argv + list(options)) == 0
        lines.append(read(out))
    return lines


@pytest.mark.slow
def test_trained_minimum_length_gives_tensorflow_greedy_output(copy_export, tmp_path):
    """The copy model's outputs have the 2-6 words of their sources; with
    minimum_decoding_length 8 both engines continue past them with the same tokens."""
    raw, paths, directory = copy_export
    raw = cfg.merge(raw, {"params": {"beam_width": 1, "maximum_decoding_length": 12}})
    plain_tf, plain_ct2 = both_engines(tmp_path, raw, directory, paths["dev.src"], name="plain")
    assert plain_ct2 == plain_tf and max(len(line.split()) for line in plain_tf) < 8
    raw = cfg.merge(raw, {"params": {"minimum_decoding_length": 8}})
    tf_lines, ct2_lines = both_engines(tmp_path, raw, directory, paths["dev.src"], name="min8")
    assert ct2_lines == tf_lines
    assert all(len(line.split()) >= 8 for line in ct2_lines)


@pytest.mark.slow
def test_trained_replace_unknown_target_gives_tensorflow_lines(copy_export, tmp_path):
    """Greedy (beam search may choose otherwise, see the README): each <unk> becomes the source
    word at its position, with and without --with_alignments (the engine asks CTranslate2 for
    the rows either way), as in TensorFlow."""
    raw, paths, directory = copy_export
    raw = cfg.merge(raw, {"params": {"beam_width": 1}})
    probes = ["w3 w21 w5", "w20 w1 w2 w9", "w7 w8 w22 w23 w0", "w11 w4 w20"]
    inputs = str(tmp_path / "probe.src")
    write_lines(inputs, probes + read(paths["dev.src"]))
    unknown = {f"w{i}" for i in range(IN_TARGET_VOCAB, len(COPY_WORDS))}
    plain_tf, plain_ct2 = both_engines(tmp_path, raw, directory, inputs, name="plain")
    masked = [" ".join("<unk>" if w in unknown else w for w in line.split()) for line in probes]
    assert plain_ct2 == plain_tf and plain_ct2[:4] == masked  # the model writes <unk>
    raw = cfg.merge(raw, {"params": {"replace_unknown_target": True}})
    tf_lines, ct2_lines = both_engines(tmp_path, raw, directory, inputs, name="copy")
    assert ct2_lines == tf_lines and ct2_lines[:4] == probes  # the aligned source words
    assert sum("<unk>" in line for line in plain_tf) > sum("<unk>" in line for line in tf_lines)
    tf_lines, ct2_lines = both_engines(
        tmp_path, raw, directory, inputs, "--with_alignments", "hard", name="copy_links"
    )
    assert ct2_lines == tf_lines
    assert [line.split(" ||| ")[0] for line in ct2_lines[:4]] == probes


@pytest.mark.slow
def test_inter_threads_print_the_same_lines(copy_export, tmp_path):
    """Beam 2, 2-best, scores and links, batches of 3 sentences, a limit of 4 tokens that cuts
    the longer outputs (rescored by score_batch): 1 and 2 workers print identical lines."""
    raw, paths, directory = copy_export
    raw = cfg.merge(raw, {"params": {"beam_width": 2, "maximum_decoding_length": 4},
                          "infer": {"batch_size": 3, "n_best": 2}})  # fmt: skip
    run = write_config(tmp_path / "run.yml", raw)
    outputs = []
    for threads in ("1", "2"):
        out = str(tmp_path / f"threads{threads}.txt")
        argv = ["translate", "--engine", "ctranslate2", "--model_dir", directory, "--config", run,
                "--features_file", paths["dev.src"], "--predictions_file", out, "--with_scores",
                "--with_alignments", "hard", "--inter_threads", threads,
                "--intra_threads", "1"]  # fmt: skip
        assert cli.main(argv) == 0
        outputs.append(read(out))
    assert outputs[0] == outputs[1] and len(outputs[0]) == 80
    scores = [float(line.split(" ||| ")[0]) for line in outputs[0]]
    assert all(scores[k] >= scores[k + 1] for k in range(0, 80, 2))  # best first after rescoring
    sources = read(paths["dev.src"])
    cut = [k for k, line in enumerate(outputs[0][::2]) if len(line.split(" ||| ")[1].split()) == 4]
    assert any(len(sources[k].split()) > 4 for k in cut)  # some outputs were cut and rescored
