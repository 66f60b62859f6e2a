"""How many images of each dataset's batch the vision tower runs on (`data.<name>.image_buffer`).

Document rows (MMC4) have `max_images` slots but most hold fewer real images; the step packs each device's
real images into a buffer (models/packing.py) and encodes only those. The buffer is per global
batch and split evenly over the data x fsdp devices:

  image_buffer  > 0   that many images per batch (a multiple of the data x fsdp devices)
                  0   derived from the data: the most real images one device's rows held in the
                      first batches, plus a quarter, times the devices (capped at every slot)
                 -1   off: every slot goes through the tower, as OpenFlamingo does

Datasets with one slot per row (pairs, LAION) hold a real image in every slot: nothing to pack.
A batch with more real images on one device than its share of the buffer is an error naming the
dataset and the field (nothing is dropped silently). A derived size rests on a few batches: for a
long run, set the field (the run's train_config.json shows what was derived; every slot is safe).
"""
from __future__ import annotations

import math

import grain
import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from flamingo_jax.data import batch as batch_lib

PROBE_BATCHES = 8  # batches read (then rewound) to derive a buffer size


def plan(data_cfg: ml_collections.ConfigDict, iterators: dict[str, grain.DatasetIterator], groups: int,
         process_count: int = 1, recorded: dict[str, int] | None = None) -> dict[str, tuple[int, int] | None]:
  """{dataset: (groups, per_group) or None (no packing)}; `groups` = data x fsdp devices.

  `recorded`: the sizes a resumed run derived when it started (`resolved`), used instead of
  deriving again, so that a resumed run compiles the same step. A size to derive for a dataset
  missing from `iterators` is every slot."""
  out = {}
  for name in batch_lib.mixture(data_cfg):
    slots = batch_lib.image_slots(name, data_cfg)
    size = int(data_cfg[name].get("image_buffer", 0)) or int((recorded or {}).get(name, 0))
    rows = data_cfg[name].batch_size // groups
    if size < 0 or slots == 1 or data_cfg[name].batch_size % groups:
      out[name] = None
      continue
    if size == 0 and name not in iterators:  # no data to derive it from (planning): every slot
      per_group = rows * slots
    elif size == 0:
      per_group = min(rows * slots, math.ceil(1.25 * _most_real(iterators[name], groups // process_count)))
    elif size % groups:
      raise ValueError(f"data.{name}.image_buffer={size} is not a multiple of the {groups} data x "
                       "fsdp devices")
    else:
      per_group = size // groups
    out[name] = None if per_group >= rows * slots else (groups, max(per_group, 1))
  return out


def resolved(data_cfg: ml_collections.ConfigDict, packing: dict[str, tuple[int, int] | None]) -> dict[str, int]:
  """The image_buffer each dataset runs with (-1: every slot), to record in the run's config."""
  return {name: (p[0] * p[1] if p else -1) for name, p in packing.items()}


def _most_real(it: grain.DatasetIterator, local_groups: int) -> int:
  """The most real images one device's rows held in the next batches (over all hosts); the
  iterator is rewound."""
  state = it.get_state()
  most = 0
  for _ in range(PROBE_BATCHES):
    most = max(most, int(per_group_counts(next(it)["image_mask"], local_groups).max()))
  it.set_state(state)
  if jax.process_count() > 1:  # every host must compile the same step
    most = int(np.max(multihost_utils.process_allgather(np.int32(most))))
  return most


def per_group_counts(image_mask: np.ndarray, local_groups: int) -> np.ndarray:
  """Real images of each device's rows in a process-local (B, T) mask."""
  return np.asarray(image_mask).reshape(local_groups, -1).sum(axis=1)


def check(name: str, image_mask: np.ndarray, packing: tuple[int, int] | None, process_count: int = 1) -> None:
  """Raises when a process-local batch of `name` overflows its device buffers."""
  if packing is None:
    return
  groups, per_group = packing
  counts = per_group_counts(image_mask, groups // process_count)
  if counts.max() > per_group:
    raise ValueError(f"A {name} batch holds {int(counts.max())} real images in one device's rows, "
                     f"more than its share {per_group} of data.{name}.image_buffer={groups * per_group}; "
                     f"raise data.{name}.image_buffer (a multiple of {groups}, at most "
                     f"{image_mask.size * process_count}: every slot) or set it to -1")
