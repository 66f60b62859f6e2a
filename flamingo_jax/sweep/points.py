"""A sweep's points: defined by a config module's `get_sweep(arg)` beside its `get_config(arg)`,
each a dict of dotted config overrides, named and checked before anything runs.

  def get_sweep(arg=None):  # in a config file
    return sweep.product({"optim.learning_rate": [1e-3, 3e-3], "model.xattn.every_n_layers": [1, 2]})

gives 4 points, named from their values under the sweep's root (`learning_rate=0.001,every_n_layers=1`).
"""
from __future__ import annotations

import dataclasses
import importlib.util
import itertools
import os
import re
from typing import Any, Mapping, Sequence

import ml_collections

from flamingo_jax import overrides as overrides_lib
from flamingo_jax.errors import UsageError


class SweepError(UsageError):
  """A sweep that cannot run (no get_sweep, a bad point): one line for the user."""


def product(axes: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
  """Every combination, the last key varying fastest:
  product({"a": [1, 2], "b": [3, 4]}) == [{a:1,b:3}, {a:1,b:4}, {a:2,b:3}, {a:2,b:4}]."""
  keys = list(axes)
  return [dict(zip(keys, values)) for values in itertools.product(*(axes[k] for k in keys))]


def zipped(axes: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
  """Values taken together: zipped({"a": [1, 2], "b": [3, 4]}) == [{a:1,b:3}, {a:2,b:4}]."""
  lengths = {k: len(v) for k, v in axes.items()}
  if len(set(lengths.values())) > 1:
    raise SweepError(f"zipped axes differ in length: {lengths}")
  return [dict(zip(axes, values)) for values in zip(*axes.values())]


@dataclasses.dataclass
class Point:
  """One run of the sweep: its overrides, its name (its workdir under the root) and its config."""
  index: int
  name: str
  overrides: dict[str, Any]
  config: ml_collections.ConfigDict


def load_module(config_arg: str):
  """(the config module of 'file.py[:arg]', arg or None)."""
  path, _, arg = config_arg.partition(":")
  if not os.path.isfile(path):
    raise SweepError(f"--config={config_arg}: no such file {path}")
  spec = importlib.util.spec_from_file_location(f"sweep_config_{abs(hash(path))}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module, (arg or None)


def expand(config_arg: str, base_overrides: Mapping[str, Any] | None = None) -> list[Point]:
  """The sweep of `config_arg`, every point's config built and checked (a bad key or value in any
  point fails here, naming the point and the key, before anything runs)."""
  module, arg = load_module(config_arg)
  if not hasattr(module, "get_sweep"):
    raise SweepError(f"--config={config_arg}: {module.__file__} defines no get_sweep(arg)")
  points = list(module.get_sweep(arg))
  if not points:
    raise SweepError(f"--config={config_arg}: get_sweep returned no points")
  try:
    base = overrides_lib.apply(module.get_config(arg), base_overrides or {})
  except overrides_lib.OverrideError as e:
    raise SweepError(f"--config.{e}") from None
  names = point_names(points)
  out = []
  for i, (name, overrides) in enumerate(zip(names, points)):
    try:
      cfg = overrides_lib.apply(base, overrides)
    except overrides_lib.OverrideError as e:
      raise SweepError(f"sweep point {i} ({name}): {e}") from None
    out.append(Point(i, name, dict(overrides), cfg))
  return out


def point_names(points: Sequence[Mapping[str, Any]]) -> list[str]:
  """Short, readable, unique directory names: the last part and the value of each key whose
  value differs between points (a key every point sets alike is left out)."""
  swept = [k for k in dict.fromkeys(k for p in points for k in p)
           if len({repr(p.get(k, "<unset>")) for p in points}) > 1]
  short = {k: k.rsplit(".", 1)[-1] for k in swept}
  if len(set(short.values())) < len(short):  # two keys end alike: use their full paths
    short = {k: k for k in swept}
  names = [",".join(f"{short[k]}={_value(p[k])}" for k in swept if k in p) or "base" for p in points]
  seen: dict[str, int] = {}
  for i, name in enumerate(names):
    seen[name] = seen.get(name, 0) + 1
    if seen[name] > 1:
      names[i] = f"{name},{seen[name]}"
  return names


def _value(v: Any) -> str:
  text = f"{v:g}" if isinstance(v, float) else str(v)
  return re.sub(r"[^A-Za-z0-9._+-]", "-", text)
