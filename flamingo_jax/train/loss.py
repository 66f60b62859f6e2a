"""The causal-LM loss as Hugging Face computes it from unshifted labels (-100 = ignored)."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def token_nll(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Per-token negative log-likelihood of labels[t+1] given position t, and its validity mask."""
  logits, targets = logits[:, :-1].astype(jnp.float32), labels[:, 1:]
  valid = targets != -100
  logp = jax.nn.log_softmax(logits, axis=-1)
  nll = -jnp.take_along_axis(logp, jnp.where(valid, targets, 0)[..., None], axis=-1)[..., 0]
  return nll * valid, valid


def causal_lm_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean NLL over the valid (shifted) tokens of the batch."""
  nll, valid = token_nll(logits, labels)
  return nll.sum() / jnp.maximum(valid.sum(), 1)
