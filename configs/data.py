"""Input-pipeline fields (flamingo_jax/data/). Defaults are OpenFlamingo's released recipe."""
from __future__ import annotations

import ml_collections

from flamingo_jax.data import kinds


def get_data_config(image_size: int = 224, tiny: bool = False) -> ml_collections.ConfigDict:
  """LAION pairs and MMC4 documents; LAION's batch is twice MMC4's and its loss weighs 0.2, as
  OpenFlamingo trains.

  `mixture` names the datasets a step reads, in order; each has a block of its kind's fields
  (flamingo_jax/data/kinds.py): add your own with `c.data.<name> = kinds.dataset(kind, ...)` and
  its name in `mixture` (docs/data.md). `tiny=True` reads the synthetic shards (written on first
  use to `synthetic_dir`) with small batches and lengths, and no flips: the synthetic captions say
  "left" and "right".
  """
  c = ml_collections.ConfigDict()
  c.image_size = image_size
  c.seed = 42             # dataset i of the mixture shuffles and draws with seed + i
  c.workers = 4           # preprocessing processes per host (0: threads of this process only)
  c.read_threads = 8      # reader/preprocessing threads in each process
  c.random_flip = True    # as the reference: p=0.5 per batch of pairs, per document
  c.max_skip_ratio = 0.9  # of recent samples; more skipped than this is an error, not a hang
  c.synthetic_dir = ""    # if set and it holds no shards, synthetic shards are written there first
  c.mixture = "laion,mmc4"
  # Shards: comma-separated globs, `{00000..01023}` ranges or paths; local or gs://; WebDataset
  # .tar or their .array_record conversions (python -m flamingo_jax.data.array_record).
  # validation_shards: held-out shards of the same format, never trained on: the periodic
  # validation loss (train.validate_every) and, for pairs, the real-vs-blank-image check at the end.
  c.laion = kinds.dataset("pairs", batch_size=64, max_tokens=32, loss_weight=0.2)
  c.mmc4 = kinds.dataset("documents", batch_size=32, max_tokens=256, loss_weight=1.0)
  if tiny:
    c.image_size = 64
    c.synthetic_dir = "runs/synthetic_shards"
    c.workers = 0
    # One reader thread: a tiny batch takes ~12 ms of it, well inside a step, and on a 2-core
    # laptop more threads only contend with the step for the cores (input wait ~6% -> ~4%).
    c.read_threads = 1
    c.random_flip = False
    # The globs follow the field (`--config.data.synthetic_dir=DIR` reads what it writes there)
    # until a glob is set itself.
    shards = lambda pattern: c.get_ref("synthetic_dir") + "/" + pattern
    c.laion.update(batch_size=16, max_tokens=16)
    c.laion.shards, c.laion.validation_shards = shards("laion-*.tar"), shards("held_out/laion-*.tar")
    c.mmc4.update(batch_size=8, max_tokens=48, max_images=3)
    c.mmc4.shards, c.mmc4.validation_shards = shards("mmc4-*.tar"), shards("held_out/mmc4-*.tar")
  return c
