"""A training run: `setup` builds everything once (a `TrainRun`), `run` steps through it.

  run = setup(cfg, workdir)     # mesh and rules, tokenizer, data, variables, optimizer state,
  history = run_steps(run)      # compiled step, checkpointer (restored), writer, preemption
  final = finish(run)           # the final evaluation and captions; `train_and_evaluate` does all

Preemption: a SIGTERM flag in one process; in a multi-host job JAX's preemption service, so that
all hosts save at the same step.
"""
from __future__ import annotations

import dataclasses
import logging
import signal
import tempfile
import time
from typing import Any

import grain
import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from flamingo_jax import config_check, paths, workdir as workdir_lib
from flamingo_jax.data import batch as batch_lib, pipeline, tokenizer as tok_lib
from flamingo_jax.models import rules
from flamingo_jax.train import checkpoint, goodput, image_buffers, metrics, optimizer, prefetch, step as step_lib
from flamingo_jax.train import state as state_lib, validation as validation_lib
from flamingo_jax.train.state import TrainState
from flamingo_jax.errors import NonFiniteError  # noqa: F401 (re-exported)
from flamingo_jax.train.step import NonFinitePolicy
from flamingo_jax.weights import load


class _Preemption:
  """Whether to save and exit after a step because of a preemption notice (SIGTERM).

  In a single process, a SIGTERM handler sets a flag. In a multi-host job the hosts must agree
  on the step to save at, whichever of them got the notice: JAX's preemption service (which
  catches SIGTERM itself, so no Python handler is installed) picks the step.
  """

  def __init__(self, ckpt: checkpoint.Tiers):
    self._ckpt = ckpt
    self._flag = False
    self._local = jax.process_count() == 1
    if self._local:
      self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    logging.warning("SIGTERM received: saving a checkpoint and exiting")
    self._flag = True

  def requested(self, step: int) -> bool:
    """Called after every step, by every host."""
    return self._flag if self._local else self._ckpt.reached_preemption(step)

  def restore(self):
    if self._local:
      signal.signal(signal.SIGTERM, self._previous)


@dataclasses.dataclass
class TrainRun:
  """Everything a run reads while it steps, built once by `setup`."""
  cfg: ml_collections.ConfigDict
  workdir: str
  mesh: Mesh
  rules: tuple
  tokenizer: Any
  iterators: dict[str, grain.DatasetIterator]
  frozen: Any
  state: TrainState
  start_step: int
  step_fn: Any
  ckpt: checkpoint.Tiers
  writer: Any
  preemption: _Preemption
  non_finite: NonFinitePolicy
  packing: dict  # {dataset: (groups, per_group) or None}: train/image_buffers.py
  validation: validation_lib.Validation | None  # None: no held-out shards
  account: goodput.Account  # where the run's time went, over its restarts
  validated: list[dict[str, float]] = dataclasses.field(default_factory=list)  # each validation's losses
  # Skip counts up to the batches last taken (the reader thread's counter runs ahead of them).
  skipped: dict[str, int] = dataclasses.field(default_factory=dict)

  def context(self):
    """The mesh and its logical-axis rules, entered once around the whole run."""
    return rules.activate(self.mesh, self.rules)


def setup(cfg: ml_collections.ConfigDict, workdir: str, started: float | None = None) -> TrainRun:
  """Builds a run: mesh, tokenizer, data, variables, optimizer state (restored from `workdir`'s
  latest checkpoint if there is one), the compiled step, checkpointer, writer, preemption, and
  the goodput account (its start-up counted from `started`, default now)."""
  started = time.time() if started is None else started
  _check_config(cfg)
  workdir = paths.resolve(workdir)
  mesh, rule_set = rules.make_mesh(cfg.mesh), rules.logical_rules(cfg)
  print(f"mesh {rules.describe(mesh)} ({jax.device_count()} {jax.devices()[0].platform} devices, "
        f"{jax.process_count()} process{'es' if jax.process_count() > 1 else ''})", flush=True)
  if cfg.checkpoint.base:  # a missing base checkpoint is reported before any data is read
    load.stored_config(cfg.checkpoint.base)
  tok = tok_lib.load_tokenizer(cfg.tokenizer_path)
  tok_lib.check_tokenizer(tok, cfg.model, cfg.tokenizer_path)
  if jax.process_index() == 0:
    pipeline.ensure_synthetic_shards(cfg.data)
  multihost_utils.sync_global_devices("synthetic shards written")
  iters, _ = pipeline.make_train_iterators(cfg.data, tok, process_index=jax.process_index(),
                                          process_count=jax.process_count())
  validation = validation_lib.Validation.from_config(cfg, tok, mesh)
  variables = load.initial_variables(cfg, mesh, rule_set)
  tx = optimizer.make_optimizer(cfg.optim)
  shardings = state_lib.state_shardings(variables["params"], tx, mesh)
  with rules.activate(mesh, rule_set):
    state = state_lib.create_on_mesh(variables["params"], tx, shardings)
  ckpt = checkpoint.Tiers(workdir, cfg.checkpoint, data_names=tuple(iters))
  # The model state and the data positions it belongs to, together; a damaged step set aside.
  start, restored, tier = ckpt.restore_latest(checkpoint.abstract_like(state), iters)
  if start is not None:
    state = restored
    print(f"Resumed from step {start} in {tier.directory}", flush=True)
  non_finite = NonFinitePolicy.from_config(cfg.train)
  recorded = workdir_lib.read_run_config(workdir) if start is not None else None
  packing = image_buffers.plan(cfg.data, iters, mesh.shape["data"] * mesh.shape["fsdp"], jax.process_count(),
                               recorded and {n: recorded.data[n].get("image_buffer", 0) for n in iters})
  cfg = _with_image_buffers(cfg, image_buffers.resolved(cfg.data, packing))
  workdir_lib.write_run_config(workdir, cfg)  # local or gs://: what generate/evaluate/export read
  for name, p in packing.items():
    if p:
      print(f"{name}: the vision tower runs on {p[0] * p[1]} images per batch (data.{name}.image_buffer; "
            f"{cfg.data[name].batch_size * batch_lib.image_slots(name, cfg.data)} slots)", flush=True)
  step_fn = step_lib.jit_train_step(cfg, mesh, shardings, non_finite, packing)
  account = goodput.Account.open(workdir, started, start)
  if account.restarts:
    print(f"So far: {account.summary()}", flush=True)
  account.mark(int(start or 0))  # start-up is over: recorded even if this process dies compiling
  return TrainRun(cfg, workdir, mesh, rule_set, tok, iters, variables["frozen"], state,
                  int(start or 0), step_fn, ckpt, metrics.make_writer(workdir), _Preemption(ckpt),
                  non_finite, packing, validation, account)


def _check_config(cfg: ml_collections.ConfigDict) -> None:
  """Every problem of the config against this job's devices, before any work."""
  config_check.check(cfg, jax.device_count(), jax.process_count(), len(rules.slices_of(jax.devices())))


def _with_image_buffers(cfg: ml_collections.ConfigDict, sizes: dict[str, int]) -> ml_collections.ConfigDict:
  """The config as the run records it: the image buffers it uses (derived ones resolved) and its
  base checkpoint's absolute path (tools read the workdir from anywhere)."""
  cfg = cfg.copy_and_resolve_references()
  with cfg.unlocked():
    for name, size in sizes.items():
      cfg.data[name].image_buffer = size
    if cfg.checkpoint.base:
      cfg.checkpoint.base = paths.resolve(cfg.checkpoint.base)
  return cfg


def next_batches(run: TrainRun) -> dict[str, dict[str, jax.Array]]:
  """The next global batch of every dataset, checked against the batch contract."""
  out = {}
  for name, it in run.iterators.items():
    local = next(it)
    image_buffers.check(name, local["image_mask"], run.packing[name], jax.process_count())
    out[name] = rules.global_batch(local, run.mesh)
    batch_lib.check_batch(name, out[name], batch_lib.batch_shapes(name, run.cfg.data))
  return out


def positions_now(run: TrainRun) -> dict:
  """Each data iterator's state: where it would read next."""
  return {name: it.get_state() for name, it in run.iterators.items()}


def run_steps(run: TrainRun) -> list[dict[str, float]]:
  """Steps until `train.num_steps`; returns the logged metrics. The final state is `run.state`.

  The host never waits for the device between steps: step N's metrics (its non-finite check and
  its log line) are read after step N+1 is dispatched, and the next batches are read and put on
  the device in a background thread (train/prefetch.py) while the step runs. A step whose state is saved is checked
  first, so nothing of a non-finite step is ever checkpointed.
  """
  cfg, data = run.cfg, run.cfg.data
  samples = sum(data[n].batch_size for n in run.iterators)
  tokens = sum(data[n].batch_size * data[n].max_tokens for n in run.iterators)
  history, t0, step, pending = [], time.time(), run.start_step, None
  throughput = metrics.Throughput(samples, tokens, metrics.step_flops(cfg, run.packing).total, start_step=step)
  hooks = metrics.progress_hooks(cfg, run.workdir, run.writer)
  watch = step_lib.RecompileWatch(run.step_fn)
  if step >= cfg.train.num_steps:  # a finished run restarted: no reader (nor its workers)
    return history
  with run.context(), prefetch.Prefetch(lambda: next_batches(run), lambda: positions_now(run)) as reader:
    while step < cfg.train.num_steps:
      # The last step's batches are released before the next are taken: taking them wakes the
      # reader thread, which then holds the GIL while this thread would free them, and the
      # wait below would count the reader's next read as waiting for input (it was 3-8% of the
      # tiny run's wall time with the reader's queue full at 397 of 400 steps).
      batches = None
      waiting = time.perf_counter()
      run.account.switch("input_wait")
      batches = reader.next()
      waited = time.perf_counter() - waiting
      run.skipped = {k: v for state in reader.states().values() for k, v in state["skipped"].items()}
      throughput.waited_for_input(waited)
      run.account.work()
      new_state, m = run.step_fn(run.state, run.frozen, batches)
      watch(step + 1, {"state": run.state, "frozen": run.frozen, "batches": batches})
      if pending:  # the previous step, which has finished or nearly
        history += _finish_step(run, *pending, throughput, t0)
      step += 1
      run.state, pending = new_state, (step, m)
      for hook in hooks:
        hook(step)
      preempted = run.preemption.requested(step)
      tier = run.ckpt.due(step, cfg.train.num_steps, preempted)
      if tier:
        run.non_finite.check(step, m, force=True)  # before anything of the step is saved
      every = cfg.train.validate_every
      # A validation step validates even when preempted (train.validation_batches bound it): a run
      # resumed from its checkpoint would not validate it again.
      if run.validation and every and (step % every == 0 or step == cfg.train.num_steps):
        _validate(run, step)
      if tier:
        # The step's validation, checkpoint, then its log line: a run resumed from this checkpoint
        # redoes none of them, and the next step's log is one step's time after this one's.
        _save(run, tier, step, reader.positions(), preempted)
        history += _finish_step(run, *pending, throughput, t0, checked=True)
        pending = None
        if preempted:
          _exit_preempted(run, step)
  return history


def _save(run: TrainRun, tier: checkpoint.Checkpointer, step: int, positions: dict, preempted: bool) -> None:
  """Starts saving step `step` in `tier` (its blocking part counted as checkpoint time)."""
  run.account.switch("checkpoint")
  committed = run.ckpt.save(tier, step, run.state, positions, force=preempted)
  run.account.mark(step, checkpoint_before=committed)
  run.account.work()


def _exit_preempted(run: TrainRun, step: int) -> None:
  """After a preemption notice: the step's checkpoint written whole, the event recorded, exit 0."""
  run.account.record("preemption", step=step, process=jax.process_index())
  run.account.switch("checkpoint")
  run.ckpt.wait()
  print(f"Preempted: checkpoint for step {step} written to {run.ckpt.directory}", flush=True)
  raise SystemExit(0)


def _validate(run: TrainRun, step: int) -> None:
  """The validation loss of the weights after `step`: logged, printed and kept in `run.validated`."""
  run.account.switch("validation")
  out = run.validation.losses(run.state.params, run.frozen)
  run.writer.write_scalars(step, {**out, **{f"val/skipped/{k}": float(v) for k, v in run.validation.skipped.items()}})
  parts = [f"total {out['val/loss']:.4f}"] if "val/loss" in out else []
  parts += [f"{name} {out[f'val/loss_{name}']:.4f}" for name in run.iterators if f"val/loss_{name}" in out]
  print(f"step {step}/{run.cfg.train.num_steps}  validation loss (held-out) {'  '.join(parts)}", flush=True)
  run.validated.append({"step": step, **out})
  run.account.work()


def _finish_step(run: TrainRun, step: int, m: dict, throughput, t0: float,
                 checked: bool = False) -> list[dict[str, float]]:
  """A dispatched step's host side: the non-finite check (raises before anything of a stopped
  step is saved; not again when `checked`) and, every `log_every` steps, its log line."""
  if not checked:
    run.non_finite.check(step, m)
  if step % run.cfg.train.log_every == 0 or step == run.cfg.train.num_steps:
    return [_log(run, step, m, throughput, t0)]
  return []


def _log(run: TrainRun, step: int, m: dict, throughput, t0: float) -> dict[str, float]:
  """Writes one step's scalars and prints its progress line."""
  cfg = run.cfg
  logged = {**metrics.scalars(m), **throughput(step), "lr": float(optimizer.schedule(cfg.optim)(step - 1)),
            **{f"skipped/{k}": float(v) for k, v in run.skipped.items()}, **run.non_finite.scalars()}
  logged.pop("finite", None)
  logged.update(run.account.scalars())
  logged["step"] = step
  run.writer.write_scalars(step, logged)
  run.writer.flush()  # on disk before the account counts the step: a kill loses neither alone
  run.account.mark(step)
  gates = np.mean([v for k, v in logged.items() if k.startswith("gates/attn_gate")])
  losses = "".join(f"  {name} {logged[f'loss_{name}']:.4f}" for name in run.iterators)
  print(f"step {step}/{cfg.train.num_steps}  loss {logged['loss']:.4f}{losses}  mean tanh(attn_gate) "
        f"{gates:+.4f}  {logged['perf/samples_per_s']:.1f} samples/s  input wait "
        f"{100 * logged['perf/input_wait_fraction']:.1f}%  [{time.time() - t0:.0f}s]", flush=True)
  return logged


@dataclasses.dataclass
class TrainResult:
  """What a run logged (one dict per logged step), its validation losses (one dict per validation)
  and its final real-vs-blank-image evaluation on held-out LAION (empty without held-out shards)."""
  history: list[dict[str, float]]
  final: dict[str, float]
  state: Any
  validated: list[dict[str, float]] = dataclasses.field(default_factory=list)


def train_and_evaluate(cfg: ml_collections.ConfigDict, workdir: str, started: float | None = None) -> TrainResult:
  """Trains for `cfg.train.num_steps`, resuming from `workdir` if it holds a checkpoint; its
  goodput account (start-up from `started`, default now) is written and printed however it ends.
  The job holds the workdir's lease (process 0) from before it writes anything until it exits:
  a second live job on the same workdir is refused, naming the holder."""
  _check_config(cfg)  # a bad config writes nothing, not even the lease
  lease = workdir_lib.Lease(workdir).acquire() if jax.process_index() == 0 else None
  try:
    return _train_and_evaluate(cfg, workdir, started)
  finally:
    if lease:
      lease.release()


def _train_and_evaluate(cfg: ml_collections.ConfigDict, workdir: str, started: float | None) -> TrainResult:
  run = setup(cfg, workdir, started)
  try:
    history = run_steps(run)
    run.account.switch("validation")  # while the last checkpoint is written
    final = evaluate_image_dependence(run)
    if cfg.train.get("final_captions", 0) and jax.process_count() == 1:  # (a tiny run's show)
      caption_held_out_images(run, cfg.train.final_captions)
  finally:
    run.preemption.restore()
    run.account.switch("checkpoint")
    run.ckpt.close()
    run.account.write()
    print(run.account.summary(), flush=True)
  run.writer.write_scalars(int(run.state.step), {**final, **run.account.scalars()})
  run.writer.flush()
  workdir_lib.write_finished(run.workdir, int(run.state.step), final)  # the last thing written
  print(f"TensorBoard logs: {run.workdir}   Orbax checkpoints: {run.ckpt.directory}", flush=True)
  return TrainResult(history, final, run.state, run.validated)


def evaluate_image_dependence(run: TrainRun) -> dict[str, float]:
  """Loss on the held-out captioned images (LAION) with their real images and with blank images
  (empty without held-out pairs): a model that learned to look does much better with the real ones."""
  if not run.validation:
    return {}
  with run.context():
    out = run.validation.image_dependence(run.state.params, run.frozen)
  if out:
    print(f"held-out caption loss: real images {out['eval/loss_real_images']:.4f}, blank images "
          f"{out['eval/loss_blank_images']:.4f}", flush=True)
  return out


def caption_held_out_images(run: TrainRun, n: int) -> list[tuple[str, str, str]]:
  """Captions `n` synthetic images the run never saw (written to `workdir/samples/`) with the
  trained model and prints each next to its true caption; returns (path, true, generated)."""
  from flamingo_jax.data import image_preprocess, synthetic  # pylint: disable=g-import-not-at-top
  from flamingo_jax.generate import DecodeSettings, Sampler  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  model_cfg = run.cfg.model
  out_dir = tempfile.mkdtemp() if paths.is_remote(run.workdir) else f"{run.workdir}/samples"
  pairs = synthetic.write_images(out_dir, n, image_size=model_cfg.vision.image_size)
  pixels = np.stack([image_preprocess.clip_preprocess(Image.open(p).convert("RGB"),
                                                      model_cfg.vision.image_size) for p, _ in pairs])
  ids = np.asarray([run.tokenizer(tok_lib.MEDIA_TOKEN, add_special_tokens=False)["input_ids"]] * n, np.int32)
  sampler = Sampler(model_cfg, {"params": run.state.params, "frozen": run.frozen}, mesh=run.mesh, rules=run.rules)
  out = sampler.generate(pixels[:, None, None], ids, np.ones_like(ids), DecodeSettings(
      max_new_tokens=16, eos_token_ids=(model_cfg.eoc_token_id,), pad_token_id=model_cfg.pad_token_id))
  texts = run.tokenizer.batch_decode(out[:, ids.shape[1]:].tolist(), skip_special_tokens=True)
  rows = [(p, c, t.strip()) for (p, c), t in zip(pairs, texts)]
  print("held-out images, true caption -> the trained model's:")
  for path, true, generated in rows:
    print(f"  {path}: {true!r} -> {generated!r}")
  return rows
