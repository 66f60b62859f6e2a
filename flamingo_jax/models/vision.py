"""The CLIP ViT as OpenFlamingo uses it: the patch tokens before `proj`, without `ln_post`.

Matches open_clip 2.20 `VisionTransformer` with QuickGELU (the "openai" weights). The released
OpenFlamingo models were trained on these raw tokens; open_clip >= 2.23 would apply `ln_post` to
them, which we deliberately do not (../shared/reference/openflamingo_spec.md §1.2).

Legend: N images, P patches (+1 class token), D width, H heads, d head dim.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from flamingo_jax.models import layers
from flamingo_jax.models.layers import FROZEN, Dense, LayerNorm


class ResidualAttentionBlock(nn.Module):
  """Pre-LN block: x + attn(ln_1(x)); x + mlp(ln_2(x))."""
  cfg: ml_collections.ConfigDict
  dtype: jnp.dtype
  param_dtype: jnp.dtype

  @nn.compact
  def __call__(self, x):
    c = self.cfg
    heads, d = c.heads, c.width // c.heads
    kw = dict(collection=FROZEN, dtype=self.dtype, param_dtype=self.param_dtype)
    h = LayerNorm(c.ln_eps, name="ln_1", **kw)(x)
    qkv = Dense((3, heads, d), ("vision_embed",), (None, "heads", "kv"), use_bias=True,
                name="in_proj", **kw)(h)
    out = layers.attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2])
    x = x + Dense(c.width, ("heads", "kv"), ("vision_embed",), use_bias=True, name="out_proj",
                  **kw)(out)
    h = LayerNorm(c.ln_eps, name="ln_2", **kw)(x)
    h = Dense(int(c.width * c.mlp_ratio), ("vision_embed",), ("mlp",), use_bias=True, name="c_fc",
              **kw)(h)
    h = Dense(c.width, ("mlp",), ("vision_embed",), use_bias=True, name="c_proj",
              **kw)(layers.quick_gelu(h))
    return layers.constrain(x + h, ("batch", "patch", "act_embed"))


class VisionTransformer(nn.Module):
  """(N, S, S, 3) normalised images -> (N, P, D) patch tokens (with `class_token`, (N, P + 1, D):
  the class token first).

  With `scan` the blocks run under `nn.scan` (one compiled block instead of `layers`; their
  variables stacked as `resblocks/...` with a leading layer axis, which
  models/layer_groups.to_unrolled turns back into `resblocks_{i}`)."""
  cfg: ml_collections.ConfigDict
  remat_policy: str = "none"
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32
  scan: bool = False

  @nn.compact
  def __call__(self, images: jax.Array, class_token: bool = False) -> jax.Array:
    c = self.cfg
    n = images.shape[0]
    if images.shape[1:] != (c.image_size, c.image_size, 3):
      raise ValueError(f"Expected images of shape (N, {c.image_size}, {c.image_size}, 3), "
                       f"got {images.shape}")
    p, g = c.patch_size, c.image_size // c.patch_size
    kw = dict(collection=FROZEN, dtype=self.dtype, param_dtype=self.param_dtype)
    # A stride-p conv without bias is a Dense over each (p, p, 3) patch.
    patches = images.reshape(n, g, p, g, p, 3).transpose(0, 1, 3, 2, 4, 5).reshape(n, g * g, p, p, 3)
    x = Dense(c.width, (None, None, None), ("vision_embed",), name="conv1", **kw)(patches)
    cls = layers.make_param(self, FROZEN, "class_embedding", nn.initializers.normal(0.02),
                            (c.width,), self.param_dtype, ("vision_embed",))
    pos = layers.make_param(self, FROZEN, "positional_embedding", nn.initializers.normal(0.01),
                            (g * g + 1, c.width), self.param_dtype, (None, "vision_embed"))
    x = jnp.concatenate([jnp.broadcast_to(cls.astype(self.dtype), (n, 1, c.width)), x], axis=1)
    x = x + pos.astype(self.dtype)
    x = LayerNorm(c.ln_eps, name="ln_pre", **kw)(x)
    x = self._blocks(x)
    # Kept so that checkpoints carry every open_clip weight; neither is applied to the tokens.
    LayerNorm(c.ln_eps, name="ln_post", **kw)(x[:, :1])
    layers.make_param(self, FROZEN, "proj", nn.initializers.normal(c.width ** -0.5),
                      (c.width, c.embed_dim), self.param_dtype, ("vision_embed", None))
    return x if class_token else x[:, 1:]

  def _blocks(self, x: jax.Array) -> jax.Array:
    c = self.cfg
    block = layers.remat(ResidualAttentionBlock, self.remat_policy, prevent_cse=not self.scan)
    if not self.scan:
      for i in range(c.layers):
        x = block(c, self.dtype, self.param_dtype, name=f"resblocks_{i}")(x)
      return x
    stack = layers.scan(lambda blk, h, _: (blk(h), None), (FROZEN,), c.layers)
    return stack(block(c, self.dtype, self.param_dtype, name="resblocks"), x, None)[0]



def clip_embedding_fn(model_cfg: ml_collections.ConfigDict):
  """(vision variables, (N, S, S, 3) images) -> (N, embed_dim) L2-normalised CLIP image embeddings:
  open_clip's `encode_image` (class token after `ln_post`, projected by `proj`), which RICES
  uses, computed from the Flamingo's own frozen tower. Returns the function; jit it."""
  vit = VisionTransformer(model_cfg.vision, "none", jnp.dtype(model_cfg.dtype),
                          jnp.dtype(model_cfg.frozen_dtype), bool(model_cfg.scan_layers))
  ln_post = LayerNorm(model_cfg.vision.ln_eps, collection=FROZEN)

  def embed(vision_vars, images):
    cls = vit.apply({FROZEN: vision_vars}, images, class_token=True)[:, 0]
    pooled = ln_post.apply({FROZEN: vision_vars["ln_post"]}, cls).astype(jnp.float32)
    emb = pooled @ vision_vars["proj"].astype(jnp.float32)
    return emb / jnp.linalg.norm(emb, axis=-1, keepdims=True)

  return embed
