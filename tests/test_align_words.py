"""Symmetrization heuristics on hand-made grids, and eflomal end to end on a synthetic corpus."""

import dataclasses
import importlib.util
import logging
import os
import random
import sys
import threading

import pytest
from conftest import HANG_GUARD

from seqtrain import align_words
from seqtrain.aer import score
from seqtrain.align_words import align, directional_alignments, symmetrize, write_pharaoh
from seqtrain.config import Config, DataConfig
from seqtrain.errors import SeqtrainError

# A 6x6 sentence pair (links are (source i, target j)).
#   intersection I = {0-0, 1-1}
#   forward only:  2-2 (diagonal neighbour of 1-1, both words new)
#                  1-3 (neighbour of 2-2 only: needs a second grow sweep, as it sorts before 2-2)
#                  3-4 (isolated, both words unaligned after growing)
#                  5-5 (isolated, both words unaligned)
#   reverse only:  1-0 (next to 0-0 and 1-1 but both of its words are aligned: never added)
#                  4-2 (isolated; source 4 unaligned but target 2 taken by 2-2)
INTERSECTION = {(0, 0), (1, 1)}
FORWARD = INTERSECTION | {(2, 2), (1, 3), (3, 4), (5, 5)}
REVERSE = INTERSECTION | {(1, 0), (4, 2)}
# grow-diag: sweep 1 visits 1-0 (both aligned: no), 1-3 (no neighbour yet), 2-2 (diagonal to
# 1-1: added), 3-4, 4-2, 5-5 (no neighbour); sweep 2 adds 1-3 (now next to 2-2); sweep 3 adds
# nothing.
GROW_DIAG = INTERSECTION | {(2, 2), (1, 3)}
# final-and, forward links in (i, j) order: 3-4 (source 3, target 4 both free: added), 5-5
# (added); reverse links: 1-0 (both aligned), 4-2 (target 2 aligned: not added).
GROW_DIAG_FINAL_AND = GROW_DIAG | {(3, 4), (5, 5)}
# final: as final-and, and 4-2 is added as well because its source word 4 is unaligned.
GROW_DIAG_FINAL = GROW_DIAG_FINAL_AND | {(4, 2)}

EXPECTED = {
    "forward": FORWARD,
    "reverse": REVERSE,
    "intersection": INTERSECTION,
    "union": FORWARD | REVERSE,  # 8 links
    "grow-diag": GROW_DIAG,
    "grow-diag-final-and": GROW_DIAG_FINAL_AND,
    "grow-diag-final": GROW_DIAG_FINAL,
}


@pytest.mark.parametrize("method", sorted(EXPECTED))
def test_symmetrize_hand_made_grid(method):
    assert symmetrize(FORWARD, REVERSE, method, 6, 6) == EXPECTED[method]


def test_every_method_is_covered():
    assert set(align_words.SYMMETRIZATIONS) == set(EXPECTED)


def test_grow_checks_unaligned_words_as_it_adds():
    # 2x2: I = {0-0}; forward adds 0-1 and 1-1, reverse adds 1-0. In (i, j) order grow adds 0-1
    # (target 1 new), then 1-0 (source 1 new); 1-1 then has both words aligned: not added, and
    # the final steps do not add it either.
    forward, reverse = {(0, 0), (0, 1), (1, 1)}, {(0, 0), (1, 0)}
    expected = {(0, 0), (0, 1), (1, 0)}
    for method in ("grow-diag", "grow-diag-final", "grow-diag-final-and"):
        assert symmetrize(forward, reverse, method, 2, 2) == expected


def test_final_and_takes_forward_links_first():
    # 1x2, no intersection, nothing to grow from. final-and adds forward 0-0 (both free); then
    # reverse 0-1 has source 0 aligned: not added. final adds it (target 1 is free).
    forward, reverse = {(0, 0)}, {(0, 1)}
    assert symmetrize(forward, reverse, "grow-diag", 1, 2) == set()
    assert symmetrize(forward, reverse, "grow-diag-final-and", 1, 2) == {(0, 0)}
    assert symmetrize(reverse, forward, "grow-diag-final-and", 1, 2) == {(0, 1)}
    assert symmetrize(forward, reverse, "grow-diag-final", 1, 2) == {(0, 0), (0, 1)}


def test_symmetrize_rejects_bad_input():
    with pytest.raises(ValueError, match="unknown symmetrization"):
        symmetrize(set(), set(), "grow", 1, 1)
    with pytest.raises(ValueError, match="reverse link 0-2 is outside a 1x2"):
        symmetrize({(0, 0)}, {(0, 2)}, "union", 1, 2)


def test_write_pharaoh(tmp_path):
    path = tmp_path / "out.align"
    write_pharaoh(str(path), [{(2, 0), (0, 1), (0, 0), (10, 2)}, set(), {(1, 1)}])
    assert path.read_text(encoding="utf-8") == "0-0 0-1 2-0 10-2\n\n1-1\n"


def test_align_input_errors():
    with pytest.raises(SeqtrainError, match="2 source lines but 1 target"):
        align(["a b", "c"], ["x"])
    with pytest.raises(SeqtrainError, match="empty"):
        align([], [])
    with pytest.raises(SeqtrainError, match="extra text: 1 source lines but 2"):
        align(["a"], ["x"], extra_source=["b"], extra_target=["y", "z"])
    with pytest.raises(SeqtrainError, match="unknown symmetrization"):
        align(["a"], ["x"], symmetrize="grow")


def test_missing_eflomal_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "eflomal", None)  # makes `import eflomal` fail
    with pytest.raises(SeqtrainError, match=r"pip install seqtrain\[align\]"):
        align(["a"], ["x"])


def make_corpus(size, rng):
    """Synthetic pairs with known links from a made-up lexicon and a reordering rule.

    source: DET ADJ NOUN VERB DET NOUN      (sometimes preceded by the untranslated "ja")
    target: det noun adj det noun verb      (adjective after its noun, verb last)
    """
    dets = {"der": "the", "ein": "a"}
    adjs = {f"adj{k}": f"ADJ{k}" for k in range(12)}
    nouns = {f"noun{k}": f"NOUN{k}" for k in range(30)}
    verbs = {f"verb{k}": f"VERB{k}" for k in range(10)}
    source, target, gold = [], [], []
    for _ in range(size):
        d1, d2 = rng.choice(sorted(dets)), rng.choice(sorted(dets))
        adj, verb = rng.choice(sorted(adjs)), rng.choice(sorted(verbs))
        n1, n2 = rng.choice(sorted(nouns)), rng.choice(sorted(nouns))
        src = [d1, adj, n1, verb, d2, n2]
        tgt = [dets[d1], nouns[n1], adjs[adj], dets[d2], nouns[n2], verbs[verb]]
        links = {(0, 0), (1, 2), (2, 1), (3, 5), (4, 3), (5, 4)}
        if rng.random() < 0.3:
            src.insert(0, "ja")
            links = {(i + 1, j) for i, j in links}
        source.append(" ".join(src))
        target.append(" ".join(tgt))
        gold.append(links)
    return source, target, gold


needs_eflomal = pytest.mark.skipif(
    importlib.util.find_spec("eflomal") is None,
    reason="eflomal is not installed (pip install seqtrain[align])",
)


@needs_eflomal
def test_align_end_to_end_beats_shuffled_links():
    rng = random.Random(0)
    source, target, gold = make_corpus(2000, rng)
    # Held-out part aligned with the rest as extra text (statistics only, links dropped).
    hypothesis = align(
        source[:200], target[:200], extra_source=source[200:], extra_target=target[200:]
    )
    assert len(hypothesis) == 200
    shuffled = []
    for src, tgt in zip(source[:200], target[:200], strict=True):
        order = list(range(len(tgt.split())))
        rng.shuffle(order)
        shuffled.append({(i, order[i % len(order)]) for i in range(len(src.split()))})
    aligned_aer = score(hypothesis, gold[:200], gold[:200])["aer"]
    shuffled_aer = score(shuffled, gold[:200], gold[:200])["aer"]
    # Measured: about 0.05 (eflomal puts "ja" on the first determiner) against about 0.84.
    assert aligned_aer < 0.5 * shuffled_aer
    assert aligned_aer < 0.2


@needs_eflomal
def test_lowercase_reaches_eflomal(monkeypatch):
    import eflomal

    vocabularies = []
    real_read_text = eflomal.read_text

    def recording_read_text(lines, lowercase, prefix, suffix):
        sentences, index = real_read_text(lines, lowercase, prefix, suffix)
        vocabularies.append(set(index))
        return sentences, index

    monkeypatch.setattr(eflomal, "read_text", recording_read_text)
    pairs = directional_alignments(["Das Haus", "das haus"], ["The house", "the house"])
    assert vocabularies == [{"Das", "Haus", "das", "haus"}, {"The", "house", "the"}]
    assert [(n, m) for _, _, n, m in pairs] == [(2, 2), (2, 2)]
    vocabularies.clear()
    directional_alignments(["Das Haus", "das haus"], ["The house", "the house"], lowercase=True)
    assert vocabularies == [{"das", "haus"}, {"the", "house"}]


# --- align_files / align_config (the `seqtrain align` command) with a stand-in for eflomal ---


class FakeEflomal:
    """Stands in for _run_eflomal: forward = the diagonal, reverse = the diagonal plus a link
    from the last source word to target word 0; records what it was given."""

    def __init__(self):
        self.calls = []

    def __call__(self, source, target, lowercase, workdir):
        self.calls.append((list(source), list(target), lowercase))
        forward, reverse = [], []
        for src, tgt in zip(source, target, strict=True):
            n, m = len(src.split()), len(tgt.split())
            diagonal = {(k, k) for k in range(min(n, m))}
            forward.append(diagonal)
            reverse.append(diagonal | ({(n - 1, 0)} if n and m else set()))
        return forward, reverse


@pytest.fixture
def fake_eflomal(monkeypatch):
    fake = FakeEflomal()
    monkeypatch.setattr(align_words, "_run_eflomal", fake)
    return fake


def write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(path)


SRC = ["a b c", "d e", "f g h i"]
TGT = ["x y", "z w v", "u t s r"]


@pytest.fixture
def files(tmp_path):
    return write_lines(tmp_path / "in.src", SRC), write_lines(tmp_path / "in.tgt", TGT)


def test_align_files_writes_union_and_summary(tmp_path, files, fake_eflomal):
    output = str(tmp_path / "out.align")
    summary = align_words.align_files(*files, output, symmetrize="union")
    # union = the diagonal + (last source word, target 0) on each line: 3 + 3 + 5 links.
    expected = ["0-0 1-1 2-0", "0-0 1-0 1-1", "0-0 1-1 2-2 3-0 3-3"]
    assert (tmp_path / "out.align").read_text(encoding="utf-8") == "\n".join(expected) + "\n"
    assert (summary.lines, summary.links, summary.target_words) == (3, 11, 9)
    assert summary.links_per_target_word == pytest.approx(11 / 9)
    assert summary.lines_without_links == 0 and summary.output == output
    assert fake_eflomal.calls == [(SRC, TGT, False)]


def test_align_files_intersection_reads_bom_and_crlf(tmp_path, fake_eflomal):
    src = tmp_path / "bom.src"
    src.write_bytes(b"\xef\xbb\xbfa b\r\nc\r\n")
    tgt = write_lines(tmp_path / "bom.tgt", ["x y", "z"])
    align_words.align_files(str(src), tgt, str(tmp_path / "o"), symmetrize="intersection")
    assert fake_eflomal.calls[0][0] == ["a b", "c"]
    assert (tmp_path / "o").read_text(encoding="utf-8") == "0-0 1-1\n0-0\n"


def test_align_files_refuses_to_overwrite_without_force(tmp_path, files, fake_eflomal):
    output = tmp_path / "out.align"
    output.write_text("keep me\n", encoding="utf-8")
    with pytest.raises(SeqtrainError, match=r"out\.align already exists; pass --force"):
        align_words.align_files(*files, str(output))
    assert output.read_text(encoding="utf-8") == "keep me\n"
    assert fake_eflomal.calls == []  # refused before the (long) alignment run
    align_words.align_files(*files, str(output), symmetrize="forward", force=True)
    assert output.read_text(encoding="utf-8") == "0-0 1-1\n0-0 1-1\n0-0 1-1 2-2 3-3\n"


def test_interrupted_run_leaves_the_old_file_and_no_temporary(tmp_path, files, monkeypatch):
    monkeypatch.setattr(align_words, "_run_eflomal", FakeEflomal())
    seen = []

    def interrupted(forward, reverse, method, src_len, tgt_len):
        seen.append(1)
        if len(seen) == 2:
            raise KeyboardInterrupt
        return forward

    monkeypatch.setattr(align_words, "_symmetrize_pair", interrupted)
    output = tmp_path / "out.align"
    with pytest.raises(KeyboardInterrupt):
        align_words.align_files(*files, str(output))
    assert not output.exists()
    output.write_text("old\n", encoding="utf-8")
    seen.clear()
    with pytest.raises(KeyboardInterrupt):
        align_words.align_files(*files, str(output), force=True)
    assert output.read_text(encoding="utf-8") == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.src", "in.tgt", "out.align"]


def test_align_files_input_errors_name_the_files(tmp_path, files, fake_eflomal):
    src, tgt = files
    out = str(tmp_path / "out.align")
    short = write_lines(tmp_path / "short.tgt", ["x", "y"])
    with pytest.raises(SeqtrainError, match=r"in\.src has 3 lines but .*short\.tgt has 2"):
        align_words.align_files(src, short, out)
    empty = write_lines(tmp_path / "empty.src", [])
    with pytest.raises(SeqtrainError, match=r"empty\.src is empty"):
        align_words.align_files(empty, tgt, out)
    blank = write_lines(tmp_path / "blank.tgt", ["", "  ", ""])
    with pytest.raises(SeqtrainError, match=r"blank\.tgt is empty \(no words\)"):
        align_words.align_files(src, blank, out)
    with pytest.raises(SeqtrainError, match="cannot read .*missing.src"):
        align_words.align_files(str(tmp_path / "missing.src"), tgt, out)
    with pytest.raises(
        SeqtrainError, match="short.tgt has 2; the extra source and target files must be parallel"
    ):
        align_words.align_files(src, tgt, out, extra_source=src, extra_target=short)
    with pytest.raises(SeqtrainError, match="--extra-source and --extra-target go together"):
        align_words.align_files(src, tgt, out, extra_source=src)
    with pytest.raises(SeqtrainError, match="is also an input file"):
        align_words.align_files(src, tgt, tgt, force=True)
    with pytest.raises(SeqtrainError, match="nodir is not a writable directory"):
        align_words.align_files(src, tgt, str(tmp_path / "nodir" / "out.align"))
    with pytest.raises(SeqtrainError, match="unknown symmetrization 'gdfa'"):
        align_words.align_files(src, tgt, out, symmetrize="gdfa")
    assert fake_eflomal.calls == [] and not os.path.exists(out)


def test_extra_text_and_lowercase_reach_eflomal_but_not_the_output(tmp_path, files, fake_eflomal):
    extra = write_lines(tmp_path / "x.src", ["P q"]), write_lines(tmp_path / "x.tgt", ["R"])
    output = tmp_path / "out.align"
    align_words.align_files(
        *files,
        str(output),
        lowercase=True,
        extra_source=extra[0],
        extra_target=extra[1],
        symmetrize="intersection",
    )
    assert fake_eflomal.calls == [(SRC + ["P q"], TGT + ["R"], True)]
    assert len(output.read_text(encoding="utf-8").splitlines()) == 3


def test_empty_sides_are_warned_and_get_empty_lines(tmp_path, fake_eflomal, caplog):
    src = write_lines(tmp_path / "s", ["a b", "", "c"])
    tgt = write_lines(tmp_path / "t", ["x", "y", ""])
    summary = align_words.align_files(src, tgt, str(tmp_path / "o"), symmetrize="union")
    assert (tmp_path / "o").read_text(encoding="utf-8") == "0-0 1-0\n\n\n"
    assert summary.lines_without_links == 2
    assert "2 sentence pairs of" in caplog.text and "(lines 2, 3)" in caplog.text


def test_progress_and_summary_are_logged(tmp_path, files, fake_eflomal, monkeypatch, caplog):
    monkeypatch.setattr(align_words, "PROGRESS_LINES", 2)
    caplog.set_level(logging.INFO, logger="seqtrain")
    align_words.align_files(*files, str(tmp_path / "o"), symmetrize="forward")
    assert "Symmetrized 2 of 3 sentence pairs (forward)" in caplog.text
    assert "Symmetrized 1 of" not in caplog.text
    # forward = diagonal: 2 + 2 + 4 links over 2 + 3 + 4 target words.
    assert "3 lines, 8 links, 0.889 links per target word, 0 lines without links" in caplog.text


class _BeatCounter(logging.Handler):
    """Counts "still running" records; ``enough`` is set once ``wanted`` have arrived."""

    def __init__(self, wanted):
        super().__init__(logging.INFO)
        self.wanted, self.count, self.enough = wanted, 0, threading.Event()

    def emit(self, record):
        if "aligning: still running" in record.getMessage():
            self.count += 1
            if self.count >= self.wanted:
                self.enough.set()


def test_heartbeat_logs_while_the_block_runs(monkeypatch, caplog):
    """Counts events, not milliseconds: the block waits for two beats (however slow the
    machine), and leaving it stops the beating thread (it is joined, so no beat can follow)."""
    monkeypatch.setattr(align_words, "HEARTBEAT_SECONDS", 0.01)
    caplog.set_level(logging.INFO, logger="seqtrain")
    counter = _BeatCounter(wanted=2)
    logging.getLogger("seqtrain").addHandler(counter)
    try:
        with align_words._heartbeat("aligning"):
            # A generous bound only so that a broken heartbeat fails instead of hanging.
            assert counter.enough.wait(timeout=HANG_GUARD), "no heartbeat while the block ran"
        beats = counter.count
        assert beats >= 2
        assert not any(t.name == "seqtrain-align-heartbeat" for t in threading.enumerate())
        assert counter.count == beats
    finally:
        logging.getLogger("seqtrain").removeHandler(counter)


def _config(tmp_path, files, **data):
    values = {"train_features_file": files[0], "train_labels_file": files[1]}
    return Config(model_dir=str(tmp_path / "run"), data=DataConfig(**{**values, **data}))


def test_align_config_writes_train_alignments(tmp_path, files, fake_eflomal, caplog):
    output = tmp_path / "train.align"
    config = _config(tmp_path, files, train_alignments=str(output))
    align_words.align_config(config, symmetrize="forward")
    assert output.read_text(encoding="utf-8") == "0-0 1-1\n0-0 1-1\n0-0 1-1 2-2 3-3\n"
    with pytest.raises(SeqtrainError, match="already exists; pass --force"):
        align_words.align_config(config)
    align_words.align_config(config, force=True, symmetrize="union")
    assert output.read_text(encoding="utf-8").splitlines()[0] == "0-0 1-1 2-0"
    assert "alignment_level" not in caplog.text


def test_align_config_needs_train_alignments(tmp_path, files, fake_eflomal):
    with pytest.raises(SeqtrainError, match="data.train_alignments is not set; set it"):
        align_words.align_config(_config(tmp_path, files))
    config = _config(tmp_path, files, train_alignments=str(tmp_path / "a"))
    config = dataclasses.replace(
        config, data=dataclasses.replace(config.data, train_labels_file=None)
    )
    with pytest.raises(SeqtrainError, match="data.train_labels_file is not set"):
        align_words.align_config(config)
    assert fake_eflomal.calls == []


def test_align_config_warns_sentencepiece_with_token_level(tmp_path, files, fake_eflomal, caplog):
    out = str(tmp_path / "a")
    config = _config(tmp_path, files, train_alignments=out, target_tokenization="t.model")
    align_words.align_config(config)
    assert "data.target_tokenization is a subword tokenizer" in caplog.text
    assert "set data.alignment_level: words" in caplog.text
    caplog.clear()
    config = _config(
        tmp_path,
        files,
        train_alignments=out,
        target_tokenization="t.model",
        alignment_level="words",
    )
    align_words.align_config(config, force=True)
    assert "alignment_level" not in caplog.text
