"""The jitted training step: one optimizer step over an MMC4 batch and a LAION batch.

loss = m_mmc4 * loss_mmc4 + m_laion * loss_laion; its gradient is the sum of the two datasets'
weighted gradients, which is what the reference accumulates with two backward passes.
"""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from flamingo_jax.models.flamingo import Flamingo
from flamingo_jax.train.loss import causal_lm_loss
from flamingo_jax.train.state import TrainState

DATASETS = ("mmc4", "laion")


def gate_values(params) -> dict[str, jax.Array]:
  """tanh of every gated block's attn and ff gates (the signal users watch), per layer."""
  out = {}
  if "layers" in params:  # scanned: (groups, 1)
    for name in ("attn_gate", "ff_gate"):
      values = jnp.tanh(params["layers"]["xattn"][name][:, 0])
      for g in range(values.shape[0]):
        out[f"gates/{name}/group_{g}"] = values[g]
    return out
  for block, p in params.items():
    if block.startswith("xattn_"):
      out[f"gates/attn_gate/{block}"] = jnp.tanh(p["attn_gate"][0])
      out[f"gates/ff_gate/{block}"] = jnp.tanh(p["ff_gate"][0])
  return out


def non_finite_policy(cfg: ml_collections.ConfigDict) -> str:
  """'stop' (the run ends with an error naming the step) or 'skip' (that step's update is dropped)."""
  policy = cfg.train.get("non_finite", "stop")
  if policy not in ("stop", "skip"):
    raise ValueError(f"train.non_finite must be 'stop' or 'skip', not {policy!r}")
  return policy


def make_train_step(cfg: ml_collections.ConfigDict, tx: optax.GradientTransformation) -> Callable:
  """(state, frozen, batches) -> (state, metrics); jit it with shardings at the call site."""
  model = Flamingo(cfg.model)
  weights = {"mmc4": cfg.optim.loss_multiplier_mmc4, "laion": cfg.optim.loss_multiplier_laion}
  skip_non_finite = non_finite_policy(cfg) == "skip"

  def loss_fn(params, frozen, batches):
    losses = {}
    for name in DATASETS:
      b = batches[name]
      logits = model.apply({"params": params, "frozen": frozen}, b["images"], b["input_ids"],
                           b["attention_mask"])
      losses[name] = causal_lm_loss(logits, b["labels"])
    total = sum(weights[n] * losses[n] for n in DATASETS)
    return total, losses

  def train_step(state: TrainState, frozen: Any, batches: dict) -> tuple[TrainState, dict]:
    (total, losses), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, frozen, batches)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    grad_norm = optax.global_norm(grads)
    finite = jnp.isfinite(total) & jnp.isfinite(grad_norm)
    if skip_non_finite:  # Keep the previous params and optimizer state; the batch is consumed.
      keep = lambda new, old: jnp.where(finite, new, old)
      params = jax.tree_util.tree_map(keep, params, state.params)
      opt_state = jax.tree_util.tree_map(keep, opt_state, state.opt_state)
    new = TrainState(step=state.step + 1, params=params, opt_state=opt_state)
    metrics = {"loss": total, "loss_mmc4": losses["mmc4"], "loss_laion": losses["laion"],
               "grad_norm": grad_norm, "finite": finite, **gate_values(params)}
    return new, metrics

  return train_step


def make_eval_loss(cfg: ml_collections.ConfigDict) -> Callable:
  """(params, frozen, batch) -> mean loss, with the batch's own images and with blank ones."""
  model = Flamingo(cfg.model)

  def eval_loss(params, frozen, batch):
    def loss(images):
      logits = model.apply({"params": params, "frozen": frozen}, images, batch["input_ids"],
                           batch["attention_mask"])
      return causal_lm_loss(logits, batch["labels"])
    return loss(batch["images"]), loss(jnp.zeros_like(batch["images"]))

  return eval_loss
