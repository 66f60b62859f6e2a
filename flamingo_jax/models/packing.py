"""Packing a batch's real images into a fixed-size buffer, so the frozen ViT and the resampler run
on real images only, and reading their latents (or the cross-attention's keys and values of
them) back into the slots.

A packed batch's media travel as a dict {"values": (groups, per_group, N, E) latents, "fill":
(N, E), "sources": (B, T) `slot_sources`}; `unpack` gives the (B, T, N, E) slots.

The batch is split into `groups` equal runs of rows (one per data x fsdp device, so each device
packs its own rows and nothing crosses devices); each group has `per_group` buffer places.

Worked example: groups=1, per_group=3, image_mask (2 rows x 3 slots)
    [[1, 1, 0],
     [1, 0, 0]]
  flattened slots 0..5 -> order [0, 1, 3] (real slots first, in slot order), valid [1, 1, 1];
  the buffer holds slots 0, 1, 3; slots 2, 4, 5 get the blank image's latents (the fill).
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
  return _take_places(x.reshape(groups, -1, *x.shape[2:]), order)


def _take_places(table: jax.Array, index: jax.Array) -> jax.Array:
  """table (groups, places, ...), index (groups, k) -> (groups, k, ...): each group's own places."""
  return jnp.take_along_axis(table, index.reshape(*index.shape, *([1] * (table.ndim - 2))), axis=1)


def slot_sources(order: jax.Array, valid: jax.Array, shape: tuple[int, int]) -> jax.Array:
  """(B, T) int32: for each image slot, its place in its group's buffer (0 .. per_group - 1), or
  per_group (the fill) for a slot that is not in it. Group-local, so that reading values back
  (`unpack`) stays on each group's device.

  Worked example (the module's, per_group=3): order [[0, 1, 3]], valid [[1, 1, 1]], shape (2, 3)
  -> [[0, 1, 3], [2, 3, 3]]: slots 0, 1 and 3 are buffer places 0, 1 and 2, the others read the
  fill (place 3). With groups=2, per_group=2 (order [[0, 1], [0, 1]], valid [[1, 1], [1, 0]])
  -> [[0, 1, 2], [0, 2, 2]].
  """
  groups, per_group = order.shape
  b, t = shape
  place = jnp.broadcast_to(jnp.arange(per_group, dtype=jnp.int32), (groups, per_group))
  sources = jnp.full((groups, (b // groups) * t), per_group, jnp.int32)
  sources = sources.at[jnp.arange(groups)[:, None], order].set(jnp.where(valid, place, per_group))
  return sources.reshape(b, t)


def unpack(values: jax.Array, fill: jax.Array, sources: jax.Array) -> jax.Array:
  """values (groups, per_group, ...) per buffer place and `fill` (one slot's value) -> (B, T, ...)
  per slot, each slot reading its `slot_sources` place in its own group."""
  groups, per_group = values.shape[:2]
  b, t = sources.shape
  fills = jnp.broadcast_to(fill.astype(values.dtype), (groups, 1, *values.shape[2:]))
  table = jnp.concatenate([values, fills], axis=1)  # (groups, per_group + 1, ...)
  out = _take_places(table, sources.reshape(groups, (b // groups) * t))
  return out.reshape(b, t, *values.shape[2:])
