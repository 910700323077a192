"""Two guided heads, one per direction, combined: AER on the gold set (real-data alignment issue).

bench/align_real.py trains the issue's protocol De→En; trained a second time En→De (the same
recipe with the sides swapped, see the README's command) it gives a second guided head. Each run's
``gold-attention-STEP.npz`` holds, per gold sentence, the head's forced-decoding rows
([target words, source words]). This script scores, at each step both runs have:

- each direction alone (argmax and intersection extraction, as ``seqtrain eval``);
- the two directions' argmax links combined with Koehn et al.'s heuristics (intersection, union,
  grow-diag, grow-diag-final, grow-diag-final-and: ``seqtrain.align_words.symmetrize``, the code
  ``seqtrain align`` uses on eflomal's two directions);
- the mean of the two soft matrices (the reverse one transposed), with intersection extraction.

    python bench/align_bidir.py --forward RUNS/readl0 --reverse RUNS/rev \
        [--gold ../shared/data/europarl-deen-gold-dev/dev.de-en.gold]

The gold file is the De→En one (source = German positions); the reverse run's rows are
transposed onto it. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from seqtrain import aer  # noqa: E402
from seqtrain.align_words import symmetrize  # noqa: E402
from seqtrain.decoding import hard_alignments  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_GOLD = os.path.join(
    REPO, "..", "shared", "data", "europarl-deen-gold-dev", "dev.de-en.gold"
)
METHODS = ("intersection", "union", "grow-diag", "grow-diag-final", "grow-diag-final-and")


def load_rows(run_dir: str, step: int) -> list[np.ndarray]:
    """Per gold sentence, the head's rows [target words, source words] at ``step``."""
    with np.load(os.path.join(run_dir, f"gold-attention-{step}.npz")) as npz:
        return [npz[f"arr_{k}"].astype(np.float32) for k in range(len(npz.files))]


def steps_of(run_dir: str) -> set[int]:
    names = glob.glob(os.path.join(run_dir, "gold-attention-*.npz"))
    return {int(re.search(r"-(\d+)\.npz$", n).group(1)) for n in names}


def links(matrix: np.ndarray, extraction: str) -> set:
    """(source, target) links of one [T, S] matrix."""
    return set(hard_alignments(matrix, *matrix.shape, extraction))


def score_row(name: str, step: int, hypotheses: list[set], gold) -> str:
    s = aer.score(hypotheses, *gold)
    return f"| {name} | {step} | {100 * s['aer']:.1f} | {100 * s['precision']:.1f} | " + (
        f"{100 * s['recall']:.1f} |"
    )


def table(forward_dir: str, reverse_dir: str, gold) -> str:
    rows = ["| combination | step | AER | P | R |", "| --- | --- | --- | --- | --- |"]
    for step in sorted(steps_of(forward_dir) & steps_of(reverse_dir)):
        forward = load_rows(forward_dir, step)  # [T, S] each (De→En: T English, S German)
        reverse = [m.T for m in load_rows(reverse_dir, step)]  # En→De rows, transposed to [T, S]
        if [m.shape for m in forward] != [m.shape for m in reverse]:
            raise SystemExit(f"step {step}: the two runs' gold matrices differ in shape")
        for name, mats in (("De→En", forward), ("En→De", reverse)):
            rows.append(score_row(f"{name} argmax", step, [links(m, "argmax") for m in mats], gold))
            rows.append(
                score_row(f"{name} ∩", step, [links(m, "intersection") for m in mats], gold)
            )
        # The reverse head's argmax per German word, as (source, target) links of the pair.
        fwd = [links(m, "argmax") for m in forward]
        rev = [{(s, t) for t, s in links(m.T, "argmax")} for m in reverse]
        for method in METHODS:
            combined = [
                symmetrize(f, r, method, m.shape[1], m.shape[0])
                for f, r, m in zip(fwd, rev, forward, strict=True)
            ]
            rows.append(score_row(f"both, {method}", step, combined, gold))
        mean = [(f + r) / 2 for f, r in zip(forward, reverse, strict=True)]
        rows.append(
            score_row("both, mean matrix ∩", step, [links(m, "intersection") for m in mean], gold)
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--forward", required=True, help="De→En run dir (bench/align_real.py)")
    parser.add_argument("--reverse", required=True, help="En→De run dir")
    parser.add_argument("--gold", default=os.path.normpath(DEFAULT_GOLD))
    args = parser.parse_args()
    with open(args.gold, encoding="utf-8") as f:
        parsed = [aer.parse_gold_line(line) for line in f]
    gold = ([g[0] for g in parsed], [g[1] for g in parsed])
    print(table(args.forward, args.reverse, gold))


if __name__ == "__main__":
    main()
