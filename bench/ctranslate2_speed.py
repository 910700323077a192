"""Beam-4 decoding speed: seqtrain (TensorFlow), seqtrain -> CTranslate2 (float32, int8) and
OpenNMT-tf 2.32, same model shape, same sentences, same output lengths, batches of 32.

Each system runs in its own process (``--system NAME`` is the worker mode; OpenNMT-tf's worker
runs in its venv, ``bench/opennmt_baseline.py``), builds an untrained model of the shape
(``benchlib.SHAPES``, the 8k word vocabularies of ``benchlib.prepare_data``), decodes the first
``--sentences`` test sentences once to warm up (tracing, first shapes), then ``--rounds`` times
timed. Batches: 32 sentences sorted by source length, beam 4, length penalty 0.6.

Equal work: speed needs no good model, but equal output lengths. Every output is forced to
``--length`` tokens: OpenNMT-tf and CTranslate2 with minimum = maximum decoding length;
seqtrain's TensorFlow search has no minimum length, so its model gets a -1e9 output bias on
``</s>`` (it never stops) and the hard cap ``--length`` (no relative limit); the CTranslate2
exports are made from that same model (and get minimum = maximum too). The report gives each
system's mean output length, so unequal work shows.

Figures: target tokens / wall second and / CPU second of the process (all its threads; on this
shared machine the wall rate moves with other jobs, the CPU rate much less), median of the
rounds; ratios against OpenNMT-tf. TensorFlow uses all cores by default; CTranslate2 runs as
deployed for throughput: ``--ct2_inter_threads`` workers (default: the CPU count) of
``--ct2_intra_threads`` threads (default 1), all batches submitted at once. The load average is
printed with the table.

    python bench/ctranslate2_speed.py [--shape small|mid] [--sentences 128] [--length 40]
        [--rounds 3] [--data ../shared/data/onmt-toy-ende] [--workdir ~/.cache/seqtrain-bench]
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import statistics
import subprocess
import sys
import time
import types

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib
import opennmt_baseline as onmt

SYSTEMS = ("opennmt", "seqtrain", "ct2_float32", "ct2_int8")
NAMES = {
    "opennmt": "OpenNMT-tf 2.32 (TF 2.13)",
    "seqtrain": "seqtrain (TF 2.21)",
    "ct2_float32": "seqtrain → CTranslate2 float32",
    "ct2_int8": "seqtrain → CTranslate2 int8",
}
BATCH, BEAM, LENGTH_PENALTY = 32, 4, 0.6

# The OpenNMT-tf worker, run by the OpenNMT-tf venv's Python (no seqtrain there); its timing
# loop is seqtrain's workers' (TIMING).
ONMT_WORKER = r"""
import json, os, sys, time
import tensorflow as tf
import opennmt

a = json.loads(sys.argv[1])
tf.random.set_seed(0)
model = opennmt.models.Transformer(
    dropout=0.1, attention_dropout=0.1, ffn_dropout=0.1, **a["shape"]
)
params = {"beam_width": a["beam"], "length_penalty": a["length_penalty"],
          "maximum_decoding_length": a["length"], "minimum_decoding_length": a["length"]}
model.initialize({"source_vocabulary": a["source_vocabulary"],
                  "target_vocabulary": a["target_vocabulary"]}, params=params)
model.create_variables()
serve = model.serve_function()


def decode(batch):
    width = max(len(s) for s in batch)
    features = {"tokens": tf.constant([s + [""] * (width - len(s)) for s in batch]),
                "length": tf.constant([len(s) for s in batch], tf.int32)}
    return int(tf.reduce_sum(serve(features)["length"][:, 0]))
"""


def cpu_seconds() -> float:
    times = os.times()  # this process, all threads
    return times.user + times.system


def timed_rounds(decode, batches, rounds: int) -> dict:
    """decode(batch) -> output tokens; a warm-up pass (tracing, first shapes), then ``rounds``
    timed passes: {"tokens": per pass, "walls": [s], "cpus": [CPU s]}."""
    for batch in batches:
        decode(batch)
    walls, cpus, tokens = [], [], 0
    for _ in range(rounds):
        wall, cpu = time.perf_counter(), cpu_seconds()
        tokens = sum(decode(batch) for batch in batches)
        walls.append(time.perf_counter() - wall)
        cpus.append(cpu_seconds() - cpu)
    return {"tokens": tokens, "walls": walls, "cpus": cpus}


# The same timing code runs in the OpenNMT-tf worker.
TIMING = inspect.getsource(cpu_seconds) + "\n\n" + inspect.getsource(timed_rounds)


def sentence_batches(test_source: str, count: int) -> list[list[list[str]]]:
    """The first ``count`` sentences, whitespace tokens, sorted by length, in batches of 32."""
    with open(test_source, encoding="utf-8") as f:
        sentences = [line.split() for _, line in zip(range(count), f)]
    sentences = sorted((s for s in sentences if s), key=len)
    return [sentences[i : i + BATCH] for i in range(0, len(sentences), BATCH)]


def seqtrain_model(args, data: benchlib.Data):
    """(config, untrained seqtrain model that never emits </s>) of the benchmark's shape."""
    import tensorflow as tf

    from seqtrain import config as cfg
    from seqtrain.checkpoints import build_model
    from seqtrain.vocab import EOS

    config = cfg.build({
        "model_dir": os.path.join(args.workdir, "runs", "ct2-speed"),
        "data": {"source_vocabulary": data.source_vocabulary,
                 "target_vocabulary": data.target_vocabulary},
        "model": benchlib.SHAPES[args.shape],
        "params": {"beam_width": BEAM, "length_penalty": LENGTH_PENALTY,
                   "maximum_decoding_length": args.length,
                   "maximum_decoding_length_factor": None},
    }, "bench")  # fmt: skip
    model = build_model(config)
    bias = model.output.bias
    bias.assign(tf.tensor_scatter_nd_update(bias, [[EOS]], [-1e9]))
    return config, model


def worker(args, data: benchlib.Data) -> dict:
    """Decoding of one system in this process (``--system``)."""
    batches = sentence_batches(data.test_source, args.sentences)
    config, model = seqtrain_model(args, data)
    if args.system == "seqtrain":
        from seqtrain.translate import Translator
        from seqtrain.vocab import Vocab

        vocab = Vocab.load(data.source_vocabulary)
        # Each call gets one prepared batch: keep it whole (bucket width 0 = input order), as
        # the other systems do; the default buckets would split it by exact length.
        batching = types.SimpleNamespace(batch_type="examples", length_bucket_width=0)
        translator = Translator(model, config.params, batch_size=BATCH, batching=batching)
        id_batches = [[vocab.ids(s) for s in batch] for batch in batches]
        return timed_rounds(
            lambda b: sum(len(h[0].ids) for h in translator(b)), id_batches, args.rounds
        )
    import ctranslate2

    from seqtrain.export import export_model

    fmt = {"ct2_float32": "ctranslate2", "ct2_int8": "ctranslate2_int8"}[args.system]
    directory = export_model(config, model, os.path.join(config.model_dir, fmt), fmt)
    # CTranslate2's throughput setting on CPU: one single-threaded worker per core, the batches
    # submitted at once (seqtrain translate --engine ctranslate2 does the same).
    translator = ctranslate2.Translator(
        directory, inter_threads=args.ct2_inter_threads, intra_threads=args.ct2_intra_threads
    )

    def decode_all(all_batches):
        pending = [
            translator.translate_batch(
                batch, beam_size=BEAM, length_penalty=LENGTH_PENALTY, asynchronous=True,
                max_decoding_length=args.length, min_decoding_length=args.length,
            )  # fmt: skip
            for batch in all_batches
        ]
        return sum(len(r.result().hypotheses[0]) for results in pending for r in results)

    return timed_rounds(decode_all, [batches], args.rounds)


def run_system(system: str, args, data: benchlib.Data, batches) -> dict:
    """One system's worker process -> its timing dict."""
    if system == "opennmt":
        shape = benchlib.SHAPES[args.shape]
        request = {
            "shape": shape, "beam": BEAM, "length_penalty": LENGTH_PENALTY,
            "length": args.length, "source_vocabulary": data.source_vocabulary,
            "target_vocabulary": data.target_vocabulary, "batches": batches,
            "rounds": args.rounds,
        }  # fmt: skip
        code = "from __future__ import annotations\n" + ONMT_WORKER + "\n\n" + TIMING
        code += "\n\nprint(json.dumps(timed_rounds(decode, a['batches'], a['rounds'])))\n"
        python = os.path.join(args.venv, "bin", "python")
        command = [python, "-c", code, json.dumps(request)]
    else:
        command = [sys.executable, os.path.abspath(__file__), "--system", system]
        command += [f"--{k}={v}" for k, v in vars(args).items() if k not in ("system",)]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=benchlib.REPO)
    proc = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if proc.returncode:
        raise RuntimeError(f"{system} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def table(results: dict, sentences: int, load: tuple) -> str:
    base = results["opennmt"]
    rate = {s: r["tokens"] / statistics.median(r["walls"]) for s, r in results.items()}
    cpu_rate = {s: r["tokens"] / statistics.median(r["cpus"]) for s, r in results.items()}
    rows = [
        "| system | target tokens/s | × OpenNMT-tf | tokens/CPU-s | × OpenNMT-tf | mean length |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for system, r in results.items():
        rows.append(
            f"| {NAMES[system]} | {rate[system]:.0f} | ×{rate[system] / rate['opennmt']:.1f} | "
            f"{cpu_rate[system]:.0f} | ×{cpu_rate[system] / cpu_rate['opennmt']:.1f} | "
            f"{r['tokens'] / sentences:.1f} |"
        )
    lengths = {round(r["tokens"] / sentences, 1) for r in results.values()}
    if len(lengths) > 1:
        rows.append(f"WARNING: mean output lengths differ ({sorted(lengths)}): unequal work")
    rows.append(f"load average before / after: {load[0]:.1f} / {load[1]:.1f} "
                f"({os.cpu_count()} CPUs); OpenNMT-tf base: {base['tokens']} tokens")  # fmt: skip
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="small", choices=sorted(benchlib.SHAPES))
    parser.add_argument("--sentences", type=int, default=128)
    parser.add_argument("--length", type=int, default=40, help="forced output length")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--data", default=benchlib.DEFAULT_DATA)
    parser.add_argument("--workdir", default=benchlib.DEFAULT_WORKDIR)
    parser.add_argument("--venv", default=onmt.DEFAULT_VENV)
    parser.add_argument(
        "--ct2_inter_threads",
        type=int,
        default=os.cpu_count(),
        help="CTranslate2 workers (batches decoded in parallel)",
    )
    parser.add_argument("--ct2_intra_threads", type=int, default=1,
                        help="CTranslate2 threads per worker")  # fmt: skip
    parser.add_argument("--system", choices=SYSTEMS, help=argparse.SUPPRESS)  # worker mode
    args = parser.parse_args()
    data = benchlib.prepare_data(args.data, args.workdir)
    if args.system:
        print(json.dumps(worker(args, data)))
        return
    onmt.ensure_venv(args.venv)
    batches = sentence_batches(data.test_source, args.sentences)
    sentences = sum(map(len, batches))
    load = [os.getloadavg()[0]]
    results = {}
    for system in SYSTEMS:
        results[system] = run_system(system, args, data, batches)
        print(f"{system}: {results[system]}", file=sys.stderr, flush=True)
    load.append(os.getloadavg()[0])
    print(f"beam {BEAM}, batch {BATCH}, {sentences} sentences of {args.data}, every output "
          f"forced to {args.length} tokens, shape {args.shape} {benchlib.SHAPES[args.shape]}, "
          f"median of {args.rounds} rounds after a warm-up pass")  # fmt: skip
    print(table(results, sentences, tuple(load)))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
