"""Where a seqtrain training step's time goes, and what candidate changes would buy.

In one process, with seqtrain as it is in the repository (nothing patched): builds the
bench/train.py configuration of a shape on onmt-toy-ende, takes K batches from seqtrain's own
training pipeline (materialized, so the pipeline is timed apart), then times passes over those
same K batches for several variants, interleaved round by round (A B C … A B C …), and reports
the median pass as target tokens/s and ms per step:

  step           seqtrain.trainer.Trainer.step: forward, backward, LazyAdam (what training runs)
  fwd            forward + loss terms only
  fwd+bwd        forward + gradients (returned, so nothing is pruned), no optimizer
  fwd+bwd GA off the same without the guided-alignment term (GA overhead)
  fwd+bwd sparse GA    the GA cost from the gold links only (gather) instead of dense [B, T, S]
  fwd+bwd no dropout   all dropout rates 0: the ceiling of what cheaper dropout could buy
  fwd+bwd tf.nn.dropout    stateful dropout (global RNG) instead of stateless per-site seeds
  fwd+bwd byte dropout     prototype: 4 keep decisions per random 32-bit word (ByteDropout;
                           seqtrain.layers now draws 2 per word, with an exact rate)
  fwd+bwd pad8   batches padded to multiples of 8 (the shapes XLA would need)
  fwd+bwd XLA pad8     the same under jit_compile (compile time reported apart)
  fwd+bwd bf16   compute dtype bfloat16 (variables float32)
  optimizer      LazyAdam alone on one batch's gradients
Then a tf.profiler trace of a few ``step`` calls, summed by op type and by phase (forward,
backward, optimizer), and the tracing count of the trainer's step function.

    python bench/step_profile.py [--shape small|mid] [--batches 12] [--rounds 3]
        [--variants step fwd ...] [--json out.json]
"""

from __future__ import annotations

import argparse
import collections
import functools
import glob
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import tensorflow as tf

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib
import train as st
from prototypes import (
    ByteDropout,
    Patched,
    pad_to_multiple,
    sparse_ga_cost,
)

from seqtrain import config as cfg
from seqtrain import data, losses
from seqtrain import trainer as trainer_lib
from seqtrain.checkpoints import build_model

VARIANTS = ["step", "fwd", "fwd+bwd", "fwd+bwd GA off", "fwd+bwd sparse GA",
            "fwd+bwd no dropout", "fwd+bwd tf.nn.dropout", "fwd+bwd byte dropout", "fwd+bwd pad8",
            "fwd+bwd XLA pad8", "fwd+bwd bf16", "optimizer"]  # fmt: skip


def load_setup(shape: str, workdir: str, data_dir: str):
    """(config, corpus) of the bench/train.py run of ``shape`` (guided alignment on)."""
    settings = benchlib.TrainSettings(shape=shape, guided_alignment=True)
    paths = benchlib.prepare_data(data_dir, workdir)
    model_dir = os.path.join(workdir, "runs", f"profile-{shape}")
    config = cfg.build(st.config_dict(model_dir, paths, settings), "<bench>")
    corpus = data.load_corpus(config, "train", cache_dir=os.path.join(workdir, "cache"))
    return config, corpus


def take_batches(config, corpus, count: int) -> tuple[list, float]:
    """``count`` batches of the real pipeline (eager tensors) and the seconds they took."""
    iterator = iter(data.train_dataset(corpus, config.train, with_alignment=True))
    next(iterator)  # pipeline start-up
    start = time.perf_counter()
    batches = [next(iterator) for _ in range(count)]
    return batches, time.perf_counter() - start


class Variants:
    """The timed functions; each takes one batch (and extras) and returns tensors to fetch."""

    def __init__(self, config, model, params):
        self.model, self.params = model, params
        no_ga = cfg.build({**cfg.to_dict(config), "params": {"guided_alignment_type": None}}, "")
        self.params_no_ga = no_ga.params
        seed = tf.constant([1, 2], tf.int32)
        self.seed = seed
        # reduce_retracing as the trainer's step: after two shapes, one trace for all.
        function = functools.partial(tf.function, reduce_retracing=True)
        self.fwd = function(lambda b: self._loss(b, self.params)[0])
        self.fwd_bwd = function(lambda b: self._grads(b, self.params))
        self.fwd_bwd_no_ga = function(lambda b: self._grads(b, self.params_no_ga))
        self.fwd_bwd_sparse = function(lambda b, links: self._grads(b, self.params, links))
        self.fwd_bwd_stateful = function(lambda b: self._grads(b, self.params, stateful=True))
        self.fwd_bwd_byte = function(lambda b: self._grads(b, self.params))
        # XLA compiles each concrete shape (cached), whatever the traced signature.
        self.fwd_bwd_xla = function(lambda b: self._grads(b, self.params), jit_compile=True)

    def byte_dropout(self, batch):
        with Patched(ByteDropout):  # only matters while tracing
            return self.fwd_bwd_byte(batch)

    def _loss(self, batch, params, links=None, stateful=False):
        normalizers = losses.batch_normalizers(batch, params)
        seed = None if stateful else self.seed  # None: tf.nn.dropout on the global RNG
        logits, attention = self.model(batch, training=True, seed=seed)
        if links is None:
            terms = losses.loss_terms(logits, attention, batch, params, training=True)
        else:
            terms = losses.loss_terms(logits, attention, batch, self.params_no_ga, training=True)
            lengths = batch["target_length"] - 1
            terms["ga_cost"] = sparse_ga_cost(attention, links, lengths, 1.0)
        return losses.objective(terms, normalizers, params), terms

    def _grads(self, batch, params, links=None, stateful=False):
        with tf.GradientTape() as tape:
            objective, _ = self._loss(batch, params, links, stateful)
        grads = tape.gradient(objective, self.model.trainable_variables)
        # Fetch every gradient (values of IndexedSlices): nothing can be pruned.
        parts = [g.values if isinstance(g, tf.IndexedSlices) else g for g in grads]
        return objective, [tf.reduce_sum(p) for p in parts]


def make_trainer(config, model):
    optimizer = trainer_lib.make_optimizer(config.params)
    optimizer.build(model.trainable_variables)
    strategy = tf.distribute.get_strategy()
    trainer = trainer_lib.Trainer(model, optimizer, config.params, strategy, seed=1)
    return trainer, optimizer


def make_optimizer_only(config, model, batch):
    """A tf.function applying LazyAdam to one batch's (fixed) gradients."""
    optimizer = trainer_lib.make_optimizer(config.params)
    variables = model.trainable_variables
    optimizer.build(variables)
    with tf.GradientTape() as tape:
        logits, attention = model(batch, training=True)
        normalizers = losses.batch_normalizers(batch, config.params)
        terms = losses.loss_terms(logits, attention, batch, config.params, training=True)
        objective = losses.objective(terms, normalizers, config.params)
    grads = tape.gradient(objective, variables)

    @tf.function
    def update():
        optimizer.apply_gradients(zip(grads, variables))
        return optimizer.iterations.read_value()

    return update


def run_pass(fn, items, clock=time.perf_counter) -> float:
    """Seconds of one pass over ``items`` (outputs fetched); ``clock`` time.process_time gives
    the process's CPU seconds (all threads): steadier than wall time on a shared machine."""
    start = clock()
    for args in items:
        out = fn(*args)
        tf.nest.map_structure(lambda x: x.numpy() if hasattr(x, "numpy") else x, out)
    return clock() - start


def timed_pass(fn, items) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one pass."""
    wall, cpu = time.perf_counter(), time.process_time()
    run_pass(fn, items)
    return time.perf_counter() - wall, time.process_time() - cpu


def build_variants(config, batches, names) -> tuple[dict, dict]:
    """name -> (callable, list of argument tuples); plus warm-up (trace/compile) seconds."""
    model = build_model(config)
    v = Variants(config, model, config.params)
    padded = [(pad_to_multiple(b, 8),) for b in batches]
    plain = [(b,) for b in batches]
    links = [(b, tf.cast(tf.where(b["alignment"][:, :-1] > 0), tf.int32)) for b in batches]
    table = {
        "fwd": (v.fwd, plain),
        "fwd+bwd": (v.fwd_bwd, plain),
        "fwd+bwd GA off": (v.fwd_bwd_no_ga, plain),
        "fwd+bwd sparse GA": (v.fwd_bwd_sparse, links),
        "fwd+bwd tf.nn.dropout": (v.fwd_bwd_stateful, plain),
        "fwd+bwd byte dropout": (v.byte_dropout, plain),
        "fwd+bwd pad8": (v.fwd_bwd, padded),
        "fwd+bwd XLA pad8": (v.fwd_bwd_xla, padded),
    }
    if "step" in names:
        trainer, _ = make_trainer(config, build_model(config))
        table["step"] = (lambda b: trainer.step([b]), plain)
        table["_trainer"] = trainer
    if "fwd+bwd bf16" in names:
        model16 = build_model(config, tf.bfloat16)
        v16 = Variants(config, model16, config.params)
        table["fwd+bwd bf16"] = (v16.fwd_bwd, plain)
    if "fwd+bwd no dropout" in names:
        raw = cfg.to_dict(config)
        raw["model"].update(dropout=0.0, attention_dropout=0.0, ffn_dropout=0.0)
        plain_config = cfg.build(raw, "<bench>")
        v0 = Variants(plain_config, build_model(plain_config), plain_config.params)
        table["fwd+bwd no dropout"] = (v0.fwd_bwd, plain)
    if "optimizer" in names:
        update = make_optimizer_only(config, build_model(config), batches[0])
        table["optimizer"] = (update, [()] * len(batches))
    warm = {}
    for name in names:
        fn, items = table[name]
        start = time.perf_counter()
        try:
            run_pass(fn, items)
        except Exception as e:  # noqa: BLE001 (a failing prototype is reported, not fatal)
            warm[name] = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
            continue
        warm[name] = time.perf_counter() - start
    return table, warm


def profile_ops(fn, items, logdir: str) -> dict:
    """Σ op time by op type and by phase over one traced pass (tf.profiler, host plane)."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    tf.profiler.experimental.start(logdir)
    run_pass(fn, items)
    tf.profiler.experimental.stop()
    path = max(glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True))
    space = xplane_pb2.XSpace()
    with open(path, "rb") as f:
        space.ParseFromString(f.read())
    by_type, by_phase = collections.Counter(), collections.Counter()
    for plane in space.planes:
        metadata = plane.event_metadata
        for line in plane.lines:
            for event in line.events:
                name = metadata[event.metadata_id].name
                if ":" not in name or "::" in name:
                    continue  # not an op kernel (executor/threadpool/runtime bookkeeping)
                op_name, op_type = name.rsplit(":", 1)
                if "__inference" in op_type:
                    continue  # a function call: its ops are counted themselves
                ms = event.duration_ps / 1e9
                by_type[op_type] += ms
                by_phase[phase_of(op_name, op_type)] += ms
    return {"by_type_ms": dict(by_type.most_common()), "by_phase_ms": dict(by_phase)}


OPTIMIZER_TYPES = {"ResourceApplyAdam", "Unique", "UnsortedSegmentSum", "ResourceScatterUpdate",
                   "ResourceScatterSub", "ResourceGather"}  # fmt: skip


def phase_of(op_name: str, op_type: str) -> str:
    if "gradient_tape" in op_name or "gradients" in op_name.lower():
        return "backward"
    if op_type in OPTIMIZER_TYPES or "apply" in op_name.lower() or "update" in op_name.lower():
        return "optimizer"
    if "guided" in op_name or "alignment" in op_name:
        return "guided alignment"
    return "forward/other"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(benchlib.SHAPES), default="small")
    parser.add_argument("--batches", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variants", nargs="+", default=VARIANTS, choices=VARIANTS)
    parser.add_argument("--no-trace", action="store_true", help="skip the tf.profiler trace")
    parser.add_argument("--data", default=benchlib.DEFAULT_DATA)
    parser.add_argument("--workdir", default=benchlib.DEFAULT_WORKDIR)
    parser.add_argument("--json", help="write the results here too")
    args = parser.parse_args()
    config, corpus = load_setup(args.shape, args.workdir, args.data)
    batches, data_s = take_batches(config, corpus, args.batches)
    target_tokens = sum(int(tf.reduce_sum(b["target_length"])) for b in batches)
    real = sum(int(tf.reduce_sum(b["source_length"] + b["target_length"])) for b in batches)
    padded = sum(int(tf.size(b["source_ids"]) + tf.size(b["target_out"])) for b in batches)
    padded8 = 0
    for b in batches:
        p = pad_to_multiple(b, 8)
        padded8 += int(tf.size(p["source_ids"]) + tf.size(p["target_out"]))
    result = {
        "shape": args.shape,
        "batches": len(batches),
        "target_tokens": target_tokens,
        "data_pipeline_s_per_batch": data_s / len(batches),
        "fill": real / padded,
        "fill_pad8": real / padded8,
        "distinct_shapes": len(
            {(b["source_ids"].shape[1], b["target_in"].shape[1]) for b in batches}
        ),
    }
    table, warm = build_variants(config, batches, args.variants)
    result["warmup_s"] = warm
    names = [n for n in args.variants if not isinstance(warm.get(n), str)]
    passes = {name: [] for name in names}
    for _ in range(args.rounds):
        for name in names:
            fn, items = table[name]
            passes[name].append(timed_pass(fn, items))
    result["variants"] = {}
    base = statistics.median(c for _, c in passes[names[0]]) if names else None
    for name in names:
        seconds = statistics.median(w for w, _ in passes[name])
        cpu = statistics.median(c for _, c in passes[name])
        result["variants"][name] = {
            "ms_per_batch": 1000 * seconds / len(batches),
            "cpu_ms_per_batch": 1000 * cpu / len(batches),
            "cpu_vs_first": cpu / base,
            "target_tokens_per_sec": target_tokens / seconds,
            "passes_wall_cpu_s": passes[name],
        }
    if "_trainer" in table:
        result["step_tracing_count"] = table["_trainer"]._step.experimental_get_tracing_count()
    if not args.no_trace and "step" in names:
        with tempfile.TemporaryDirectory() as logdir:
            fn, items = table["step"]
            result["op_profile"] = profile_ops(fn, items, logdir)
    print(format_result(result))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)


def format_result(result: dict) -> str:
    summary = (
        f"shape {result['shape']}: {result['batches']} batches, {result['target_tokens']} target "
        f"tokens, {result['distinct_shapes']} distinct shapes; real/padded tokens "
        f"{result['fill']:.2f} (pad8: {result['fill_pad8']:.2f}); data pipeline "
        f"{1000 * result['data_pipeline_s_per_batch']:.0f} ms/batch"
    )
    header = (
        f"{'variant':<20}{'ms/batch':>10}{'tgt tok/s':>11}{'CPU ms/batch':>14}{'CPU vs first':>14}"
        f"{'warm-up s':>11}"
    )
    lines = [summary, header]
    for name, v in result["variants"].items():
        warm = result["warmup_s"].get(name)
        lines.append(
            f"{name:<20}{v['ms_per_batch']:>10.0f}{v['target_tokens_per_sec']:>11.0f}"
            f"{v['cpu_ms_per_batch']:>14.0f}{v['cpu_vs_first']:>14.3f}{warm:>11.1f}"
        )
    for name, warm in result["warmup_s"].items():
        if isinstance(warm, str):
            lines.append(f"{name:<20}{warm}")
    if "step_tracing_count" in result:
        lines.append(f"Trainer step traced {result['step_tracing_count']} times")
    profile = result.get("op_profile")
    if profile:
        total = sum(profile["by_type_ms"].values())
        lines.append(f"op time by phase (Σ kernel time {total:.0f} ms over one pass):")
        for phase, ms in sorted(profile["by_phase_ms"].items(), key=lambda kv: -kv[1]):
            lines.append(f"  {phase:<20}{ms:>9.0f} ms {100 * ms / total:>5.1f}%")
        lines.append("top op types:")
        for op_type, ms in list(profile["by_type_ms"].items())[:15]:
            lines.append(f"  {op_type:<28}{ms:>9.0f} ms {100 * ms / total:>5.1f}%")
    return "\n".join(lines)


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
