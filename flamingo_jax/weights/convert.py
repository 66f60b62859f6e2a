"""Import released weights into Flax variables, and export OpenFlamingo `checkpoint.pt` files.

Import: the frozen towers come from a Hugging Face LM directory and an open_clip/OpenAI CLIP
weights file, streamed tensor by tensor and cast to the config's `frozen_dtype` one tensor at a
time; the trainable parts come from an OpenFlamingo `checkpoint.pt` or, without one, a fresh
seeded initialisation (the start of a new run). The LM's tables are cut to the config's
vocabulary (OpenFlamingo resizes 50432 rows to len(tokenizer) = 50280). Every variable the model
has must be filled, and every tensor read must map somewhere (known buffers and duplicates
aside): otherwise a `CheckpointMismatchError` names the keys.

Export writes exactly the keys OpenFlamingo's released files hold, in fp32.

`import_checkpoint` and `export_checkpoint` are the whole conversions (what the CLI runs).
"""
from __future__ import annotations

import os
import re
from typing import Any, Iterable

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from flamingo_jax.models import families, layer_groups, shapes
from flamingo_jax.weights import names, orbax_io, readers
from flamingo_jax import tree, workdir
from flamingo_jax.weights.state_dict import (CheckpointMismatchError, special_rows_from_table,
                                             table_with_special_rows)

VOCAB_TABLES = ("embed", "lm_head")  # Flax modules whose (torch) rows are the vocabulary
EMBED_PATH = ("lm", "embed", "embedding")

# Tensors a file may hold that the model does not need: tied output heads, attention-mask and
# rotary buffers, and the duplicate registrations of OpenFlamingo's live modules.
IGNORABLE = re.compile(r"(^|\.)(lm_head\.weight|attention\.(bias|masked_bias)|rotary_emb\.inv_freq)$"
                       r"|\.decoder_layer\.|old_decoder_blocks|gated_cross_attn_layers|^vision_encoder\.")



def unrolled(model: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The model config in the unrolled layout, which checkpoints and name maps use."""
  model = model.copy_and_resolve_references()
  with model.unlocked():
    model.scan_layers = False
  return model


def expected_variables(model: ml_collections.ConfigDict) -> dict:
  """ShapeDtypeStructs of every variable (unrolled layout), from eval_shape: nothing allocated."""
  return nn.unbox(shapes.abstract_variables(unrolled(model)))


def torch_shapes(model: ml_collections.ConfigDict, entries: Iterable[names.Entry],
                 expected: dict | None = None) -> dict[str, tuple]:
  """{torch key: shape} that `entries` export for this config, computed without allocating
  (the transforms run on arrays of a zero-byte dtype). `expected`: `expected_variables(model)`."""
  expected = expected_variables(model) if expected is None else expected
  out = {}
  for e in entries:
    leaf = tree.get(expected[e.collection], e.path)
    for key, array in zip(e.torch_keys, e.to_torch(np.zeros(leaf.shape, np.dtype([])))):
      out[key] = tuple(array.shape)
  return out


def checkpoint_entries(model: ml_collections.ConfigDict) -> list[names.Entry]:
  """What a released checkpoint.pt holds: perceiver, gated blocks and the embedding table(s)."""
  lm = [e for e in names.lm_entries_in_flamingo_namespace(model.lm)
        if e.path[:2] in (("lm", "embed"), ("lm", "lm_head"), ("lm", "pos_embed"))]
  return [*names.perceiver_entries(model.perceiver), *names.xattn_entries(model), *lm]


class _Filler:
  """Streams (torch key, array) pairs into nested variables through name-map entries.

  Each finished variable is checked against the expected shape and cast to the expected dtype
  at once, so at most one tensor (or the parts of one fused tensor) is in flight.
  """

  def __init__(self, model: ml_collections.ConfigDict, variables: dict, expected: dict):
    self.model, self.variables, self.expected = model, variables, expected

  def fill(self, entries: list[names.Entry], tensors: Iterable[tuple[str, np.ndarray]], source: str,
           *, cut_vocab: bool, known: frozenset[str] = frozenset(), prefix: str = "") -> set[str]:
    """Returns the torch keys used. A key may lack `prefix`. A tensor that maps to nothing (and is
    not a known ignorable one, nor in `known`) is an error: nothing is dropped silently."""
    by_key = {k: e for e in entries for k in e.torch_keys}
    pending: dict[int, dict[str, np.ndarray]] = {}
    used, unexpected = set(), []
    for raw_key, array in tensors:
      key = _canonical(raw_key, by_key, prefix)
      if key is None:
        if not IGNORABLE.search(raw_key) and raw_key not in known:
          unexpected.append(raw_key)
        continue
      e = by_key[key]
      if e.path[-2] in VOCAB_TABLES:
        array = self._vocab_rows(key, array, source, cut_vocab)
      parts = pending.setdefault(id(e), {})
      parts[key] = array
      if len(parts) == len(e.torch_keys):
        del pending[id(e)]
        self._store(e, [parts[k] for k in e.torch_keys], source)
        used.update(e.torch_keys)
    if unexpected:
      raise CheckpointMismatchError(
          f"{source}: {len(unexpected)} tensors map to no variable of this config, e.g. {unexpected[:8]} "
          "(another model family, naming or variant?)")
    return used

  def _vocab_rows(self, key, array, source, cut_vocab):
    vocab = self.model.lm.vocab_size
    if array.shape[0] > vocab and cut_vocab:
      return array[:vocab]  # OpenFlamingo's resize_token_embeddings(len(tokenizer)) shrinks tables
    if array.shape[0] != vocab:
      raise CheckpointMismatchError(
          f"{source}: {key} has {array.shape[0]} rows but the config's vocabulary (len(tokenizer)) "
          f"is {vocab}" + ("" if cut_vocab else "; a checkpoint.pt of another tokenizer?"))
    return array

  def _store(self, e: names.Entry, parts: list[np.ndarray], source: str) -> None:
    want = tree.get(self.expected[e.collection], e.path)
    want_torch = [a.shape for a in e.to_torch(np.zeros(want.shape, np.dtype([])))]  # allocates nothing
    wrong = [f"{k} is {tuple(p.shape)}, expected {tuple(w)}"
             for k, p, w in zip(e.torch_keys, parts, want_torch) if tuple(p.shape) != tuple(w)]
    if wrong:
      raise CheckpointMismatchError(f"{source}: shape mismatch for {'; '.join(wrong)} (for "
                                    f"{e.collection}/{'/'.join(e.path)}; another variant or size?)")
    value = np.asarray(e.to_flax(parts))
    assert value.shape == tuple(want.shape), (e.path, value.shape, want.shape)
    if e.path == EMBED_PATH and self.model.train_special_embeddings:
      # The two trainable rows, taken before the table is cast to the (maybe lower) frozen dtype.
      params = self.variables.setdefault("params", {})
      params["special_embeddings"] = special_rows_from_table(value, self.model).astype(
          self.expected["params"]["special_embeddings"].dtype)
    # An owned, contiguous copy in the stored dtype: the source's memory-mapped pages are released
    # with their shard, and the Orbax write needs no further copy.
    tree.put(self.variables.setdefault(e.collection, {}), e.path, np.array(value, dtype=want.dtype, order="C"))


def _canonical(key: str, by_key: dict, prefix: str = "") -> str | None:
  """The entry key a file's key stands for, or None for tensors the model does not use (tied
  heads, buffers, duplicates). Tries the key as is, then with the base-model `prefix`, each also
  with transformers >= 5's name `lm_head` for GPT-NeoX's `embed_out`."""
  for candidate in (key, prefix + key) if prefix else (key,):
    for name in (candidate, candidate.replace("lm_head.", "embed_out.")):
      if name in by_key:
        return name
  return None


def _missing(entries, used) -> list[str]:
  return [k for e in entries for k in e.torch_keys if k not in used]


def check_complete(variables: dict, expected: dict, model: ml_collections.ConfigDict) -> None:
  """Every variable of the model is present with its shape, and nothing else is."""
  have = {(c, *p): v for c in variables for p, v in tree.leaves(variables[c])}
  want = {(c, *p): v for c in expected for p, v in tree.leaves(expected[c])}
  source = {(e.collection, *e.path): e.torch_keys for e in names.flamingo_entries(model)}
  missing = sorted(set(want) - set(have))
  problems = [f"missing {'/'.join(p)} (from {', '.join(source.get(p, ('?',)))})" for p in missing[:10]]
  problems += [f"unexpected {'/'.join(p)}" for p in sorted(set(have) - set(want))[:10]]
  problems += [f"{'/'.join(p)} has shape {np.shape(have[p])}, expected {tuple(want[p].shape)}"
               for p in sorted(set(have) & set(want)) if np.shape(have[p]) != tuple(want[p].shape)][:10]
  if problems:
    raise CheckpointMismatchError(f"Incomplete variables ({len(missing)} missing):\n  " + "\n  ".join(problems))


def check_lm_dir(lm_dir: str, lm: ml_collections.ConfigDict) -> None:
  """The HF config's model_type belongs to the config's LM family (if it says)."""
  model_type = readers.hf_config(lm_dir).get("model_type")
  if model_type and model_type not in families.get_family(lm.family).hf_model_types:
    raise CheckpointMismatchError(f"{lm_dir}: config.json says model_type={model_type!r}, but the "
                                  f"config's LM family is {lm.family!r}")


def import_weights(config: ml_collections.ConfigDict, *, lm_dir: str, clip_path: str,
                   openflamingo_checkpoint: str | None = None, seed: int = 0,
                   scanned: bool | None = None) -> dict[str, Any]:
  """All variables of `config.model` (numpy, in its param/frozen dtypes) from released weights.

  Layout: scanned if `scanned` (default: as the config says), else unrolled (as stored).
  """
  model = unrolled(config.model)
  expected = expected_variables(model)
  check_lm_dir(lm_dir, model.lm)
  readers.hf_shard_files(lm_dir)  # fail fast on inputs that are not there
  for path in (clip_path, openflamingo_checkpoint):
    if path and not os.path.isfile(path):
      raise readers.UnreadableCheckpointError(f"No such weights file: {path!r}")
  variables: dict = {}
  if not openflamingo_checkpoint:
    # A new run: trainable parts freshly initialised (XLA drops the unused frozen init). First,
    # so that its temporaries do not add to the peak of holding the frozen weights.
    params = jax.jit(lambda rng: nn.unbox(shapes.init_variables(model, rng))["params"])(
        jax.random.PRNGKey(seed))
    variables["params"] = jax.tree_util.tree_map(np.asarray, params)
    del params
  filler = _Filler(model, variables, expected)
  entries = names.lm_entries(model.lm)
  used = filler.fill(entries, readers.iter_hf_tensors(lm_dir), lm_dir, cut_vocab=True,
                     prefix=families.get_family(model.lm.family).base_model_prefix)
  if _missing(entries, used):
    raise CheckpointMismatchError(f"{lm_dir}: {len(_missing(entries, used))} LM tensors missing, "
                                  f"e.g. {_missing(entries, used)[:5]} (wrong family or naming?)")
  entries = names.vision_entries(model.vision)
  tensors = ((k.replace("visual.", "vision_encoder.", 1), v)
             for k, v in readers.iter_file_tensors(clip_path) if k.startswith("visual."))
  used = filler.fill(entries, tensors, clip_path, cut_vocab=False)
  if _missing(entries, used):
    raise CheckpointMismatchError(f"{clip_path}: {len(_missing(entries, used))} vision tensors missing "
                                  f"(keys 'visual.*'), e.g. {_missing(entries, used)[:5]}")
  if openflamingo_checkpoint:
    load_openflamingo_checkpoint(filler, openflamingo_checkpoint)
  check_complete(variables, expected, model)
  if config.model.scan_layers if scanned is None else scanned:
    variables = layer_groups.to_scanned(variables, config.model)
  return variables


def load_openflamingo_checkpoint(filler: _Filler, path: str) -> None:
  """Trainable parts (and the saved embedding tables) from an OpenFlamingo checkpoint.pt.
  Keys are taken with or without DDP's `module.` prefix; LM weights a file may also hold (FSDP
  runs saved everything) are ignored: the LM comes from its own directory."""
  model = filler.model
  entries = checkpoint_entries(model)
  lm_keys = frozenset(k for e in names.lm_entries_in_flamingo_namespace(model.lm) for k in e.torch_keys)
  tensors = ((k.removeprefix("module."), v) for k, v in readers.iter_file_tensors(path))
  used = filler.fill(entries, tensors, path, cut_vocab=False, known=lm_keys)
  missing = _missing([e for e in entries if e.collection == "params"], used)
  if missing:
    raise CheckpointMismatchError(f"{path}: {len(missing)} trainable tensors missing, e.g. {missing[:5]} "
                                  "(a checkpoint of another variant?)")


def export_state_dict(config: ml_collections.ConfigDict, variables: Any,
                      neox_head_name: str = "embed_out") -> dict[str, np.ndarray]:
  """The state dict (fp32 numpy) of an OpenFlamingo checkpoint.pt: the keys the released files have.

  `variables` needs `params` and, of `frozen`, only the LM's tables (`frozen/lm/embed` etc.),
  in either layout. GPT-NeoX's output table is `embed_out` in the released files
  (transformers 4.x, which open_flamingo 2.0.1 pins); pass `lm_head` for transformers >= 5.
  """
  model = unrolled(config.model)
  variables = jax.device_get(nn.unbox(variables))
  params = dict(layer_groups.to_layout({"params": variables["params"]}, config.model, False)["params"])
  tables = {k: dict(v) for k, v in variables["frozen"]["lm"].items() if k in ("embed", "lm_head", "pos_embed")}
  if model.train_special_embeddings:
    rows = params.pop("special_embeddings")
    table = np.asarray(tables["embed"]["embedding"], np.float32)  # the trained rows stay exact
    tables["embed"]["embedding"] = table_with_special_rows(table, np.asarray(rows, np.float32), model)
  source = {"params": params, "frozen": {"lm": tables}}
  out = {}
  for e in checkpoint_entries(model):
    try:
      value = tree.get(source[e.collection], e.path)
    except KeyError as err:
      raise CheckpointMismatchError(f"Variables lack {e.collection}/{'/'.join(e.path)}") from err
    for key, array in zip(e.torch_keys, e.to_torch(np.asarray(value, np.float32))):
      out[key.replace("lang_encoder.embed_out.", f"lang_encoder.{neox_head_name}.")] = array
  return out


FORMATS = ("pt", "safetensors")  # checkpoint.pt (torch.save; needs PyTorch) | safetensors (needs none)


def export_format(path: str, fmt: str | None = None) -> str:
  """The export format: `fmt`, else "safetensors" for a .safetensors path, else "pt"."""
  return fmt or ("safetensors" if str(path).endswith(".safetensors") else "pt")


def save_checkpoint_file(config: ml_collections.ConfigDict, variables: Any, path: str,
                       neox_head_name: str = "embed_out", fmt: str = "pt") -> None:
  """Writes an OpenFlamingo checkpoint.pt (or, with fmt="safetensors", the same state dict as a
  safetensors file: `safetensors.torch.load_file(path)` gives what `torch.load` gives) atomically
  (a temp file renamed into place)."""
  sd = {k: np.ascontiguousarray(v, np.float32) for k, v in export_state_dict(config, variables, neox_head_name).items()}
  path = os.path.abspath(path)
  tmp = f"{path}.tmp-{os.getpid()}"
  try:
    if fmt == "safetensors":
      from safetensors import numpy as st_numpy  # pylint: disable=g-import-not-at-top
      st_numpy.save_file(sd, tmp, metadata={"format": "pt"})
      umask = os.umask(0)
      os.umask(umask)
      os.chmod(tmp, 0o666 & ~umask)  # (its writer makes the file private; torch.save's is not)
    else:
      import torch  # pylint: disable=g-import-not-at-top
      torch.save({k: torch.from_numpy(v) for k, v in sd.items()}, tmp)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


# --- The whole conversions (what `python -m flamingo_jax.convert` runs) ---------------------------

def has_tokenizer(directory: str) -> bool:
  return any(os.path.exists(os.path.join(directory, f))
             for f in ("tokenizer.json", "tokenizer_config.json", "vocab.json"))


def import_checkpoint(config: ml_collections.ConfigDict, out: str, *, lm_dir: str, clip_path: str,
                      openflamingo_checkpoint: str | None = None, tokenizer_dir: str | None = None,
                      seed: int = 0) -> ml_collections.ConfigDict:
  """Released weights -> a base checkpoint at `out` (written atomically); returns its config.

  `tokenizer_dir` (default: `lm_dir` when it holds a tokenizer) is checked against the config's
  vocabulary size and special-token ids, and recorded as the config's `tokenizer_path`.
  """
  orbax_io.check_absent(out)
  tokenizer_dir = tokenizer_dir or (lm_dir if has_tokenizer(lm_dir) else None)
  if tokenizer_dir:
    from flamingo_jax.data import tokenizer as tok_lib  # pylint: disable=g-import-not-at-top
    try:
      tok_lib.check_tokenizer(tok_lib.load_tokenizer(tokenizer_dir), config.model, tokenizer_dir)
    except tok_lib.TokenizerMismatchError as e:
      raise CheckpointMismatchError(str(e)) from e
  variables = import_weights(config, lm_dir=lm_dir, clip_path=clip_path,
                             openflamingo_checkpoint=openflamingo_checkpoint, seed=seed, scanned=False)
  config = config.copy_and_resolve_references()
  with config.unlocked():
    if "lm_path" in config:
      config.lm_path = os.path.abspath(lm_dir)
    if tokenizer_dir and "tokenizer_path" in config:
      config.tokenizer_path = os.path.abspath(tokenizer_dir)
  orbax_io.save_base_checkpoint(out, config, variables)
  return config


def _export_select(collection: str, path: tuple[str, ...]) -> bool:
  """What a checkpoint.pt needs: the trainable parts and the LM's embedding tables."""
  return collection == "params" or path[:2] in (("lm", "embed"), ("lm", "lm_head"), ("lm", "pos_embed"))


def export_checkpoint(source: str, out: str, *, train_workdir: str | None = None, step: int | None = None,
                      neox_head_name: str = "embed_out", fmt: str | None = None) -> str:
  """A base checkpoint or training workdir `source` -> an OpenFlamingo checkpoint.pt at `out`.

  `fmt`: "pt" or "safetensors" (default: from `out`'s suffix). A workdir gives its step `step` (default: the latest); `train_workdir` takes the trainable
  weights from that run instead (its step `step`), the rest from `source`. Reads only the
  trainable parts and the LM's embedding tables from a base checkpoint. Returns what was exported.
  """
  from flamingo_jax.weights import load  # pylint: disable=g-import-not-at-top
  config, is_run = load.stored_config(source)
  variables, what = load.read_variables(source, config, is_run, None if train_workdir else step,
                                        select=_export_select)
  if train_workdir:
    step, variables["params"] = workdir.restore_trainable(train_workdir, step)
    what = f"step {step} of {train_workdir} (frozen tables from {what})"
  save_checkpoint_file(config, variables, out, neox_head_name, export_format(out, fmt))
  return what
