"""Model construction helpers: example inputs, abstract (shape-only) and real initialisation."""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from flamingo_jax.models.flamingo import Flamingo


def example_inputs(model_cfg: ml_collections.ConfigDict, batch: int = 1, images: int = 1,
                   length: int = 8) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Zero images, ids and mask with the shapes `Flamingo.__call__` takes (for init/eval_shape)."""
  size = model_cfg.vision.image_size
  vision_x = jnp.zeros((batch, images, 1, size, size, 3), jnp.float32)
  ids = jnp.zeros((batch, length), jnp.int32)
  return vision_x, ids, jnp.ones((batch, length), jnp.int32)


def init_variables(model_cfg: ml_collections.ConfigDict, rng: jax.Array) -> dict[str, Any]:
  """Randomly initialised (boxed) variables {"params": trainable, "frozen": frozen}."""
  return Flamingo(model_cfg).init(rng, *example_inputs(model_cfg))


def abstract_variables(model_cfg: ml_collections.ConfigDict) -> dict[str, Any]:
  """The variables' shapes, dtypes and logical axes, without allocating anything."""
  return jax.eval_shape(lambda rng: init_variables(model_cfg, rng), jax.random.PRNGKey(0))
