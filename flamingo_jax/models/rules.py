"""Logical axes -> mesh, and the trainable/frozen split of the variables.

The vocabulary of logical axis names is small (batch, length, embed, vision_embed, mlp, heads,
kv, vocab, latents, media, patch, norm, layers, act_*); `configs/common.py:SHARDING_RULES`
maps it onto the mesh axes (data, fsdp, tensor).
"""
from __future__ import annotations

import contextlib
import math
import re
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# Which top-level modules are trainable and which frozen: one regex each. Every variable must
# match the rule of the collection it lives in, so a module declared in the wrong collection is
# an error, never a silently trained (or silently frozen) weight.
COLLECTION_RULES = {
    "params": r"^(perceiver|xattn_\d+|special_embeddings|layers/xattn)(/|$)",
    "frozen": r"^(vision|lm|layers/block_\d+)/",
}


# The mesh fields of the config and their defaults. The three logical axes are laid out twice:
# within a slice over its fast links (ICI: `data`, `fsdp`, `tensor`, the devices of one slice) and
# across slices over the data-centre network (DCN: `dcn_data`, `dcn_fsdp`, a count of slices).
# A DCN split multiplies its axis (the mesh's `data` axis is dcn_data x data devices); tensor
# parallelism never crosses slices. -1: all that remains (at most one ICI and one DCN size).
MESH_DEFAULTS = {"data": -1, "fsdp": 1, "tensor": 1, "dcn_data": -1, "dcn_fsdp": 1}
DCN_AXES = ("dcn_data", "dcn_fsdp")  # the DCN size fields of data and fsdp (tensor: always 1)


class MeshError(ValueError):
  """Mesh sizes that do not fit the job's devices and slices; the message names the fields."""


def slices_of(devices: Sequence[jax.Device]) -> list[list[jax.Device]]:
  """The job's devices grouped into slices, in order: a TPU's `slice_index` (several slices over
  DCN), else its process (a GPU node, a CPU host: what `process_is_granule` means to mesh_utils)."""
  # (A single slice's TPU devices may not carry slice_index at all.)
  key = (lambda d: getattr(d, "slice_index", 0)) if _tpu(devices) else (lambda d: d.process_index)
  groups: dict[int, list[jax.Device]] = {}
  for d in devices:
    groups.setdefault(key(d), []).append(d)
  return [groups[k] for k in sorted(groups)]


def _tpu(devices: Sequence[jax.Device]) -> bool:
  # Only a TPU's slice_index tells slices apart: other platforms' devices report 0 on every host.
  return devices[0].platform == "tpu"


def _resolve(fields: dict[str, int], total: int, unit: str, have: str) -> list[int]:
  """Sizes whose product is `total`, one -1 filled in; MeshError naming `fields` otherwise."""
  flat = ", ".join(f"mesh.{k}={v}" for k, v in fields.items())
  sizes = list(fields.values())
  if sizes.count(-1) > 1 or any(v == 0 or v < -1 for v in sizes):
    raise MeshError(f"{flat}: each is a positive size, at most one -1 (all that remains)")
  known = math.prod(v for v in sizes if v != -1)
  if total % known or (-1 not in sizes and known != total):
    raise MeshError(f"{flat} needs {known} {unit}{' or a multiple' if -1 in sizes else ''}; {have}")
  return [total // known if v == -1 else v for v in sizes]


def mesh_shapes(mesh_cfg: Mapping, devices_per_slice: int, slices: int = 1) -> tuple[tuple[int, ...], tuple[int, ...]]:
  """(ICI shape, DCN shape) over MESH_AXES for a job of `slices` slices of `devices_per_slice`.

  mesh_shapes({"data": 1, "fsdp": 16, "tensor": 1, "dcn_data": -1, "dcn_fsdp": 1}, 16, slices=2)
    -> ((1, 16, 1), (2, 1, 1)): fsdp over each slice's 16 chips, data across the 2 slices;
  the mesh is their product, (data=2, fsdp=16, tensor=1).
  """
  get = lambda k: int(mesh_cfg.get(k, MESH_DEFAULTS[k]))  # a run recorded before DCN fields
  if slices == 1:
    ici = _resolve({a: get(a) for a in MESH_AXES}, devices_per_slice, "devices", f"this job has {devices_per_slice}")
  else:
    ici = _resolve({a: get(a) for a in MESH_AXES}, devices_per_slice, "devices per slice",
                   f"each of this job's {slices} slices has {devices_per_slice} (mesh.dcn_data and "
                   "mesh.dcn_fsdp split an axis across slices)")
  dcn = _resolve({k: get(k) for k in DCN_AXES}, slices, "slices", f"this job has {slices}")
  return tuple(ici), (*dcn, 1)


def make_mesh(mesh_cfg: Mapping, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """The job's (data, fsdp, tensor) mesh, laid out on the hardware by jax.experimental.mesh_utils:
  within a slice each axis follows the torus (TPU) or the device order (other platforms); with
  several slices (`slices_of`) the DCN sizes split the axes across them, so an fsdp group stays
  inside one slice unless `mesh.dcn_fsdp` says otherwise."""
  devices = list(devices if devices is not None else jax.devices())
  groups = slices_of(devices)
  if len({len(g) for g in groups}) > 1:
    raise MeshError(f"the job's slices have different device counts: {[len(g) for g in groups]}")
  ici, dcn = mesh_shapes(mesh_cfg, len(groups[0]), len(groups))
  mesh = Mesh(_ici_mesh(ici, devices), MESH_AXES) if len(groups) == 1 else _hybrid_mesh(ici, dcn, devices)
  if jax.process_count() > 1 and (split := hosts_per_batch_shard(mesh)) > 1:
    raise MeshError(f"mesh.tensor={mesh.shape['tensor']}: each group of chips that share batch rows spans {split} "
                    "hosts on this hardware (each host reads its own rows); use a tensor size within a host's chips")
  return mesh


def hosts_per_batch_shard(mesh: Mesh) -> int:
  """How many processes the devices of one (data, fsdp) position span at most: 1 unless the
  torus lays a tensor group across hosts (v5e: a host is a 2x2 block, so tensor=4 crosses two)."""
  by_shard = mesh.devices.reshape(-1, mesh.shape["tensor"])
  return max(len({d.process_index for d in row}) for row in by_shard)


def _hybrid_mesh(ici: Sequence[int], dcn: Sequence[int], devices: Sequence[jax.Device]) -> Mesh:
  granule_is_process = not _tpu(devices)
  try:
    array = mesh_utils.create_hybrid_device_mesh(ici, dcn, devices, process_is_granule=granule_is_process)
  except NotImplementedError:  # the ICI shape splits a physical axis of the torus
    array = mesh_utils.create_hybrid_device_mesh(ici, dcn, devices, process_is_granule=granule_is_process,
                                                 allow_split_physical_axes=True)
  return Mesh(array, MESH_AXES)


def _ici_mesh(shape: Sequence[int], devices: Sequence[jax.Device]) -> np.ndarray:
  try:
    return mesh_utils.create_device_mesh(shape, devices)
  except NotImplementedError:  # e.g. fsdp=8 x tensor=2 on a 4x4 torus: an axis is split in two
    return mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)


def describe(mesh: Mesh) -> str:
  """The mesh for a person: 'data=2 (2 slices x 1) fsdp=16 tensor=1'."""
  groups = slices_of(list(mesh.devices.flat))
  if len(groups) == 1:
    return " ".join(f"{a}={n}" for a, n in mesh.shape.items())
  # How many slices each axis crosses: the distinct slices along it from the first device.
  index = {d: i for i, g in enumerate(groups) for d in g}
  parts = []
  for axis, n in mesh.shape.items():
    along = np.moveaxis(mesh.devices, MESH_AXES.index(axis), 0).reshape(n, -1)[:, 0]
    crossed = len({index[d] for d in along})
    parts.append(f"{axis}={n}" + (f" ({crossed} slices x {n // crossed})" if crossed > 1 else ""))
  return " ".join(parts) + f" over {len(groups)} slices"


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


def uneven_splits(abstract_variables: Mapping, rules, sizes: Mapping[str, int]) -> list[str]:
  """What a mesh of `sizes` ({axis: size}) cannot split: for each group of mesh axes, a line
  naming the first variable dimension they shard but do not divide (JAX refuses such arrays).

    uneven_splits(abstract, rules, {"data": 1, "fsdp": 1, "tensor": 3})
    # -> ["mesh.tensor=3 does not divide dimension 0 (4) of frozen/lm/block_0/attn/out/kernel, nor 9 more"]
  """
  specs = nn.get_partition_spec(abstract_variables)
  with nn.logical_axis_rules(rules):
    mesh_specs = nn.logical_to_mesh(specs)
  leaves = jax.tree_util.tree_leaves_with_path(mesh_specs, is_leaf=lambda x: isinstance(x, PartitionSpec))
  found: dict[tuple[str, ...], list[str]] = {}
  for (path, spec), leaf in zip(leaves, jax.tree_util.tree_leaves(nn.unbox(abstract_variables))):
    for i, (dim, axes) in enumerate(zip(leaf.shape, spec)):
      axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
      if dim % int(np.prod([sizes[a] for a in axes])):
        found.setdefault(axes, []).append(f"dimension {i} ({dim}) of {path_str(path)}")
  return [" x ".join(f"mesh.{a}={sizes[a]}" for a in axes) + f" does not divide {where[0]}"
          + (f", nor {len(where) - 1} more" if len(where) > 1 else "") for axes, where in found.items()]


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
