"""Import released weights into Flax variables, and export OpenFlamingo `checkpoint.pt` files.

Import: the frozen towers come from a Hugging Face LM directory and an open_clip/OpenAI CLIP
weights file, streamed tensor by tensor; the trainable parts come from an OpenFlamingo
`checkpoint.pt` or, without one, a fresh seeded initialisation (the start of a new run). The
LM's tables are cut to the config's vocabulary (OpenFlamingo resizes 50432 rows to
len(tokenizer) = 50280). Export writes exactly the keys OpenFlamingo's released files hold.
"""
from __future__ import annotations

import os
import re
from typing import Any, Iterable

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from flamingo_jax.models import layer_groups, shapes
from flamingo_jax.weights import names, readers
from flamingo_jax.weights.state_dict import (CheckpointMismatchError, _get, _set, special_rows_from_table,
                                             table_with_special_rows)

VOCAB_TABLES = ("embed", "lm_head")  # Flax modules whose (torch) rows are the vocabulary


def _unrolled(model: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  model = model.copy_and_resolve_references()
  with model.unlocked():
    model.scan_layers = False
  return model


def _expected(model) -> dict:
  return nn.unbox(shapes.abstract_variables(_unrolled(model)))


# Tensors a file may hold that the model does not need: tied output heads, attention-mask and
# rotary buffers, and the duplicate registrations of OpenFlamingo's live modules.
IGNORABLE = re.compile(r"(^|\.)(lm_head\.weight|attention\.(bias|masked_bias)|rotary_emb\.inv_freq)$"
                       r"|\.decoder_layer\.|old_decoder_blocks|gated_cross_attn_layers|^vision_encoder\.")


def _fill(variables: dict, entries: list[names.Entry], tensors: Iterable[tuple[str, np.ndarray]],
          expected: dict, vocab: int, source: str) -> set[str]:
  """Streams tensors into `variables` through `entries`; returns the torch keys used. A tensor
  that maps to nothing (and is not a known ignorable one) is an error: nothing is dropped silently."""
  by_key = {k: e for e in entries for k in e.torch_keys}
  pending: dict[int, dict[str, np.ndarray]] = {}
  used, unexpected = set(), []
  for raw_key, array in tensors:
    key = _canonical(raw_key, by_key)
    if key is None:
      if not IGNORABLE.search(raw_key):
        unexpected.append(raw_key)
      continue
    e = by_key[key]
    if e.path[-2] in VOCAB_TABLES and array.shape[0] > vocab:
      array = array[:vocab]  # OpenFlamingo's resize_token_embeddings(len(tokenizer)) shrinks tables
    parts = pending.setdefault(id(e), {})
    parts[key] = array
    if len(parts) < len(e.torch_keys):
      continue
    value = np.asarray(e.to_flax([parts[k] for k in e.torch_keys]))
    del pending[id(e)]
    want = tuple(_get(expected[e.collection], e.path).shape)
    if value.shape != want:
      raise CheckpointMismatchError(f"Shape mismatch for {', '.join(e.torch_keys)}: got {value.shape} "
                                    f"as {'/'.join(e.path)}, the config expects {want}")
    _set(variables.setdefault(e.collection, {}), e.path, value)
    used.update(e.torch_keys)
  if unexpected:
    raise CheckpointMismatchError(f"{source}: {len(unexpected)} unexpected tensors, e.g. {unexpected[:8]} "
                                  "(another model family, naming or variant?)")
  return used


def _canonical(key: str, by_key: dict) -> str | None:
  """The entry key a file's key stands for (transformers >= 5 saves GPT-NeoX's embed_out as
  lm_head), or None for tensors the model does not use (tied heads, buffers, duplicates)."""
  if key in by_key:
    return key
  renamed = key.replace("lm_head.", "embed_out.")
  return renamed if renamed in by_key else None


def _missing(entries, used) -> list[str]:
  return [k for e in entries for k in e.torch_keys if k not in used]


def import_weights(config: ml_collections.ConfigDict, *, lm_dir: str | None = None,
                   clip_path: str | None = None, openflamingo_checkpoint: str | None = None,
                   seed: int = 0) -> dict[str, Any]:
  """Variables (numpy, unrolled layout) for `config.model` from released weights."""
  model = _unrolled(config.model)
  expected = _expected(model)
  variables: dict = {}
  if lm_dir:
    entries = names.lm_entries(model.lm)
    used = _fill(variables, entries, readers.iter_hf_tensors(lm_dir), expected, model.lm.vocab_size, lm_dir)
    if _missing(entries, used):
      raise CheckpointMismatchError(f"{lm_dir}: {len(_missing(entries, used))} LM tensors missing, "
                                    f"e.g. {_missing(entries, used)[:5]} (wrong family or naming?)")
  if clip_path:
    entries = names.vision_entries(model.vision)
    tensors = ((k.replace("visual.", "vision_encoder.", 1), v)
               for k, v in readers.iter_file_tensors(clip_path) if k.startswith("visual."))
    used = _fill(variables, entries, tensors, expected, model.lm.vocab_size, clip_path)
    if _missing(entries, used):
      raise CheckpointMismatchError(f"{clip_path}: vision tensors missing, e.g. {_missing(entries, used)[:5]}")
  if openflamingo_checkpoint:
    load_openflamingo_checkpoint(variables, model, openflamingo_checkpoint, expected)
  else:  # a new run: trainable parts freshly initialised (XLA drops the unused frozen init)
    params = jax.jit(lambda rng: nn.unbox(shapes.init_variables(model, rng))["params"])(
        jax.random.PRNGKey(seed))
    variables["params"] = jax.tree_util.tree_map(np.asarray, params)
    if model.train_special_embeddings and "lm" in variables.get("frozen", {}):
      variables["params"]["special_embeddings"] = special_rows_from_table(
          variables["frozen"]["lm"]["embed"]["embedding"], model)
  if config.model.scan_layers:
    variables = layer_groups.to_scanned(variables, config.model)
  return variables


def _checkpoint_entries(model) -> list[names.Entry]:
  """What a released checkpoint.pt holds: perceiver, gated blocks and the embedding table(s)."""
  lm = [e for e in names.lm_entries_in_flamingo_namespace(model.lm)
        if e.path[:2] in (("lm", "embed"), ("lm", "lm_head"), ("lm", "pos_embed"))]
  return [*names.perceiver_entries(model.perceiver), *names.xattn_entries(model), *lm]


def load_openflamingo_checkpoint(variables: dict, model, path: str, expected: dict) -> None:
  """Trainable parts (and the saved embedding tables) from an OpenFlamingo checkpoint.pt."""
  entries = _checkpoint_entries(model)
  tensors = ((k.removeprefix("module."), v) for k, v in readers.iter_file_tensors(path))
  used = _fill(variables, entries, tensors, expected, model.lm.vocab_size, path)
  trainable = [e for e in entries if e.collection == "params"]
  missing = _missing(trainable, used)
  if missing:
    raise CheckpointMismatchError(f"{path}: {len(missing)} trainable tensors missing, e.g. {missing[:5]} "
                                  "(a checkpoint of another variant?)")
  if model.train_special_embeddings:
    variables["params"]["special_embeddings"] = special_rows_from_table(
        variables["frozen"]["lm"]["embed"]["embedding"], model)


def export_state_dict(config: ml_collections.ConfigDict, variables: Any,
                      neox_head_name: str = "embed_out") -> dict[str, np.ndarray]:
  """The state dict of an OpenFlamingo checkpoint.pt: the keys the released files have.

  GPT-NeoX's output table is `embed_out` in the released files (transformers 4.x, which
  open_flamingo 2.0.1 pins); transformers >= 5 names it `lm_head`: pass that for such a stack.
  """
  model = _unrolled(config.model)
  variables = jax.tree_util.tree_map(np.asarray, jax.device_get(nn.unbox(variables)))
  if config.model.scan_layers:
    variables = layer_groups.to_unrolled(variables, config.model)
  variables = {"params": dict(variables["params"]), "frozen": {"lm": dict(variables["frozen"]["lm"])}}
  if model.train_special_embeddings:
    rows = variables["params"].pop("special_embeddings")
    embed = variables["frozen"]["lm"]["embed"]
    variables["frozen"]["lm"]["embed"] = {"embedding": table_with_special_rows(embed["embedding"], rows, model)}
  out = {}
  for e in _checkpoint_entries(model):
    try:
      value = _get(variables[e.collection], e.path)
    except KeyError as err:
      raise CheckpointMismatchError(f"Variables lack {e.collection}/{'/'.join(e.path)}") from err
    for key, array in zip(e.torch_keys, e.to_torch(value)):
      out[key.replace("lang_encoder.embed_out.", f"lang_encoder.{neox_head_name}.")] = array
  return out


def save_checkpoint_pt(config: ml_collections.ConfigDict, variables: Any, path: str,
                       neox_head_name: str = "embed_out") -> None:
  """Writes an OpenFlamingo checkpoint.pt atomically (a temp file renamed into place)."""
  import torch  # pylint: disable=g-import-not-at-top
  sd = {k: torch.from_numpy(np.ascontiguousarray(v, np.float32)) for k, v in
        export_state_dict(config, variables, neox_head_name).items()}
  tmp = f"{path}.tmp-{os.getpid()}"
  try:
    torch.save(sd, tmp)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)

