"""Decoding speed: target tokens/s of greedy and beam-4 search at batch sizes 1 and 32.

Usage: python bench/translate.py [--corpus toy multi30k] [--steps 200] [--work DIR]
                                 [--limit-batch1 200] [--shape small|tiny]

For each corpus, a model is trained for ``--steps`` updates with ``seqtrain.trainer.train`` (a
small config written to a scratch directory, reused if it already holds a checkpoint), then its
test set is translated with ``translate.Translator`` (length-sorted batches, the ``translate``
command's path). Times exclude tracing: every configuration first decodes a warm-up slice. Batch
size 1 decodes only the first ``--limit-batch1`` sentences (it is slow). Tokens/s counts the
generated 1-best target tokens (``</s>`` excluded); a briefly trained model may ramble, so the
mean output length and BLEU are printed beside it.

Corpora: toy = data/toy (test.src/tgt; source -> target); multi30k = ../shared/data/
multi30k-de-en (test2016, German -> English, 8k-word vocabularies).
"""

import argparse
import logging
import os
import tempfile
import time

import sacrebleu
import tensorflow as tf

from seqtrain import config as cfg
from seqtrain import trainer, translate
from seqtrain.export import restore_model
from seqtrain.vocab import Vocab, build_vocab, read_text_lines

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPORA = {
    "toy": (os.path.join(ROOT, "data", "toy"), "train", "test", "src", "tgt", "src-tgt.align"),
    "multi30k": (
        os.path.join(
            os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
            "..",
            "shared",
            "data",
            "multi30k-de-en",
        ),
        "train",
        "test2016",
        "de",
        "en",
        "de-en.align",
    ),
}
SHAPES = {
    "small": {"num_layers": 2, "num_units": 256, "num_heads": 4, "ffn_inner_dim": 1024},
    "tiny": {"num_layers": 2, "num_units": 64, "num_heads": 4, "ffn_inner_dim": 128},
}


def train_model(name, work, steps, shape):
    """Trains (or reuses) the corpus' model; returns (config, test source path, test ref path)."""
    folder, train, test, src, tgt, align = CORPORA[name]
    work = os.path.join(work, f"{name}-{shape}")
    os.makedirs(work, exist_ok=True)
    vocabs = {}
    for side in (src, tgt):
        vocabs[side] = os.path.join(work, f"{side}.vocab")
        if not os.path.exists(vocabs[side]):
            build_vocab([os.path.join(folder, f"{train}.{side}")], vocabs[side], size=8000)
    model = SHAPES[shape]
    config = cfg.build({
        "model_dir": os.path.join(work, "model"),
        "data": {
            "train_features_file": os.path.join(folder, f"{train}.{src}"),
            "train_labels_file": os.path.join(folder, f"{train}.{tgt}"),
            "train_alignments": os.path.join(folder, f"{train}.{align}"),
            "source_vocabulary": vocabs[src],
            "target_vocabulary": vocabs[tgt],
        },
        "model": model,
        "params": {
            "decay_params": {"model_dim": model["num_units"], "warmup_steps": max(steps // 2, 1)},
            "guided_alignment_type": "ce",
            "guided_alignment_normalization": "aligned_tokens",
            "maximum_decoding_length": 100,
            "maximum_decoding_length_factor": None,  # timings of the hard cap, as before
        },
        "train": {"batch_size": 2048, "max_step": steps, "save_checkpoints_steps": steps,
                  "save_summary_steps": 50, "length_bucket_width": 2},
        "eval": {"steps": None},
    }, "bench")  # fmt: skip
    if tf.train.latest_checkpoint(config.model_dir) is None:
        start = time.time()
        trainer.train(config)
        print(f"{name}: trained {steps} steps in {time.time() - start:.0f} s", flush=True)
    return config, os.path.join(folder, f"{test}.{src}"), os.path.join(folder, f"{test}.{tgt}")


def bench(config, source_path, reference_path, limit_batch1):
    """Prints one row per (search, batch size)."""
    model, _ = restore_model(config)
    source_vocab = Vocab.load(config.data.source_vocabulary)
    target_vocab = Vocab.load(config.data.target_vocabulary)
    sources = [source_vocab.ids(line.split()) for line in read_text_lines(source_path)]
    references = list(read_text_lines(reference_path))
    for beam in (1, 4):
        for batch_size in (1, 32):
            count = limit_batch1 if batch_size == 1 else len(sources)
            translator = translate.Translator(model, config.params, batch_size, beam_width=beam)
            translator(sources[:batch_size])  # trace and warm up
            start = time.perf_counter()
            hypotheses = translator(sources[:count])
            elapsed = time.perf_counter() - start
            tokens = sum(len(h[0].ids) for h in hypotheses)
            texts = [" ".join(target_vocab.tokens(h[0].ids)) for h in hypotheses]
            bleu = sacrebleu.corpus_bleu(texts, [references[:count]]).score
            print(
                f"  {'greedy' if beam == 1 else f'beam {beam}':7s} batch {batch_size:2d}: "
                f"{tokens / elapsed:8.0f} target tokens/s, {count / elapsed:7.1f} sentences/s "
                f"({count} sentences, {tokens / count:.1f} tokens each, BLEU {bleu:.1f})",
                flush=True,
            )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", nargs="+", default=["toy", "multi30k"], choices=CORPORA)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "seqtrain-bench"))
    parser.add_argument("--limit-batch1", type=int, default=200)
    parser.add_argument("--shape", default="small", choices=SHAPES)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    print(
        f"TensorFlow {tf.__version__}, "
        f"devices: {[d.name for d in tf.config.list_logical_devices()]}"
    )
    for name in args.corpus:
        config, source, reference = train_model(name, args.work, args.steps, args.shape)
        shape = SHAPES[args.shape]
        print(f"{name}: {args.steps} training steps, {shape}", flush=True)
        bench(config, source, reference, args.limit_batch1)


if __name__ == "__main__":
    main()
