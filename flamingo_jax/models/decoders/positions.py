"""Position schemes of the supported LM families: ALiBi (MPT), rotary (GPT-NeoX), learned (OPT)."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def alibi_slopes(num_heads: int, alibi_bias_max: float = 8.0) -> jax.Array:
  """Per-head ALiBi slopes as MPT defines them (including non-power-of-2 head counts)."""
  n2 = 2 ** math.ceil(math.log2(num_heads))
  slopes = 1.0 / 2.0 ** (jnp.arange(1, n2 + 1, dtype=jnp.float32) * (alibi_bias_max / n2))
  if n2 != num_heads:
    slopes = jnp.concatenate([slopes[1::2], slopes[::2]])[:num_heads]
  return slopes


def alibi_bias(num_heads: int, key_length: int, alibi_bias_max: float = 8.0) -> jax.Array:
  """(1, H, 1, K) additive bias slope * (j - (K-1)); softmax makes the offset irrelevant."""
  rel = jnp.arange(1 - key_length, 1, dtype=jnp.float32)
  return (alibi_slopes(num_heads, alibi_bias_max)[:, None, None] * rel)[None]


def rotary_cos_sin(positions: jax.Array, rotary_dim: int, base: float) -> tuple[jax.Array, jax.Array]:
  """(B, L, rotary_dim) cos and sin tables for integer positions (B, L), halves duplicated."""
  inv_freq = 1.0 / (base ** (jnp.arange(0, rotary_dim, 2, dtype=jnp.float32) / rotary_dim))
  freqs = positions.astype(jnp.float32)[..., None] * inv_freq
  emb = jnp.concatenate([freqs, freqs], axis=-1)
  return jnp.cos(emb), jnp.sin(emb)


def apply_rotary(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
  """Rotates the first `rotary_dim` features of x (B, L, H, d) in GPT-NeoX's rotate-half layout."""
  rot = cos.shape[-1]
  x_rot, x_pass = x[..., :rot], x[..., rot:]
  half = rot // 2
  rotated = jnp.concatenate([-x_rot[..., half:], x_rot[..., :half]], axis=-1)
  cos, sin = cos[:, :, None, :].astype(x.dtype), sin[:, :, None, :].astype(x.dtype)
  return jnp.concatenate([x_rot * cos + rotated * sin, x_pass], axis=-1)


def opt_positions(attention_mask: jax.Array) -> jax.Array:
  """OPT's positions from the mask: 0, 1, ... over real tokens, -1 on (left) padding."""
  mask = attention_mask.astype(jnp.int32)
  return jnp.cumsum(mask, axis=-1) * mask - 1


def generation_positions(attention_mask: jax.Array) -> jax.Array:
  """Positions as Hugging Face generation derives them: cumsum of the mask - 1, 0 on padding."""
  mask = attention_mask.astype(jnp.int32)
  return jnp.maximum(jnp.cumsum(mask, axis=-1) - 1, 0) * mask


def causal_allowed(attention_mask: jax.Array) -> jax.Array:
  """(B, 1, L, L) bool: causal, and the key is a real (non-pad) token."""
  length = attention_mask.shape[-1]
  causal = jnp.tril(jnp.ones((length, length), dtype=bool))
  return causal[None, None] & attention_mask.astype(bool)[:, None, None, :]
