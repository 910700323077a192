"""Speed of seqtrain's data pipeline on Multi30k De→En with word alignments.

Trains a joint 8k SentencePiece model (into a temporary folder), then measures:
  1. the first pass: text + alignments -> ids + projected subword links -> .npz cache;
  2. a cached load (the .npz only);
  3. one epoch of training batches (token batches, length buckets) through tf.data, with the
     gold alignment matrices and without them (best of --repeats epochs after a warm-up one).

    python bench/data_pipeline.py [--data ../shared/data/multi30k-de-en] [--batch-size 3072]
"""

import argparse
import logging
import os
import tempfile
import time

from seqtrain import data, vocab
from seqtrain.config import Config, DataConfig, TrainConfig


def one_epoch(corpus, train: TrainConfig, with_alignment: bool) -> dict:
    """Reads batches until as many examples as the kept corpus came; figures per second."""
    kept = data.filter_stats(corpus, train).kept
    dataset = data.train_dataset(corpus, train, with_alignment=with_alignment)
    start = time.perf_counter()
    sentences = source_tokens = target_tokens = source_padded = target_padded = batches = 0
    shapes = set()
    for batch in dataset:
        rows, source_pad = batch["source_ids"].shape
        target_pad = batch["target_in"].shape[1]
        sentences += rows
        source_tokens += int(batch["source_length"].numpy().sum())
        target_tokens += int(batch["target_length"].numpy().sum())
        source_padded += rows * source_pad
        target_padded += rows * target_pad
        batches += 1
        shapes.add((source_pad, target_pad))
        if sentences >= kept:
            break
    elapsed = time.perf_counter() - start
    return {
        "seconds": elapsed,
        "sentences_per_s": sentences / elapsed,
        "target_tokens_per_s": target_tokens / elapsed,
        "batches": batches,
        "shapes": len(shapes),
        "source_fill": source_tokens / source_padded,
        "target_fill": target_tokens / target_padded,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data",
        default=os.path.join(
            os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
            "..",
            "shared",
            "data",
            "multi30k-de-en",
        ),
    )
    parser.add_argument("--batch-size", type=int, default=3072, help="tokens per batch")
    parser.add_argument("--bucket-width", type=int, default=1)
    parser.add_argument("--vocab-size", type=int, default=8000)
    parser.add_argument("--repeats", type=int, default=5, help="timed epochs (best is shown)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    src, tgt = os.path.join(args.data, "train.de"), os.path.join(args.data, "train.en")
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        model, vocab_path = vocab.train_sentencepiece(
            [src, tgt], os.path.join(tmp, "sp"), args.vocab_size
        )
        print(f"SentencePiece {args.vocab_size} joint: {time.perf_counter() - start:.1f} s")
        config = Config(
            model_dir=os.path.join(tmp, "run"),
            data=DataConfig(
                train_features_file=src,
                train_labels_file=tgt,
                train_alignments=os.path.join(args.data, "train.de-en.align"),
                source_vocabulary=vocab_path,
                target_vocabulary=vocab_path,
                source_tokenization=model,
                target_tokenization=model,
                alignment_level="words",
            ),
            train=TrainConfig(batch_size=args.batch_size, length_bucket_width=args.bucket_width),
        )
        start = time.perf_counter()
        corpus = data.load_corpus(config)
        first = time.perf_counter() - start
        start = time.perf_counter()
        corpus = data.load_corpus(config)
        cached = time.perf_counter() - start
    n, tokens = len(corpus), int(corpus.target_lengths.sum())
    print(
        f"corpus: {n} pairs, {int(corpus.source_lengths.sum())} source / {tokens} target "
        f"pieces, {len(corpus.links)} subword links"
    )
    print(
        f"first pass (encode + project + cache): {first:.2f} s = {n / first:.0f} sentences/s, "
        f"{tokens / first:.0f} target tokens/s"
    )
    print(f"cached load: {cached:.3f} s = {n / cached:.0f} sentences/s")
    print(data.filter_stats(corpus, config.train))
    runs = {}
    for with_alignment in (True, False):
        one_epoch(corpus, config.train, with_alignment)  # warm-up: tracing, thread pools
        # Best of a few epochs: the machine is shared, the slower runs measure the neighbours.
        epochs = [one_epoch(corpus, config.train, with_alignment) for _ in range(args.repeats)]
        runs[with_alignment] = max(epochs, key=lambda r: r["sentences_per_s"])
        r = runs[with_alignment]
        print(
            f"epoch, alignments {'on ' if with_alignment else 'off'}: {r['seconds']:.2f} s, "
            f"{r['sentences_per_s']:.0f} sentences/s, {r['target_tokens_per_s']:.0f} target "
            f"tokens/s, {r['batches']} batches, {r['shapes']} shapes, "
            f"real positions {100 * r['source_fill']:.1f}% source, "
            f"{100 * r['target_fill']:.1f}% target"
        )
    ratio = runs[True]["target_tokens_per_s"] / runs[False]["target_tokens_per_s"]
    print(f"alignments on / off throughput ratio: {ratio:.2f}")


if __name__ == "__main__":
    main()
