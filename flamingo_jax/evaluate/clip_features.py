"""CLIP image embeddings for RICES, from the model's own (frozen) vision tower, and their cache.

OpenFlamingo's RICES uses open_clip's `encode_image` of ViT-L/14 "openai": the class token after
`ln_post`, projected by `proj` (768-d), L2-normalised. The released models' vision encoder is that
same CLIP, and our vision tower carries `ln_post` and `proj` (unused by Flamingo itself), so the
embedding is computed from the checkpoint we evaluate, with no second model.

Cache: `<dir>/<name>.npy` (float32, one row per train example, in the dataset's order). A
reference cache `<dir>/<name>.pkl` (torch.save of the features, made by its
`cache_rices_features.py`) is read when no `.npy` exists and torch is installed.
"""
from __future__ import annotations

import logging
import os
from typing import Callable

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from flamingo_jax.models.layers import FROZEN
from flamingo_jax.models.vision import clip_embedding_fn


def image_embeddings(model_cfg: ml_collections.ConfigDict, variables, images) -> jax.Array:
  """(N, S, S, 3) CLIP-normalised images -> (N, embed_dim) L2-normalised CLIP image embeddings
  (compiled for this call; `Sampler.embed_images` keeps the compiled function)."""
  vision_vars = nn.unbox(variables)[FROZEN]["vision"]
  return jax.jit(clip_embedding_fn(model_cfg))(vision_vars, images)


def load_or_compute(cache_dir: str | None, name: str, num_rows: int,
                    compute: Callable[[], np.ndarray], write: bool = True) -> np.ndarray:
  """The train split's embeddings: from `<cache_dir>/<name>.npy` (or the reference's `.pkl`), or
  computed and, if `write`, saved there (atomically)."""
  npy = os.path.join(cache_dir, f"{name}.npy") if cache_dir else None
  pkl = os.path.join(cache_dir, f"{name}.pkl") if cache_dir else None
  features = None
  if npy and os.path.exists(npy):
    features = np.load(npy)
  elif pkl and os.path.exists(pkl):
    import torch  # pylint: disable=g-import-not-at-top
    features = torch.load(pkl, map_location="cpu").float().numpy()
  if features is not None:
    if features.shape[0] != num_rows:
      raise ValueError(f"RICES cache for {name} has {features.shape[0]} rows, the train split "
                       f"{num_rows}: stale cache in {cache_dir}?")
    return features.astype(np.float32)
  features = np.asarray(compute(), np.float32)
  if npy and write:
    os.makedirs(cache_dir, exist_ok=True)
    tmp = npy + f".tmp{os.getpid()}.npy"
    np.save(tmp, features)
    os.replace(tmp, npy)
    logging.info("Cached %d RICES features in %s", len(features), npy)
  return features
