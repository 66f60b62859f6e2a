"""OpenFlamingo's Perceiver resampler: a fixed number of latents per image, attending to the image's
tokens and to themselves.

Legend: B batch, T images (media) per sample, F frames, V tokens per frame, N latents,
D vision width, H heads, d head dim.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from flamingo_jax.models import layers
from flamingo_jax.models.layers import Dense, LayerNorm, LayerNormAffine


class FeedForward(nn.Module):
  """LayerNorm -> Linear(mult*D, no bias) -> exact GELU -> Linear(D, no bias)."""
  mult: int = 4
  embed_axis: str = "embed"
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    dim = x.shape[-1]
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = LayerNorm(name="norm", **kw)(x)
    h = Dense(dim * self.mult, (self.embed_axis,), ("mlp",), name="fc1", **kw)(h)
    h = jax.nn.gelu(h, approximate=False)
    return Dense(dim, ("mlp",), (self.embed_axis,), name="fc2", **kw)(h)


class PerceiverAttention(nn.Module):
  """Latents attend to [media tokens; latents], both layer-normed; no mask.

  `media` comes normalised (`layers.normalize`, once for every layer: it is the same in each) and
  this layer's `norm_media` scale and bias are folded into `to_kv` (see `Dense`'s `fold`): the same
  numbers as normalising it here, but the backward needs no gradient of the (frozen) media tokens,
  the bulk of the rows."""
  heads: int
  dim_head: int
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, media, latents):
    # media: (B, T, M, D) normalised; latents: (B, T, N, D)
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    dim = latents.shape[-1]
    media_affine = LayerNormAffine(name="norm_media", **kw)(dim)
    latents = LayerNorm(name="norm_latents", **kw)(latents)
    q = Dense((self.heads, self.dim_head), ("vision_embed",), ("heads", "kv"), name="to_q", **kw)(latents)
    to_kv = Dense((2, self.heads, self.dim_head), ("vision_embed",), (None, "heads", "kv"), name="to_kv",
                  split_outputs=True, **kw)
    k, v = (jnp.concatenate(pair, axis=-3)
            for pair in zip(to_kv(media, fold=media_affine), to_kv(latents)))
    b, t = q.shape[:2]
    merge = lambda a: a.reshape(b * t, *a.shape[2:])
    out = layers.attention(merge(q), merge(k), merge(v))
    out = out.reshape(b, t, *out.shape[1:])
    return Dense(dim, ("heads", "kv"), ("vision_embed",), name="to_out", **kw)(out)


def _residual_layer(attn: nn.Module, ff: nn.Module, media: jax.Array, latents: jax.Array) -> jax.Array:
  """One resampler layer: latents + attn(media, latents), then + ff(latents)."""
  latents = latents + attn(media, latents)
  return latents + ff(latents)


class PerceiverLayer(nn.Module):
  """A resampler layer as `nn.scan` runs it: (latents, x) -> (latents, None)."""
  cfg: ml_collections.ConfigDict
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, latents, media):
    c, kw = self.cfg, dict(dtype=self.dtype, param_dtype=self.param_dtype)
    return _residual_layer(PerceiverAttention(c.heads, c.dim_head, name="attn", **kw),
                           FeedForward(c.ff_mult, "vision_embed", name="ff", **kw), media, latents), None


class PerceiverResampler(nn.Module):
  """(B, T, F, V, D) vision tokens -> (B, T, N, D) latents, each image resampled on its own.

  With `scan` the layers run under `nn.scan`, their variables stacked as `layers/attn/...` and
  `layers/ff/...` (depth, ...); unrolled they are `layers_{i}_attn` / `layers_{i}_ff`
  (models/layer_groups.to_unrolled converts)."""
  cfg: ml_collections.ConfigDict
  remat_policy: str = "none"
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32
  scan: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = self.cfg
    b, t, f, v, dim = x.shape
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = x.astype(self.dtype)
    if c.max_num_frames is not None:
      frame_embs = layers.make_param(self, layers.TRAINABLE, "frame_embs", nn.initializers.normal(1.0),
                                     (c.max_num_frames, dim), self.param_dtype, (None, "vision_embed"))
      if f > c.max_num_frames:
        raise ValueError(f"{f} frames exceed perceiver.max_num_frames={c.max_num_frames}")
      x = x + frame_embs[:f].astype(self.dtype)[None, None, :, None, :]
    x = x.reshape(b, t, f * v, dim)
    if c.max_num_media is not None:
      media_time_embs = layers.make_param(self, layers.TRAINABLE, "media_time_embs",
                                          nn.initializers.normal(1.0), (c.max_num_media, 1, dim),
                                          self.param_dtype, (None, None, "vision_embed"))
      if t > c.max_num_media:
        raise ValueError(f"{t} images exceed perceiver.max_num_media={c.max_num_media}")
      x = x + media_time_embs[:t].astype(self.dtype)[None]
    latents = layers.make_param(self, layers.TRAINABLE, "latents", nn.initializers.normal(1.0),
                                (c.num_latents, dim), self.param_dtype, ("latents", "vision_embed"))
    latents = jnp.broadcast_to(latents.astype(self.dtype), (b, t, c.num_latents, dim))
    # Normalised once for every layer, held in the compute dtype (each to_kv casts to it anyway).
    media = layers.normalize(x).astype(self.dtype)
    latents = LayerNorm(name="norm", **kw)(self._layers(media, latents))
    return layers.constrain(latents, ("batch", "media", "latents", "act_embed"))

  def _layers(self, media: jax.Array, latents: jax.Array) -> jax.Array:
    c, kw = self.cfg, dict(dtype=self.dtype, param_dtype=self.param_dtype)
    if self.scan:
      stack = layers.scan(lambda layer, h, media: layer(h, media), (layers.TRAINABLE,), c.depth,
                          in_axes=nn.broadcast)
      layer = layers.remat(PerceiverLayer, self.remat_policy, prevent_cse=False)
      return stack(layer(c, name="layers", **kw), latents, media)[0]
    attn_cls = layers.remat(PerceiverAttention, self.remat_policy)
    ff_cls = layers.remat(FeedForward, self.remat_policy)
    for i in range(c.depth):
      latents = _residual_layer(attn_cls(c.heads, c.dim_head, name=f"layers_{i}_attn", **kw),
                                ff_cls(c.ff_mult, "vision_embed", name=f"layers_{i}_ff", **kw), media, latents)
    return latents
