"""Packing a batch's real images into a fixed-size buffer, so the frozen ViT and the resampler run
on real images only, and scattering their latents back to the slots.

The batch is split into `groups` equal runs of rows (one per data x fsdp device, so each device
packs its own rows and nothing crosses devices); each group has `per_group` buffer places.

Worked example: groups=1, per_group=3, image_mask (2 rows x 3 slots)
    [[1, 1, 0],
     [1, 0, 0]]
  flattened slots 0..5 -> order [0, 1, 3] (real slots first, in slot order), valid [1, 1, 1];
  the buffer holds slots 0, 1, 3; slots 2, 4, 5 get the blank image's latents.
With per_group=4 the order would be [0, 1, 3, 2] and valid [1, 1, 1, 0]: the fourth place is a
blank image, its latents thrown away.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def pack_order(image_mask: jax.Array, groups: int, per_group: int) -> tuple[jax.Array, jax.Array]:
  """(order, valid), both (groups, per_group): for each group the flattened slot indices
  (row-major within the group) of its first `per_group` real images, then padding slots; and
  whether each buffer place holds a real image."""
  b, t = image_mask.shape
  mask = image_mask.reshape(groups, (b // groups) * t)
  order = jnp.argsort(~mask, axis=1, stable=True)[:, :per_group]
  return order, jnp.take_along_axis(mask, order, axis=1)


def gather_slots(x: jax.Array, order: jax.Array, groups: int) -> jax.Array:
  """x (B, T, ...) -> (groups, per_group, ...) at `order`."""
  flat = x.reshape(groups, -1, *x.shape[2:])
  index = order.reshape(*order.shape, *([1] * (flat.ndim - 2)))
  return jnp.take_along_axis(flat, index, axis=1)


def scatter_slots(values: jax.Array, order: jax.Array, valid: jax.Array, fill: jax.Array,
                  shape: tuple[int, int]) -> jax.Array:
  """values (groups, per_group, ...) -> (B, T, ...): the valid places at their slots, `fill`
  (broadcastable to one slot's value) in every other slot."""
  groups, per_group = order.shape
  b, t = shape
  out = jnp.broadcast_to(fill, (groups, (b // groups) * t, *values.shape[2:])).astype(values.dtype)
  keep = valid.reshape(*valid.shape, *([1] * (values.ndim - 2)))
  values = jnp.where(keep, values, fill.astype(values.dtype))
  out = out.at[jnp.arange(groups)[:, None], order].set(values)
  return out.reshape(b, t, *values.shape[2:])
