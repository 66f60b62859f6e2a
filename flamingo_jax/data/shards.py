"""Shard lists: patterns -> paths, and each process's part of them."""
from __future__ import annotations

import glob
import re

from etils import epath

from flamingo_jax.paths import is_remote

_BRACE = re.compile(r"\{(\d+)\.\.(\d+)\}")


def _expand_braces(pattern: str) -> list[str]:
  """`a-{000..012}.tar` -> a-000.tar ... a-012.tar (zero padding kept), as WebDataset URLs."""
  m = _BRACE.search(pattern)
  if m is None:
    return [pattern]
  lo, hi = m.group(1), m.group(2)
  width = len(lo) if lo.startswith("0") else 0
  head, tail = pattern[:m.start()], pattern[m.end():]
  return [p for n in range(int(lo), int(hi) + 1) for p in _expand_braces(f"{head}{n:0{width}d}{tail}")]


def _glob(pattern: str) -> list[str]:
  if is_remote(pattern):  # gs://bucket/dir/*.tar and the like
    parent, _, name = pattern.rpartition("/")
    return sorted(str(p) for p in epath.Path(parent).glob(name))
  return sorted(glob.glob(pattern))


def expand_shards(patterns: str) -> list[str]:
  """Comma-separated shard patterns (globs, `{000..099}` ranges, plain paths; local or gs://)
  -> the list of shard paths, in a fixed order."""
  paths = []
  for part in (p.strip() for p in patterns.split(",")):
    if not part:
      continue
    for path in _expand_braces(part):
      if any(c in path for c in "*?["):
        matched = _glob(path)
        if not matched:
          raise FileNotFoundError(f"No shards match {path!r}")
        paths.extend(matched)
      else:
        paths.append(path)
  if not paths:
    raise FileNotFoundError(f"No shards given (shards={patterns!r})")
  return paths


def process_shards(paths: list[str], process_index: int, process_count: int) -> tuple[list[str], bool]:
  """This process's shards, and whether samples still need slicing across processes.

  With at least as many shards as processes each process takes whole shards (shards[i::n]), so it
  never indexes the others'. With fewer, every process indexes all shards and takes every n-th
  sample instead. Both give disjoint parts that together cover everything.
  """
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} not in [0, {process_count})")
  if len(paths) >= process_count:
    return paths[process_index::process_count], False
  return paths, True
