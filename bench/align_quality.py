"""Word-alignment quality of seqtrain's eflomal wrapper on the 100-sentence Europarl De-En gold.

Aligns europarl-deen-gold-dev (dev.de → dev.en) with the onmt-toy-ende corpus as extra text
(statistics only), lowercased as the shipped reference was, and prints AER / precision / recall
of every symmetrization against dev.de-en.gold, next to the shipped eflomal + atools
grow-diag-final-and reference (dev.de-en.eflomal-gdfa.align, AER 20.4).

    python bench/align_quality.py [--data ../shared/data] [--extra-splits train valid test]

eflomal has no seed, so figures move a little (about ±0.5 AER) between runs.
"""

import argparse
import logging
import os
import time

from seqtrain.aer import format_scores, read_links, score
from seqtrain.align_words import SYMMETRIZATIONS, directional_alignments, symmetrize


def read_lines(path: str) -> list[str]:
    with open(path, encoding="utf-8") as handle:
        return handle.read().splitlines()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data",
        default=os.path.join(
            os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "data"
        ),
        help="folder of the corpora",
    )
    parser.add_argument(
        "--extra-splits",
        nargs="*",
        default=["train"],
        help="onmt-toy-ende splits added as extra text (the reference used train valid test)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    dev = os.path.join(args.data, "europarl-deen-gold-dev")
    toy = os.path.join(args.data, "onmt-toy-ende")
    extra_de, extra_en = [], []
    for split in args.extra_splits:
        extra_de += read_lines(os.path.join(toy, f"{split}.de"))
        extra_en += read_lines(os.path.join(toy, f"{split}.en"))

    start = time.monotonic()
    pairs = directional_alignments(
        read_lines(os.path.join(dev, "dev.de")),
        read_lines(os.path.join(dev, "dev.en")),
        lowercase=True,
        extra_source=extra_de,
        extra_target=extra_en,
    )
    seconds = time.monotonic() - start
    gold = list(read_links(os.path.join(dev, "dev.de-en.gold")))
    sure, possible = [s for s, _ in gold], [p for _, p in gold]

    print(f"{len(pairs)} gold sentences, {len(extra_de)} extra pairs, eflomal {seconds:.1f} s")
    for method in SYMMETRIZATIONS:
        links = [symmetrize(f, r, method, n, m) for f, r, n, m in pairs]
        print(f"{method:<22} {format_scores(score(links, sure, possible))}")
    reference = [p for _, p in read_links(os.path.join(dev, "dev.de-en.eflomal-gdfa.align"))]
    print(f"{'shipped reference gdfa':<22} {format_scores(score(reference, sure, possible))}")


if __name__ == "__main__":
    main()
