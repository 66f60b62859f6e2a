"""The training loop, as small named stages: mesh, data, state, step, checkpoint, run, eval."""
from __future__ import annotations

import dataclasses
import logging
import os
import signal
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec

from flamingo_jax.data import pipeline, tokenizer
from flamingo_jax.models import rules, shapes
from flamingo_jax.train import checkpoint, metrics, optimizer, step as step_lib
from flamingo_jax.train.state import TrainState


class NonFiniteError(FloatingPointError):
  """A non-finite loss or gradient; raised before anything of that step is checkpointed."""


class _Preemption:
  """Whether to save and exit after a step because of a preemption notice (SIGTERM).

  In a single process, a SIGTERM handler sets a flag. In a multi-host job the hosts must agree
  on the step to save at, whichever of them got the notice: JAX's preemption service (which
  catches SIGTERM itself, so no Python handler is installed) picks the step.
  """

  def __init__(self, ckpt: checkpoint.Checkpointer):
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


def setup_mesh(cfg):
  mesh = rules.make_mesh(cfg.mesh)
  return mesh, rules.logical_rules(cfg)


def load_frozen_and_params(cfg, mesh, rule_set) -> tuple[dict, Any, Any]:
  """Initial variables, placed on the mesh: the base checkpoint's, or seeded random ones."""
  abstract = shapes.abstract_variables(cfg.model)
  shardings = nn.unbox(rules.variable_shardings(abstract, mesh, rule_set))
  if cfg.checkpoint.base:
    from flamingo_jax.weights import orbax_io  # pylint: disable=g-import-not-at-top
    _, variables = orbax_io.load_base_checkpoint(cfg.checkpoint.base)
    # Stored and fed in the config's dtypes: frozen weights in frozen_dtype (bf16 on TPU).
    dtypes = {"params": jnp.dtype(cfg.model.param_dtype), "frozen": jnp.dtype(cfg.model.frozen_dtype)}
    variables = {c: jax.tree_util.tree_map(lambda x, d=dtypes[c]: np.asarray(x, d), v)
                 for c, v in variables.items()}
    variables = jax.device_put(variables, shardings)
  else:
    with mesh, nn.logical_axis_rules(rule_set):
      init = jax.jit(lambda rng: nn.unbox(shapes.init_variables(cfg.model, rng)),
                     out_shardings=shardings)
      variables = init(jax.random.PRNGKey(cfg.seed))
  rules.check_collections(variables)
  return variables, shardings, abstract


def global_batch(local: dict[str, np.ndarray], mesh) -> dict[str, jax.Array]:
  """Process-local numpy batches -> global arrays sharded over (data, fsdp)."""
  return {k: jax.make_array_from_process_local_data(rules.batch_sharding(mesh, v.ndim), v)
          for k, v in local.items()}


def next_batches(iters) -> dict[str, dict[str, np.ndarray]]:
  return {name: {k: v for k, v in next(it).items() if k != "image_mask"} for name, it in iters.items()}


@dataclasses.dataclass
class TrainResult:
  """What a run logged (one dict per logged step) and its final real-vs-blank-image evaluation."""
  history: list[dict[str, float]]
  final: dict[str, float]
  state: Any


def train_and_evaluate(cfg: ml_collections.ConfigDict, workdir: str) -> TrainResult:
  """Trains for `cfg.train.num_steps`, resuming from `workdir` if it holds a checkpoint."""
  os.makedirs(workdir, exist_ok=True)
  mesh, rule_set = setup_mesh(cfg)
  tok = tokenizer.load_tokenizer(cfg.tokenizer_path)
  if jax.process_index() == 0:
    pipeline.ensure_synthetic_shards(cfg.data)
  multihost_utils.sync_global_devices("synthetic shards written")
  iters, skips = pipeline.make_train_iterators(cfg.data, tok, process_index=jax.process_index(),
                                               process_count=jax.process_count())
  variables, shardings, _ = load_frozen_and_params(cfg, mesh, rule_set)
  frozen = variables["frozen"]
  tx = optimizer.make_optimizer(cfg.optim)
  with mesh, nn.logical_axis_rules(rule_set):
    state = jax.jit(lambda p: TrainState.create(p, tx))(variables["params"])
  del variables
  ckpt = checkpoint.Checkpointer(workdir, cfg.checkpoint.keep, data_names=tuple(iters))
  start = ckpt.latest_step()
  if start is not None:  # The model state and the data positions it belongs to, together.
    state = ckpt.restore(start, checkpoint.abstract_like(state), iters)
    print(f"Resumed from step {start} in {ckpt.directory}", flush=True)
  state_sharding = jax.tree_util.tree_map(lambda x: x.sharding, state)
  step_fn = jax.jit(step_lib.make_train_step(cfg, tx), donate_argnums=0,
                    out_shardings=(state_sharding, NamedSharding(mesh, PartitionSpec())))
  writer = metrics.make_writer(workdir)
  preempt = _Preemption(ckpt)
  history = []
  try:
    history = _run(cfg, workdir, tx, mesh, rule_set, state, frozen, iters, skips, step_fn, ckpt, writer, preempt,
                   int(start or 0))
    state = history.pop()
  finally:
    preempt.restore()
    ckpt.close()
  final = evaluate_image_dependence(cfg, mesh, rule_set, state.params, frozen, tok)
  writer.write_scalars(int(state.step), final)
  writer.flush()
  print(f"TensorBoard logs: {workdir}   Orbax checkpoints: {ckpt.directory}", flush=True)
  return TrainResult(history, final, state)


def _run(cfg, workdir, tx, mesh, rule_set, state, frozen, iters, skips, step_fn, ckpt, writer, preempt, start):
  """The step loop. Returns the logged metrics, followed by the final state."""
  samples = cfg.data.laion.batch_size + cfg.data.mmc4.batch_size
  tokens = (cfg.data.laion.batch_size * cfg.data.laion.max_tokens
            + cfg.data.mmc4.batch_size * cfg.data.mmc4.max_tokens)
  history, throughput, t0 = [], None, time.time()
  skip = step_lib.non_finite_policy(cfg) == "skip"
  skipped = in_a_row = 0  # Updates dropped for non-finite values (train.non_finite="skip").
  step = start
  hooks = metrics.progress_hooks(cfg, workdir, writer)
  with mesh, nn.logical_axis_rules(rule_set):
    while step < cfg.train.num_steps:
      batches = {k: global_batch(v, mesh) for k, v in next_batches(iters).items()}
      if throughput is None:
        throughput = metrics.Throughput(samples, tokens, metrics.step_flops(cfg, tx, batches))
      new_state, m = step_fn(state, frozen, batches)
      step += 1
      if cfg.train.check_finite_every and step % cfg.train.check_finite_every == 0:
        if not bool(m["finite"]):
          what = f"Non-finite loss or gradient at step {step} (loss {float(m['loss'])}, grad norm " \
                 f"{float(m['grad_norm'])})"
          if not skip:
            raise NonFiniteError(f"{what}; no checkpoint was written for it")
          skipped, in_a_row = skipped + 1, in_a_row + 1
          print(f"{what}: update skipped ({skipped} so far)", flush=True)
          if in_a_row > cfg.train.max_skipped_in_a_row:
            raise NonFiniteError(f"{what}: {in_a_row} updates in a row skipped, more than "
                                 f"train.max_skipped_in_a_row={cfg.train.max_skipped_in_a_row}; stopping")
        else:
          in_a_row = 0
      state = new_state
      for hook in hooks:
        hook(step)
      if step % cfg.train.log_every == 0 or step == cfg.train.num_steps:
        logged = {**metrics.scalars(m), **throughput(step), "lr": float(optimizer.schedule(cfg.optim)(step - 1)),
                  **{f"skipped/{k}": float(v) for k, v in skips.counts.items()}}
        if skip:
          logged["skipped/non_finite_steps"] = float(skipped)
        logged.pop("finite", None)
        logged["step"] = step
        writer.write_scalars(step, logged)
        history.append(logged)
        gates = np.mean([v for k, v in logged.items() if k.startswith("gates/attn_gate")])
        print(f"step {step}/{cfg.train.num_steps}  loss {logged['loss']:.4f}  mmc4 "
              f"{logged['loss_mmc4']:.4f}  laion {logged['loss_laion']:.4f}  mean tanh(attn_gate) "
              f"{gates:+.4f}  {logged['perf/samples_per_s']:.1f} samples/s  "
              f"[{time.time() - t0:.0f}s]", flush=True)
      if preempt.requested(step):
        ckpt.save(step, state, iters, force=True)
        ckpt.wait()
        print(f"Preempted: checkpoint for step {step} written to {ckpt.directory}", flush=True)
        raise SystemExit(0)
      if step % cfg.checkpoint.every_steps == 0 or step == cfg.train.num_steps:
        ckpt.save(step, state, iters)
  return history + [state]


def evaluate_image_dependence(cfg, mesh, rule_set, params, frozen, tok, batches: int = 4) -> dict[str, float]:
  """Loss on held-out LAION batches with their real images and with blank images: a model that
  learned to look does much better with the real ones."""
  held_out = cfg.data.copy_and_resolve_references()
  with held_out.unlocked():
    held_out.seed = cfg.data.seed + 1000
  iters, _ = pipeline.make_train_iterators(held_out, tok, process_index=jax.process_index(),
                                           process_count=jax.process_count())
  eval_fn = jax.jit(step_lib.make_eval_loss(cfg))
  real, blank = [], []
  with mesh, nn.logical_axis_rules(rule_set):
    for _ in range(batches):
      b = global_batch(next_batches({"laion": iters["laion"]})["laion"], mesh)
      r, z = eval_fn(params, frozen, b)
      real.append(float(r))
      blank.append(float(z))
  out = {"eval/loss_real_images": float(np.mean(real)), "eval/loss_blank_images": float(np.mean(blank))}
  print(f"held-out caption loss: real images {out['eval/loss_real_images']:.4f}, blank images "
        f"{out['eval/loss_blank_images']:.4f}", flush=True)
  return out
