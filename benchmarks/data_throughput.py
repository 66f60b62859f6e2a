"""Input-pipeline throughput: flamingo_jax's Grain pipeline with 0, 1 and N worker processes, and
open_flamingo's own WebDataset loaders (train/data.py) on the same synthetic shards, same
tokenizer, same lengths. Prints preprocessed samples per second per dataset and the CPU time
each sample cost (all processes: the loader's own and its workers), over `--rounds` alternating
rounds: the median and the range of each figure, and the ratio to the reference at the same
worker count paired round by round.

  python benchmarks/data_throughput.py [--image-size 224] [--workers 2] [--batches 60] [--rounds 3]

The reference needs `pip install 'webdataset<0.2.90'` (newer ones end shards with a record its
grouping code cannot read); it is skipped if that is missing. Its loader cannot
run without worker processes (persistent_workers), so it is timed for 1 and N workers only.
"""
from __future__ import annotations

import argparse
import gc
import logging
import os
import sys
import tempfile
import time
import types

import numpy as np
import psutil

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from configs import data as data_config  # noqa: E402
from flamingo_jax.data import batch as batch_lib, pipeline, synthetic, tokenizer  # noqa: E402
from oracle import reference_train_code  # noqa: E402

TOKENIZER = os.path.join(os.path.dirname(tokenizer.__file__), "..", "assets", "tiny_tokenizer")


def _cpu_s() -> dict[int, float]:
  """CPU seconds used so far by this process and each of its live children (the loaders' workers)."""
  me = psutil.Process()
  out = {}
  for p in [me] + me.children(recursive=True):
    try:
      t = p.cpu_times()
      out[p.pid] = t.user + t.system
    except psutil.Error:  # a worker that ended meanwhile
      pass
  return out


def _rate(it, batch_size: int, batches: int) -> tuple[float, float]:
  """(samples/s, CPU ms per sample of every process) over `batches` batches, after the first
  (start-up, first fill)."""
  next(it)
  t0, c0 = time.perf_counter(), _cpu_s()
  for _ in range(batches):
    next(it)
  wall, c1 = time.perf_counter() - t0, _cpu_s()
  n = batch_size * batches
  return n / wall, 1e3 * sum(c - c0.get(pid, 0.0) for pid, c in c1.items()) / n


def ours(cfg, tok, name: str, workers: int, batches: int) -> tuple[float, float]:
  cfg = cfg.copy_and_resolve_references()
  cfg.workers = workers
  it = iter(pipeline.make_dataset(name, cfg, tok, pipeline.SkipCounter()))
  return _rate(it, cfg[name].batch_size, batches)


def _brace(paths: list[str]) -> str:
  """write_shards' paths as one WebDataset brace pattern, e.g. dir/laion-{00000..00003}.tar."""
  head, tail = paths[0][:-len("00000.tar")], ".tar"
  return f"{head}{{00000..{len(paths) - 1:05d}}}{tail}"


def reference(cfg, tok, paths, name: str, workers: int, batches: int) -> tuple[float, float]:
  from open_clip.transform import image_transform  # pylint: disable=g-import-not-at-top
  ref = reference_train_code.load().data
  logging.getLogger().setLevel(logging.ERROR)  # it logs every skipped sample as a warning
  args = types.SimpleNamespace(
      laion_shards=_brace(paths["laion"]), mmc4_shards=_brace(paths["mmc4"]), dataset_resampled=True,
      train_num_samples_laion=10**6, train_num_samples_mmc4=10**6, seed=cfg.seed, world_size=1, workers=workers,
      batch_size_laion=cfg.laion.batch_size, batch_size_mmc4=cfg.mmc4.batch_size, mmc4_textsim_threshold=cfg.mmc4.sim_threshold,
      mmc4_min_num_images=cfg.mmc4.min_images, mmc4_max_num_images=cfg.mmc4.max_images)
  # The reference reads the length caps from function defaults: 32 (LAION) and 256 (MMC4).
  make = ref.get_laion_dataset if name == "laion" else ref.get_mmc4_dataset
  info = make(args, image_transform(cfg.image_size, is_train=False), reference_train_code.V4Tokenizer(tok))
  return _rate(iter(info.dataloader), cfg[name].batch_size, batches)


def _summary(values: list[float], digits: int = 1) -> str:
  """Median [lowest-highest]."""
  return f"{np.median(values):.{digits}f} [{min(values):.{digits}f}-{max(values):.{digits}f}]"


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--image-size", type=int, default=224)
  p.add_argument("--workers", type=int, default=2, help="N, the largest worker count timed")
  p.add_argument("--batches", type=int, default=60)
  p.add_argument("--rounds", type=int, default=3, help="alternating rounds of every loader and setting")
  p.add_argument("--samples-per-shard", type=int, default=128)
  a = p.parse_args()
  tok = tokenizer.load_tokenizer(TOKENIZER)
  with tempfile.TemporaryDirectory() as out:
    shards = max(4, a.workers)
    paths = synthetic.write_shards(out, laion_shards=shards, mmc4_shards=shards,
                                   samples_per_shard=a.samples_per_shard, image_size=a.image_size, seed=0)
    # Reference-sized samples (LAION 32 tokens, MMC4 256 tokens and 6 images), smaller batches.
    cfg = data_config.get_data_config(image_size=a.image_size)
    cfg.update(random_flip=True)
    cfg.laion.update(shards=",".join(paths["laion"]), batch_size=16)
    cfg.mmc4.update(shards=",".join(paths["mmc4"]), batch_size=8)
    print(f"{os.cpu_count()} CPUs, {a.image_size} px, {shards}x{a.samples_per_shard} samples per dataset, "
          f"{a.rounds} rounds of {a.batches} batches", flush=True)
    runs = [(name, loader, w) for name in batch_lib.mixture(cfg)
            for loader, counts in (("flamingo_jax", {0, 1, a.workers}), ("open_flamingo", {1, a.workers}))
            for w in sorted(counts)]
    got = {run: [] for run in runs}
    for r in range(a.rounds):
      for name, loader, w in runs:
        try:
          got[name, loader, w].append(ours(cfg, tok, name, w, a.batches) if loader == "flamingo_jax"
                                      else reference(cfg, tok, paths, name, w, a.batches))
        except ImportError as e:
          print(f"{name} {loader} skipped ({e})")
        gc.collect()  # the loader's workers end here, not inside the next one's timing
      print(f"round {r + 1}/{a.rounds} done", flush=True)
    print(f"{'dataset':8s} {'loader':14s} {'workers':>7s} {'samples/s':>22s} {'CPU ms/sample':>20s} "
          f"{'ratio to open_flamingo':>24s}")
    for name, loader, w in runs:
      vals = got[name, loader, w]
      if not vals:
        continue
      ref = got.get((name, "open_flamingo", w)) or []
      ratio = (_summary([o[0] / t[0] for o, t in zip(vals, ref)], 2) if loader == "flamingo_jax" and ref else "")
      print(f"{name:8s} {loader:14s} {w:7d} {_summary([v[0] for v in vals]):>22s} "
            f"{_summary([v[1] for v in vals], 2):>20s} {ratio:>24s}", flush=True)


if __name__ == "__main__":
  main()
