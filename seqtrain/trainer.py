"""The training step and loop: replicas, all-reduced sums, LazyAdam, logs, checkpoints.

One update (``Trainer._replica_step``), per replica:
  1. normalizers (tokens, sentences, aligned tokens) of all its micro-batches, all-reduced (SUM)
     *before* the forward pass: they depend on the batch only;
  2. for each accumulation micro-batch: forward -> loss terms (sums) -> objective = terms divided
     by the global normalizers -> gradients, accumulated (IndexedSlices stay sparse);
  3. gradients and loss sums all-reduced (SUM) across replicas;
  4. one LazyAdam update, applied only if the loss and the gradient norm are finite.
Summing the per-replica gradients of ``objective`` gives exactly ∇(Σ loss)/Σ normalizer of the
whole global batch, so 1 replica, 2 replicas or 2 accumulation steps give the same update.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal

import tensorflow as tf

from seqtrain import checkpoints, data, losses, optim, runguard, runlog, warmstart
from seqtrain import config as cfg
from seqtrain.checkpoints import Saver, build_model
from seqtrain.errors import Interrupted, SeqtrainError
from seqtrain.optim import make_optimizer  # noqa: F401  (part of this module's interface)
from seqtrain.progress import Progress

logger = logging.getLogger(__name__)

SUM = tf.distribute.ReduceOp.SUM
# What a multi-worker collective raises when a peer is gone or exceeds the timeout.
PEER_LOST = (
    tf.errors.DeadlineExceededError,
    tf.errors.UnavailableError,
    tf.errors.CancelledError,
    tf.errors.AbortedError,
)


def make_strategy(num_devices: int = 1, worker_timeout: float = 600.0) -> tf.distribute.Strategy:
    """Multi-worker from TF_CONFIG, else Mirrored over ``num_devices`` local devices, else default.

    On a machine without GPUs, ``num_devices`` > 1 splits the CPU into logical devices (useful to
    check replica invariance; it is not faster). Must run before any other TensorFlow op.
    worker_timeout: seconds a multi-worker collective waits for its peers (a dead worker).
    """
    workers = json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {}).get("worker", [])
    if len(workers) > 1:
        options = tf.distribute.experimental.CommunicationOptions(
            implementation=tf.distribute.experimental.CommunicationImplementation.RING,
            timeout_seconds=worker_timeout,
        )
        return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    if num_devices <= 1:
        return tf.distribute.get_strategy()
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        if len(gpus) < num_devices:
            raise SeqtrainError(
                f"--num-devices {num_devices}, but only {len(gpus)} GPUs are visible"
            )
        return tf.distribute.MirroredStrategy([f"/gpu:{i}" for i in range(num_devices)])
    split_cpu(num_devices)
    return tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(num_devices)])


def split_cpu(count: int) -> None:
    """Splits the physical CPU into ``count`` logical devices (before any op runs)."""
    (cpu,) = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * count
    )


def accumulation_steps(train: cfg.TrainConfig, num_replicas: int) -> int:
    """Micro-batches per update so that replicas × steps × batch_size ≥ effective_batch_size."""
    if not train.effective_batch_size:
        return 1
    return max(1, math.ceil(train.effective_batch_size / (train.batch_size * num_replicas)))


def compute_dtype(mixed_precision: bool) -> tf.DType:
    """float32; with mixed precision float16 on GPUs (with loss scaling), bfloat16 on CPUs
    (same exponent range as float32: no loss scaling needed)."""
    if not mixed_precision:
        return tf.float32
    return tf.float16 if tf.config.list_physical_devices("GPU") else tf.bfloat16


def _add(a: dict | None, b: dict) -> dict:
    return dict(b) if a is None else {k: a[k] + b[k] for k in a}


class Trainer:
    """Owns the compiled update; ``step(micro_batches)`` runs one update on every replica."""

    def __init__(
        self,
        model,
        optimizer,
        params: cfg.ParamsConfig,
        strategy,
        seed: int = 0,
        loss_scale: optim.DynamicLossScale | None = None,
        jit_compile: bool = False,
        batch_spec=None,
        micro_batches: int = 1,
        moving_average=None,
    ):
        """batch_spec: the (distributed) batch iterator's ``element_spec``, if known. With it the
        step is traced once, for every bucket shape; without it the first batch traces a
        shape-specific graph and the second a relaxed one (~200 MiB more peak memory)."""
        self.model = model
        self.optimizer = optimizer
        self.params = params
        self.strategy = strategy
        self.seed = seed
        self.loss_scale = loss_scale  # float16 only
        self.moving_average = moving_average  # updated by the loop after each applied step
        if batch_spec is None:
            self._step = tf.function(self._cross_replica_step, reduce_retracing=True)
        else:
            signature = [tuple([batch_spec] * micro_batches)]
            self._step = tf.function(self._cross_replica_step, input_signature=signature)
        # XLA compiles the forward/backward only: the LazyAdam update uses tf.unique.
        self._gradients = tf.function(self._micro_batch_gradients, jit_compile=jit_compile)

    def step(self, micro_batches: list) -> dict:
        """micro_batches: one (distributed) batch dict per accumulation step.

        Returns the all-reduced sums of the loss terms plus ``grad_norm`` and ``finite`` (whether
        the update was applied), as tensors: reading them is the caller's only host sync.
        """
        return self._step(tuple(micro_batches))

    def _cross_replica_step(self, micro_batches):
        outputs = self.strategy.run(self._replica_step, args=micro_batches)
        # Every replica returns the same all-reduced values: keep the first copy.
        outputs = tf.nest.map_structure(
            lambda x: self.strategy.experimental_local_results(x)[0], outputs
        )
        if self.loss_scale is not None:
            outputs["loss_scale"] = self.loss_scale.update(outputs["finite"])
        return outputs

    def _micro_batch_gradients(self, batch, normalizers, seed):
        """Forward and backward of one micro-batch -> (loss terms, gradients)."""
        with tf.GradientTape() as tape:
            logits, attention = self.model(batch, training=True, seed=seed)
            terms = losses.loss_terms(logits, attention, batch, self.params, training=True)
            objective = losses.objective(terms, normalizers, self.params)
            if self.loss_scale is not None:
                objective *= self.loss_scale.scale
        grads = tape.gradient(objective, self.model.trainable_variables)
        if self.loss_scale is not None:
            grads = optim.scale_gradients(grads, 1.0 / self.loss_scale.scale)
        return terms, grads

    def _replica_step(self, *batches):
        """One update on this replica; batches: its accumulation micro-batches (batch dicts)."""
        context = tf.distribute.get_replica_context()
        normalizers = None
        for batch in batches:
            normalizers = _add(normalizers, losses.batch_normalizers(batch, self.params))
        normalizers = context.all_reduce(SUM, normalizers)
        variables = self.model.trainable_variables
        grads, sums = None, None
        for index, batch in enumerate(batches):
            terms, step_grads = self._gradients(batch, normalizers, self._seed(index))
            grads = step_grads if grads is None else optim.accumulate(grads, step_grads)
            terms["source_tokens"] = tf.cast(tf.reduce_sum(batch["source_length"]), tf.float32)
            terms["target_tokens"] = tf.cast(tf.reduce_sum(batch["target_length"]), tf.float32)
            terms["micro_batches"] = tf.constant(1.0)
            sums = _add(sums, terms)
        grads = context.all_reduce(SUM, grads)
        sums = context.all_reduce(SUM, sums)
        grad_norm = optim.global_norm(grads)
        finite = tf.math.is_finite(grad_norm)
        for value in sums.values():
            finite = tf.logical_and(finite, tf.math.is_finite(value))
        clipnorm = self.params.optimizer_params.clipnorm
        global_clipnorm = self.params.clip_gradients or self.params.optimizer_params.global_clipnorm
        if global_clipnorm:
            grads, _ = optim.clip_by_global_norm(grads, global_clipnorm)
        if clipnorm is not None:
            grads = optim.clip_by_norm(grads, clipnorm)
        self.optimizer.apply_gradients(zip(grads, variables), apply=finite)
        return {**sums, "grad_norm": grad_norm, "finite": finite}

    def _seed(self, micro_batch: int):
        """Stateless dropout seed: a function of (seed, step, replica, micro-batch) only."""
        replica = tf.distribute.get_replica_context().replica_id_in_sync_group
        step = tf.cast(self.optimizer.iterations, tf.int32)
        mixed = step * 1009 + tf.cast(replica, tf.int32) * 31 + micro_batch
        return tf.stack([tf.constant(self.seed, tf.int32), mixed])


def _is_chief(strategy) -> bool:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    return resolver.task_type in ("chief", None) or (
        resolver.task_type == "worker" and resolver.task_id == 0
    )


def _datasets(config, strategy, corpus, skip_batches: int):
    """Per-replica batch iterator; on resume it skips the batches already trained on, so that a
    restarted run sees the same batches as an uninterrupted one."""

    def dataset_fn(context):
        dataset = data.train_dataset(
            corpus,
            config.train,  # batch_size is per replica, as in OpenNMT-tf
            input_context=context,
            with_alignment=bool(config.params.guided_alignment_type),
            files_weights=config.data.train_files_weights,
        )
        return dataset.skip(skip_batches) if skip_batches else dataset

    return iter(strategy.distribute_datasets_from_function(dataset_fn))


def train(
    config: cfg.Config,
    num_devices: int = 1,
    checkpoint_path: str | None = None,
    continue_from_checkpoint: bool = False,
) -> None:
    """``seqtrain train``: validate the data, then train until max_step (or early stopping);
    then average the last ``train.average_last_checkpoints`` checkpoints into model_dir/avg.

    checkpoint_path: start from this model (see seqtrain.warmstart) unless model_dir holds a
    checkpoint. The chief holds model_dir's lock for the whole run (a second run refuses to start).
    """
    strategy = make_strategy(num_devices, config.train.worker_timeout)
    chief = _is_chief(strategy)
    source = warmstart.initial_checkpoint(config, checkpoint_path, continue_from_checkpoint)
    os.makedirs(config.model_dir, exist_ok=True)
    with runguard.RunLock(config.model_dir) if chief else contextlib.nullcontext():
        _train(config, strategy, chief, source, continue_from_checkpoint)
        if chief and config.train.average_last_checkpoints:
            path = checkpoints.average_checkpoints(
                config, max_count=config.train.average_last_checkpoints
            )
            logger.info("Averaged checkpoint: %s", path)


def _train(config: cfg.Config, strategy, chief: bool, source: str | None, full: bool) -> None:
    """source: the checkpoint to start from when model_dir has none; full: all of its state."""
    corpus = data.load_corpus(config, "train")  # validates all three files first
    if chief:  # before any step: a changed model or vocabulary is an error on resume
        runguard.check_resume(config, resuming=bool(checkpoints.candidates(config.model_dir)))
    dtype = compute_dtype(config.train.mixed_precision)
    with strategy.scope():
        model = build_model(config, dtype)
        optimizer = make_optimizer(config.params)
        optimizer.build(model.trainable_variables)
        loss_scale = optim.DynamicLossScale() if dtype == tf.float16 else None
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer)
    if loss_scale is not None:
        checkpoint.loss_scale = loss_scale
    keep = max(config.train.keep_checkpoint_max, config.train.average_last_checkpoints)
    saver = Saver(checkpoint, config.model_dir, keep, chief=chief)
    started = warmstart.restore(saver, model, optimizer, config, source, full)
    step = int(optimizer.iterations.numpy())
    if getattr(strategy, "cluster_resolver", None) is not None:
        runguard.check_same_step(strategy, step)
    max_step = config.train.max_step
    if max_step and step >= max_step:
        logger.info("Training already reached max_step = %d; nothing to do", max_step)
        return
    accum = accumulation_steps(config.train, strategy.num_replicas_in_sync)
    logger.info(
        "Strategy %s: %d replica(s), %d accumulation step(s), %s parameters",
        type(strategy).__name__,
        strategy.num_replicas_in_sync,
        accum,
        f"{sum(v.shape.num_elements() for v in model.trainable_variables):,}",
    )
    batches = _datasets(
        config, strategy, corpus, skip_batches=step * accum if started.resumed else 0
    )
    logger.info("Compute dtype %s, XLA %s", dtype.name, "on" if config.train.jit_compile else "off")
    trainer = Trainer(
        model, optimizer, config.params, strategy, seed=config.train.seed, loss_scale=loss_scale,
        jit_compile=config.train.jit_compile, batch_spec=batches.element_spec, micro_batches=accum,
        moving_average=started.moving_average,
    )  # fmt: skip
    summaries = tf.summary.create_file_writer(config.model_dir) if chief else None
    writer = runlog.MetricsWriter(config.model_dir, summaries)
    evaluator = None
    if config.eval.steps and config.data.eval_features_file:
        from seqtrain.evaluate import Evaluator  # decoding and sacrebleu: only when evaluating

        evaluator = Evaluator.for_training(config, model, chief=chief)
    _guarded_loop(config, trainer, batches, accum, saver, writer, evaluator)


def _guarded_loop(config, trainer, *loop_args) -> None:
    """``_loop``, stopping cleanly on signals (one worker), with clear errors for lost peers."""
    single = getattr(trainer.strategy, "cluster_resolver", None) is None
    # Workers of a multi-worker run would notice a signal at different steps and then wait for
    # each other forever in the collective save: there, signals keep their default action.
    with runguard.StopRequest() if single else contextlib.nullcontext() as stop:
        try:
            _loop(config, trainer, *loop_args, stop=stop)
        except PEER_LOST as e:
            if single:
                raise
            raise SeqtrainError(
                f"a collective operation failed ({checkpoints.reason(e)}): another worker died "
                "(TensorFlow's heartbeat check) or did not answer within train.worker_timeout = "
                f"{config.train.worker_timeout:g} s; restart all workers: they resume from the "
                "last checkpoint"
            ) from e


def _loop(config, trainer, batches, accum, saver, writer, evaluator, stop=None) -> None:
    """Runs updates until max_step; logs, evaluates and checkpoints on their periods; on a
    stop request (SIGINT/SIGTERM) saves and raises ``Interrupted`` after the current step."""
    train, optimizer = config.train, trainer.optimizer
    step = int(optimizer.iterations.numpy())
    last_saved, progress = step, Progress()
    while train.max_step is None or step < train.max_step:
        if stop is not None and stop.signal is not None:
            _interrupted(saver, step, last_saved, stop.signal)
        try:
            micro_batches = [next(batches) for _ in range(accum)]
        except StopIteration:  # train.single_pass: the data is used up
            logger.info("End of the training data (train.single_pass) after step %d", step)
            if last_saved != step:
                saver.save(step)
            break
        outputs = trainer.step(micro_batches)
        if not bool(outputs["finite"]):  # one scalar per step: cheap next to the step itself
            if "loss_scale" in outputs and float(outputs["loss_scale"]) >= 1.0:
                logger.info("Step skipped (float16 overflow); loss scale lowered")
                continue
            raise SeqtrainError(
                f"training diverged: the loss or the gradient is NaN/Inf at step {step + 1}; "
                "that update was not applied, so the weights stay finite. The last checkpoint "
                f"(step {last_saved}) in {config.model_dir} is intact: lower "
                "params.learning_rate, set params.clip_gradients, or check the data"
            )
        progress.add(outputs)
        step += 1
        if trainer.moving_average is not None:
            trainer.moving_average.update()
        if step % train.save_summary_steps == 0 or step == train.max_step:
            lr = float(optimizer.learning_rate_at(step - 1))
            record = progress.record(step, lr, config.params)
            writer.write("train", step, record, runlog.format_train_line(record))
        if step % train.save_checkpoints_steps == 0 or step == train.max_step:
            saver.save(step)
            last_saved = step
        if evaluator and step % config.eval.steps == 0:
            with saver.swap():  # evaluates (and exports) the moving average, if any
                metrics = evaluator(step)
                images = evaluator.alignment_images(step)
            writer.write("eval", step, metrics, runlog.format_eval_line(step, metrics))
            writer.write_images(step, images)
            if evaluator.should_stop():
                logger.info("Early stopping at step %d: %s", step, evaluator.stop_reason)
                if last_saved != step:
                    saver.save(step)
                break


def _interrupted(saver, step: int, last_saved: int, signum: int) -> None:
    """Saves the current step (unless just saved) and raises ``Interrupted``."""
    saved = f"checkpoint {saver.save(step)}" if step != last_saved else "its checkpoint"
    raise Interrupted(
        f"stopped by {signal.Signals(signum).name} after step {step}; {saved} holds it: run the "
        "same command to resume",
        signum,
    )
