"""Flat PyTorch-style state dicts (numpy arrays) <-> nested Flax variables, via `names.py`."""
from __future__ import annotations

from typing import Any, Iterable, Mapping

import flax
import jax
import ml_collections
import numpy as np

from flamingo_jax import tree
from flamingo_jax.errors import CheckpointMismatchError
from flamingo_jax.models import layer_groups
from flamingo_jax.weights import names
from flamingo_jax.weights.names import Entry


# Names that differ between checkpoint vintages: transformers >= 5 calls GPT-NeoX's `embed_out`
# `lm_head`; released checkpoints and hub files use `embed_out`.
KEY_ALIASES = (("embed_out.", "lm_head."),)


def _lookup(state_dict: Mapping[str, Any], key: str) -> str | None:
  """The key under which `key` is stored, trying its aliases; None if absent."""
  if key in state_dict:
    return key
  for old, new in KEY_ALIASES:
    if old in key and key.replace(old, new) in state_dict:
      return key.replace(old, new)
  return None


def to_flax(state_dict: Mapping[str, Any], entries: Iterable[Entry], *,
            expected: Mapping | None = None, allow_missing: bool = False) -> dict:
  """Builds {collection: nested dict} from a flat state dict.

  `expected` (e.g. `jax.eval_shape` of the model's variables, unboxed) checks every shape.
  Missing torch keys raise, naming them, unless `allow_missing` (then the entry is skipped).
  """
  out: dict = {}
  missing, wrong = [], []
  for e in entries:
    found = [_lookup(state_dict, k) for k in e.torch_keys]
    if None in found:
      missing.extend(k for k, f in zip(e.torch_keys, found) if f is None)
      continue
    value = np.asarray(e.to_flax([np.asarray(state_dict[k]) for k in found]))
    if expected is not None:
      want = tuple(tree.get(expected[e.collection], e.path).shape)
      if tuple(value.shape) != want:
        wrong.append(f"{'/'.join(e.path)} from {', '.join(e.torch_keys)}: got {value.shape}, "
                     f"expected {want}")
        continue
    tree.put(out.setdefault(e.collection, {}), e.path, value)
  if wrong:
    raise CheckpointMismatchError("Shape mismatch:\n  " + "\n  ".join(wrong))
  if missing and not allow_missing:
    raise CheckpointMismatchError(f"{len(missing)} keys missing from the checkpoint, e.g.: "
                                  + ", ".join(missing[:10]))
  return out


def to_torch(variables: Mapping, entries: Iterable[Entry]) -> dict[str, np.ndarray]:
  """Flat {torch key: array} from Flax variables, for the entries whose variables exist."""
  variables = flax.core.unfreeze(variables)
  out = {}
  for e in entries:
    try:
      value = np.asarray(jax.device_get(tree.get(variables[e.collection], e.path)))
    except KeyError:
      continue
    for key, array in zip(e.torch_keys, e.to_torch(value)):
      out[key] = array
  return out


def special_rows_from_table(table: np.ndarray, model: ml_collections.ConfigDict) -> np.ndarray:
  """The `<|endofchunk|>` and `<image>` rows of an embedding table, as `special_embeddings`."""
  return np.stack([table[model.eoc_token_id], table[model.media_token_id]])


def table_with_special_rows(table: np.ndarray, rows: np.ndarray,
                            model: ml_collections.ConfigDict) -> np.ndarray:
  """The embedding table with the trained special rows written back (as OpenFlamingo saves it)."""
  table = np.array(table, copy=True)
  table[model.eoc_token_id], table[model.media_token_id] = rows[0], rows[1]
  return table


def flamingo_to_flax(state_dict: Mapping[str, Any], model: ml_collections.ConfigDict,
                     **kwargs) -> dict:
  """An OpenFlamingo-namespace state dict (e.g. `Flamingo.state_dict()`) -> Flax variables."""
  variables = to_flax(state_dict, names.flamingo_entries(model), **kwargs)
  if model.train_special_embeddings and "lm" in variables.get("frozen", {}):
    table = variables["frozen"]["lm"]["embed"]["embedding"]
    variables.setdefault("params", {})["special_embeddings"] = special_rows_from_table(table, model)
  if model.scan_layers:
    variables = layer_groups.to_scanned(variables, model)
  return variables
