"""seqtrain score --reverse_config: two directions' guided heads averaged.

Hand-computed combinations (piece and word level), the command on untrained models against the
two models' own ``score --with_alignments soft`` outputs combined in numpy here, the errors, and
(slow) two trained models on a diagonal corpus along the CLI.
"""

import os
import re

import numpy as np
import pytest
import tensorflow as tf
from conftest import make_corpus, run_cli, tiny_config, write_config

from seqtrain import aer, score, score_bidir
from seqtrain import config as cfg
from seqtrain.checkpoints import build_model
from seqtrain.errors import SeqtrainError
from seqtrain.vocab import read_text_lines


def read(path):
    return list(read_text_lines(path))


# ---------------------------------------------------------------- by hand


def test_combine_by_hand():
    forward = [[0.3, 0.5, 0.2], [0.1, 0.3, 0.6]]  # [T 2, S 3]: alone, links 1-0 2-1
    reverse = [[0.9, 0.1], [0.2, 0.8], [0.4, 0.6]]  # [S 3, T 2]
    # reverse.T = [[.9 .2 .4] [.1 .8 .6]]; mean = [[.6 .35 .3] [.1 .55 .6]].
    combined = score_bidir.combine(forward, reverse)
    np.testing.assert_allclose(combined, [[0.6, 0.35, 0.3], [0.1, 0.55, 0.6]], atol=1e-7)
    # Rows: t0 -> s0, t1 -> s2; columns: s0 -> t0, s1 -> t1, s2 -> t1: mutual 0-0 and 2-1.
    from seqtrain.decoding import hard_alignments

    assert hard_alignments(combined, 2, 3, "intersection") == [(0, 0), (2, 1)]
    with pytest.raises(ValueError, match="do not mirror"):
        score_bidir.combine(forward, np.ones((2, 3)))


def test_combine_words_sums_source_pieces_by_hand():
    # S = "ab c": forward pieces ▁a b ▁c (words 0 0 1), reverse ▁ab ▁c (0 1);
    # T = "x yz": forward pieces ▁x ▁yz (0 1), reverse ▁x ▁y z (0 1 1).
    forward = [[0.2, 0.2, 0.6], [0.5, 0.3, 0.2]]  # [T 2, S 3] -> columns summed [[.4 .6] [.8 .2]]
    reverse = [
        [0.1, 0.7, 0.2],
        [0.6, 0.3, 0.1],
    ]  # [S 2, T 3] -> [[.1 .9] [.6 .4]], .T [[.1 .6] [.9 .4]]
    combined = score_bidir.combine_words(
        forward, reverse, ([0, 0, 1], [0, 1]), ([0, 1], [0, 1, 1]), 2, 2
    )
    np.testing.assert_allclose(combined, [[0.25, 0.6], [0.85, 0.3]], atol=1e-7)


def test_combine_words_averages_target_pieces_by_hand():
    # S = "ab c": forward ▁ab ▁c (0 1), reverse ▁a b ▁c (0 0 1); T = "x yz": forward ▁x ▁y z
    # (0 1 1), reverse ▁x ▁yz (0 1).
    forward = [[0.7, 0.3], [0.2, 0.8], [0.6, 0.4]]  # rows of word 1 averaged: [[.7 .3] [.4 .6]]
    reverse = [[0.6, 0.4], [0.2, 0.8], [0.1, 0.9]]  # rows of S word 0 averaged: [[.4 .6] [.1 .9]]
    combined = score_bidir.combine_words(
        forward, reverse, ([0, 1], [0, 0, 1]), ([0, 1, 1], [0, 1]), 2, 2
    )
    np.testing.assert_allclose(combined, [[0.55, 0.2], [0.5, 0.75]], atol=1e-7)


# ---------------------------------------------------------------- untrained models


def swap(paths):
    """The corpus paths of the reverse direction: train sides and vocabularies swapped."""
    swapped = dict(paths)
    for a, b in (("train.src", "train.tgt"), ("src.vocab", "tgt.vocab")):
        swapped[a], swapped[b] = paths[b], paths[a]
    return swapped


def soft_matrices(path):
    """SCORE field and [rows, columns] matrix of each line of a ``--with_alignments soft`` file."""
    out = []
    for line in read(path):
        fields = line.split(" ||| ")
        rows = [[float(x) for x in row.split()] for row in fields[-1].split(" ; ")]
        out.append((fields[0], np.array(rows)))
    return out


def mutual_best(matrix):
    """(s, t) links where t's best column is s and s's best row is t (numpy, first of ties)."""
    rows, columns = matrix.argmax(axis=1), matrix.argmax(axis=0)
    return {(int(s), t) for t, s in enumerate(rows) if columns[s] == t}


@pytest.fixture(scope="module")
def two_untrained(tmp_path_factory):
    """(forward config, reverse config, corpus): seeded untrained models, S -> T with a guided
    head and T -> S without one (guided_alignment_type null, no alignment file)."""
    root = tmp_path_factory.mktemp("bidir")
    corpus = make_corpus(str(root / "data"), lines=20)
    forward = cfg.build(tiny_config(corpus, root / "fwd", score={"batch_size": 3}), "test")
    swapped = swap(corpus)
    raw = tiny_config(swapped, root / "rev", params={"guided_alignment_type": None})
    del raw["data"]["train_alignments"]
    reverse = cfg.build(raw, "test")
    for config, seed in ((forward, 1), (reverse, 2)):
        tf.random.set_seed(seed)
        tf.train.Checkpoint(model=build_model(config)).save(os.path.join(config.model_dir, "ckpt"))
    return forward, reverse, corpus


def test_untrained_soft_and_hard_equal_numpy_combination(two_untrained, tmp_path):
    """Soft rows = mean of the forward model's soft rows and the transposed rows of the reverse
    model scored on the swapped files; SCORE and TOKEN_SCORES the forward model's."""
    forward, reverse, corpus = two_untrained
    src, tgt = corpus["dev.src"], corpus["dev.tgt"]
    alone = {name: str(tmp_path / f"{name}.txt") for name in ("fwd", "rev", "fwd_tokens")}
    score.score_command(forward, src, tgt, alone["fwd"], None, "soft")
    score.score_command(reverse, tgt, src, alone["rev"], None, "soft")
    score.score_command(forward, src, tgt, alone["fwd_tokens"], None, "hard", True)
    soft, hard = str(tmp_path / "soft.txt"), str(tmp_path / "hard.txt")
    score_bidir.bidir_score_command(forward, reverse, src, tgt, soft, with_alignments="soft")
    score_bidir.bidir_score_command(
        forward, reverse, src, tgt, hard, with_alignments="hard", with_token_level=True
    )
    fwd, rev, ours = soft_matrices(alone["fwd"]), soft_matrices(alone["rev"]), soft_matrices(soft)
    assert len(ours) == len(read(hard)) == len(read(src)) == 40
    for (value, f), (_, r), (combined_value, combined) in zip(fwd, rev, ours):
        assert combined_value == value
        assert combined.shape == f.shape == r.T.shape
        np.testing.assert_allclose(combined, (f + r.T) / 2, atol=1.5e-6)  # %.6f thrice
    for line, reference, (_, matrix) in zip(read(hard), read(alone["fwd_tokens"]), ours):
        # The printed soft rows are the combined matrix to 1e-6: same mutual best links, unless
        # a near tie, which an untrained model of this seed does not have.
        assert line.rsplit(" ||| ", 1)[0] == reference.rsplit(" ||| ", 1)[0]
        links = {tuple(map(int, link.split("-"))) for link in line.rsplit(" ||| ", 1)[1].split()}
        assert links == mutual_best(matrix)


def test_different_tokenizations_combine_words_and_refuse_soft(two_untrained, tmp_path):
    """The reverse model cuts the S lines into characters (▁ starts a word): the pairs are
    combined at the word level (TARGET the line, word links); soft is refused before any model
    runs, naming the first line that differs."""
    forward, reverse, corpus = two_untrained
    raw = cfg.merge(
        cfg.to_dict(reverse), {"data": {"target_tokenization": {"type": "CharacterTokenizer"}}}
    )
    characters = cfg.build(raw, "test")
    src, tgt = corpus["dev.src"], corpus["dev.tgt"]
    out = tmp_path / "out.txt"
    first = read(src)[0]
    with pytest.raises(SeqtrainError, match=re.escape(f"dev.src line 1: {first!r} vs")):
        score_bidir.bidir_score_command(
            forward, characters, src, tgt, str(out), with_alignments="soft"
        )
    assert not out.exists()
    soft_f, soft_r = str(tmp_path / "f.txt"), str(tmp_path / "r.txt")
    score.score_command(forward, src, tgt, soft_f, None, "soft")
    score.score_command(characters, tgt, src, soft_r, None, "soft")
    score_bidir.bidir_score_command(forward, characters, src, tgt, str(out), with_alignments="hard")
    lines = read(out)
    for line, s, t, (_, f), (_, r) in zip(
        lines, read(src), read(tgt), soft_matrices(soft_f), soft_matrices(soft_r)
    ):
        assert line.split(" ||| ")[1] == t  # the target line: indices count its words
        pieces = list(s.replace(" ", "▁"))
        word_of_char = np.cumsum([p == "▁" for p in pieces])  # [characters]
        assert r.shape == (len(pieces), len(t.split()))
        # Forward: whitespace pieces are the words. Reverse rows (S characters) averaged per word.
        words = np.stack([r[word_of_char == k].mean(axis=0) for k in range(len(s.split()))])
        links = {tuple(map(int, link.split("-"))) for link in line.rsplit(" ||| ", 1)[1].split()}
        assert links == mutual_best((f + words.T) / 2)
        assert all(i < len(s.split()) and j < len(t.split()) for i, j in links)


@pytest.mark.parametrize(
    "flags, message",
    [
        (
            ("--reverse_config", "{rev}"),
            "--reverse_config combines the two models' alignments: give --with_alignments hard "
            "or soft (or set score.with_alignments)",
        ),
        (
            ("--with_alignments", "hard", "--reverse_checkpoint_path", "{rev}"),
            "--reverse_checkpoint_path needs --reverse_config (the reverse model)",
        ),
    ],
)
def test_cli_errors_exit_2_in_one_line(two_untrained, tmp_path, flags, message):
    forward, reverse, corpus = two_untrained
    fwd = write_config(tmp_path / "fwd.yml", cfg.to_dict(forward))
    rev = write_config(tmp_path / "rev.yml", cfg.to_dict(reverse))
    out = tmp_path / "out.txt"
    proc = run_cli(
        "score", "--config", fwd, "--features_file", corpus["dev.src"],
        "--predictions_file", corpus["dev.tgt"], "--output_file", str(out),
        *(flag.format(rev=rev) for flag in flags),
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == f"seqtrain score: error: {message}"
    assert not out.exists()


# ---------------------------------------------------------------- trained models (slow)


def diagonal_corpus(directory, lines, seed=0):
    """Target word k translates source word k (links k-k, symmetric: the reverse model reads
    the same alignment file)."""
    from test_alignment_rows import diagonal_corpus as build

    return build(directory, lines, seed)


@pytest.mark.slow
def test_trained_pair_along_the_cli(tmp_path):
    """Two models trained S -> T and T -> S on a diagonal corpus: score --reverse_config prints
    one line per pair whose links are the mutual best links of the mean of the two models' own
    soft outputs, and the combined AER is at most the forward head's."""
    paths = diagonal_corpus(str(tmp_path / "data"), lines=400)
    swapped = swap(paths)
    configs = {}
    for name, corpus in (("fwd", paths), ("rev", swapped)):
        raw = tiny_config(
            corpus, tmp_path / name,
            model={"alignment_row": "reading"},
            params={"guided_alignment_normalization": "aligned_tokens", "learning_rate": 2.0,
                    "decay_params": {"model_dim": 32, "warmup_steps": 100}},
            train={"max_step": 300, "save_checkpoints_steps": 300, "save_summary_steps": 100},
        )  # fmt: skip
        configs[name] = write_config(tmp_path / f"{name}.yml", raw)
        proc = run_cli("train", "--config", configs[name])
        assert proc.returncode == 0, proc.stderr[-2000:]
    src, tgt = paths["dev.src"], paths["dev.tgt"]
    outputs = {}
    for name, args in (
        ("fwd_soft", (configs["fwd"], src, tgt, "soft")),
        ("rev_soft", (configs["rev"], tgt, src, "soft")),
        ("fwd_hard", (configs["fwd"], src, tgt, "hard")),
        ("both", (configs["fwd"], src, tgt, "hard", "--reverse_config", configs["rev"])),
    ):
        config, features, predictions, alignments, *extra = args
        args = ("--config", config, "--features_file", features, "--predictions_file",
                predictions, "--with_alignments", alignments, *extra)  # fmt: skip
        outputs[name] = str(tmp_path / f"{name}.txt")
        proc = run_cli("score", *args, "--output_file", outputs[name])
        assert proc.returncode == 0, proc.stderr[-2000:]
    both = read(outputs["both"])
    assert len(both) == len(read(src)) == 40
    expected = [
        mutual_best((f + r.T) / 2)
        for (_, f), (_, r) in zip(
            soft_matrices(outputs["fwd_soft"]), soft_matrices(outputs["rev_soft"])
        )
    ]
    printed = [
        {tuple(map(int, link.split("-"))) for link in line.rsplit(" ||| ", 1)[1].split()}
        for line in both
    ]
    assert printed == expected
    gold = list(aer.read_links(paths["dev.align"]))
    sure, possible = [g[0] for g in gold], [g[1] for g in gold]
    forward = [
        {tuple(map(int, link.split("-"))) for link in line.rsplit(" ||| ", 1)[1].split()}
        for line in read(outputs["fwd_hard"])
    ]
    alone, combined = aer.score(forward, sure, possible), aer.score(printed, sure, possible)
    assert alone["aer"] < 0.5  # the forward head learned something: a meaningful comparison
    assert combined["aer"] <= alone["aer"], (combined, alone)
