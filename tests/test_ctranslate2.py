"""CTranslate2 export and engine: the converted model computes seqtrain's numbers, the engine
prints seqtrain's lines (alignment rows of the trained convention), quantized exports, errors.

Fast tests use seeded untrained models (exact comparisons do not need a trained model); the slow
one trains the tiny model with each alignment row and compares the engines along the CLI path.
"""

import json
import os
import sys
import typing

import ctranslate2  # the test extra installs it
import numpy as np
import pytest
import sacrebleu
import tensorflow as tf
from conftest import make_corpus, run_cli, tiny_config, write_config
from test_alignment_rows import diagonal_corpus

from seqtrain import cli, decoding, export, translate
from seqtrain import config as cfg
from seqtrain import ctranslate2_translate as engine
from seqtrain.checkpoints import build_model
from seqtrain.vocab import EOS, Vocab, read_text_lines, train_sentencepiece

TOY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "toy")
MODEL = {"num_layers": 2, "num_units": 32, "num_heads": 4, "ffn_inner_dim": 64}


def seeded_config(paths, model_dir, model=None, params=None, data=None):
    return cfg.build({
        "model_dir": str(model_dir),
        "data": {"source_vocabulary": paths["src.vocab"], "target_vocabulary": paths["tgt.vocab"],
                 **(data or {})},
        "model": {**MODEL, **(model or {})},
        "params": params or {},
    }, "test")  # fmt: skip


def seeded_model(config, perturb=True, eos_bias=None):
    """Untrained model; ``perturb``: its biases, layer-norm gains and offsets are random too (so
    a wrong mapping of any of them shows); ``eos_bias`` sets the output bias of </s>."""
    model = build_model(config)
    generator = tf.random.Generator.from_seed(7)
    for variable in model.trainable_variables if perturb else []:
        if any(name in variable.name for name in ("bias", "gamma", "beta")):
            variable.assign_add(generator.normal(variable.shape, stddev=0.3))
    if eos_bias is not None:
        bias = model.output_bias if model.ties_output else model.output.bias
        bias.assign(tf.tensor_scatter_nd_update(bias, [[EOS]], [eos_bias]))
    return model


def teacher_forced(model, source_vocab, target_vocab, sources, targets):
    """seqtrain's log-probabilities [B, T] (</s> last) and token-order rows [B, T, S]."""
    s_max, t_max = max(map(len, sources)), max(map(len, targets)) + 1
    batch = {k: np.zeros((len(sources), n), np.int32) for k, n in
             (("source_ids", s_max), ("target_in", t_max), ("target_out", t_max))}  # fmt: skip
    for i, (source, target) in enumerate(zip(sources, targets)):
        batch["source_ids"][i, : len(source)] = source_vocab.ids(source)
        ids = target_vocab.ids(target)
        batch["target_in"][i, : len(ids) + 1] = [1, *ids]
        batch["target_out"][i, : len(ids) + 1] = [*ids, EOS]
    batch["source_length"] = np.array([len(s) for s in sources], np.int32)
    batch["target_length"] = np.array([len(t) + 1 for t in targets], np.int32)
    log_probs, rows = decoding.forced_decoding(model, {k: tf.constant(v) for k, v in batch.items()})
    return log_probs.numpy(), rows.numpy()


@pytest.mark.parametrize(
    "share, layer, heads",
    [("none", -1, 1), ("all", 0, 0), ("target", 1, 2), ("source_target_input", 0, 1)],
)
def test_converted_model_gives_seqtrain_log_probs_and_guided_attention(
    tmp_path, share, layer, heads
):
    paths = make_corpus(str(tmp_path / "data"))
    joint = share in ("all", "source_target_input")
    data = {"target_vocabulary": paths["src.vocab"]} if joint else None
    model_config = {"share_embeddings": share, "alignment_layer": layer, "alignment_heads": heads}
    config = seeded_config(paths, tmp_path / "m", model_config, data=data)
    model = seeded_model(config)
    directory = export.export_model(config, model, str(tmp_path / "ct2"), "ctranslate2")
    sources = [line.split() for line in read_text_lines(paths["dev.src"])][:10]
    targets = [line.split() for line in read_text_lines(paths["dev.tgt"])][:10]
    if joint:  # one vocabulary (the source's): targets in source words
        targets = [[word.replace("t", "s") for word in target] for target in targets]
    vocabs = Vocab.load(config.data.source_vocabulary), Vocab.load(config.data.target_vocabulary)
    log_probs, rows = teacher_forced(model, *vocabs, sources, targets)
    translator = ctranslate2.Translator(directory)
    for i, result in enumerate(translator.score_batch(sources, targets)):
        np.testing.assert_allclose(result.log_probs, log_probs[i, : len(targets[i]) + 1], atol=1e-4)
    # Forcing the reference as a prefix: CTranslate2's rows of the steps predicting each token.
    forced = translator.translate_batch(
        sources, target_prefix=targets, beam_size=1, return_attention=True,
        max_decoding_length=max(map(len, targets)) + 1, min_decoding_length=0,
    )  # fmt: skip
    for i, result in enumerate(forced):
        n, s = len(targets[i]), len(sources[i])
        assert result.hypotheses[0][:n] == targets[i]
        np.testing.assert_allclose(np.array(result.attention[0])[:n], rows[i, :n, :s], atol=1e-5)


def corpus_and_lines(tmp_path, sentencepiece):
    """(paths, data section, source lines): the test corpus, or a joint SentencePiece model
    over the toy corpus with word-level alignments."""
    paths = make_corpus(str(tmp_path / "data"))
    if not sentencepiece:
        return paths, None, list(read_text_lines(paths["dev.src"]))
    sp_model, sp_vocab = train_sentencepiece(
        [os.path.join(TOY, "dev.src"), os.path.join(TOY, "dev.tgt")],
        str(tmp_path / "sp"), vocab_size=150,
    )  # fmt: skip
    paths.update({"src.vocab": sp_vocab, "tgt.vocab": sp_vocab})
    data = {"source_tokenization": sp_model, "target_tokenization": sp_model,
            "alignment_level": "words"}  # fmt: skip
    return paths, data, list(read_text_lines(os.path.join(TOY, "dev.src")))[:40]


def fields(path):
    """Output lines -> (scores, texts, alignments)."""
    parts = [line.split(" ||| ") for line in read_text_lines(path)]
    return [float(p[0]) for p in parts], [p[1] for p in parts], [p[2] for p in parts]


@pytest.mark.parametrize(
    "row, sentencepiece", [("predicting", False), ("reading", False), ("reading", True)]
)
def test_engine_prints_the_lines_of_tensorflow_translate(tmp_path, row, sentencepiece):
    """Greedy, with a relative length limit that cuts some outputs and not others: same texts,
    same hard links (the rows of the trained convention, also for the last token of a cut
    output), scores to 1e-5; SentencePiece pieces and word-level links through the export."""
    paths, data, lines = corpus_and_lines(tmp_path, sentencepiece)
    params = {"beam_width": 1, "maximum_decoding_length_factor": 1.0,
              "maximum_decoding_length_offset": 2, "alignment_extraction": "argmax"}  # fmt: skip
    config = seeded_config(paths, tmp_path / "m", {"alignment_row": row}, params, data)
    model = seeded_model(config, perturb=False, eos_bias=1.25)
    tf.train.Checkpoint(model=model).save(os.path.join(config.model_dir, "ckpt"))
    inputs = str(tmp_path / "inputs.txt")
    with open(inputs, "w", encoding="utf-8") as f:
        f.writelines(line + "\n" for line in lines[:20] + [""] + lines[20:])
    directory = export.export(config, str(tmp_path / "ct2"), export_format="ctranslate2")
    out_tf, out_ct2 = str(tmp_path / "tf.txt"), str(tmp_path / "ct2.txt")
    options = {"with_alignments": "hard", "with_scores": True}
    translate.translate_command(config, inputs, out_tf, **options)
    engine.translate_command(directory, inputs, out_ct2, **options)
    scores, texts, links = fields(out_tf)
    ct2_scores, ct2_texts, ct2_links = fields(out_ct2)
    assert ct2_texts == texts and ct2_links == links
    np.testing.assert_allclose(ct2_scores, scores, rtol=1e-6, atol=1e-5)
    if not sentencepiece:  # an output is cut when it has as many tokens as its limit
        limits = [engine.length_limit(len(line.split()), config.params) for line in lines]
        lengths = [len(text.split()) for text in texts[:20] + texts[21:]]
        cut = sum(n == limit for n, limit in zip(lengths, limits))
        ended = sum(0 < n < limit for n, limit in zip(lengths, limits))
        assert cut > 0 and ended > 0, "the case needs outputs cut at their limit and ended ones"
    assert texts[20] == "" and links[20] == "" and scores[20] == 0.0  # the empty input line


def test_soft_alignments_are_the_rows_of_the_convention(tmp_path):
    paths, _, lines = corpus_and_lines(tmp_path, sentencepiece=False)
    config = seeded_config(paths, tmp_path / "m", {"alignment_row": "reading"},
                           {"beam_width": 1, "maximum_decoding_length": 6})  # fmt: skip
    model = seeded_model(config, eos_bias=1.5)
    directory = export.export_model(config, model, str(tmp_path / "ct2"), "ctranslate2")
    out = str(tmp_path / "soft.txt")
    engine.translate_command(directory, paths["dev.src"], out, with_alignments="soft")
    printed = [line.split(" ||| ") for line in read_text_lines(out)]
    sources = [line.split() for line in lines]
    targets = [text.split() for text, _ in printed]
    vocabs = Vocab.load(paths["src.vocab"]), Vocab.load(paths["tgt.vocab"])
    _, rows = teacher_forced(model, *vocabs, sources, targets)  # independent: TensorFlow
    for i, (_, soft) in enumerate(printed):
        got = [[float(p) for p in row.split()] for row in soft.split(" ; ")] if soft else []
        n, s = len(targets[i]), len(sources[i])
        np.testing.assert_allclose(np.array(got).reshape(n, s), rows[i, :n, :s], atol=2e-6)


def test_quantized_exports_store_smaller_weights_and_translate(tmp_path):
    paths = make_corpus(str(tmp_path / "data"))
    config = seeded_config(paths, tmp_path / "m", params={"beam_width": 2})
    model = seeded_model(config)
    sizes = {}
    formats = [f for f in typing.get_args(cfg.ExportFormat) if f != "saved_model"]
    for fmt in formats:
        directory = export.export_model(config, model, str(tmp_path / fmt), fmt)
        sizes[fmt] = os.path.getsize(os.path.join(directory, "model.bin"))
        out = str(tmp_path / f"{fmt}.txt")
        engine.translate_command(directory, paths["dev.src"], out, with_alignments="hard")
        assert len(list(read_text_lines(out))) == 40
    float32 = sizes["ctranslate2"]
    # Weight matrices hold most bytes: 1 byte (int8) or 2 bytes (int16, float16) instead of 4.
    assert sizes["ctranslate2_int8"] < 0.4 * float32
    for fmt in ("ctranslate2_int16", "ctranslate2_float16", "ctranslate2_int8_float16"):
        assert sizes[fmt] < 0.65 * float32, fmt


def test_missing_ctranslate2_is_a_clear_error(tmp_path, monkeypatch, capsys):
    paths = make_corpus(str(tmp_path / "data"))
    run = write_config(tmp_path / "run.yml", tiny_config(paths, tmp_path / "model"))
    monkeypatch.setitem(sys.modules, "ctranslate2", None)  # import ctranslate2 -> ImportError
    output = tmp_path / "export"
    argv = ["export", "--config", run, "--format", "ctranslate2_int8", "--output_dir", str(output)]
    assert cli.main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("seqtrain export: error: CTranslate2 is not installed")
    assert 'pip install -e ".[ctranslate2]"' in error and len(error.splitlines()) == 1
    assert not output.exists()
    argv = ["translate", "--engine", "ctranslate2", "--model_dir", str(tmp_path / "any"),
            "--features_file", paths["dev.src"]]  # fmt: skip
    assert cli.main(argv) == 2
    assert "seqtrain translate: error: " in capsys.readouterr().err


def test_translate_needs_a_config_or_an_export(tmp_path, capsys):
    paths = make_corpus(str(tmp_path / "data"))
    assert cli.main(["translate", "--features_file", paths["dev.src"]]) == 2
    assert "give --config" in capsys.readouterr().err
    argv = ["translate", "--engine", "ctranslate2", "--model_dir", str(tmp_path),
            "--features_file", paths["dev.src"]]  # fmt: skip
    assert cli.main(argv) == 2
    assert "not a seqtrain CTranslate2 export (seqtrain.yml is missing)" in capsys.readouterr().err


def test_full_context_models_translate_but_refuse_alignments(tmp_path, capsys):
    paths = make_corpus(str(tmp_path / "data"))
    config = seeded_config(paths, tmp_path / "m", {"alignment_context": "full"})
    directory = export.export_model(
        config, build_model(config), str(tmp_path / "ct2"), "ctranslate2"
    )
    base = ["translate", "--engine", "ctranslate2", "--model_dir", directory,
            "--features_file", paths["dev.src"]]  # fmt: skip
    assert cli.main(base + ["--with_alignments", "hard"]) == 2
    captured = capsys.readouterr()
    assert "alignment_context: full" in captured.err and captured.out == ""
    assert cli.main(base) == 0
    assert len(capsys.readouterr().out.splitlines()) == 40


# ---------------------------------------------------------------- trained models, CLI path


def agreement(links_a, links_b, texts):
    """Fraction of target tokens whose set of linked source tokens is the same."""
    same = total = 0
    for a, b, text in zip(links_a, links_b, texts):
        by_token = [{}, {}]
        for side, links in zip(by_token, (a, b)):
            for pair in links.split():
                s, t = map(int, pair.split("-"))
                side.setdefault(t, set()).add(s)
        for t in range(len(text.split())):
            total += 1
            same += by_token[0].get(t, set()) == by_token[1].get(t, set())
    return same / total


@pytest.mark.slow
@pytest.mark.parametrize("row", ["reading", "predicting"])
def test_trained_model_float32_and_int8_exports(tmp_path, row):
    """Trained with export_on_best (eval.export_format: ctranslate2) on "target word k <->
    source word k": on 200 held-out sentences the float32 export's greedy output equals
    seqtrain's token for token, its hard links agree on >= 99 % of target tokens; an int8 export
    (seqtrain export) is within 1 BLEU of it."""
    paths = diagonal_corpus(str(tmp_path / "data"), lines=400)
    test = diagonal_corpus(str(tmp_path / "test"), lines=200, seed=1)  # held out: train.*
    config = tiny_config(
        paths, tmp_path / "model",
        model={"alignment_row": row, "dropout": 0.0, "attention_dropout": 0.0, "ffn_dropout": 0.0},
        params={"guided_alignment_normalization": "aligned_tokens", "beam_width": 1,
                "alignment_extraction": "argmax",
                "learning_rate": 2.0, "decay_params": {"model_dim": 32, "warmup_steps": 100}},
        train={"max_step": 400, "save_checkpoints_steps": 400, "save_summary_steps": 100},
        eval={"steps": 200, "export_on_best": "loss", "export_format": "ctranslate2"},
    )  # fmt: skip
    config["data"].update(eval_features_file=paths["dev.src"], eval_labels_file=paths["dev.tgt"])
    run = write_config(tmp_path / "run.yml", config)
    proc = run_cli("train", "--config", run)
    assert proc.returncode == 0, proc.stderr[-2000:]
    best = str(tmp_path / "model" / "best")  # export/STEP of the best step holds these weights
    with open(tmp_path / "model" / "best" / "best.json", encoding="utf-8") as f:
        best_step = json.load(f)["step"]
    exported = str(tmp_path / "model" / "export" / str(best_step))
    int8 = str(tmp_path / "int8")
    proc = run_cli("export", "--config", run, "--checkpoint_path", best,
                   "--format", "ctranslate2_int8", "--output_dir", int8)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    outputs = {}
    for name, engine_args in (
        ("tf", ["--config", run, "--checkpoint_path", best]),
        ("float32", ["--engine", "ctranslate2", "--model_dir", exported]),
        ("int8", ["--engine", "ctranslate2", "--model_dir", int8]),
    ):
        out = str(tmp_path / f"{name}.txt")
        proc = run_cli("translate", *engine_args, "--features_file", test["train.src"],
                       "--predictions_file", out, "--with_alignments", "hard")  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-2000:]
        parts = [line.split(" ||| ") for line in read_text_lines(out)]
        outputs[name] = ([p[0] for p in parts], [p[1] for p in parts])
    references = [list(read_text_lines(test["train.tgt"]))]
    bleu = {name: sacrebleu.corpus_bleu(out[0], references).score for name, out in outputs.items()}
    texts, links = outputs["tf"]
    assert outputs["float32"][0] == texts, bleu
    assert agreement(outputs["float32"][1], links, texts) >= 0.99
    assert bleu["float32"] > 50, bleu  # a model that translates: the int8 check means something
    assert abs(bleu["int8"] - bleu["float32"]) <= 1.0, bleu
