"""Validation on held-out data: the same few batches of each dataset's `validation_shards`, read
once, and the loss of the run's current weights on them; and the end-of-run check that the model
uses its images (held-out LAION captions with their real images and with blank ones).

  validation = Validation.from_config(cfg, tokenizer, mesh)   # None: no validation shards
  validation.losses(params, frozen)      # {"val/loss_laion": ..., "val/loss_mmc4": ..., "val/loss": ...}
  validation.image_dependence(params, frozen)   # {"eval/loss_real_images": ..., "eval/loss_blank_images": ...}

`val/loss` weights the datasets as training does (data.<name>.loss_weight), so it is comparable
with the training loss. Batches are process-local numpy, sent to the devices for each use.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh

from flamingo_jax.data import batch as batch_lib, pipeline
from flamingo_jax.models import rules
from flamingo_jax.train import step as step_lib


@dataclasses.dataclass
class Validation:
  """A fixed set of held-out batches per dataset (those with validation shards) and the loss."""
  batches: dict[str, list[dict[str, np.ndarray]]]
  weights: dict[str, float]
  mesh: Mesh
  loss_fn: Callable[[Any, Any, dict], jax.Array]
  skipped: dict[str, int]  # held-out samples dropped while reading them, "{dataset}/{reason}"
  captions: str | None = None  # the held-out pairs of `image_dependence`

  @classmethod
  def from_config(cls, cfg: ml_collections.ConfigDict, tok, mesh: Mesh) -> Validation | None:
    """Reads `train.validation_batches` batches of every dataset that has `validation_shards`,
    saying so (and when the held-out shards hold fewer samples, so that some repeat)."""
    mixture = batch_lib.mixture(cfg.data)
    names = [n for n in mixture if cfg.data[n].get("validation_shards")]
    if not names:
      fields = ", ".join(f"data.{n}.validation_shards" for n in mixture)
      print(f"No held-out data ({fields}): no validation loss and no real-vs-blank-image check", flush=True)
      return None
    n, batches, skipped = cfg.train.validation_batches, {}, {}
    for name in names:
      batches[name], counter, available = pipeline.validation_batches(
          name, cfg.data, tok, n, process_index=jax.process_index(), process_count=jax.process_count())
      skipped.update(counter.counts)
      needed = n * cfg.data[name].batch_size // jax.process_count()
      note = (f"; they hold {available} samples, fewer than train.validation_batches x batch size: some are "
              "used twice") if available < needed else ""
      print(f"validation: {n} batches of {cfg.data[name].validation_shards} ({needed} samples{note})", flush=True)
    if skipped:
      print(f"validation: skipped held-out samples {dict(sorted(skipped.items()))}", flush=True)
    # The first dataset of one captioned image per row (LAION): the real-vs-blank-image check.
    captions = next((n for n in names if batch_lib.kind_of(n, cfg.data).captions_one_image), None)
    return cls(batches, batch_lib.loss_weights(cfg.data), mesh, jax.jit(step_lib.make_eval_loss(cfg.model)),
               skipped, captions)

  def _mean_loss(self, params, frozen, name: str, blank: bool = False) -> float:
    losses = []
    for local in self.batches[name]:
      if blank:
        local = dict(local, image_mask=np.zeros_like(local["image_mask"]))
      losses.append(self.loss_fn(params, frozen, rules.global_batch(local, self.mesh)))
    return float(np.mean(jax.device_get(losses)))

  def losses(self, params, frozen) -> dict[str, float]:
    """The loss on each dataset's held-out batches, and their weighted sum when all have them."""
    out = {f"val/loss_{name}": self._mean_loss(params, frozen, name) for name in self.batches}
    if set(self.batches) == set(self.weights):
      out["val/loss"] = sum(self.weights[n] * out[f"val/loss_{n}"] for n in self.weights)
    return out

  def image_dependence(self, params, frozen) -> dict[str, float]:
    """The held-out loss of captioned images (the mixture's first pairs dataset with held-out
    shards, e.g. LAION) with the real images and with blank ones: a model that learned to look
    does much better with the real ones. Empty without such held-out shards."""
    if self.captions is None:
      return {}
    return {"eval/loss_real_images": self._mean_loss(params, frozen, self.captions),
            "eval/loss_blank_images": self._mean_loss(params, frozen, self.captions, blank=True)}
