"""Training, optimiser, checkpoint and logging fields (see flamingo_jax/train/)."""
from __future__ import annotations

import ml_collections


def train_config(tiny: bool = False) -> ml_collections.ConfigDict:
  """Defaults follow OpenFlamingo's released recipe; `tiny` shrinks them for a CPU run."""
  c = ml_collections.ConfigDict()
  c.optim = ml_collections.ConfigDict(dict(
      learning_rate=1e-4, warmup_steps=1875, schedule="constant", total_steps=0,
      weight_decay=0.1, b1=0.9, b2=0.999, eps=1e-8, grad_clip_norm=1.0))
  c.train = ml_collections.ConfigDict(dict(num_steps=100_000, log_every=100,
                                          check_finite_every=1,   # 0: never (no host sync)
                                          # A non-finite loss or gradient: "stop" the run, or
                                          # "skip" the update (error after this many in a row).
                                          non_finite="stop", max_skipped_in_a_row=10,
                                          # The loss on the same held-out batches (each dataset's
                                          # data.<name>.validation_shards) every N steps; 0: never.
                                          validate_every=1000, validation_batches=8,
                                          profile_start=10, profile_steps=0,  # >0: trace steps
                                          profile_every_steps=0,  # >0: trace again
                                          # After training: caption this many held-out
                                          # synthetic images (tiny runs show what was learned).
                                          final_captions=0))
  c.checkpoint = ml_collections.ConfigDict(dict(every_steps=1000, keep=3, base="",
                                               # Between those: a frequent tier for restarts
                                               # (train/checkpoint.py: Tiers); 0: off.
                                               frequent_every=100, frequent_keep=2, frequent_dir=""))
  if tiny:
    c.optim.update(learning_rate=1e-3, warmup_steps=20)
    c.train.update(num_steps=1000, log_every=50, final_captions=4, validate_every=250, validation_batches=4)
    c.checkpoint.update(every_steps=250, frequent_every=50)
  return c
