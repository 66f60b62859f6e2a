"""One decoder layer, parameterised to cover MPT, MosaicGPT (MPT-1B), GPT-NeoX and OPT.

Differences between the families are flags of the LM config (defaults from each family's record
in `models/families.py`): the position scheme, biases, QK LayerNorm, parallel residual, and pre-
vs post-LayerNorm (OPT-350m).

Legend: B batch, L length, K keys, D hidden, H heads, d head dim.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from flamingo_jax.models import families, layers
from flamingo_jax.models.decoders import positions as pos
from flamingo_jax.models.layers import FROZEN, Dense, LayerNorm

class SelfAttention(nn.Module):
  """Causal self-attention with a fused (D, 3, H, d) projection."""
  cfg: ml_collections.ConfigDict
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, allowed: jax.Array, positions: jax.Array,
               cache: dict | None = None, cache_index: jax.Array | None = None):
    """Returns (output, cache). With a cache (k, v of shape (B, max_len, H, d)), this call's keys
    and values are written at `cache_index` and the queries attend over the whole cache."""
    c = self.cfg
    b, length, dim = x.shape
    heads, d = c.num_heads, dim // c.num_heads
    kw = dict(collection=FROZEN, dtype=self.dtype, param_dtype=self.param_dtype)
    q, k, v = Dense((3, heads, d), ("embed",), (None, "heads", "kv"), use_bias=c.use_bias, name="qkv",
                    split_outputs=True, **kw)(x)
    if c.qk_layer_norm:  # MosaicGPT normalises q and k over the whole d_model.
      norm = lambda name, t: LayerNorm(c.ln_eps, use_bias=c.norm_bias, name=name, **kw)(
          t.reshape(b, length, dim)).reshape(b, length, heads, d)
      q, k = norm("q_norm", q), norm("k_norm", k)
    bias = None
    scheme = families.get_family(c.family).position_scheme
    if scheme == "rotary":
      cos, sin = pos.rotary_cos_sin(positions, int(d * c.rotary_pct), c.rotary_base)
      q, k = pos.apply_rotary(q, cos, sin), pos.apply_rotary(k, cos, sin)
    if cache is not None:
      start = (0, cache_index, 0, 0)
      cache = {"k": jax.lax.dynamic_update_slice(cache["k"], k.astype(cache["k"].dtype), start),
               "v": jax.lax.dynamic_update_slice(cache["v"], v.astype(cache["v"].dtype), start)}
      k, v = cache["k"].astype(q.dtype), cache["v"].astype(q.dtype)
    if scheme == "alibi":
      bias = pos.alibi_bias(heads, k.shape[1], c.alibi_bias_max)
    out = layers.attention(q, k, v, allowed=allowed, bias=bias)
    out = layers.constrain(out, ("batch", "length", "act_heads", "kv"))
    return Dense(dim, ("heads", "kv"), ("embed",), use_bias=c.use_bias, name="out", **kw)(out), cache


class Mlp(nn.Module):
  """up -> activation -> down."""
  cfg: ml_collections.ConfigDict
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = self.cfg
    kw = dict(collection=FROZEN, use_bias=c.use_bias, dtype=self.dtype, param_dtype=self.param_dtype)
    h = Dense(c.mlp_hidden_size, ("embed",), ("mlp",), name="up", **kw)(x)
    h = layers.constrain(layers.activation(c.activation)(h), ("batch", "length", "act_mlp"))
    return Dense(x.shape[-1], ("mlp",), ("embed",), name="down", **kw)(h)


class DecoderBlock(nn.Module):
  """Pre-LN (sequential or parallel residual) or OPT's post-LN decoder layer."""
  cfg: ml_collections.ConfigDict
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, allowed: jax.Array, positions: jax.Array,
               cache: dict | None = None, cache_index: jax.Array | None = None):
    """Returns (output, updated cache or None)."""
    c = self.cfg
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    norm_1 = LayerNorm(c.ln_eps, use_bias=c.norm_bias, collection=FROZEN, name="norm_1", **kw)
    norm_2 = LayerNorm(c.ln_eps, use_bias=c.norm_bias, collection=FROZEN, name="norm_2", **kw)
    self_attn = SelfAttention(c, name="attn", **kw)
    attn = lambda h: self_attn(h, allowed, positions, cache, cache_index)
    mlp = Mlp(c, name="mlp", **kw)
    if not c.do_layer_norm_before:  # OPT-350m
      a, cache = attn(x)
      x = norm_1(x + a)
      x = norm_2(x + mlp(x))
    elif c.parallel_residual:
      a, cache = attn(norm_1(x))
      x = x + a + mlp(norm_2(x))
    else:
      a, cache = attn(norm_1(x))
      x = x + a
      x = x + mlp(norm_2(x))
    return layers.constrain(x, ("batch", "length", "act_embed")), cache
