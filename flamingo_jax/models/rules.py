"""Logical axes -> mesh, and the trainable/frozen split of the variables.

The vocabulary of logical axis names is small (batch, length, embed, vision_embed, mlp, heads,
kv, vocab, latents, media, patch, norm, layers, act_*); `configs/common.py:SHARDING_RULES`
maps it onto the mesh axes (data, fsdp, tensor).
"""
from __future__ import annotations

import contextlib
import re
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# Which top-level modules are trainable and which frozen: one regex each. Every variable must
# match the rule of the collection it lives in, so a module declared in the wrong collection is
# an error, never a silently trained (or silently frozen) weight.
COLLECTION_RULES = {
    "params": r"^(perceiver|xattn_\d+|special_embeddings|layers/xattn)(/|$)",
    "frozen": r"^(vision|lm|layers/block_\d+)/",
}


def make_mesh(mesh_cfg: ml_collections.ConfigDict, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A (data, fsdp, tensor) mesh; one size may be -1 (all remaining devices)."""
  devices = list(devices if devices is not None else jax.devices())
  sizes = [mesh_cfg[a] for a in MESH_AXES]
  if sizes.count(-1) > 1:
    raise ValueError(f"At most one mesh axis may be -1, got {dict(zip(MESH_AXES, sizes))}")
  known = int(np.prod([s for s in sizes if s != -1]))
  if -1 in sizes:
    if len(devices) % known:
      raise ValueError(f"{len(devices)} devices do not divide into mesh {dict(zip(MESH_AXES, sizes))}")
    sizes[sizes.index(-1)] = len(devices) // known
  if int(np.prod(sizes)) != len(devices):
    raise ValueError(f"Mesh {dict(zip(MESH_AXES, sizes))} needs {int(np.prod(sizes))} devices, "
                     f"have {len(devices)}")
  return Mesh(np.asarray(devices).reshape(sizes), MESH_AXES)


@contextlib.contextmanager
def activate(mesh: Mesh, rule_set):
  """The mesh and logical rules a sharded computation is traced under.

  `jax.set_mesh`, not `with mesh:`: flax's logical constraints read the abstract mesh it sets and
  are no-ops under `with mesh:` alone (every activation constraint would be silently dropped).
  """
  with jax.set_mesh(mesh), nn.logical_axis_rules(rule_set):
    yield


def logical_rules(config: ml_collections.ConfigDict) -> tuple[tuple[str, Any], ...]:
  """The config's rules as the tuple flax's logical partitioning functions take."""
  return tuple((name, tuple(axes) if isinstance(axes, list) else axes)
               for name, axes in config.sharding_rules)


def variable_shardings(abstract_variables: Mapping, mesh: Mesh, rules) -> Any:
  """NamedShardings for (boxed) variables, from their logical axis names."""
  specs = nn.get_partition_spec(abstract_variables)
  with nn.logical_axis_rules(rules):
    mesh_specs = nn.logical_to_mesh(specs)
  return jax.tree_util.tree_map(lambda s: NamedSharding(mesh, s), mesh_specs,
                                is_leaf=lambda x: isinstance(x, PartitionSpec))


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
  """Leading (batch) dim over (data, fsdp); the rest replicated."""
  return NamedSharding(mesh, PartitionSpec(("data", "fsdp"), *([None] * (ndim - 1))))


def global_batch(local: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Process-local numpy batches -> global arrays sharded over (data, fsdp)."""
  return {k: jax.make_array_from_process_local_data(batch_sharding(mesh, v.ndim), v)
          for k, v in local.items()}


def path_str(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def check_collections(variables: Mapping) -> None:
  """Raises if any variable sits in a collection its module's rule does not allow."""
  wrong = []
  for collection, tree in variables.items():
    rule = COLLECTION_RULES.get(collection)
    if rule is None:
      raise ValueError(f"Unexpected variable collection {collection!r}")
    for path, _ in jax.tree_util.tree_leaves_with_path(tree):
      if not re.search(rule, path_str(path)):
        wrong.append(f"{collection}/{path_str(path)}")
  if wrong:
    raise ValueError("Variables outside their collection's rule: " + ", ".join(wrong[:20]))


def count_params(tree: Mapping) -> int:
  """Number of scalars in a (possibly abstract, possibly boxed) tree."""
  return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(nn.unbox(tree))))
