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


class Throughput:
  """samples/s, tokens/s and MFU over the interval since the last call."""

  def __init__(self, samples_per_step: int, tokens_per_step: int, flops_per_step: float | None):
    self.samples, self.tokens, self.flops = samples_per_step, tokens_per_step, flops_per_step
    self.last_time, self.last_step = time.time(), 0

  def __call__(self, step: int) -> dict[str, float]:
    now = time.time()
    steps = max(step - self.last_step, 1)
    dt = max(now - self.last_time, 1e-9) / steps
    self.last_time, self.last_step = now, step
    out = {"perf/samples_per_s": self.samples / dt, "perf/tokens_per_s": self.tokens / dt,
           "perf/step_time_s": dt}
    peak = peak_flops_per_device()
    if self.flops and peak:
      out["perf/mfu"] = self.flops / dt / (peak * jax.device_count())
    return out


def scalars(metrics: dict) -> dict[str, float]:
  return {k: float(np.asarray(v)) for k, v in metrics.items() if np.asarray(v).ndim == 0}
