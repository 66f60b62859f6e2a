"""Masked cross-attention from text to images and the tanh-gated block (GATED XATTN-DENSE).

A text token attends only to the latest image before it. `media_text_time` gives each token that
image's 1-based index (0 before any image); the full forward and the cached decode step both feed
the block such an index, so the rule lives in one place. The images' keys and values
(`media_kv`) are computed once per prompt and reused at every decode step.

Legend: B batch, L text length, T images, N latents per image, D text width, E vision width,
H heads, d head dim.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from flamingo_jax.models import layers, packing
from flamingo_jax.models.layers import Dense, LayerNorm
from flamingo_jax.models.perceiver import FeedForward

def media_text_time(input_ids: jax.Array, media_token_id: int) -> jax.Array:
  """(B, L) int32: how many `<image>` tokens occur at or before each position."""
  return jnp.cumsum(input_ids == media_token_id, axis=-1, dtype=jnp.int32)


def allowed_media(text_time: jax.Array, num_media: int, num_latents: int,
                  only_immediate: bool = True) -> jax.Array:
  """(B, 1, L, T*N) bool: which image latents each text token may attend to."""
  media_time = jnp.repeat(jnp.arange(1, num_media + 1, dtype=jnp.int32), num_latents)
  tt = text_time[:, None, :, None]
  return (tt == media_time) if only_immediate else (tt >= media_time)


def attends_empty_slot(text_time: jax.Array, image_mask: jax.Array, only_immediate: bool = True) -> jax.Array:
  """Scalar bool: whether any token attends (by `allowed_media`'s rule) an image slot that holds
  no image. A token allowed no slot attends none under `only_immediate` (its visual input is
  zeroed) and every slot otherwise (the reference's uniform softmax).

  Worked example: image_mask [[1, 0, 0]], text_time [[0, 1, 1, 1]] -> False (every token after
  the <image> attends slot 0, which is real); text_time [[1, 1, 2, 2]] -> True (slot 1 is empty:
  the row has more <image> tokens than images); with only_immediate=False, [[0, 1, 1, 1]] -> True
  (the first token attends every slot).
  """
  attended = allowed_media(text_time, image_mask.shape[1], 1, only_immediate)[:, 0]  # (B, L, T)
  if not only_immediate:
    attended = attended | (text_time == 0)[:, :, None]
  return (attended.any(axis=1) & ~image_mask.astype(bool)).any()


class MaskedCrossAttention(nn.Module):
  """Text queries (layer-normed) against the resampled image latents (already normed)."""
  cfg: ml_collections.ConfigDict
  out_features: int = 0  # the text width D
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  def setup(self):
    c = self.cfg
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    self.norm = LayerNorm(**kw)
    self.to_q = Dense((c.heads, c.dim_head), ("embed",), ("heads", "kv"), **kw)
    self.to_kv = Dense((2, c.heads, c.dim_head), ("vision_embed",), (None, "heads", "kv"),
                       split_outputs=True, **kw)
    self.to_out = Dense(self.out_features, ("heads", "kv"), ("embed",), **kw)

  def media_kv(self, media: jax.Array | dict) -> dict:
    """(B, T, N, E) latents, or packed ones (models/packing.py) -> their keys and values, each
    (B, T, N, H, d). Packed, only the buffer and the fill are projected."""
    if not isinstance(media, dict):
      k, v = self.to_kv(media)
      return {"k": k, "v": v}
    kv = zip(self.to_kv(media["values"]), self.to_kv(media["fill"]))
    k, v = (packing.unpack(values, fill, media["sources"]) for values, fill in kv)
    return {"k": k, "v": v}

  def __call__(self, x: jax.Array, media_kv: dict, text_time: jax.Array) -> jax.Array:
    c = self.cfg
    b, num_media, num_latents, h, d = media_kv["k"].shape
    k = media_kv["k"].reshape(b, num_media * num_latents, h, d)
    v = media_kv["v"].reshape(b, num_media * num_latents, h, d)
    q = self.to_q(self.norm(x))
    # Text before the first image gets no visual input at all (silent: not renormalised).
    out = layers.attention(q, k, v, allowed=allowed_media(text_time, num_media, num_latents,
                                                          c.only_attend_immediate_media),
                           scale=c.dim_head ** -0.5,
                           silent=(text_time == 0) if c.only_attend_immediate_media else None)
    return self.to_out(out)


class GatedCrossAttentionBlock(nn.Module):
  """x + tanh(attn_gate) * xattn(x); then x + tanh(ff_gate) * ff(x). Gates start at 0."""
  cfg: ml_collections.ConfigDict
  dim: int = 0  # the text width D
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  def setup(self):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    self.attn_gate = layers.make_param(self, layers.TRAINABLE, "attn_gate", nn.initializers.zeros,
                                       (1,), self.param_dtype, (None,))
    self.ff_gate = layers.make_param(self, layers.TRAINABLE, "ff_gate", nn.initializers.zeros, (1,),
                                     self.param_dtype, (None,))
    self.attn = MaskedCrossAttention(self.cfg, self.dim, **kw)
    self.ff = FeedForward(self.cfg.ff_mult, **kw)

  def media_kv(self, media: jax.Array | dict) -> dict:
    """The images' keys and values for this block (cacheable across decode steps), from
    (B, T, N, E) latents or packed ones."""
    return self.attn.media_kv(media)

  def __call__(self, x: jax.Array, media_kv: dict, text_time: jax.Array) -> jax.Array:
    x = x + self.attn(x, media_kv, text_time) * jnp.tanh(self.attn_gate.astype(self.dtype))
    x = x + self.ff(x) * jnp.tanh(self.ff_gate.astype(self.dtype))
    return layers.constrain(x, ("batch", "length", "act_embed"))


def has_xattn(layer_idx: int, every_n_layers: int) -> bool:
  """Whether a gated block sits before decoder layer `layer_idx` (the reference's placement)."""
  return (layer_idx + 1) % every_n_layers == 0
