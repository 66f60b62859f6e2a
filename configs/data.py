"""Input-pipeline fields (flamingo_jax/data/). Defaults are OpenFlamingo's released recipe."""
from __future__ import annotations

import ml_collections


def get_data_config(image_size: int = 224, tiny: bool = False) -> ml_collections.ConfigDict:
  """LAION pairs and MMC4 documents; LAION's batch is twice MMC4's, as OpenFlamingo trains."""
  c = ml_collections.ConfigDict()
  c.image_size = image_size
  c.seed = 42
  c.workers = 4
  c.max_skip_ratio = 0.9  # of the last 1000 samples; more skipped than this is an error
  c.synthetic_dir = ""  # if set and empty, synthetic shards are written there first
  c.laion = ml_collections.ConfigDict(dict(shards="", batch_size=64, max_tokens=32))
  c.mmc4 = ml_collections.ConfigDict(dict(
      shards="", batch_size=32, max_tokens=256, max_images=6, sim_threshold=0.24, min_images=1,
      min_image_bytes=11_000,  # the reference skips images with len(bytes) // 1000 <= 10
      matching="argmax"))      # 'argmax' (released models) | 'one_to_one'
  if tiny:
    c.synthetic_dir = "runs/synthetic_shards"
    c.workers = 0
    c.laion.update(shards="runs/synthetic_shards/laion-*.tar", batch_size=16, max_tokens=16)
    c.mmc4.update(shards="runs/synthetic_shards/mmc4-*.tar", batch_size=8, max_tokens=48,
                  max_images=3)
  return c
