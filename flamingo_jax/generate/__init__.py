"""KV-cached generation: the vision tower and resampler run once per prompt, the gated blocks'
image keys/values and every layer's self-attention keys/values are cached.

  sampler = Sampler(model_cfg, variables, mesh=mesh, rules=rules)   # compiles once
  tokens = sampler.generate(vision_x, input_ids, attention_mask,
                            DecodeSettings(max_new_tokens=20, num_beams=3, eos_token_ids=(eoc_id,)))

`generate(model_cfg, variables, ...)` is the one-shot form: a Sampler made for the call, whose
compiled functions are the model configuration's (a second call compiles nothing again).
"""
from __future__ import annotations

from typing import Any

import ml_collections
import numpy as np

from flamingo_jax.generate.sampler import Sampler
from flamingo_jax.generate.search import DecodeSettings

__all__ = ["DecodeSettings", "Sampler", "generate"]


def generate(model_cfg: ml_collections.ConfigDict, variables: Any, vision_x: np.ndarray,
             input_ids: np.ndarray, attention_mask: np.ndarray, *, rng=None, **settings) -> np.ndarray:
  """`Sampler(model_cfg, variables).generate(...)`; `settings` are DecodeSettings fields."""
  return Sampler(model_cfg, variables).generate(vision_x, input_ids, attention_mask, rng=rng, **settings)
