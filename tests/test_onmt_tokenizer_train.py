"""Along the user's path: an OpenNMT-tf data config (OpenNMT Tokenizer aggressive + joiners,
word-level alignments, two weighted corpora, example weights) trains, evaluates and translates."""

import json
import os

import pytest
import yaml
from conftest import make_corpus, run_cli, tiny_config, write_config, write_lines

from seqtrain.vocab import read_text_lines

pytest.importorskip("pyonmttok")

AGGRESSIVE = {"mode": "aggressive", "joiner_annotate": True}


def punctuate(path):
    """'s3 s7 s1' -> 's3, s7 s1!': words keep their indices; aggressive mode then splits
    's3,' into 's ￭3 ￭,' (letters, digits, punctuation)."""
    lines = []
    for line in read_text_lines(path):
        words = line.split()
        words[0] += ","
        words[-1] += "!"
        lines.append(" ".join(words))
    write_lines(path, lines)


@pytest.mark.slow
def test_train_eval_translate_with_opennmt_tokenizer(tmp_path):
    paths = make_corpus(str(tmp_path / "data"), lines=160)
    for name in ("train.src", "train.tgt", "dev.src", "dev.tgt"):
        punctuate(paths[name])
    # Two corpora: the first 100 lines and the other 60, each with an example-weights file.
    split = {}
    for ext in ("src", "tgt", "align"):
        lines = list(read_text_lines(paths[f"train.{ext}"]))
        for part, chunk in (("a", lines[:100]), ("b", lines[100:])):
            split[f"{part}.{ext}"] = str(tmp_path / f"{part}.{ext}")
            write_lines(split[f"{part}.{ext}"], chunk)
    write_lines(tmp_path / "a.w", ["1"] * 100)
    write_lines(tmp_path / "b.w", ["0.5", "2"] * 30)
    tok_yml = tmp_path / "tok.yml"
    tok_yml.write_text(yaml.safe_dump({"type": "OpenNMTTokenizer", "params": AGGRESSIVE}))
    src_vocab, tgt_vocab = str(tmp_path / "src.vocab"), str(tmp_path / "tgt.vocab")
    tok_json = json.dumps({"type": "OpenNMTTokenizer", "params": AGGRESSIVE})
    for text, vocab, tokenization in (
        (paths["train.src"], src_vocab, str(tok_yml)),
        (paths["train.tgt"], tgt_vocab, tok_json),
    ):
        proc = run_cli("build-vocab", text, "--save_vocab", vocab, "--tokenizer", tokenization)
        assert proc.returncode == 0, proc.stderr[-3000:]
    pieces = set(read_text_lines(src_vocab))
    assert {"s", "￭3", "￭,", "￭!"} <= pieces and "s3" not in pieces  # "s3," -> s ￭3 ￭,
    data = {
        "train_features_file": [split["a.src"], split["b.src"]],
        "train_labels_file": [split["a.tgt"], split["b.tgt"]],
        "train_alignments": [split["a.align"], split["b.align"]],
        "train_files_weights": [1, 2],
        "example_weights": [str(tmp_path / "a.w"), str(tmp_path / "b.w")],
        "eval_features_file": paths["dev.src"],
        "eval_labels_file": paths["dev.tgt"],
        "eval_alignments": paths["dev.align"],
        "source_vocabulary": src_vocab,
        "target_vocabulary": tgt_vocab,
        "source_tokenization": str(tok_yml),  # a YAML file, as OpenNMT-tf accepts
        "target_tokenization": {"type": "OpenNMTTokenizer", "params": AGGRESSIVE},
        "alignment_level": "words",
    }
    config = tiny_config(paths, tmp_path / "run", data=data, eval={"steps": 6, "scorers": ["bleu"]})
    config_path = write_config(tmp_path / "run.yml", config)
    proc = run_cli("check-data", "--config", config_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "train corpus 1: 100 sentence pairs" in proc.stdout
    assert "train corpus 2: 60 sentence pairs" in proc.stdout
    proc = run_cli("train", "--config", config_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "corpus sampling probabilities: 0.4545, 0.5455" in proc.stderr  # 1*100 : 2*60
    records = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    train = [r for r in records if r["kind"] == "train"]
    assert train and all(0 < r["alignment"] < 50 and r["loss"] > 0 for r in train)
    evals = [r for r in records if r["kind"] == "eval"]
    assert evals and 0 <= evals[-1]["aer"] <= 100 and "bleu" in evals[-1]
    caches = sorted(os.listdir(tmp_path / "run" / "cache"))
    assert [name.split(".")[0] for name in caches] == ["eval", "train", "train1"]

    out = tmp_path / "out.txt"
    proc = run_cli(
        "translate", "--config", config_path, "--features_file", paths["dev.src"],
        "--predictions_file", str(out), "--with_alignments", "hard",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    sources = list(read_text_lines(paths["dev.src"]))
    outputs = list(read_text_lines(str(out)))
    assert len(outputs) == len(sources)
    for source, line in zip(sources, outputs):
        text, links = line.split(" ||| ")
        assert "￭" not in text  # detokenized
        for link in links.split():
            i, j = map(int, link.split("-"))
            assert i < len(source.split()) and j < len(text.split())  # word indices
