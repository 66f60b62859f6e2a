"""What a compiled step sends between chips: every collective of the program as the SPMD
partitioner wrote it, counted in bytes per chip per step, split into ICI (within a slice) and DCN
(across slices), by kind and by part of the model.

The count reads the module as the SPMD partitioner left it (the compiler dumps it on request),
not the optimised program: later TPU passes rewrite collectives (an all-gather becomes a
windowed loop of collective-permutes feeding a matmul, async fusions prefetch the next layer's
weights, a multislice program keeps one slice and turns its DCN reductions into other ops),
which would hide or double what runs. At that point every collective is still a plain
all-gather, reduce-scatter, all-reduce, all-to-all or collective-permute, with its groups over
the job's devices, and a scanned layer stack is a while loop whose trip count its condition
states (`i < N`).

Bytes each chip sends, for a group of n = s slices x k chips per slice, X the per-chip buffer (an
all-gather's result; the operand of the others), as ring and hierarchical collectives move them:
  ICI  (k - 1) / k * X           DCN  (s - 1) / s * X / k     (all-reduce: twice each)
A collective-permute sends its operand, over DCN when a pair crosses slices. A conditional counts
its branch that sends most.

  hlo = comm.partitioned_hlo(lowered)          # compiles; the module after SPMD partitioning
  count = comm.count(hlo, comm.slice_of_partitions(mesh))  # Communication: ici/dcn bytes, by kind, by part
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import glob
import math
import os
import re
import tempfile
from typing import Any, Sequence

import jax
import numpy as np

KINDS = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")
# Which part of the model a collective serves, from the op's name (its Flax module path); first
# match wins (the gated blocks run inside the decoder's layer loop).
PARTS = (("vision", r"/vision[/.]"), ("resampler", r"perceiver"), ("xattn", r"xattn"),
         ("head", r"output_logits|cross_entropy"), ("lm", r"Flamingo\.decode|/lm[/.]|block_\d"),
         ("optimizer", r"optax|adam|scale_by|clip|global_norm|apply_updates"))
DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4,
               "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}


@dataclasses.dataclass
class Communication:
  """Bytes one chip sends per step (the busiest chip's share of every collective)."""
  ici_bytes: float = 0.0
  dcn_bytes: float = 0.0
  by_kind: dict[str, float] = dataclasses.field(default_factory=dict)  # ICI + DCN
  by_part: dict[str, float] = dataclasses.field(default_factory=dict)
  dcn_by_kind: dict[str, float] = dataclasses.field(default_factory=dict)
  dcn_by_part: dict[str, float] = dataclasses.field(default_factory=dict)
  collectives: int = 0  # collective ops in the program (each counted once, not per trip)
  uncounted_loops: int = 0  # loops whose trip count the program does not state: counted once

  def to_json(self) -> dict[str, Any]:
    return {"ici_bytes_per_chip": self.ici_bytes, "dcn_bytes_per_chip": self.dcn_bytes,
            "by_kind": self.by_kind, "by_part": self.by_part, "dcn_by_kind": self.dcn_by_kind,
            "dcn_by_part": self.dcn_by_part, "collectives": self.collectives,
            "uncounted_loops": self.uncounted_loops}

  @classmethod
  def from_json(cls, data: dict[str, Any]) -> "Communication":
    return cls(data["ici_bytes_per_chip"], data["dcn_bytes_per_chip"], data["by_kind"], data["by_part"],
               data["dcn_by_kind"], data["dcn_by_part"], data["collectives"], data.get("uncounted_loops", 0))


# The module to count, latest first: the TPU compiler's, once its partitioner has cleaned up after
# itself (e.g. a gather of a tiny embedding shard that it then drops); any platform's right after
# SPMD partitioning.
PARTITIONED = ("after_xla-partitioner-optimizations", "after_tpu-spmd-partitioning", "after_spmd-partitioning")


def partitioned_hlo(lowered) -> tuple[Any, str]:
  """(the compiled step, the text of its module as partitioned, before the collectives are
  rewritten: PARTITIONED). The compiler dumps its passes to a temporary folder, removed after;
  it compiles even what JAX's persistent cache holds (a cached executable comes without dumps)."""
  with tempfile.TemporaryDirectory(prefix="flamingo_jax_hlo_") as tmp, _without_persistent_cache():
    compiled = lowered.compile(compiler_options={
        "xla_dump_to": tmp, "xla_dump_hlo_pass_re": "spmd-partitioning|xla-partitioner-optimizations"})
    for stage in PARTITIONED:
      found = sorted(glob.glob(os.path.join(tmp, f"*.{stage}.*txt")))
      if found:
        with open(found[-1]) as f:
          return compiled, f.read()
    raise RuntimeError(f"the compiler wrote no partitioned module to {tmp}")


@contextlib.contextmanager
def _without_persistent_cache():
  before = jax.config.jax_enable_compilation_cache
  jax.config.update("jax_enable_compilation_cache", False)
  try:
    yield
  finally:
    jax.config.update("jax_enable_compilation_cache", before)


# --- Reading the module -------------------------------------------------------------------------

_COMPUTATION = re.compile(r"^(?:ENTRY )?%(\S+) .*\{\s*$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%(\S+) = (.*?) ([a-z][a-z0-9-]*)\((.*)$")
_SHAPE = re.compile(r"\b(" + "|".join(DTYPE_BYTES) + r")\[([0-9,]*)\]")


@dataclasses.dataclass
class _Op:
  name: str
  shape: str   # the result's shape text
  opcode: str
  rest: str    # operands and attributes


def parse_module(text: str) -> tuple[dict[str, list[_Op]], str]:
  """({computation: its instructions}, the entry computation's name)."""
  computations: dict[str, list[_Op]] = {}
  entry, current = "", None
  for line in text.splitlines():
    header = _COMPUTATION.match(line)
    if header and not line.startswith(" "):
      current = computations.setdefault(header.group(1), [])
      if line.startswith("ENTRY"):
        entry = header.group(1)
      continue
    op = _INSTRUCTION.match(line) if current is not None else None
    if op:
      current.append(_Op(*op.groups()))
  return computations, entry


def shape_bytes(shape: str) -> int:
  """Bytes of an HLO shape, a tuple's elements summed: 'f32[2,64]{1,0}' -> 512."""
  return sum(DTYPE_BYTES[d] * math.prod(int(n) for n in dims.split(",") if n) for d, dims in _SHAPE.findall(shape))


def _attribute(rest: str, name: str) -> str | None:
  found = re.search(rf"\b{name}=(%?[\w.\-]+)", rest)
  return found and found.group(1).lstrip("%")


def replica_groups(rest: str, partitions: int) -> list[list[int]]:
  """The groups of partition ids a collective runs over, in any of the module's three notations:
    {{0,1},{2,3}}                                      explicit
    [2,4]<=[4,2]T(1,0)                                 iota: [groups, size] <= iota(dims) transposed
    mesh['a'=4,'b'=2], device_ids=([2,4]T(1,0)) {'a'}  named axes; groups over the axes listed
  No groups (or {}) is one group of every partition."""
  if m := re.search(r"replica_groups=mesh\[([^\]]*)\](?:, device_ids=\(([^)]*\)?)\))? \{([^}]*)\}", rest):
    axes = [(a, int(n)) for a, n in re.findall(r"'([^']+)'=(\d+)", m.group(1))]
    ids = _iota(m.group(2)) if m.group(2) else np.arange(math.prod(n for _, n in axes))
    ids = ids.reshape([n for _, n in axes])
    over = re.findall(r"'([^']+)'", m.group(3))
    order = [i for i, (a, _) in enumerate(axes) if a not in over] + [i for i, (a, _) in enumerate(axes) if a in over]
    size = math.prod(n for a, n in axes if a in over)
    return np.transpose(ids, order).reshape(-1, size).tolist()
  if m := re.search(r"replica_groups=\[(\d+),(\d+)\]<=(\[[0-9,]+\](?:T\([0-9,]+\))?)", rest):
    return _iota(m.group(3)).reshape(int(m.group(1)), int(m.group(2))).tolist()
  if m := re.search(r"replica_groups=\{(\{[0-9,{}]*\})\}", rest):
    groups = [[int(x) for x in g.split(",") if x] for g in re.findall(r"\{([0-9,]*)\}", m.group(1))]
    if groups and groups[0]:
      return groups
  return [list(range(partitions))]


def _iota(text: str) -> np.ndarray:
  """'[2,4]T(1,0)' -> iota(8) reshaped [2,4], transposed (1,0), flattened."""
  m = re.fullmatch(r"\[([0-9,]+)\](?:T\(([0-9,]+)\))?", text.strip())
  dims = [int(n) for n in m.group(1).split(",")]
  ids = np.arange(math.prod(dims)).reshape(dims)
  if m.group(2):
    ids = np.transpose(ids, [int(p) for p in m.group(2).split(",")])
  return ids.reshape(-1)


def _trip_count(condition: list[_Op]) -> int | None:
  """A scan's loop `i < N` from 0: N, the constant its condition compares with (None: another
  kind of loop)."""
  constants = {op.name: int(m.group(1)) for op in condition
               if op.opcode == "constant" and (m := re.match(r"(-?\d+)\)", op.rest))}
  for op in condition:
    if op.opcode == "compare" and "direction=LT" in op.rest:
      for operand in re.findall(r"%([\w.\-]+)", op.rest.split(")")[0]):
        if operand in constants:
          return constants[operand]
  return None


# --- Counting -----------------------------------------------------------------------------------

def count(text: str, slice_of: Sequence[int]) -> Communication:
  """The communication of a partitioned module. `slice_of[p]`: the slice of partition p (the
  device at position p of the mesh's flattened device array)."""
  computations, entry = parse_module(text)
  totals: dict[tuple[str, str, str], float] = collections.defaultdict(float)
  ops = uncounted = 0

  def visit(name: str, times: float, depth: int = 0) -> None:
    nonlocal ops, uncounted
    if depth > 64:
      raise ValueError(f"computations nested too deep at {name}")
    for op in computations[name]:
      if op.opcode in KINDS:
        ops += 1
        for network, sent in _sent(op, slice_of).items():
          totals[(op.opcode, network, part_of(op.rest))] += times * sent
      elif op.opcode == "while":
        trips = _trip_count(computations[_attribute(op.rest, "condition")])
        uncounted += trips is None
        visit(_attribute(op.rest, "body"), times * (trips or 1), depth + 1)
      elif op.opcode == "call":
        visit(_attribute(op.rest, "to_apply"), times, depth + 1)
      elif op.opcode == "conditional":  # one branch runs: count the one that sends most
        branches = re.findall(r"%([\w.\-]+)", _branch_list(op.rest))
        once = lambda b: sum(sum(_sent(o, slice_of).values()) for o in computations[b] if o.opcode in KINDS)
        if branches:
          visit(max(branches, key=once), times, depth + 1)

  visit(entry, 1.0)
  out = _summarise(totals, ops)
  out.uncounted_loops = uncounted
  return out


def _branch_list(rest: str) -> str:
  found = (re.search(r"branch_computations=\{([^}]*)\}", rest)
           or re.search(r"(true_computation=%\S+ false_computation=%\S+)", rest))
  return found.group(1) if found else ""


def _sent(op: _Op, slice_of: Sequence[int]) -> dict[str, float]:
  """{'ici': bytes, 'dcn': bytes} one chip sends for one run of `op` (its largest group's).
  Operands are named, not shaped, in the module: a reduce-scatter's is its result times n."""
  result = float(shape_bytes(op.shape))
  if op.opcode == "collective-permute":
    pairs = re.findall(r"\{(\d+),(\d+)\}", re.search(r"source_target_pairs=\{(.*?\})\}", op.rest).group(1))
    crosses = any(slice_of[int(a)] != slice_of[int(b)] for a, b in pairs)
    return {"dcn" if crosses else "ici": result}
  best = {"ici": 0.0, "dcn": 0.0}
  for group in replica_groups(op.rest, len(slice_of)):
    per_slice = collections.Counter(slice_of[p] for p in group)
    s, k = len(per_slice), max(per_slice.values())
    buffer = result * len(group) if op.opcode == "reduce-scatter" else result
    factor = 2.0 if op.opcode == "all-reduce" else 1.0
    sent = {"ici": factor * (k - 1) / k * buffer, "dcn": factor * (s - 1) / s * buffer / k}
    if sum(sent.values()) > sum(best.values()):
      best = sent
  return best


def part_of(rest: str) -> str:
  """The part of the model an op serves, from its op_name (PARTS), else 'other'."""
  name = re.search(r'op_name="([^"]*)"', rest)
  name = name.group(1) if name else ""
  return next((part for part, pattern in PARTS if re.search(pattern, name)), "other")


def _summarise(totals: dict[tuple[str, str, str], float], ops: int) -> Communication:
  out = Communication(collectives=ops)
  for (kind, network, part), sent in totals.items():
    if network == "ici":
      out.ici_bytes += sent
    else:
      out.dcn_bytes += sent
      out.dcn_by_kind[kind] = out.dcn_by_kind.get(kind, 0.0) + sent
      out.dcn_by_part[part] = out.dcn_by_part.get(part, 0.0) + sent
    out.by_kind[kind] = out.by_kind.get(kind, 0.0) + sent
    out.by_part[part] = out.by_part.get(part, 0.0) + sent
  return out


def slice_of_partitions(mesh) -> list[int]:
  """The slice of each partition id: the mesh's flattened devices, numbered as rules.slices_of
  groups them."""
  from flamingo_jax.models import rules  # pylint: disable=g-import-not-at-top
  devices = list(mesh.devices.flat)
  index = {d: i for i, group in enumerate(rules.slices_of(devices)) for d in group}
  return [index[d] for d in devices]
