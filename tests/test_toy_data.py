"""Checks of the committed synthetic corpus in data/toy/ (made by tools/make_toy_data.py)."""

import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from conftest import HANG_GUARD

REPO = Path(__file__).resolve().parent.parent
TOY = REPO / "data" / "toy"
SCRIPT = REPO / "tools" / "make_toy_data.py"
SPLITS = {"train": 20000, "dev": 500, "test": 500}
EXTENSIONS = ("src", "tgt", "src-tgt.align")
FILES = sorted([f"{s}.{e}" for s in SPLITS for e in EXTENSIONS] + ["README.md"])
PAIR = re.compile(r"^(0|[1-9][0-9]*)-(0|[1-9][0-9]*)$")


def read_lines(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    assert text.endswith("\n"), path
    return text[:-1].split("\n")


@pytest.fixture(scope="module")
def corpus():
    """split -> list of (source words, target words, [(i, j), ...]) per sentence pair."""
    data = {}
    for split in SPLITS:
        src, tgt, align = (read_lines(TOY / f"{split}.{ext}") for ext in EXTENSIONS)
        assert len(src) == len(tgt) == len(align), split
        links = []
        for line in align:
            pairs = []
            for item in line.split(" "):
                match = PAIR.match(item)
                assert match, (split, line)
                pairs.append((int(match.group(1)), int(match.group(2))))
            links.append(pairs)
        words = zip([s.split(" ") for s in src], [t.split(" ") for t in tgt], links, strict=True)
        data[split] = list(words)
    return data


def run_script(output_dir: Path, seed: int) -> None:
    cmd = [sys.executable, str(SCRIPT), "--output-dir", str(output_dir), "--seed", str(seed)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=HANG_GUARD)


def test_regeneration_is_byte_identical(tmp_path):
    run_script(tmp_path, seed=1234)
    assert sorted(p.name for p in tmp_path.iterdir()) == FILES
    # Vocabularies beside the corpus come from `seqtrain build-vocab` (see README), not this script.
    assert sorted(p.name for p in TOY.iterdir() if not p.name.endswith(".vocab")) == FILES
    for name in FILES:
        assert (tmp_path / name).read_bytes() == (TOY / name).read_bytes(), name


def test_other_seed_gives_other_corpus(tmp_path):
    run_script(tmp_path, seed=7)
    for ext in EXTENSIONS:
        assert (tmp_path / f"dev.{ext}").read_bytes() != (TOY / f"dev.{ext}").read_bytes()


def test_sizes_and_tokenization(corpus):
    total_bytes = sum((TOY / name).stat().st_size for name in FILES)
    assert total_bytes < 5_000_000
    for split, size in SPLITS.items():
        assert len(corpus[split]) == size
        for src, tgt, _ in corpus[split]:
            for words in (src, tgt):
                assert 3 <= len(words) <= 25
                assert all(re.fullmatch(r"[a-z]+", w) for w in words), words


def test_vocabulary_is_a_few_hundred_words_and_sides_differ(corpus):
    src_vocab = Counter(w for pairs in corpus.values() for s, _, _ in pairs for w in s)
    tgt_vocab = Counter(w for pairs in corpus.values() for _, t, _ in pairs for w in t)
    assert 200 <= len(src_vocab) <= 1000
    assert 200 <= len(tgt_vocab) <= 1000
    shared = set(src_vocab) & set(tgt_vocab)
    assert len(shared) < 0.05 * len(src_vocab), sorted(shared)
    # Target words share suffixes (plural, tense), so subwords are meaningful.
    endings = Counter(w[-2:] for w in tgt_vocab)
    assert endings.most_common(1)[0][1] > 0.1 * len(tgt_vocab)


def test_links_are_sorted_unique_and_in_range(corpus):
    for split, pairs in corpus.items():
        for n, (src, tgt, links) in enumerate(pairs, start=1):
            assert links == sorted(set(links)), (split, n)
            assert all(0 <= i < len(src) and 0 <= j < len(tgt) for i, j in links), (split, n)


def phenomena(src, tgt, links) -> dict:
    per_src = Counter(i for i, _ in links)
    per_tgt = Counter(j for _, j in links)
    return {
        "crossing": any(i1 < i2 and j1 > j2 for i1, j1 in links for i2, j2 in links),
        "one_to_many": max(per_src.values()) >= 2,
        "many_to_one": max(per_tgt.values()) >= 2,
        "unaligned_target": len(per_tgt) < len(tgt),
        "unaligned_source": len(per_src) < len(src),
    }


def test_corpus_has_reordering_and_non_one_to_one_links(corpus):
    for split, pairs in corpus.items():
        counts = Counter()
        for pair in pairs:
            counts.update(k for k, present in phenomena(*pair).items() if present)
        for kind in ("crossing", "one_to_many", "many_to_one"):
            assert counts[kind] > 0.2 * len(pairs), (split, kind, counts)
        for kind in ("unaligned_target", "unaligned_source"):
            assert counts[kind] > 0.2 * len(pairs), (split, kind, counts)


def test_phenomena_detector_on_hand_made_pairs():
    # "un a b c" -> "A wo C1 C2 B": 3 crosses 2, 3 -> two targets, "un" and "wo" unaligned.
    links = [(1, 0), (2, 4), (3, 2), (3, 3)]
    found = phenomena(["un", "a", "b", "c"], ["A", "wo", "C1", "C2", "B"], links)
    assert found == {
        "crossing": True,
        "one_to_many": True,
        "many_to_one": False,
        "unaligned_target": True,
        "unaligned_source": True,
    }
    found = phenomena(["ne", "v", "pa"], ["nai", "V"], [(0, 0), (1, 1), (2, 0)])
    assert found == {
        "crossing": True,
        "one_to_many": False,
        "many_to_one": True,
        "unaligned_target": False,
        "unaligned_source": False,
    }


def test_unaligned_words_are_the_documented_function_words(corpus):
    # Only the source indefinite article "un" and the target object marker "wo" are unaligned,
    # and they are never aligned.
    for pairs in corpus.values():
        for src, tgt, links in pairs:
            aligned_src = {i for i, _ in links}
            aligned_tgt = {j for _, j in links}
            assert {src[i] for i in range(len(src)) if i not in aligned_src} <= {"un"}
            assert {tgt[j] for j in range(len(tgt)) if j not in aligned_tgt} <= {"wo"}
            assert all(src[i] != "un" for i in aligned_src)
            assert all(tgt[j] != "wo" for j in aligned_tgt)


def test_translation_is_a_function_of_the_source(corpus):
    seen = {}
    repeats = 0
    for pairs in corpus.values():
        for src, tgt, links in pairs:
            key = " ".join(src)
            if key in seen:
                repeats += 1
                assert seen[key] == (tgt, links), key
            seen[key] = (tgt, links)
    assert repeats >= 1  # a few short sentences recur; each must get the same translation


def test_lexicon_is_deterministic(corpus):
    # Apart from the plural marker and the tense auxiliaries (merged into the suffixes of many
    # target words), a source word always links to the same few target forms: a stem and its
    # suffixed variants, or the two words of a compound / stem + light verb.
    linked = {}
    for pairs in corpus.values():
        for src, tgt, links in pairs:
            for i, j in links:
                linked.setdefault(src[i], set()).add(tgt[j])
    merged = {"si", "ba", "vo"}
    assert all(len(linked[w]) > 50 for w in merged)
    assert max(len(forms) for word, forms in linked.items() if word not in merged) <= 4
    assert linked["ne"] == linked["pa"] == {"nai"}
