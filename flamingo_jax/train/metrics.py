"""Metric writing: clu writers (TensorBoard + console) and throughput/MFU bookkeeping."""
from __future__ import annotations

import time

import jax
import numpy as np

from flamingo_jax import chips
from flamingo_jax.data import batch as batch_lib
from flamingo_jax.models import flops as flops_lib


def peak_flops_per_device() -> float | None:
  """Peak dense bf16 FLOP/s of this job's chips (flamingo_jax/chips.py); None on a CPU."""
  chip = chips.chip_of(jax.devices()[0].device_kind)
  return chip and chip.peak_flops


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


def jaxpr_matmul_flops(jaxpr) -> float:
  """2·M·N·K summed over every dot_general and convolution in `jaxpr` (a ClosedJaxpr or Jaxpr),
  scan bodies counted once per iteration, the costliest branch of a cond, a while body once: the
  matrix products a program executes, recomputation under remat included (models/flops.py
  counts the model's, without it)."""
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


def batch_sizes(cfg, packing: dict | None = None) -> dict[str, tuple[int, int, int, int]]:
  """{dataset: (rows, image slots per row, images the vision tower encodes, tokens per row)} of
  one step at the config's batch sizes; `packing` ({dataset: (groups, per_group) or None}) as
  the step runs it (a packed tower encodes its buffer and one blank image)."""
  packing = packing or {}
  out = {}
  for name in batch_lib.mixture(cfg.data):
    rows, slots = cfg.data[name].batch_size, batch_lib.image_slots(name, cfg.data)
    p = packing.get(name)
    out[name] = (rows, slots, p[0] * p[1] + 1 if p else rows * slots, cfg.data[name].max_tokens)
  return out


def step_flops(cfg, packing: dict | None = None) -> flops_lib.Flops:
  """Model FLOPs of one training step (models/flops.py), as `batch_sizes` describes it."""
  return flops_lib.step_flops(cfg.model, batch_sizes(cfg, packing))


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
