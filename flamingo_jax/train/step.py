"""The jitted training step: one optimizer step over a batch of every dataset of the mixture.

loss = sum over datasets of data.<name>.loss_weight * loss_<name> (OpenFlamingo's recipe: LAION
0.2, MMC4 1.0); its gradient is the sum of the datasets' weighted gradients, which is what the
reference accumulates with one backward pass per dataset.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from flamingo_jax.data import batch as batch_lib, image_preprocess
from flamingo_jax.errors import NonFiniteError
from flamingo_jax.models.flamingo import Flamingo
from flamingo_jax.train import optimizer
from flamingo_jax.train.loss import causal_lm_loss
from flamingo_jax.train.state import TrainState


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


@dataclasses.dataclass
class NonFinitePolicy:
  """What a non-finite loss, gradient or updated trainable state (parameters, optimizer state)
  does, on device and on the host (`train.non_finite`). A finite loss and gradient can still
  give a non-finite update (a learning rate that overflows it): the state is checked too, so no
  checkpoint ever holds a non-finite trainable value.

  'stop': the run ends with an error naming the step, before anything of it is saved. 'skip': the
  step's update is dropped on device (params and optimizer state kept, the batch consumed);
  more than `max_in_a_row` skips in a row stop the run. The host reads a step's `finite` flag
  every `check_every` steps (0: never).
  """
  action: str = "stop"
  max_in_a_row: int = 10
  check_every: int = 1
  skipped: int = 0
  in_a_row: int = 0

  @classmethod
  def from_config(cls, train_cfg: ml_collections.ConfigDict) -> "NonFinitePolicy":
    action = train_cfg.get("non_finite", "stop")
    if action not in ("stop", "skip"):
      raise ValueError(f"train.non_finite must be 'stop' or 'skip', not {action!r}")
    return cls(action, int(train_cfg.get("max_skipped_in_a_row", 10)),
               int(train_cfg.get("check_finite_every", 1)))

  @property
  def skip(self) -> bool:
    return self.action == "skip"

  def check(self, step: int, metrics: dict, force: bool = False) -> None:
    """After step `step` (1-based): raises NonFiniteError or counts a skipped update. Steps off
    the `check_every` grid are checked only when `force`d (a step about to be saved)."""
    if not force and (not self.check_every or step % self.check_every):
      return
    if bool(metrics["finite"]):
      self.in_a_row = 0
      return
    what = (f"Non-finite loss, gradient or updated state at step {step} (loss {float(metrics['loss'])}, "
            f"grad norm {float(metrics['grad_norm'])})")
    if not self.skip:
      raise NonFiniteError(f"{what}; no checkpoint was written for it")
    self.skipped, self.in_a_row = self.skipped + 1, self.in_a_row + 1
    print(f"{what}: update skipped ({self.skipped} so far)", flush=True)
    if self.in_a_row > self.max_in_a_row:
      raise NonFiniteError(f"{what}: {self.in_a_row} updates in a row skipped, more than "
                           f"train.max_skipped_in_a_row={self.max_in_a_row}; stopping")

  def scalars(self) -> dict[str, float]:
    return {"skipped/non_finite_steps": float(self.skipped)} if self.skip else {}


def all_finite(tree: Any) -> jax.Array:
  """Whether every floating-point value of `tree` is finite (one boolean on device)."""
  leaves = [x for x in jax.tree_util.tree_leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]
  return jnp.all(jnp.stack([jnp.isfinite(x).all() for x in leaves])) if leaves else jnp.bool_(True)


def _apply(model: Flamingo, variables: dict, batch: dict, packing: tuple[int, int] | None = None) -> jax.Array:
  """Logits of one dataset's batch (the contract of data/batch.py): uint8 images are normalised
  here, on the device (float ones are taken as normalised already)."""
  images = batch["images"]
  if images.dtype == jnp.uint8:
    images = image_preprocess.normalize(images)
  return model.apply(variables, images, batch["input_ids"], batch["attention_mask"],
                     image_mask=batch["image_mask"], packing=packing)


def make_train_step(cfg: ml_collections.ConfigDict, non_finite: NonFinitePolicy | None = None,
                    packing: dict[str, tuple[int, int] | None] | None = None) -> Callable:
  """(state, frozen, batches) -> (state, metrics); jit it with shardings at the call site.

  `batches` maps each dataset of `cfg.data.mixture` to a batch, weighted by its `loss_weight`; the
  optimizer is `cfg.optim`'s; `packing` ({dataset: (groups, per_group)}, train/image_buffers.py)
  runs the vision tower on real images only."""
  packing = packing or {}
  model = Flamingo(cfg.model)
  tx = optimizer.make_optimizer(cfg.optim)
  weights = batch_lib.loss_weights(cfg.data)
  skip_non_finite = non_finite is not None and non_finite.skip

  def loss_fn(params, frozen, batches):
    losses = {n: causal_lm_loss(_apply(model, {"params": params, "frozen": frozen}, batches[n],
                                       packing.get(n)), batches[n]["labels"]) for n in weights}
    return sum(weights[n] * losses[n] for n in weights), losses

  def train_step(state: TrainState, frozen: Any, batches: dict) -> tuple[TrainState, dict]:
    (total, losses), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, frozen, batches)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    grad_norm = optax.global_norm(grads)
    finite = jnp.isfinite(total) & jnp.isfinite(grad_norm) & all_finite((params, opt_state))
    if skip_non_finite:  # Keep the previous params and optimizer state; the batch is consumed.
      keep = lambda new, old: jnp.where(finite, new, old)
      params = jax.tree_util.tree_map(keep, params, state.params)
      opt_state = jax.tree_util.tree_map(keep, opt_state, state.opt_state)
    new = TrainState(step=state.step + 1, params=params, opt_state=opt_state)
    metrics = {"loss": total, **{f"loss_{n}": losses[n] for n in weights},
               "grad_norm": grad_norm, "finite": finite, **gate_values(params)}
    return new, metrics

  return train_step


def jit_train_step(cfg: ml_collections.ConfigDict, mesh: Mesh, state_shardings: TrainState,
                   non_finite: NonFinitePolicy | None = None,
                   packing: dict[str, tuple[int, int] | None] | None = None) -> Callable:
  """The step exactly as a run compiles it (train/loop.setup, and the planner before a job):
  the state donated and kept where `state_shardings` put it, the metrics replicated."""
  return jax.jit(make_train_step(cfg, non_finite, packing), donate_argnums=0,
                 out_shardings=(state_shardings, NamedSharding(mesh, PartitionSpec())))


class RecompileWatch:
  """Warns, naming what changed, when a jitted step compiles again after its first call: a run
  should compile its step once, and a changed shape, dtype or sharding silently costs a compile
  (minutes at scale) each time it happens.

    watch = RecompileWatch(step_fn)
    new_state, m = step_fn(state, frozen, batches)
    watch(step, {"state": state, "frozen": frozen, "batches": batches})  # after each call
  """

  def __init__(self, fn: Callable):
    self._fn, self._first, self._programs = fn, None, 0
    self.warnings: list[str] = []

  def __call__(self, step: int, args: Any) -> None:
    programs = getattr(self._fn, "_cache_size", lambda: 0)()
    if self._first is None:
      self._first, self._programs = _signature(args), programs
      return
    if programs <= self._programs:
      return
    self._programs = programs
    now = _signature(args)
    changed = [f"{k}: {self._first.get(k)} -> {v}" for k, v in now.items() if self._first.get(k) != v]
    changed += [f"{k}: gone" for k in self._first if k not in now]
    message = (f"step {step}: the train step compiled again ({programs} programs so far); the arguments "
               f"differ from the first step's in " + ("; ".join(changed[:5]) or "nothing visible (a "
                                                        "static argument or a jax setting changed)"))
    self.warnings.append(message)
    print(f"warning: {message}", flush=True)


def _signature(args: Any) -> dict[str, str]:
  """{path: "shape dtype sharding"} of every array in `args` (deleted, donated arrays too)."""
  out = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(args):
    sharding = getattr(leaf, "sharding", None)
    spec = getattr(sharding, "spec", sharding)
    weak = " weak" if getattr(leaf, "weak_type", False) else ""
    out[jax.tree_util.keystr(path)] = f"{tuple(leaf.shape)} {leaf.dtype}{weak} {spec}"
  return out


def make_eval_loss(model_cfg: ml_collections.ConfigDict) -> Callable:
  """(params, frozen, batch) -> the mean loss of one dataset's batch, no gradient (validation; the
  real-vs-blank-image check passes the batch with `image_mask` all False: a slot marked empty is
  encoded as a blank, all-zero image)."""
  model = Flamingo(model_cfg)

  def eval_loss(params, frozen, batch):
    return causal_lm_loss(_apply(model, {"params": params, "frozen": frozen}, batch), batch["labels"])

  return eval_loss
