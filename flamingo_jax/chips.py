"""What each accelerator can do, per chip: the one table behind MFU (training metrics) and the
planner's fit and step-time bounds (`python -m flamingo_jax.plan`).

Peak FLOP/s are dense bf16 matrix throughput (no sparsity). Sources, as published by the vendors:
  TPU v4   275 TFLOP/s, 32 GiB HBM2, 1,228 GB/s     cloud.google.com/tpu/docs/v4
  TPU v5e  197 TFLOP/s, 16 GiB HBM2e, 819 GB/s     cloud.google.com/tpu/docs/v5e
  TPU v5p  459 TFLOP/s, 95 GiB HBM2e, 2,765 GB/s   cloud.google.com/tpu/docs/v5p
  TPU v6e  918 TFLOP/s, 32 GiB HBM, 1,640 GB/s     cloud.google.com/tpu/docs/v6e
  A100     312 TFLOP/s, 80 GB HBM2e, 2,039 GB/s    nvidia.com A100 datasheet (SXM4 80GB)
  H100     989 TFLOP/s, 80 GB HBM3, 3,350 GB/s     nvidia.com H100 datasheet (SXM5)
  H200     989 TFLOP/s, 141 GB HBM3e, 4,800 GB/s   nvidia.com H200 datasheet (SXM)
The GPU memory sizes are what the driver reports (nvidia-smi, MiB), a little under the label.

Links, per chip, one direction (what a chip can send while it also receives):
  ICI  v4 2,400 Gbps = 300 GB/s; v5e 1,600 Gbps = 200 GB/s (400 GB/s bidirectional); v5p
       4,800 Gbps = 600 GB/s (1,200 bidirectional); v6e 400 GB/s (800 bidirectional), the same
       pages. NVLink: A100 300 GB/s (600 bidirectional), H100/H200 450 GB/s (900), the datasheets.
  DCN  v5e: 6.4 Tbps per 256-chip pod (2 x 100 Gbps per 8-chip host) = 25 Gbps = 3.1 GB/s a chip;
       v5p: 50 Gbps = 6.25 GB/s a chip (its page). v4, v6e and GPU clusters: not published per
       chip or set by the cluster: unknown (None), so a plan sending over DCN has no estimate.
"""
from __future__ import annotations

import dataclasses

GiB, MiB = 2 ** 30, 2 ** 20


@dataclasses.dataclass(frozen=True)
class Chip:
  """One accelerator's peak dense bf16 FLOP/s, HBM bytes and HBM bytes/s, and the bytes/s it
  sends over its slice's links (ICI, NVLink) and over the data-centre network (its share)."""
  name: str
  peak_flops: float
  hbm_bytes: float
  hbm_bandwidth: float
  ici_bandwidth: float | None = None
  dcn_bandwidth: float | None = None


CHIPS = {
    "v4": Chip("TPU v4", 275e12, 32 * GiB, 1228e9, ici_bandwidth=300e9),
    "v5e": Chip("TPU v5e", 197e12, 16 * GiB, 819e9, ici_bandwidth=200e9, dcn_bandwidth=3.125e9),
    "v5p": Chip("TPU v5p", 459e12, 95 * GiB, 2765e9, ici_bandwidth=600e9, dcn_bandwidth=6.25e9),
    "v6e": Chip("TPU v6e", 918e12, 32 * GiB, 1640e9, ici_bandwidth=400e9),
    "a100": Chip("NVIDIA A100 80GB", 312e12, 81920 * MiB, 2039e9, ici_bandwidth=300e9),
    "h100": Chip("NVIDIA H100 80GB", 989e12, 81559 * MiB, 3350e9, ici_bandwidth=450e9),
    "h200": Chip("NVIDIA H200", 989e12, 143771 * MiB, 4800e9, ici_bandwidth=450e9),
}

# jax's `device_kind` strings -> CHIPS keys (first match wins; "TPU v5" alone is v5p).
_KINDS = (("tpu v5 lite", "v5e"), ("tpu v5e", "v5e"), ("tpu v6 lite", "v6e"), ("tpu v6e", "v6e"),
          ("tpu v5p", "v5p"), ("tpu v5", "v5p"), ("tpu v4", "v4"), ("a100", "a100"),
          ("h100", "h100"), ("h200", "h200"))


def chip_of(device_kind: str) -> Chip | None:
  """The chip a jax device is (`jax.devices()[0].device_kind`), or None (a CPU, an unknown GPU)."""
  kind = device_kind.lower()
  return next((CHIPS[key] for pattern, key in _KINDS if pattern in kind), None)
