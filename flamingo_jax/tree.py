"""Nested-dict trees addressed by key paths: the one set of helpers every module uses.

A path is a tuple of keys from the root, e.g. ("lm", "blocks_0", "attn", "qkv", "kernel").

  >>> t = {}
  >>> put(t, ("lm", "embed", "embedding"), 1)
  >>> get(t, ("lm", "embed", "embedding"))
  1
  >>> dict(leaves({"a": {"b": 1}, "c": 2}))
  {('a', 'b'): 1, ('c',): 2}
"""
from __future__ import annotations

from typing import Any, Callable, Iterator, Mapping

Path = tuple[str, ...]


def get(tree: Mapping, path: Path) -> Any:
  """The value at `path` (KeyError if any key is absent)."""
  for part in path:
    tree = tree[part]
  return tree


def put(tree: dict, path: Path, value: Any) -> None:
  """Sets the value at `path`, creating the dicts on the way."""
  for part in path[:-1]:
    tree = tree.setdefault(part, {})
  tree[path[-1]] = value


def leaves(tree: Mapping, prefix: Path = ()) -> Iterator[tuple[Path, Any]]:
  """(path, leaf) of every non-dict value, depth first in key order."""
  for k, v in tree.items():
    if isinstance(v, Mapping):
      yield from leaves(v, (*prefix, k))
    else:
      yield (*prefix, k), v


def map_leaves(fn: Callable[[Any], Any], tree: Mapping) -> dict:
  """The same structure with `fn` applied to every leaf (leaves may be any objects, unlike
  jax.tree_util, which would descend into them)."""
  out: dict = {}
  for path, value in leaves(tree):
    put(out, path, fn(value))
  return out
