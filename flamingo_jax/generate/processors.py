"""Next-token score processors with Hugging Face's semantics, on fixed-size token buffers.

`sequences` is (N, max_len) with the first `cur_len` slots filled (prompt, left padding
included, then generated tokens), as HF's `input_ids` at that step.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

NEG_INF = -jnp.inf


def repetition_penalty(scores: jax.Array, sequences: jax.Array, cur_len: jax.Array,
                       penalty: float) -> jax.Array:
  """Divides (positive) or multiplies (negative) the score of every token already present."""
  if penalty == 1.0:
    return scores
  filled = jnp.arange(sequences.shape[1]) < cur_len
  present = jnp.zeros(scores.shape, bool)
  rows = jnp.arange(scores.shape[0])[:, None]
  present = present.at[rows, sequences].max(filled[None, :])
  penalised = jnp.where(scores < 0, scores * penalty, scores / penalty)
  return jnp.where(present, penalised, scores)


def no_repeat_ngram(scores: jax.Array, sequences: jax.Array, cur_len: jax.Array, n: int) -> jax.Array:
  """Bans every token that would repeat an n-gram already in the sequence."""
  if n <= 0:
    return scores
  max_len = sequences.shape[1]
  starts = jnp.arange(max_len)
  # The (n-1)-token prefix ending right before the token to be generated.
  prefix = jax.vmap(lambda s: jax.lax.dynamic_slice(s, (cur_len - (n - 1),), (n - 1,)))(sequences) \
      if n > 1 else sequences[:, :0]
  matches = jnp.ones(sequences.shape, bool)
  for j in range(n - 1):
    shifted = jnp.roll(sequences, -j, axis=1)
    matches &= shifted == prefix[:, j:j + 1]
  # An n-gram starting at s is complete in the sequence iff s + n - 1 < cur_len.
  valid = (starts + n - 1 < cur_len) & (cur_len >= n)
  banned_tokens = jnp.roll(sequences, -(n - 1), axis=1)
  banned = jnp.zeros(scores.shape, bool)
  rows = jnp.arange(scores.shape[0])[:, None]
  banned = banned.at[rows, banned_tokens].max(matches & valid[None, :])
  return jnp.where(banned, NEG_INF, scores)


def suppress_eos(scores: jax.Array, eos_token_ids: tuple[int, ...], active: jax.Array) -> jax.Array:
  """-inf on the EOS tokens while `active` (min_new_tokens not reached)."""
  if not eos_token_ids:
    return scores
  ids = jnp.asarray(eos_token_ids)
  return scores.at[:, ids].set(jnp.where(active, NEG_INF, scores[:, ids]))


def top_k_filter(scores: jax.Array, k: int) -> jax.Array:
  """Keeps the k best scores (ties at the k-th kept), -inf elsewhere."""
  if k <= 0 or k >= scores.shape[-1]:
    return scores
  kth = jax.lax.top_k(scores, k)[0][:, -1:]
  return jnp.where(scores < kth, NEG_INF, scores)


def top_p_filter(scores: jax.Array, p: float, min_keep: int = 1) -> jax.Array:
  """Nucleus filtering as HF: drop the tokens whose ascending cumulative probability <= 1 - p."""
  if p >= 1.0:
    return scores
  order = jnp.argsort(scores, axis=-1)
  sorted_scores = jnp.take_along_axis(scores, order, axis=-1)
  cumulative = jnp.cumsum(jax.nn.softmax(sorted_scores, axis=-1), axis=-1)
  remove_sorted = cumulative <= 1 - p
  remove_sorted = remove_sorted.at[:, -min_keep:].set(False)
  remove = jnp.zeros_like(remove_sorted).at[jnp.arange(scores.shape[0])[:, None], order].set(remove_sorted)
  return jnp.where(remove, NEG_INF, scores)
