"""Streaming readers for PyTorch-side weights: one tensor at a time, never two full copies.

- Hugging Face LM directories: `*.safetensors` (memory-mapped, read tensor by tensor) or
  `pytorch_model*.bin` (one shard at a time, memory-mapped), single or sharded, with or without
  an index file.
- open_clip / OpenAI CLIP weight files (a state dict, a safetensors file or OpenAI's TorchScript
  archive).
- OpenFlamingo `checkpoint.pt` files (a plain state dict or a training checkpoint dict).

Arrays come back in the file's dtype (bf16 as `ml_dtypes.bfloat16`), as zero-copy views where
torch allows; the caller casts each one to the dtype it stores.
"""
from __future__ import annotations

import glob
import json
import os
import zipfile
from typing import Iterator

import ml_dtypes
import numpy as np

from flamingo_jax.errors import UnreadableCheckpointError


def _to_numpy(tensor) -> np.ndarray:
  import torch  # pylint: disable=g-import-not-at-top
  tensor = tensor.detach().cpu()
  if tensor.dtype == torch.bfloat16:  # numpy has no bf16; reinterpret the bits, no copy
    return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
  return tensor.numpy()


def hf_shard_files(lm_dir: str) -> list[str]:
  """The weight files of an HF model directory, in index order if there is an index."""
  if not os.path.isdir(lm_dir):
    raise UnreadableCheckpointError(f"Not a directory: {lm_dir!r}")
  for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
    index = os.path.join(lm_dir, index_name)
    if os.path.exists(index):
      try:
        with open(index) as f:
          files = sorted(set(json.load(f)["weight_map"].values()))
      except (OSError, ValueError, KeyError) as e:
        raise UnreadableCheckpointError(f"Cannot read the shard index {index!r}: {e}") from e
      paths = [os.path.join(lm_dir, name) for name in files]
      absent = [p for p in paths if not os.path.exists(p)]
      if absent:
        raise UnreadableCheckpointError(f"{index!r} lists shards that are not there: {absent}")
      return paths
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
  if not os.path.isfile(path):
    raise UnreadableCheckpointError(f"No such weights file: {path!r}")
  if path.endswith(".safetensors"):
    yield from _iter_safetensors(path)
    return
  sd = _torch_load(path)
  if isinstance(sd, dict) and "model_state_dict" in sd:  # OpenFlamingo training checkpoint
    sd = {k.removeprefix("module."): v for k, v in sd["model_state_dict"].items()}
  if isinstance(sd, dict) and "state_dict" in sd:
    sd = sd["state_dict"]
  if not isinstance(sd, dict):
    raise UnreadableCheckpointError(f"{path!r} holds a {type(sd).__name__}, not a state dict")
  for key in list(sd):
    if hasattr(sd[key], "detach"):
      yield key, _to_numpy(sd.pop(key))


def _iter_safetensors(path: str) -> Iterator[tuple[str, np.ndarray]]:
  from safetensors import safe_open  # pylint: disable=g-import-not-at-top
  try:
    f = safe_open(path, framework="pt")
    keys = list(f.keys())
  except Exception as e:  # noqa: BLE001 — safetensors raises its own error types
    raise UnreadableCheckpointError(f"Cannot read weights file {path!r}: {e}") from e
  for key in keys:
    yield key, _to_numpy(f.get_tensor(key))


def _is_torchscript(path: str) -> bool:
  """TorchScript archives are zips with code and constants; torch.save zips have neither."""
  if not zipfile.is_zipfile(path):
    return False
  with zipfile.ZipFile(path) as z:
    return any(n.endswith("/constants.pkl") for n in z.namelist())


def _torch_load(path: str):
  """A torch file's contents: zip state dicts memory-mapped, legacy pickles read whole,
  TorchScript archives (OpenAI's CLIP files) through torch.jit. Never unpickles arbitrary code."""
  import torch  # pylint: disable=g-import-not-at-top
  try:
    if _is_torchscript(path):
      return torch.jit.load(path, map_location="cpu").state_dict()
    if zipfile.is_zipfile(path):
      return torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    return torch.load(path, map_location="cpu", weights_only=True)  # legacy (pre-1.6) format
  except Exception as e:  # noqa: BLE001 — whatever the loader raises, name the file
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    raise UnreadableCheckpointError(f"Cannot read weights file {path!r} (not a torch state dict, "
                                    f"safetensors file or TorchScript archive): {type(e).__name__}: "
                                    f"{first}") from e


def hf_config(lm_dir: str) -> dict:
  path = os.path.join(lm_dir, "config.json")
  if not os.path.exists(path):
    raise UnreadableCheckpointError(f"No config.json in {lm_dir!r}")
  with open(path) as f:
    return json.load(f)
