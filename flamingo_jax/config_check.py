"""Checks a training config before any work (before compiling, reading data or writing into the
workdir), every problem at once, each naming its field and what would be valid.

  problems(cfg)              # -> ["model.xattn.every_n_layers=5 > model.lm.num_layers=2: ...", ...]
  check(cfg)                 # raises errors.UsageError listing them (exit 2 in the CLIs)
  check(cfg, devices=8, processes=1, slices=1)   # also the mesh and the batch splits
"""
from __future__ import annotations

import math
from typing import Callable

import jax
import ml_collections

from flamingo_jax.errors import UsageError
from flamingo_jax.data import batch as batch_lib, kinds
from flamingo_jax.models import families, rules, shapes

DTYPES = ("float32", "bfloat16", "float16")
SCHEDULES = ("constant", "linear", "cosine")
NON_FINITE = ("stop", "skip")


def _model(cfg: ml_collections.ConfigDict) -> list[str]:
  m, out = cfg.model, []
  for path, width, heads in (("model.lm", m.lm.hidden_size, m.lm.num_heads),
                             ("model.vision", m.vision.width, m.vision.heads)):
    if heads < 1 or width % heads:
      out.append(f"{path}.num_heads={heads}" if path == "model.lm" else f"{path}.heads={heads}")
      out[-1] += f" does not divide the width {width}"
  n = m.xattn.every_n_layers
  if not 1 <= n <= m.lm.num_layers:
    out.append(f"model.xattn.every_n_layers={n}: must be 1..model.lm.num_layers={m.lm.num_layers}, "
               "or the model has no gated cross-attention block")
  elif m.scan_layers and m.lm.num_layers % n:
    out.append(f"model.scan_layers=True needs model.lm.num_layers={m.lm.num_layers} divisible by "
               f"model.xattn.every_n_layers={n}")
  if m.vision.patch_size < 1 or m.vision.image_size % m.vision.patch_size:
    out.append(f"model.vision.image_size={m.vision.image_size} is not a multiple of "
               f"model.vision.patch_size={m.vision.patch_size}")
  for key in ("dtype", "param_dtype", "frozen_dtype"):
    if m[key] not in DTYPES:
      out.append(f"model.{key}={m[key]!r}: expected one of {', '.join(DTYPES)}")
  if m.remat_policy not in ("none", "full") and not hasattr(jax.checkpoint_policies, m.remat_policy):
    out.append(f"model.remat_policy={m.remat_policy!r}: expected 'none', 'full' or a jax.checkpoint_policies "
               "name, e.g. nothing_saveable, dots_with_no_batch_dims_saveable")
  for key in ("eoc_token_id", "media_token_id", "pad_token_id"):
    if not 0 <= m[key] < m.lm.vocab_size:
      out.append(f"model.{key}={m[key]} is outside the vocabulary (model.lm.vocab_size={m.lm.vocab_size})")
  return out


def _mixture(data_cfg: ml_collections.ConfigDict) -> list[str]:
  """The mixture's names: no name twice, each a block of a known kind with every field of it."""
  names = batch_lib.mixture(data_cfg)
  if not names:
    return [f"data.mixture={data_cfg.mixture!r}: names no dataset (e.g. 'laion,mmc4')"]
  out = [f"data.mixture={data_cfg.mixture!r} names a dataset twice"] if len(set(names)) < len(names) else []
  return out + [p for name in dict.fromkeys(names) for p in _block_problems(name, data_cfg)]


def _block_problems(name: str, data_cfg: ml_collections.ConfigDict) -> list[str]:
  block = data_cfg.get(name)
  if not isinstance(block, ml_collections.ConfigDict) or "kind" not in block:
    return [f"data.mixture names {name!r}, but the config has no dataset block data.{name} "
            "(flamingo_jax.data.kinds.dataset(kind, ...))"]
  if block.kind not in kinds.KINDS:
    return [f"data.{name}.kind={block.kind!r}: expected one of {', '.join(kinds.KINDS)}"]
  return [f"data.{name} has no field {f!r} (a {block.kind} dataset needs it)"
          for f in {**kinds.COMMON_FIELDS, **kinds.KINDS[block.kind].fields} if f not in block]


def _datasets(data_cfg: ml_collections.ConfigDict) -> list[str]:
  """The mixture's datasets whose blocks are sound (the others are `_mixture`'s problems)."""
  return [n for n in dict.fromkeys(batch_lib.mixture(data_cfg)) if not _block_problems(n, data_cfg)]


def _dataset_fields(name: str, block: ml_collections.ConfigDict) -> list[str]:
  """A dataset block's fields against their minima and allowed values (common and its kind's)."""
  kind = kinds.KINDS[block.kind]
  out = _at_least(block, {**kinds.COMMON_MINIMA, **kind.minima}, prefix=f"data.{name}.")
  for field, allowed in kind.choices.items():
    if block[field] not in allowed:
      out.append(f"data.{name}.{field}={block[field]!r}: expected one of {', '.join(allowed)}")
  return out


def _data(cfg: ml_collections.ConfigDict) -> list[str]:
  out, m = _mixture(cfg.data), cfg.model
  if out:
    return out
  if cfg.data.image_size != m.vision.image_size:
    out.append(f"data.image_size={cfg.data.image_size} differs from model.vision.image_size={m.vision.image_size}")
  learned = families.get_family(m.lm.family).position_scheme == "learned"
  for name in _datasets(cfg.data):
    d = cfg.data[name]
    out += _dataset_fields(name, d)
    if learned and d.max_tokens > m.lm.max_positions:
      out.append(f"data.{name}.max_tokens={d.max_tokens} exceeds the LM's learned position table "
                 f"(model.lm.max_positions={m.lm.max_positions})")
  return out


def _at_least(cfg: ml_collections.ConfigDict, fields: dict[str, float], prefix: str = "") -> list[str]:
  """'<prefix><field>=<value>: must be at least <minimum>' for each numeric field below its
  minimum (NaN included)."""
  out = []
  for path, minimum in fields.items():
    value = cfg
    for key in path.split("."):
      value = value[key]
    if not value >= minimum or not math.isfinite(value):
      out.append(f"{prefix}{path}={value}: must be {'a positive number' if minimum == POSITIVE else f'at least {minimum}'}")
  return out


POSITIVE = math.ulp(0.0)  # the least positive float: "> 0"
# Fields that have a least valid value (counts, intervals, lengths, rates).
MINIMA = {
    "optim.learning_rate": POSITIVE, "optim.warmup_steps": 0, "optim.weight_decay": 0,
    "optim.grad_clip_norm": 0, "optim.eps": 0, "optim.total_steps": 0,
    "train.num_steps": 1, "train.log_every": 1, "train.check_finite_every": 0,
    "train.max_skipped_in_a_row": 0, "train.validate_every": 0, "train.final_captions": 0,
    "checkpoint.every_steps": 1, "checkpoint.keep": 1,
    "checkpoint.frequent_every": 0, "checkpoint.frequent_keep": 1, "data.workers": 0, "data.read_threads": 1,
}  # and each dataset's (data/kinds.py: COMMON_MINIMA, its kind's minima)


def _training(cfg: ml_collections.ConfigDict) -> list[str]:
  out = _at_least(cfg, MINIMA)
  if cfg.optim.schedule not in SCHEDULES:
    out.append(f"optim.schedule={cfg.optim.schedule!r}: expected one of {', '.join(SCHEDULES)}")
  if cfg.train.non_finite not in NON_FINITE:
    out.append(f"train.non_finite={cfg.train.non_finite!r}: expected one of {', '.join(NON_FINITE)}")
  if cfg.train.validation_batches < 1 and any(cfg.data[n].validation_shards for n in _datasets(cfg.data)):
    out.append(f"train.validation_batches={cfg.train.validation_batches}: must be at least 1 "
               "(or leave data.<name>.validation_shards empty)")
  return out


def _mesh_sizes(cfg: ml_collections.ConfigDict, devices: int, slices: int) -> dict[str, int]:
  """{axis: size} of the whole mesh (within a slice times across slices)."""
  ici, dcn = rules.mesh_shapes(cfg.mesh, devices // slices, slices)
  return dict(zip(rules.MESH_AXES, (i * d for i, d in zip(ici, dcn))))


def _mesh(cfg: ml_collections.ConfigDict, devices: int, processes: int, slices: int) -> list[str]:
  try:
    sizes = _mesh_sizes(cfg, devices, slices)
  except rules.MeshError as e:
    return [str(e)]
  shards, out = sizes["data"] * sizes["fsdp"], []
  for name in _datasets(cfg.data):
    b = cfg.data[name].batch_size
    if b % shards or b % processes:
      out.append(f"data.{name}.batch_size={b} does not divide over the {shards} data x fsdp devices "
                 f"and {processes} processes of mesh {sizes}")
  return out


RULES: tuple[Callable[[ml_collections.ConfigDict], list[str]], ...] = (_model, _data, _training)


def problems(cfg: ml_collections.ConfigDict, devices: int | None = None, processes: int = 1,
             slices: int = 1) -> list[str]:
  """Every problem of `cfg` (with `devices`: its mesh, over `slices` slices, and batch splits too)."""
  out = [p for rule in RULES for p in rule(cfg)]
  out += _mesh(cfg, devices, processes, slices) if devices else []
  return out or (_splits(cfg, devices, slices) if devices else [])


def model_problems(cfg: ml_collections.ConfigDict, devices: int, slices: int = 1) -> list[str]:
  """What a tool that runs a model without training it checks (generate, evaluate): the
  model's fields, the mesh against the devices, and what the mesh splits."""
  out = _model(cfg)
  try:
    _mesh_sizes(cfg, devices, slices)
  except rules.MeshError as e:
    out.append(str(e))
  return out or _splits(cfg, devices, slices)


def _splits(cfg: ml_collections.ConfigDict, devices: int, slices: int) -> list[str]:
  # (the model's shapes exist once its own fields are sound)
  return rules.uneven_splits(shapes.abstract_variables(cfg.model), rules.logical_rules(cfg),
                             _mesh_sizes(cfg, devices, slices))


def check(cfg: ml_collections.ConfigDict, devices: int | None = None, processes: int = 1, slices: int = 1) -> None:
  """Raises UsageError naming every problem of `cfg`."""
  _raise(problems(cfg, devices, processes, slices))


def check_model(cfg: ml_collections.ConfigDict, devices: int, slices: int = 1) -> None:
  """Raises UsageError naming every `model_problems` of `cfg`."""
  _raise(model_problems(cfg, devices, slices))


def _raise(found: list[str]) -> None:
  if found:
    raise UsageError(f"the config has {len(found)} problem{'s' if len(found) > 1 else ''}: " + "; ".join(found))
