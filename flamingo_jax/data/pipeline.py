"""Grain pipelines from WebDataset shards to fixed-shape training batches.

Per dataset: random-access tar source -> this process's disjoint slice -> seeded shuffle ->
repeat -> preprocess (in worker processes when `workers > 0`) -> drop and count skipped samples ->
batch. The iterators are Grain `DatasetIterator`s: `get_state()`/`set_state()` resume exactly, and
the same seed gives the same batches whatever the number of workers.
"""
from __future__ import annotations

import collections
import functools
import glob
import os
from typing import Callable

import grain
import ml_collections
import numpy as np

from flamingo_jax.data import samples
from flamingo_jax.data.tar_source import TarShardSource
from flamingo_jax.data.tokenizer import special_ids


class SkipCounter:
  """Counts dropped samples by dataset and reason (read by the trainer's metrics)."""

  def __init__(self):
    self.counts: collections.Counter = collections.Counter()

  def keep(self, dataset: str, sample) -> bool:
    if isinstance(sample, samples.Skip):
      self.counts[f"{dataset}/{sample.reason}"] += 1
      return False
    return True


def expand_shards(pattern: str) -> list[str]:
  """A glob (local) or comma-separated list of shard paths."""
  paths = []
  for part in pattern.split(","):
    part = part.strip()
    matched = sorted(glob.glob(part)) if any(c in part for c in "*?[") else [part]
    paths.extend(matched)
  if not paths:
    raise FileNotFoundError(f"No shards match {pattern!r}")
  return paths


def _preprocess_fn(name: str, cfg: ml_collections.ConfigDict, tok) -> Callable:
  ids = special_ids(tok)
  if name == "laion":
    fn = functools.partial(samples.laion, tok=tok, image_size=cfg.image_size,
                           max_tokens=cfg.laion.max_tokens, media_id=ids["media"])
    return lambda record, rng: fn(record)
  fn = functools.partial(samples.mmc4, tok=tok, image_size=cfg.image_size,
                         max_tokens=cfg.mmc4.max_tokens, max_images=cfg.mmc4.max_images,
                         sim_threshold=cfg.mmc4.sim_threshold, min_images=cfg.mmc4.min_images,
                         min_image_bytes=cfg.mmc4.min_image_bytes, matching=cfg.mmc4.matching,
                         media_id=ids["media"])
  return lambda record, rng: fn(record, seed=int(rng.integers(2**31)))


def make_dataset(name: str, cfg: ml_collections.ConfigDict, tok, counter: SkipCounter, *,
                 process_index: int = 0, process_count: int = 1) -> grain.IterDataset:
  """The batched Grain dataset for 'laion' or 'mmc4' (per-process batch size)."""
  sub = cfg[name]
  source = TarShardSource(expand_shards(sub.shards))
  ds = grain.MapDataset.source(source)[process_index::process_count]
  ds = ds.shuffle(seed=cfg.seed).repeat()
  ds = ds.random_map(_preprocess_fn(name, cfg, tok), seed=cfg.seed + (1 if name == "mmc4" else 0))
  it = ds.to_iter_dataset()
  if cfg.workers > 0:
    it = it.mp_prefetch(grain.multiprocessing.MultiprocessingOptions(num_workers=cfg.workers))
  it = it.filter(functools.partial(counter.keep, name))
  # A dataset whose samples are (nearly) all bad raises instead of spinning forever.
  it = grain.experimental.WithOptionsIterDataset(
      it, grain.experimental.DatasetOptions(filter_raise_threshold_ratio=cfg.max_skip_ratio))
  if sub.batch_size % process_count:
    raise ValueError(f"{name} batch size {sub.batch_size} not divisible by {process_count} processes")
  return it.batch(sub.batch_size // process_count, drop_remainder=True)


def make_train_iterators(cfg: ml_collections.ConfigDict, tok, *, process_index: int = 0,
                         process_count: int = 1) -> tuple[dict[str, grain.DatasetIterator], SkipCounter]:
  """{'laion': iterator, 'mmc4': iterator} of process-local batches, and their skip counter."""
  counter = SkipCounter()
  iters = {name: iter(make_dataset(name, cfg, tok, counter, process_index=process_index,
                                   process_count=process_count)) for name in ("laion", "mmc4")}
  return iters, counter


def ensure_synthetic_shards(cfg: ml_collections.ConfigDict) -> None:
  """Writes the synthetic shards a config points at if they are missing (tiny runs, tests)."""
  if not cfg.get("synthetic_dir"):
    return
  if not glob.glob(os.path.join(cfg.synthetic_dir, "*.tar")):
    from flamingo_jax.data import synthetic  # pylint: disable=g-import-not-at-top
    print(f"Writing synthetic shards to {cfg.synthetic_dir} ...", flush=True)
    synthetic.write_shards(cfg.synthetic_dir, image_size=max(128, cfg.image_size), seed=cfg.seed)


def first_batches(iters, n: int = 1) -> list[dict[str, dict[str, np.ndarray]]]:
  """Convenience for tests and benchmarks: the next n batches of each iterator."""
  return [{name: next(it) for name, it in iters.items()} for _ in range(n)]
