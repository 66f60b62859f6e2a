"""AdamW over the trainable tree, as OpenFlamingo trains: warmup then constant (or linear/cosine
decay), weight decay on the gated cross-attention blocks only, global-norm clipping at 1.0."""
from __future__ import annotations

import re

import jax
import ml_collections
import optax

from flamingo_jax.models.rules import path_str

DECAYED = r"^(xattn_\d+|layers/xattn)/"  # the reference decays params named *gated_cross_attn*


def schedule(c: ml_collections.ConfigDict) -> optax.Schedule:
  """lr * min(1, step / warmup), then constant, linear or cosine decay to 0 at `total_steps`."""
  warmup = optax.linear_schedule(0.0, c.learning_rate, max(c.warmup_steps, 1))
  if c.schedule == "constant":
    after = optax.constant_schedule(c.learning_rate)
  elif c.schedule in ("linear", "cosine"):
    if c.total_steps <= c.warmup_steps:
      raise ValueError(f"{c.schedule} decay needs optim.total_steps > warmup_steps")
    decay = c.total_steps - c.warmup_steps
    after = (optax.linear_schedule(c.learning_rate, 0.0, decay) if c.schedule == "linear"
             else optax.cosine_decay_schedule(c.learning_rate, decay))
  else:
    raise ValueError(f"optim.schedule must be constant, linear or cosine, got {c.schedule!r}")
  return optax.join_schedules([warmup, after], [c.warmup_steps])


def decay_mask(params) -> object:
  """True for the leaves that get weight decay (the gated cross-attention blocks)."""
  return jax.tree_util.tree_map_with_path(lambda p, _: bool(re.search(DECAYED, path_str(p))), params)


def make_optimizer(c: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """Clip by global norm, then AdamW with the masked decay."""
  return optax.chain(
      optax.clip_by_global_norm(c.grad_clip_norm),
      optax.adamw(schedule(c), b1=c.b1, b2=c.b2, eps=c.eps, weight_decay=c.weight_decay,
                  mask=decay_mask))
