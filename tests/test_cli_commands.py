"""Each command through the command line, as a user runs it: exit status and output format.

``translate``, ``eval`` and ``export`` run on one tiny model trained a few steps (a module-scoped
fixture); ``build-vocab`` and ``aer --one-based`` / ``--reverse`` on hand-made files whose
results are counted by hand. The three commands that load a model are marked slow (the
training fixture and each TensorFlow process take ~10 s on 2 cores). (``check-data``, ``log``
and plain ``aer``: test_cli.py; ``train``: test_trainer.py; ``align``: test_align_cli.py.)
"""

import math
import re

import pytest
from conftest import make_corpus, run_cli, tiny_config, write_config, write_lines

from seqtrain import config as cfg
from seqtrain.vocab import read_text_lines

FLOAT = r"-?\d+\.\d+"


TRAIN_STEPS = 150  # measured: dev BLEU 6.3, chrF 38.7 (a partial translator, not a copy of 0)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(config path, corpus paths, model_dir): TRAIN_STEPS steps of a 2-layer, 32-unit model,
    trained in this process (the commands under test run as subprocesses)."""
    from seqtrain import trainer

    root = tmp_path_factory.mktemp("cli")
    corpus = make_corpus(str(root / "data"), lines=600)
    raw = tiny_config(
        corpus,
        root / "run",
        data={
            "eval_features_file": corpus["dev.src"],
            "eval_labels_file": corpus["dev.tgt"],
            "eval_alignments": corpus["dev.align"],
        },
        train={"max_step": TRAIN_STEPS, "save_checkpoints_steps": TRAIN_STEPS,
               "save_summary_steps": 50},
        params={"beam_width": 2, "maximum_decoding_length": 12},
        eval={"steps": None, "scorers": ["bleu", "chrf"]},
    )  # fmt: skip
    trainer.train(cfg.build(raw, "test"))
    return write_config(root / "run.yml", raw), corpus, str(root / "run")


def lines_of(path):
    return list(read_text_lines(path))


@pytest.mark.slow
def test_translate_prints_scores_translations_and_links(trained, tmp_path):
    config, corpus, _ = trained
    sources = lines_of(corpus["dev.src"])
    proc = run_cli(
        "translate", "--config", config, "--features_file", corpus["dev.src"],
        "--with_alignments", "hard", "--with_scores",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert len(lines) == len(sources)
    pattern = re.compile(rf"({FLOAT}) \|\|\| ((?:t\d+(?: t\d+)*)?) \|\|\| ((?:\d+-\d+(?: |$))*)")
    for source, line in zip(sources, lines):
        match = pattern.fullmatch(line)
        assert match, line
        words = match.group(2).split()
        links = [tuple(map(int, pair.split("-"))) for pair in match.group(3).split()]
        # params.alignment_extraction: intersection (the default): at most one link per target
        # token and per source token, in target order.
        targets = [t for _, t in links]
        assert targets == sorted(set(targets)) and all(0 <= t < len(words) for t in targets)
        assert len({s for s, _ in links}) == len(links)
        assert all(0 <= s < len(source.split()) for s, _ in links)


def eval_cli(config):
    """``seqtrain eval`` -> {metric: value} parsed from its one output line."""
    proc = run_cli("eval", "--config", config)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (line,) = proc.stdout.splitlines()
    names = ["loss", "perplexity", "bleu", "chrf", "cut", "aer", "precision", "recall"]
    # cut: the outputs cut at the length limit, a count.
    fields = [rf"{name} = (\d+)" if name == "cut" else rf"{name} = ({FLOAT})" for name in names]
    match = re.fullmatch(" ; ".join(fields), line)
    assert match, line
    assert re.search(r"loss = \d+\.\d{6} ;", line)  # loss to 6 decimals, the rest to 2
    return dict(zip(names, map(float, match.groups())))


@pytest.fixture(scope="module")
def evaluated(trained):
    return eval_cli(trained[0])


@pytest.mark.slow
def test_eval_prints_one_metrics_line(evaluated):
    values = evaluated
    assert values["perplexity"] == pytest.approx(math.exp(values["loss"]), abs=0.006)
    for name in ("bleu", "chrf", "aer", "precision", "recall"):
        assert 0.0 <= values[name] <= 100.0
    # AER = 1 - (|A∩S| + |A∩P|) / (|A| + |S|) with S = P (no possible links in this gold):
    # 1 - 2·hits / (|A| + |S|) = 1 - 2 / (1/precision + 1/recall) = 1 - F1.
    p, r = values["precision"] / 100, values["recall"] / 100
    assert p > 0 and r > 0
    assert values["aer"] / 100 == pytest.approx(1 - 2 * p * r / (p + r), abs=0.0002)


@pytest.mark.slow
def test_eval_bleu_and_chrf_equal_sacrebleu_on_translate_output(trained, evaluated, tmp_path):
    """The evaluator's BLEU/chrF against sacrebleu run here on the file that ``translate``
    writes (what a user would score), on a model trained TRAIN_STEPS steps."""
    import sacrebleu

    config, corpus, _ = trained
    out = tmp_path / "dev.hyp"
    proc = run_cli("translate", "--config", config, "--features_file", corpus["dev.src"],
                   "--predictions_file", str(out))  # fmt: skip
    assert proc.returncode == 0 and proc.stdout == "", proc.stderr[-3000:]
    hypotheses, references = lines_of(out), lines_of(corpus["dev.tgt"])
    assert len(hypotheses) == len(references) == 40
    bleu = sacrebleu.corpus_bleu(hypotheses, [references]).score
    chrf = sacrebleu.corpus_chrf(hypotheses, [references]).score
    # The model half-translates (measured BLEU 6.3, chrF 38.7): the figures compared are not 0.
    assert bleu > 2.0 and chrf > 25.0, (bleu, chrf)
    assert evaluated["bleu"] == pytest.approx(bleu, abs=0.005)  # eval prints 2 decimals
    assert evaluated["chrf"] == pytest.approx(chrf, abs=0.005)


@pytest.mark.slow
def test_export_writes_a_saved_model(trained, tmp_path):
    config, _, _ = trained
    target = tmp_path / "export"
    proc = run_cli("export", "--config", config, "--output_dir", str(target))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout == f"SavedModel: {target}\n"
    assert (target / "saved_model.pb").is_file() and (target / "variables").is_dir()


def test_build_vocab_counts_tokens(tmp_path):
    write_lines(tmp_path / "a.txt", ["b a c a", "c a"])
    write_lines(tmp_path / "b.txt", ["d b a"])
    vocab = tmp_path / "v.txt"
    proc = run_cli("build-vocab", str(tmp_path / "a.txt"), str(tmp_path / "b.txt"),
                   "--save_vocab", str(vocab))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"vocabulary: {vocab}\n"
    # a ×4, b ×2, c ×2 (ties by token), d ×1, after the four specials.
    assert lines_of(vocab) == ["<blank>", "<s>", "</s>", "<unk>", "a", "b", "c", "d"]
    proc = run_cli("build-vocab", str(tmp_path / "a.txt"), "--save_vocab", str(vocab),
                   "--size", "6")  # fmt: skip
    assert proc.returncode == 0 and lines_of(vocab)[4:] == ["a", "c"]  # size counts specials


def test_build_vocab_sentencepiece(tmp_path):
    corpus = make_corpus(str(tmp_path / "data"), lines=200)
    prefix = tmp_path / "sp"
    proc = run_cli("build-vocab", corpus["train.src"], corpus["train.tgt"], "--save_vocab",
                   str(prefix), "--sentencepiece", "--size", "24")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout == f"SentencePiece model: {prefix}.model\nvocabulary: {prefix}.vocab\n"
    vocab = lines_of(f"{prefix}.vocab")
    assert len(vocab) == 24 + 3 and vocab[:4] == ["<blank>", "<s>", "</s>", "<unk>"]
    assert "\t" not in "".join(vocab)  # an OpenNMT vocabulary, not SentencePiece's own file


def test_build_vocab_missing_file_exits_2(tmp_path):
    proc = run_cli("build-vocab", str(tmp_path / "none.txt"), "--save_vocab", str(tmp_path / "v"))
    assert proc.returncode == 2 and "none.txt" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "v").exists()


AER_LINE = re.compile(
    r"AER = (\d+\.\d\d) ; Precision = (\d+\.\d\d) ; Recall = (\d+\.\d\d) "
    r"\(\|A\| = (\d+), \|S\| = (\d+), \|P\| = (\d+)\)\n"
)


def aer_cli(*args):
    proc = run_cli("aer", *args)
    assert proc.returncode == 0, proc.stderr
    match = AER_LINE.fullmatch(proc.stdout)
    assert match, proc.stdout
    return [float(x) for x in match.groups()[:3]] + [int(x) for x in match.groups()[3:]]


def test_aer_one_based(tmp_path):
    # 1-based gold (TALP/WPT style): 1-1 2p2 3-3 | 1-2  ==  0-based 0-0 1p1 2-2 | 0-1.
    write_lines(tmp_path / "gold", ["1-1 2p2 3-3", "1-2"])
    write_lines(tmp_path / "hyp", ["0-0 1-1 2-1", "0-1"])  # hypotheses stay 0-based
    args = ["--reference", str(tmp_path / "gold"), "--hypothesis", str(tmp_path / "hyp")]
    # A = 4; S = {0-0, 2-2 | 0-1}: 2 hits; P = S + {1-1}: 3 hits -> AER = 1 - 5/7.
    assert aer_cli(*args, "--one-based") == [28.57, 75.0, 66.67, 4, 3, 4]
    # Read as 0-based, the gold is S = {1-1, 3-3 | 1-2}, P = S + {2-2}: only 1-1 is hit,
    # AER = 1 - 2/7, precision 1/4, recall 1/3.
    assert aer_cli(*args) == [71.43, 25.0, 33.33, 4, 3, 4]
    # A 0 index in a file declared 1-based is an error naming the file and line.
    write_lines(tmp_path / "zero", ["0-1 1-1", "1-2"])
    proc = run_cli("aer", "--reference", str(tmp_path / "zero"), "--hypothesis",
                   str(tmp_path / "hyp"), "--one-based")  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "zero" in proc.stderr and "line 1" in proc.stderr


def test_aer_reverse(tmp_path):
    write_lines(tmp_path / "gold", ["0-0 1p1 2-2 0-3", "0-1"])
    # Target-source hypothesis: "3-0" means source 0, target 3.
    write_lines(tmp_path / "hyp", ["0-0 1-1 1-2 3-0", "1-0"])
    args = ["--reference", str(tmp_path / "gold"), "--hypothesis", str(tmp_path / "hyp")]
    # Swapped: A = {0-0, 1-1, 2-1, 0-3 | 0-1} = 5; S = {0-0, 2-2, 0-3 | 0-1} = 4:
    # A∩S = {0-0, 0-3, 0-1} = 3; A∩P = 3 + {1-1} = 4 -> AER = 1 - 7/9, P = 4/5, R = 3/4.
    assert aer_cli(*args, "--reverse") == [22.22, 80.0, 75.0, 5, 4, 5]
    # Without --reverse: A∩S = {0-0}, A∩P = {0-0, 1-1} -> AER = 1 - 3/9.
    assert aer_cli(*args) == [66.67, 40.0, 25.0, 5, 4, 5]
