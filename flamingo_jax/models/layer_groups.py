"""Scan over layer groups, for compile time on deep models (`model.scan_layers`).

Group g holds decoder layers gN .. gN+N-1 (N = xattn.every_n_layers) and the gated block that
sits before its last layer. `nn.scan` stacks each group's variables on a leading `layers` axis:
  params/layers/xattn/...      (G, ...)   trainable
  frozen/layers/block_{j}/...  (G, ...)   frozen, j < N
The vision tower's blocks and the resampler's layers are scanned too:
  frozen/vision/resblocks/...                      (vision layers, ...)
  params/perceiver/layers/attn/..., .../ff/...     (resampler depth, ...)
The unrolled layout (`xattn_{i}`, `lm/blocks_{i}`, `vision/resblocks_{i}`,
`perceiver/layers_{i}_attn`, ...) is what checkpoints and name maps use; `to_scanned` /
`to_unrolled` convert between the two exactly.

KV caches and cached image keys/values travel batch-leading, (B, G, ...), scanned on axis 1, so
that beam search can reorder every decode-state array along axis 0.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from flamingo_jax.models import layers
from flamingo_jax.models.decoders.block import DecoderBlock
from flamingo_jax.models.xattn import GatedCrossAttentionBlock, has_xattn


class LayerGroup(nn.Module):
  """N decoder layers with a gated cross-attention block before the last one."""
  cfg: ml_collections.ConfigDict  # the model config

  @nn.compact
  def __call__(self, h, scanned, allowed, positions, text_time, media, cache_index):
    c = self.cfg
    dtype, param_dtype, frozen_dtype = (jnp.dtype(c.dtype), jnp.dtype(c.param_dtype),
                                        jnp.dtype(c.frozen_dtype))
    n = c.xattn.every_n_layers
    xattn = GatedCrossAttentionBlock(c.xattn, c.lm.hidden_size, dtype, param_dtype, name="xattn")
    media_kv = scanned["media_kv"] if scanned["media_kv"] is not None else xattn.media_kv(media)
    caches = scanned["caches"]
    new_caches = []
    for j in range(n):
      if j == n - 1:
        h = xattn(h, media_kv, text_time)
      h, cache = DecoderBlock(c.lm, dtype, frozen_dtype, name=f"block_{j}")(
          h, allowed, positions, None if caches is None else caches[j], cache_index)
      new_caches.append(cache)
    return h, {"media_kv": media_kv, "caches": None if caches is None else new_caches}


def scanned_groups(cfg: ml_collections.ConfigDict) -> nn.Module:
  """The scanned stack of `LayerGroup`s, rematerialised by the config's policy."""
  n = cfg.xattn.every_n_layers
  if cfg.lm.num_layers % n:
    raise ValueError(f"scan_layers needs lm.num_layers ({cfg.lm.num_layers}) divisible by "
                     f"xattn.every_n_layers ({n})")
  group = layers.remat(LayerGroup, cfg.remat_policy, prevent_cse=False)
  return layers.scan(group, (layers.TRAINABLE, layers.FROZEN), cfg.lm.num_layers // n,
                     in_axes=(1, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast),
                     out_axes=1)(cfg)


def _stack(trees):
  return jax.tree_util.tree_map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *trees)


def _unstack(tree, count):
  return [jax.tree_util.tree_map(lambda x, g=g: np.asarray(x)[g], tree) for g in range(count)]


def _xattn_names(cfg) -> list[str]:
  n = cfg.xattn.every_n_layers
  return [f"xattn_{g * n + n - 1}" for g in range(cfg.lm.num_layers // n)]


def _block_names(cfg, j: int) -> list[str]:
  """The LM blocks at position j of each group."""
  n = cfg.xattn.every_n_layers
  return [f"blocks_{g * n + j}" for g in range(cfg.lm.num_layers // n)]


def _perceiver_names(cfg, part: str) -> list[str]:
  return [f"layers_{i}_{part}" for i in range(cfg.perceiver.depth)]


def _vision_names(cfg) -> list[str]:
  return [f"resblocks_{i}" for i in range(cfg.vision.layers)]


def _pack(tree: dict, names: list[str]):
  """Pops `names` from `tree` and stacks them (layer axis first)."""
  return _stack([tree.pop(name) for name in names])


def _unpack(stacked, names: list[str], into: dict) -> None:
  """The inverse of `_pack`: the stacked layers back into `into` under `names`."""
  into.update(zip(names, _unstack(stacked, len(names))))


def to_scanned(variables: dict[str, Any], cfg: ml_collections.ConfigDict) -> dict[str, Any]:
  """Unrolled (unboxed) variables -> the scanned layout, part by part: a part already scanned is
  kept (workdirs written before the ViT and the resampler were scanned hold only the LM's
  scanned). Either collection may be absent."""
  out = {k: dict(v) for k, v in variables.items()}
  params, frozen = out.get("params"), out.get("frozen")
  if params is not None and "layers" not in params:
    params["layers"] = {"xattn": _pack(params, _xattn_names(cfg))}
  if params is not None and "layers_0_attn" in params.get("perceiver", {}):
    perceiver = params["perceiver"] = dict(params["perceiver"])
    perceiver["layers"] = {part: _pack(perceiver, _perceiver_names(cfg, part)) for part in ("attn", "ff")}
  if frozen is not None and "layers" not in frozen:
    lm = frozen["lm"] = dict(frozen.get("lm", {}))
    frozen["layers"] = {f"block_{j}": _pack(lm, _block_names(cfg, j)) for j in range(cfg.xattn.every_n_layers)}
  if frozen is not None and "resblocks_0" in frozen.get("vision", {}):
    vision = frozen["vision"] = dict(frozen["vision"])
    vision["resblocks"] = _pack(vision, _vision_names(cfg))
  return out


def to_unrolled(variables: dict[str, Any], cfg: ml_collections.ConfigDict) -> dict[str, Any]:
  """Scanned (unboxed) variables -> the unrolled layout of checkpoints and name maps, part by
  part (an unrolled part is kept). Either collection may be absent."""
  n = cfg.xattn.every_n_layers
  assert all(has_xattn(g * n + n - 1, n) for g in range(cfg.lm.num_layers // n))
  out = {k: dict(v) for k, v in variables.items()}
  params, frozen = out.get("params"), out.get("frozen")
  if params is not None and "layers" in params:
    _unpack(params.pop("layers")["xattn"], _xattn_names(cfg), params)
  if params is not None and "layers" in params.get("perceiver", {}):
    perceiver = params["perceiver"] = dict(params["perceiver"])
    stacked = perceiver.pop("layers")
    for part in ("attn", "ff"):
      _unpack(stacked[part], _perceiver_names(cfg, part), perceiver)
  if frozen is not None and "layers" in frozen:
    scanned, lm = frozen.pop("layers"), dict(frozen.get("lm", {}))
    frozen["lm"] = lm
    for j in range(n):
      _unpack(scanned[f"block_{j}"], _block_names(cfg, j), lm)
  if frozen is not None and "resblocks" in frozen.get("vision", {}):
    vision = frozen["vision"] = dict(frozen["vision"])
    _unpack(vision.pop("resblocks"), _vision_names(cfg), vision)
  return out


def is_scanned(variables: dict[str, Any]) -> bool:
  """Whether any part of the variables is in the scanned layout."""
  params, frozen = variables.get("params", {}), variables.get("frozen", {})
  return ("layers" in params or "layers" in frozen or "layers" in params.get("perceiver", {})
          or "resblocks" in frozen.get("vision", {}))


def _has_unrolled_parts(variables: dict[str, Any]) -> bool:
  params, frozen = variables.get("params", {}), variables.get("frozen", {})
  return (any(k.startswith("xattn_") for k in params) or "layers_0_attn" in params.get("perceiver", {})
          or "blocks_0" in frozen.get("lm", {}) or "resblocks_0" in frozen.get("vision", {}))


def to_layout(variables: dict[str, Any], cfg: ml_collections.ConfigDict, scanned: bool) -> dict[str, Any]:
  """Variables (either layout; either collection may be absent) in the layout asked for. A
  conversion happens on the host: device arrays are fetched first."""
  if not (_has_unrolled_parts(variables) if scanned else is_scanned(variables)):
    return variables
  host = jax.device_get(variables)
  return to_scanned(host, cfg) if scanned else to_unrolled(host, cfg)
