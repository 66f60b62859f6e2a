"""Dotted config overrides, as `--config.a.b=v` gives them: applied to a config (the planner's
search, sweeps) and written back as flags (a sweep point's train command).

  apply(cfg, {"optim.learning_rate": 3e-4, "model.xattn.every_n_layers": 2})
  as_flags({"optim.learning_rate": 3e-4}) == ["--config.optim.learning_rate=0.0003"]
"""
from __future__ import annotations

from typing import Any, Mapping

import ml_collections

from flamingo_jax.errors import UsageError


class OverrideError(UsageError):
  """An override naming a field the config does not have, or a value of the wrong type."""


def apply(cfg: ml_collections.ConfigDict, overrides: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """A locked copy of `cfg` with `overrides` set: an unknown key or a value of the wrong type is
  an OverrideError naming the key, as the same `--config.…` flag would fail."""
  cfg = cfg.copy_and_resolve_references()
  cfg.lock()
  for path, value in overrides.items():
    *parents, leaf = path.split(".")
    node = cfg
    try:
      for key in parents:
        node = node[key]
      if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
        raise KeyError(leaf)
      node[leaf] = value
    except (KeyError, AttributeError):
      raise OverrideError(f"{path}: no such config field") from None
    except TypeError as e:
      raise OverrideError(f"{path}={value!r}: {e}") from None
  return cfg


def as_flags(overrides: Mapping[str, Any]) -> list[str]:
  """The `--config.…` flags that set `overrides` on the command line."""
  return [f"--config.{path}={_flag_value(value)}" for path, value in overrides.items()]


def _flag_value(value: Any) -> str:
  if isinstance(value, float):
    return repr(value)
  if isinstance(value, (list, tuple)):
    return repr(tuple(value))
  return str(value)
