"""Where our evaluation differs from OpenFlamingo 2.0.1's, each difference with its switch.

`--eval_config.protocol=reference` turns every switch to the reference's behaviour, to reproduce
its published numbers; `default` (ours) leaves each as the eval config sets it (all ours unless
set). The report and its JSON record the protocol and every switch.

  cfg = protocol.resolve(eval_cfg)     # the switches the run uses
  protocol.describe(cfg)               # {"protocol": "reference", "reference_demo_order": True, ...}
"""
from __future__ import annotations

import dataclasses

import ml_collections

from flamingo_jax.errors import UsageError

PROTOCOLS = ("default", "reference")


@dataclasses.dataclass(frozen=True)
class Deviation:
  """One difference: `field` (an eval-config bool) True does what the reference does."""
  field: str
  reference: str  # what OpenFlamingo 2.0.1's evaluate.py does
  ours: str  # what we do instead, and why


DEVIATIONS = (
    Deviation("reference_demo_order",
              "assigns random demonstrations in its DataLoader's order: a DistributedSampler "
              "(shuffle, seed 0) permutes the test subset, so which query gets which "
              "demonstrations depends on that permutation (and on the GPU count); prompt-"
              "ensembling shuffles come from the same random stream, batch by batch",
              "assigns them in test-subset order and shuffles each example's demonstrations from "
              "its own seed: the same results on any number of devices and any batch size"),
    Deviation("reference_cached_scores",
              "scores a class name with the KV cache (its default) by continuing the cached "
              "context without an attention mask, so the name's tokens attend to the prompt's left "
              "padding (prompts padded to the batch's longest): a row's scores depend on the "
              "other rows of its batch",
              "masks the padding: a row scores the same in any batch (as the reference without the "
              "cache, --no_caching_for_classification)"),
    Deviation("reference_zero_shot_classification_images",
              "keeps the demonstration images in a zero-shot classification prompt while dropping "
              "their <image> tokens, so the query's <image> attends to the first demonstration's "
              "image",
              "gives a zero-shot prompt the query's image only"),
)


def resolve(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The eval config with every switch of `cfg.protocol` applied."""
  if cfg.protocol not in PROTOCOLS:
    raise UsageError(f"--eval_config.protocol={cfg.protocol!r}: expected one of {', '.join(PROTOCOLS)}")
  if cfg.protocol == "default":
    return cfg
  cfg = cfg.copy_and_resolve_references()
  with cfg.unlocked():
    for d in DEVIATIONS:
      cfg[d.field] = True
  return cfg


def describe(cfg: ml_collections.ConfigDict) -> dict:
  """The protocol and each switch as the run used them (for the report's JSON)."""
  return {"protocol": cfg.protocol, **{d.field: bool(cfg[d.field]) for d in DEVIATIONS}}
