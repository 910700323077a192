"""seqtrain.export: the SavedModel runs in a fresh process without seqtrain, as translate does."""

import dataclasses
import json
import os
import subprocess
import sys

import pytest
import sentencepiece
import tensorflow as tf
from conftest import HANG_GUARD

from seqtrain import config as cfg
from seqtrain import evaluate, export, translate
from seqtrain.checkpoints import build_model
from seqtrain.errors import SeqtrainError
from seqtrain.vocab import build_vocab, read_text_lines, train_sentencepiece

TOY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "toy")

# Runs in a fresh interpreter: plain TensorFlow only.
LOADER = """
import json, sys
import tensorflow as tf
results = []
for directory, inputs in json.loads(sys.argv[1]):
    translate = tf.saved_model.load(directory).signatures["translate"]
    out = translate(sentences=tf.constant(inputs, tf.string))
    results.append({k: [x.decode() if isinstance(x, bytes) else float(x) for x in v.numpy()]
                    for k, v in out.items()})
assert not any(name.startswith("seqtrain") for name in sys.modules)
print(json.dumps(results))
"""


def write_lines(path, lines):
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(line + "\n" for line in lines)


def toy_lines(name, count):
    return list(read_text_lines(os.path.join(TOY, name)))[:count]


def make_model_dir(root, data_section, beam_width, **model):
    """An untrained, seeded tiny model saved as a checkpoint; returns its config."""
    config = cfg.build({
        "model_dir": os.path.join(root, "model"),
        "data": data_section,
        "model": {"num_layers": 1, "num_units": 16, "num_heads": 2, "ffn_inner_dim": 32, **model},
        "params": {"beam_width": beam_width, "maximum_decoding_length": 7},
        "infer": {"batch_size": 3},
    }, "test")  # fmt: skip
    tf.train.Checkpoint(model=build_model(config)).save(os.path.join(config.model_dir, "ckpt"))
    return config


@pytest.fixture(scope="module")
def whitespace_run(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("ws"))
    write_lines(os.path.join(root, "src"), toy_lines("dev.src", 30))
    write_lines(os.path.join(root, "tgt"), toy_lines("dev.tgt", 30))
    build_vocab([os.path.join(root, "src")], os.path.join(root, "src.vocab"))
    build_vocab([os.path.join(root, "tgt")], os.path.join(root, "tgt.vocab"))
    section = {"source_vocabulary": os.path.join(root, "src.vocab"),
               "target_vocabulary": os.path.join(root, "tgt.vocab")}  # fmt: skip
    return make_model_dir(root, section, beam_width=3), root


@pytest.fixture(scope="module")
def sentencepiece_run(tmp_path_factory):
    """Joint SentencePiece model on both toy sides; word-level alignments; greedy decoding; the
    reading alignment row (alignments from a teacher-forced pass inside the SavedModel) and the
    intersection extraction."""
    root = str(tmp_path_factory.mktemp("sp"))
    model, vocab = train_sentencepiece(
        [os.path.join(TOY, "dev.src"), os.path.join(TOY, "dev.tgt")],
        os.path.join(root, "sp"), vocab_size=150,
    )  # fmt: skip
    section = {"source_vocabulary": vocab, "target_vocabulary": vocab,
               "source_tokenization": model, "target_tokenization": model,
               "alignment_level": "words"}  # fmt: skip
    config = make_model_dir(root, section, beam_width=1, alignment_row="reading")
    params = dataclasses.replace(config.params, alignment_extraction="intersection")
    return dataclasses.replace(config, params=params), model


def parse(lines):
    """translate_command lines ``SCORE ||| TEXT ||| LINKS`` -> (texts, links, scores)."""
    fields = [line.split(" ||| ") for line in lines]
    return [f[1] for f in fields], [f[2] for f in fields], [float(f[0]) for f in fields]


def test_exported_model_translates_as_translate_command(whitespace_run, sentencepiece_run):
    (ws_config, _), (sp_config, sp_model) = whitespace_run, sentencepiece_run
    sources = toy_lines("dev.src", 5) + [""] + toy_lines("test.src", 2)
    cases = []
    for config in (ws_config, sp_config):
        inputs = os.path.join(config.model_dir, "inputs.txt")
        write_lines(inputs, sources)
        out = os.path.join(config.model_dir, "out.txt")
        translate.translate_command(config, inputs, out, with_alignments="hard", with_scores=True)
        directory = export.export(config, os.path.join(config.model_dir, "export"))
        cases.append((directory, list(read_text_lines(out))))
    processor = sentencepiece.SentencePieceProcessor(model_file=sp_model)
    pieces = [" ".join(processor.encode_as_pieces(line)) for line in sources]
    request = [(cases[0][0], sources), (cases[1][0], pieces)]  # SentencePiece: pieces in
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    run = subprocess.run(
        [sys.executable, "-c", LOADER, json.dumps(request)],
        capture_output=True, text=True, env=env, timeout=HANG_GUARD, check=False, cwd="/",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads(run.stdout.strip().splitlines()[-1])
    for (_, expected_lines), result in zip(cases, results):
        texts, links, scores = parse(expected_lines)
        assert result["translations"] == texts
        assert result["alignments"] == links
        assert result["scores"] == pytest.approx(scores, abs=2e-5)
        assert texts[5] == "" and links[5] == "" and scores[5] == 0.0  # the empty input
        assert result["cut"][5] == 0.0
        assert any(texts) and any(links)
    # cut (whitespace model): outputs as long as their limit, min(7, 2 S + 10) = 7, never ended.
    texts = parse(cases[0][1])[0]
    assert results[0]["cut"] == [float(len(t.split()) == 7) for t in texts]
    # Word-level links: indices of the raw words, not of the pieces.
    _, sp_links, _ = parse(cases[1][1])
    for source, line in zip(sources, sp_links):
        assert all(int(pair.split("-")[0]) < len(source.split()) for pair in line.split())
    with open(os.path.join(cases[1][0], "assets.extra", "seqtrain.json")) as f:
        info = json.load(f)
    assert info["input"] == "sentencepiece pieces" and info["alignment_level"] == "words"
    assert info["alignment_row"] == "reading" and info["alignment_context"] == "causal"
    assert info["alignment_extraction"] == "intersection"
    assert os.path.isfile(os.path.join(cases[1][0], "assets", os.path.basename(sp_model)))


def test_export_replaces_an_older_export(whitespace_run):
    config, root = whitespace_run
    target = os.path.join(root, "again")
    os.makedirs(target)
    write_lines(os.path.join(target, "stale.txt"), ["old"])
    assert export.export(config, target) == os.path.abspath(target)
    assert not os.path.exists(os.path.join(target, "stale.txt"))
    assert os.path.isfile(os.path.join(target, "saved_model.pb"))


def test_checkpoint_errors(whitespace_run, tmp_path):
    config, _ = whitespace_run
    with pytest.raises(SeqtrainError, match="no such checkpoint"):
        export.export(config, str(tmp_path / "x"), checkpoint_path=str(tmp_path / "ckpt-7"))
    other = cfg.build({**cfg.to_dict(config), "model": {"num_layers": 2, "num_units": 16,
                                                        "num_heads": 2}}, "test")  # fmt: skip
    with pytest.raises(SeqtrainError, match="does not match the model"):
        export.export(other, str(tmp_path / "y"))


def test_export_on_best(whitespace_run):
    config, root = whitespace_run
    raw = cfg.to_dict(config)
    raw["data"].update(eval_features_file=os.path.join(root, "src"),
                       eval_labels_file=os.path.join(root, "tgt"))  # fmt: skip
    raw["eval"].update(export_on_best="loss", scorers=[])
    config = cfg.build(raw, "test")
    model, _ = export.restore_model(config)
    evaluator = evaluate.Evaluator.for_training(config, model)
    script = iter([{"loss": 3.0}, {"loss": 3.5}, {"loss": 2.0}])
    evaluator.evaluate = lambda: next(script)
    exports = os.path.join(config.model_dir, "export")

    def steps():  # (another test of this module exports to model_dir/export itself)
        return sorted(name for name in os.listdir(exports) if name.isdigit())

    evaluator(10)
    assert steps() == ["10"]
    assert os.path.isfile(os.path.join(exports, "10", "saved_model.pb"))
    evaluator(20)  # worse: no export
    evaluator(30)  # better: exported to export/30, export/10 kept (eval.max_exports_to_keep 5)
    assert steps() == ["10", "30"]
    assert os.path.isfile(os.path.join(exports, "30", "saved_model.pb"))
