"""Generate the synthetic toy parallel corpus in ``data/toy/`` (source "src" -> target "tgt").

Both languages are made up: every word is built from syllables by a seeded ``random.Random``,
and every sentence pair is realized from one abstract clause tree, so the target is a
deterministic function of the source and the exact gold word alignment is known.

Rules (source -> target):
  * source is SVO, adjectives before the noun; target puts adjectives after the noun, in
    reverse order, and they agree with a plural noun (suffix);
  * subordinate clauses ("ke"/"por" ...) are verb-final in the target, with the PP before the
    object;
  * prepositions become postpositions (after their noun phrase);
  * many-to-one: plural marker "si" + noun -> noun with a plural suffix; tense auxiliary
    "ba" (past) / "vo" (future) + verb -> verb with a tense suffix; negation "ne ... pa"
    around the verb -> one target word "nai" before the verb;
  * one-to-many: some source nouns are compounds translated by two target words, some source
    verbs by a stem plus a light verb;
  * the target object marker "wo" after the object noun phrase has no source counterpart;
  * the source indefinite article "un" is dropped in the target (no target counterpart).

Run ``python tools/make_toy_data.py [--output-dir DIR] [--seed N]``; the output is
reproducible byte for byte (no numpy, no set/dict iteration order dependence).
"""

from __future__ import annotations

import argparse
import itertools
import random
import time
from dataclasses import dataclass
from pathlib import Path

SPLIT_SIZES = (("train", 20000), ("dev", 500), ("test", 500))
MIN_LEN, MAX_LEN = 3, 25  # words, both sides (rejection sampling)

# Closed-class words. A determiner translated to None is dropped (unaligned source word).
DETERMINERS = (("la", "ha"), ("ko", "zei"), ("mi", "thoo"), ("un", None))
COMPLEMENTIZERS = (("ke", "dash"), ("por", "yeth"), ("su", "chaum"))
SRC_PLURAL = "si"  # separate word after the noun
SRC_TENSE_AUX = {"past": "ba", "future": "vo"}  # auxiliary before the verb
SRC_NEG = ("ne", "pa")  # discontinuous negation around the verb group
TGT_NEG = "nai"
TGT_OBJECT_MARKER = "wo"  # inserted after the object NP, aligned to nothing
TGT_LIGHT_VERBS = ("kheth", "wau", "shoo")  # second word of a two-word target verb
TGT_NOUN_PLURAL = "zy"
TGT_ADJ_PLURAL = "n"  # target adjectives are vowel-final, so "-n" reads well
TGT_TENSE_SUFFIX = {"present": "", "past": "hau", "future": "jei"}

# Syllable inventories: the target's look different from the source's.
SRC_SOUNDS = (tuple("ptkbdgmnlrsv"), tuple("aeiou"), tuple("nrls"))
TGT_SOUNDS = (
    ("sh", "zh", "kh", "th", "ch", "w", "y", "h", "f", "z", "j"),
    ("ae", "oo", "y", "ei", "au", "a", "o"),
    ("th", "sh", "m"),
)


@dataclass(frozen=True)
class Lexicon:
    """Open-class vocabulary: (source word, target words) pairs, in generation order."""

    nouns: tuple[tuple[str, tuple[str, ...]], ...]
    adjectives: tuple[tuple[str, str], ...]
    verbs: tuple[tuple[str, tuple[str, ...], bool], ...]  # (src, tgt words, transitive)
    preps: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class NounPhrase:
    det: int
    adjs: tuple[int, ...]
    noun: int
    plural: bool


@dataclass(frozen=True)
class Clause:
    subj: NounPhrase
    verb: int
    tense: str
    negated: bool
    obj: NounPhrase | None
    pp: tuple[int, NounPhrase] | None


def make_word(rng: random.Random, sounds, syllables: int, coda_prob: float) -> str:
    onsets, vowels, codas = sounds
    parts = []
    for _ in range(syllables):
        parts.append(rng.choice(onsets) + rng.choice(vowels))
        if rng.random() < coda_prob:
            parts.append(rng.choice(codas))
    return "".join(parts)


def new_words(rng, sounds, count, syllables, used: set, coda_prob=0.25) -> list[str]:
    """`count` distinct words not in `used` (which is updated); syllables = (min, max)."""
    words = []
    while len(words) < count:
        word = make_word(rng, sounds, rng.randint(*syllables), coda_prob)
        if word not in used:
            used.add(word)
            words.append(word)
    return words


def build_lexicon(seed: int) -> Lexicon:
    rng = random.Random(f"{seed}:lexicon")
    src_used = {d for d, _ in DETERMINERS} | {c for c, _ in COMPLEMENTIZERS}
    src_used |= {SRC_PLURAL, *SRC_TENSE_AUX.values(), *SRC_NEG}
    tgt_used = {d for _, d in DETERMINERS if d} | {c for _, c in COMPLEMENTIZERS}
    tgt_used |= {TGT_NEG, TGT_OBJECT_MARKER, *TGT_LIGHT_VERBS}

    nouns = []
    for word in new_words(rng, SRC_SOUNDS, 150, (2, 3), src_used):
        parts = 2 if rng.random() < 0.12 else 1  # compound -> two target words
        nouns.append((word, tuple(new_words(rng, TGT_SOUNDS, parts, (1, 2), tgt_used))))
    adjectives = [
        (word, new_words(rng, TGT_SOUNDS, 1, (1, 2), tgt_used, coda_prob=0.0)[0])
        for word in new_words(rng, SRC_SOUNDS, 60, (2, 3), src_used)
    ]
    verbs = []
    for word in new_words(rng, SRC_SOUNDS, 80, (2, 3), src_used):
        target = tuple(new_words(rng, TGT_SOUNDS, 1, (1, 2), tgt_used))
        if rng.random() < 0.12:  # stem + light verb -> two target words
            target += (rng.choice(TGT_LIGHT_VERBS),)
        verbs.append((word, target, rng.random() < 0.75))
    preps = [
        (word, new_words(rng, TGT_SOUNDS, 1, (1, 1), tgt_used)[0])
        for word in new_words(rng, SRC_SOUNDS, 8, (1, 1), src_used, coda_prob=0.5)
    ]
    return Lexicon(tuple(nouns), tuple(adjectives), tuple(verbs), tuple(preps))


def sample_np(rng: random.Random, lex: Lexicon) -> NounPhrase:
    n_adjs = rng.choices((0, 1, 2), weights=(50, 35, 15))[0]
    return NounPhrase(
        det=rng.randrange(len(DETERMINERS)),
        adjs=tuple(rng.randrange(len(lex.adjectives)) for _ in range(n_adjs)),
        noun=rng.randrange(len(lex.nouns)),
        plural=rng.random() < 0.3,
    )


def sample_clause(rng: random.Random, lex: Lexicon, pp_prob: float) -> Clause:
    verb = rng.randrange(len(lex.verbs))
    subj = sample_np(rng, lex)
    obj = sample_np(rng, lex) if lex.verbs[verb][2] else None
    pp = None
    if rng.random() < pp_prob:
        pp = (rng.randrange(len(lex.preps)), sample_np(rng, lex))
    tense = rng.choices(("present", "past", "future"), weights=(50, 25, 25))[0]
    return Clause(subj, verb, tense, rng.random() < 0.2, obj, pp)


# Realization: a source token is (word, uid); a target token is (word, uids it is aligned to).
# Both sides are built from the same tree, so the gold alignment is exact by construction.


def realize_np(np_: NounPhrase, lex: Lexicon, ids) -> tuple[list, list]:
    det_src, det_tgt = DETERMINERS[np_.det]
    det_uid = next(ids)
    src = [(det_src, det_uid)]
    tgt = [(det_tgt, (det_uid,))] if det_tgt else []
    adjs = [(lex.adjectives[a], next(ids)) for a in np_.adjs]
    src += [(pair[0], uid) for pair, uid in adjs]
    noun_src, noun_tgt = lex.nouns[np_.noun]
    noun_uid = next(ids)
    src.append((noun_src, noun_uid))
    head_links = (noun_uid,)
    if np_.plural:
        plural_uid = next(ids)
        src.append((SRC_PLURAL, plural_uid))
        head_links = (noun_uid, plural_uid)
    # The plural suffix goes on the last word of a (possibly compound) noun.
    tgt += [(word, (noun_uid,)) for word in noun_tgt[:-1]]
    tgt.append((noun_tgt[-1] + (TGT_NOUN_PLURAL if np_.plural else ""), head_links))
    agreement = TGT_ADJ_PLURAL if np_.plural else ""
    tgt += [(pair[1] + agreement, (uid,)) for pair, uid in reversed(adjs)]
    return src, tgt


def realize_verb(clause: Clause, lex: Lexicon, ids) -> tuple[list, list]:
    verb_src, verb_tgt, _ = lex.verbs[clause.verb]
    src, tgt = [], []
    neg_uids = ()
    if clause.negated:
        neg_uids = (next(ids),)
        src.append((SRC_NEG[0], neg_uids[0]))
    head_links = ()
    if clause.tense in SRC_TENSE_AUX:
        head_links = (next(ids),)
        src.append((SRC_TENSE_AUX[clause.tense], head_links[0]))
    verb_uid = next(ids)
    src.append((verb_src, verb_uid))
    if clause.negated:
        neg_uids += (next(ids),)
        src.append((SRC_NEG[1], neg_uids[1]))
        tgt.append((TGT_NEG, neg_uids))
    # The tense suffix goes on the last target word (the light verb of a two-word verb).
    tgt += [(word, (verb_uid,)) for word in verb_tgt[:-1]]
    tgt.append((verb_tgt[-1] + TGT_TENSE_SUFFIX[clause.tense], (verb_uid,) + head_links))
    return src, tgt


def realize_clause(clause: Clause, lex: Lexicon, ids, subordinate: bool) -> tuple[list, list]:
    subj_src, subj_tgt = realize_np(clause.subj, lex, ids)
    verb_src, verb_tgt = realize_verb(clause, lex, ids)
    obj_src, obj_tgt, pp_src, pp_tgt = [], [], [], []
    if clause.obj is not None:
        obj_src, obj_tgt = realize_np(clause.obj, lex, ids)
        obj_tgt.append((TGT_OBJECT_MARKER, ()))
    if clause.pp is not None:
        prep_uid = next(ids)
        np_src, np_tgt = realize_np(clause.pp[1], lex, ids)
        prep_src, postp_tgt = lex.preps[clause.pp[0]]
        pp_src = [(prep_src, prep_uid)] + np_src
        pp_tgt = np_tgt + [(postp_tgt, (prep_uid,))]
    src = subj_src + verb_src + obj_src + pp_src
    if subordinate:  # verb-final, PP before the object
        tgt = subj_tgt + pp_tgt + obj_tgt + verb_tgt
    else:
        tgt = subj_tgt + verb_tgt + obj_tgt + pp_tgt
    return src, tgt


def sample_pair(rng: random.Random, lex: Lexicon) -> tuple[str, str, str]:
    """One (source line, target line, Pharaoh alignment line) within the length limits."""
    while True:
        ids = itertools.count()
        src, tgt = realize_clause(sample_clause(rng, lex, pp_prob=0.35), lex, ids, False)
        if rng.random() < 0.3:
            comp_src, comp_tgt = COMPLEMENTIZERS[rng.randrange(len(COMPLEMENTIZERS))]
            comp_uid = next(ids)
            sub = sample_clause(rng, lex, pp_prob=0.2)
            sub_src, sub_tgt = realize_clause(sub, lex, ids, True)
            src += [(comp_src, comp_uid)] + sub_src
            tgt += [(comp_tgt, (comp_uid,))] + sub_tgt
        if MIN_LEN <= len(src) <= MAX_LEN and MIN_LEN <= len(tgt) <= MAX_LEN:
            break
    position = {uid: i for i, (_, uid) in enumerate(src)}
    links = sorted((position[uid], j) for j, (_, uids) in enumerate(tgt) for uid in uids)
    return (
        " ".join(word for word, _ in src),
        " ".join(word for word, _ in tgt),
        " ".join(f"{i}-{j}" for i, j in links),
    )


def generate(seed: int) -> dict[str, tuple[list[str], list[str], list[str]]]:
    """Split name -> (source lines, target lines, alignment lines); one RNG per split."""
    lex = build_lexicon(seed)
    corpus = {}
    for split, size in SPLIT_SIZES:
        rng = random.Random(f"{seed}:{split}")
        pairs = [sample_pair(rng, lex) for _ in range(size)]
        corpus[split] = tuple([pair[k] for pair in pairs] for k in range(3))
    return corpus


def readme_text(corpus, seed: int) -> str:
    rows = []
    for split, (src, tgt, align) in corpus.items():
        for ext, lines in (("src", src), ("tgt", tgt), ("src-tgt.align", align)):
            words = sum(len(line.split()) for line in lines)
            unit = "links" if ext.endswith("align") else "words"
            rows.append(f"| {split}.{ext} | {len(lines)} | {words} {unit} |")
    vocab = {
        side: len({w for split in corpus.values() for line in split[k] for w in line.split()})
        for k, side in ((0, "src"), (1, "tgt"))
    }
    rules = __doc__.split("Rules (source -> target):\n", 1)[1].split("\n\nRun ", 1)[0]
    return "\n".join(
        [
            "# Toy parallel corpus (synthetic)",
            "",
            f"Generated by `tools/make_toy_data.py` (seed {seed}). Two made-up languages, src",
            "and tgt; the target is a deterministic function of the source, and the `.align`",
            "files hold the exact gold word alignment in Pharaoh format (`i-j`: 0-based source",
            "word i, 0-based target word j, pairs sorted, space-separated).",
            "Text is lowercase and whitespace-tokenized; sentences have 3-25 words per side.",
            f"Word types over all splits: src {vocab['src']}, tgt {vocab['tgt']}.",
            "",
            "| file | lines | tokens |",
            "|---|---|---|",
            *rows,
            "",
            "## Rules (source -> target)",
            "",
            "\n".join(line[2:] for line in rules.splitlines()),
            "",
            "## Regenerate",
            "",
            "    python tools/make_toy_data.py            # writes data/toy/, byte-identical",
            "    python tools/make_toy_data.py --output-dir DIR --seed N",
            "",
        ]
    )


def write_corpus(corpus, output_dir: Path, seed: int) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    for split, (src, tgt, align) in corpus.items():
        for ext, lines in (("src", src), ("tgt", tgt), ("src-tgt.align", align)):
            with open(output_dir / f"{split}.{ext}", "w", encoding="utf-8", newline="\n") as f:
                f.write("".join(line + "\n" for line in lines))
    with open(output_dir / "README.md", "w", encoding="utf-8", newline="\n") as f:
        f.write(readme_text(corpus, seed))


def main(argv=None) -> None:
    default_dir = Path(__file__).resolve().parent.parent / "data" / "toy"
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--output-dir", type=Path, default=default_dir, help="data/toy")
    parser.add_argument("--seed", type=int, default=1234, help="generation seed")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    corpus = generate(args.seed)
    write_corpus(corpus, args.output_dir, args.seed)
    elapsed = time.perf_counter() - start
    sizes = ", ".join(f"{split} {len(lines[0])}" for split, lines in corpus.items())
    print(f"wrote {args.output_dir} ({sizes} pairs) in {elapsed:.2f} s")


if __name__ == "__main__":
    main()
