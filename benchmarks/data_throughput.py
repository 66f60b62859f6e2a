"""Input-pipeline throughput: flamingo_jax's Grain pipeline with 0, 1 and N worker processes, and
open_flamingo's own WebDataset loaders (train/data.py) on the same synthetic shards, same
tokenizer, same lengths. Prints preprocessed samples per second per dataset.

  python benchmarks/data_throughput.py [--image-size 224] [--workers 2] [--batches 20]

The reference needs `pip install 'webdataset<0.2.90'` (newer ones end shards with a record its
grouping code cannot read); it is skipped if that is missing. Its loader cannot
run without worker processes (persistent_workers), so it is timed for 1 and N workers only.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
import types

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from configs import data as data_config  # noqa: E402
from flamingo_jax.data import pipeline, synthetic, tokenizer  # noqa: E402
from oracle import reference_train_code  # noqa: E402

TOKENIZER = os.path.join(os.path.dirname(tokenizer.__file__), "..", "assets", "tiny_tokenizer")


def _rate(it, batch_size: int, batches: int) -> float:
  next(it)  # worker start-up and first fill are not throughput
  t0 = time.perf_counter()
  for _ in range(batches):
    next(it)
  return batch_size * batches / (time.perf_counter() - t0)


def ours(cfg, tok, name: str, workers: int, batches: int) -> float:
  cfg = cfg.copy_and_resolve_references()
  cfg.workers = workers
  it = iter(pipeline.make_dataset(name, cfg, tok, pipeline.SkipCounter()))
  return _rate(it, cfg[name].batch_size, batches)


def _brace(paths: list[str]) -> str:
  """write_shards' paths as one WebDataset brace pattern, e.g. dir/laion-{00000..00003}.tar."""
  head, tail = paths[0][:-len("00000.tar")], ".tar"
  return f"{head}{{00000..{len(paths) - 1:05d}}}{tail}"


def reference(cfg, tok, paths, name: str, workers: int, batches: int) -> float:
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


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--image-size", type=int, default=224)
  p.add_argument("--workers", type=int, default=2, help="N, the largest worker count timed")
  p.add_argument("--batches", type=int, default=20)
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
    print(f"{os.cpu_count()} CPUs, {a.image_size} px, {shards}x{a.samples_per_shard} samples per dataset")
    print(f"{'dataset':8s} {'loader':16s} {'workers':>7s} {'samples/s':>10s}")
    for name in pipeline.DATASETS:
      for workers in sorted({0, 1, a.workers}):
        print(f"{name:8s} {'flamingo_jax':16s} {workers:7d} {ours(cfg, tok, name, workers, a.batches):10.1f}",
              flush=True)
      for workers in sorted({1, a.workers}):
        try:
          rate = f"{reference(cfg, tok, paths, name, workers, a.batches):10.1f}"
        except ImportError as e:
          rate = f"skipped ({e})"
        print(f"{name:8s} {'open_flamingo':16s} {workers:7d} {rate:>10s}", flush=True)


if __name__ == "__main__":
  main()
