"""Metric writing: clu writers (TensorBoard + console) and throughput/MFU bookkeeping."""
from __future__ import annotations

import time

import jax
import numpy as np

# Peak dense bf16 FLOP/s per chip, for MFU (fp32 on CPU is only a rough reference).
PEAK_FLOPS = {"tpu v5 lite": 197e12, "tpu v5e": 197e12, "tpu v4": 275e12, "tpu v5p": 459e12,
              "tpu v6 lite": 918e12, "nvidia h100": 989e12, "nvidia a100": 312e12}


def peak_flops_per_device() -> float | None:
  kind = jax.devices()[0].device_kind.lower()
  return next((v for k, v in PEAK_FLOPS.items() if k in kind), None)


def make_writer(workdir: str):
  """TensorBoard event files under workdir (process 0 only) plus console lines."""
  from clu import metric_writers  # pylint: disable=g-import-not-at-top  (pulls in TensorFlow)
  return metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)


def read_scalars(workdir: str) -> dict[str, dict[int, float]]:
  """Every scalar a run wrote to TensorBoard under `workdir`: {tag: {step: value}} (the last
  value written wins where a resumed run wrote a step again)."""
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  from tensorboard.util import tensor_util  # pylint: disable=g-import-not-at-top
  events = event_accumulator.EventAccumulator(workdir, size_guidance={event_accumulator.TENSORS: 0})
  events.Reload()
  return {tag: {e.step: float(tensor_util.make_ndarray(e.tensor_proto)) for e in events.Tensors(tag)}
          for tag in events.Tags()["tensors"]}


class Throughput:
  """samples/s, tokens/s, MFU and the share of wall time spent waiting for input, over the
  interval since the last call (OpenFlamingo logs the input wait as data_time)."""

  def __init__(self, samples_per_step: int, tokens_per_step: int, flops_per_step: float | None,
               peak_flops: float | None = None, start_step: int = 0):
    self.samples, self.tokens, self.flops = samples_per_step, tokens_per_step, flops_per_step
    self.peak = peak_flops or peak_flops_per_device()
    self.last_time, self.last_step = time.time(), start_step
    self.input_wait = 0.0

  def waited_for_input(self, seconds: float) -> None:
    self.input_wait += seconds

  def __call__(self, step: int) -> dict[str, float]:
    now = time.time()
    steps = max(step - self.last_step, 1)
    wall = max(now - self.last_time, 1e-9)
    dt = wall / steps
    out = {"perf/samples_per_s": self.samples / dt, "perf/tokens_per_s": self.tokens / dt,
           "perf/step_time_s": dt, "perf/input_wait_fraction": min(1.0, self.input_wait / wall),
           "perf/step_time_excluding_input_s": max(0.0, wall - self.input_wait) / steps}
    self.last_time, self.last_step, self.input_wait = now, step, 0.0
    if self.flops and self.peak:
      out["perf/mfu"] = self.flops / dt / (self.peak * jax.device_count())
    if self.flops:
      out["perf/tflops_per_s"] = self.flops / dt / 1e12
    return out


def program_flops(jitted, *args) -> float | None:
  """FLOPs of `jitted(*args)`: XLA's cost analysis of the lowered program, or the matrix-product
  FLOPs counted in its jaxpr where that is larger. The GPU backend counts no FLOPs for the dots
  it hands to cuBLAS (H100: 0 lowered, a small fraction compiled), so MFU would go missing there."""
  traced = jitted.trace(*args)
  cost = traced.lower().cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  return max((cost or {}).get("flops") or 0.0, jaxpr_matmul_flops(traced.jaxpr)) or None


def jaxpr_matmul_flops(jaxpr) -> float:
  """2·M·N·K summed over every dot_general and convolution in `jaxpr` (a ClosedJaxpr or Jaxpr),
  scan bodies counted once per iteration, the costliest branch of a cond, a while body once."""
  jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
  total = 0.0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "dot_general":
      (contract, _), (batch, _) = eqn.params["dimension_numbers"]
      lhs, rhs = (v.aval.shape for v in eqn.invars)
      total += 2.0 * np.prod(lhs, dtype=float) * np.prod(rhs, dtype=float) / max(
          np.prod([lhs[d] for d in contract], dtype=float) * np.prod([lhs[d] for d in batch], dtype=float), 1.0)
    elif name == "conv_general_dilated":
      out_features = eqn.invars[1].aval.shape[eqn.params["dimension_numbers"].rhs_spec[0]]
      total += 2.0 * np.prod(eqn.outvars[0].aval.shape, dtype=float) * (
          np.prod(eqn.invars[1].aval.shape, dtype=float) / out_features)
    elif name == "cond":
      total += max(jaxpr_matmul_flops(b) for b in eqn.params["branches"])
    else:
      inner = sum(jaxpr_matmul_flops(v) for v in eqn.params.values() if hasattr(v, "eqns") or
                  hasattr(getattr(v, "jaxpr", None), "eqns"))
      total += inner * (eqn.params["length"] if name == "scan" else 1)
  return total


def step_flops(cfg, batches, packing=None) -> float | None:
  """FLOPs of one training step, from XLA's cost analysis of the step lowered with the layers
  unrolled: a scanned stack would be counted once, not once per group."""
  from flamingo_jax.models import shapes  # pylint: disable=g-import-not-at-top
  from flamingo_jax.train import optimizer, step as step_lib  # pylint: disable=g-import-not-at-top
  from flamingo_jax.train.state import TrainState  # pylint: disable=g-import-not-at-top
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  cfg = cfg.copy_and_resolve_references()
  with cfg.unlocked():
    cfg.model.scan_layers = False
  abstract = nn.unbox(shapes.abstract_variables(cfg.model))
  tx = optimizer.make_optimizer(cfg.optim)
  state = jax.eval_shape(lambda p: TrainState.create(p, tx), abstract["params"])
  as_struct = lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype)
  batches = jax.tree_util.tree_map(as_struct, batches)
  return program_flops(jax.jit(step_lib.make_train_step(cfg.model, cfg.optim, packing=packing)), state,
                       abstract["frozen"], batches)


def progress_hooks(cfg, workdir: str, writer) -> list:
  """clu periodic actions called after every step: a progress report (steps/s, ETA) each minute,
  and, if `train.profile_steps` > 0, a jax.profiler trace of that many steps from
  `train.profile_start` (then every `train.profile_every_steps`, if set) for TensorBoard's
  profile plugin. Only process 0 traces."""
  from clu import periodic_actions  # pylint: disable=g-import-not-at-top  (pulls in TensorFlow)
  hooks = [periodic_actions.ReportProgress(num_train_steps=cfg.train.num_steps, writer=writer,
                                           every_secs=60)]
  if cfg.train.profile_steps > 0 and jax.process_index() == 0:
    hooks.append(periodic_actions.Profile(
        logdir=workdir, num_profile_steps=cfg.train.profile_steps, profile_duration_ms=0,
        first_profile=cfg.train.profile_start, every_secs=None,
        every_steps=cfg.train.get("profile_every_steps") or None))
  return hooks


def scalars(metrics: dict) -> dict[str, float]:
  return {k: float(np.asarray(v)) for k, v in metrics.items() if np.asarray(v).ndim == 0}
