"""Streaming readers for PyTorch-side weights: one tensor at a time, never two full copies.

- Hugging Face LM directories: `*.safetensors` (read tensor by tensor) or `pytorch_model*.bin`
  (one shard at a time, memory-mapped), single or sharded, with or without an index file.
- open_clip / OpenAI CLIP weight files (a state dict or a TorchScript archive).
- OpenFlamingo `checkpoint.pt` files (a plain state dict or a training checkpoint dict).
"""
from __future__ import annotations

import glob
import json
import os
from typing import Iterator

import numpy as np


class UnreadableCheckpointError(IOError):
  """A weights file or directory that cannot be read; the message names it."""


def _to_numpy(tensor) -> np.ndarray:
  import torch  # pylint: disable=g-import-not-at-top
  if tensor.dtype == torch.bfloat16:
    tensor = tensor.float()
  return tensor.detach().cpu().numpy()


def hf_shard_files(lm_dir: str) -> list[str]:
  """The weight files of an HF model directory, in index order if there is an index."""
  if not os.path.isdir(lm_dir):
    raise UnreadableCheckpointError(f"Not a directory: {lm_dir!r}")
  for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
    index = os.path.join(lm_dir, index_name)
    if os.path.exists(index):
      with open(index) as f:
        files = sorted(set(json.load(f)["weight_map"].values()))
      return [os.path.join(lm_dir, name) for name in files]
  files = sorted(glob.glob(os.path.join(lm_dir, "*.safetensors")))
  files = files or sorted(glob.glob(os.path.join(lm_dir, "pytorch_model*.bin")))
  if not files:
    raise UnreadableCheckpointError(f"No *.safetensors or pytorch_model*.bin in {lm_dir!r}")
  return files


def iter_hf_tensors(lm_dir: str) -> Iterator[tuple[str, np.ndarray]]:
  """(key, array) for every tensor of an HF LM directory, one at a time."""
  for path in hf_shard_files(lm_dir):
    yield from iter_file_tensors(path)


def iter_file_tensors(path: str) -> Iterator[tuple[str, np.ndarray]]:
  """(key, array) for every tensor of one weights file."""
  try:
    if path.endswith(".safetensors"):
      from safetensors import safe_open  # pylint: disable=g-import-not-at-top
      with safe_open(path, framework="pt") as f:
        for key in f.keys():
          yield key, _to_numpy(f.get_tensor(key))
      return
    import torch  # pylint: disable=g-import-not-at-top
    try:
      sd = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except RuntimeError:  # TorchScript archives (OpenAI's CLIP files) are not zip state dicts
      sd = torch.jit.load(path, map_location="cpu").state_dict()
  except Exception as e:  # noqa: BLE001 — every reader error becomes one clear message
    raise UnreadableCheckpointError(f"Cannot read weights file {path!r}: {e}") from e
  if isinstance(sd, dict) and "model_state_dict" in sd:  # OpenFlamingo training checkpoint
    sd = {k.removeprefix("module."): v for k, v in sd["model_state_dict"].items()}
  if isinstance(sd, dict) and "state_dict" in sd:
    sd = sd["state_dict"]
  if not isinstance(sd, dict):
    raise UnreadableCheckpointError(f"{path!r} holds a {type(sd).__name__}, not a state dict")
  for key in list(sd):
    if hasattr(sd[key], "detach"):
      yield key, _to_numpy(sd.pop(key))


def hf_config(lm_dir: str) -> dict:
  path = os.path.join(lm_dir, "config.json")
  if not os.path.exists(path):
    raise UnreadableCheckpointError(f"No config.json in {lm_dir!r}")
  with open(path) as f:
    return json.load(f)
