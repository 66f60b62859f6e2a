"""Samples that are dropped, with the reason, and their counts (never a silent drop)."""
from __future__ import annotations

import collections
import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class Skip:
  """What a preprocessing function returns instead of a sample it drops."""
  reason: str


class SkipCounter:
  """Counts dropped samples as "{dataset}/{reason}"; the trainer logs `counts` as metrics.

  The pipeline filters in the main process (after any worker processes), so one counter sees the
  skips of all workers.
  """

  def __init__(self):
    self.counts: collections.Counter = collections.Counter()

  def keep(self, dataset: str, sample: Any) -> bool:
    """False (and counted) for a `Skip`, True for a sample."""
    if isinstance(sample, Skip):
      self.counts[f"{dataset}/{sample.reason}"] += 1
      return False
    return True
