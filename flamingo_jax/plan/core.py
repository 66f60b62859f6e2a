"""One plan: the training step `train` would run, compiled ahead of time for a target, and what
its compiled program says about memory, FLOPs and time per chip.

Nothing is allocated: variables, optimizer state and batches are ShapeDtypeStructs carrying the
shardings a real run gives them (weights/load.abstract_variables, train/state.state_shardings,
data/batch.batch_shapes), and the step is the one `train/step.jit_train_step` builds for
train/loop.setup.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
import time
from typing import Any, Sequence

import jax
import ml_collections
import numpy as np

from flamingo_jax import chips as chips_lib, config_check
from flamingo_jax.data import batch as batch_lib
from flamingo_jax.errors import UsageError
from flamingo_jax.models import flops as flops_lib, rules
from flamingo_jax.plan import cache as plan_cache, comm
from flamingo_jax.train import image_buffers, metrics, optimizer, state as state_lib, step as step_lib
from flamingo_jax.weights import load

TPU_GENERATIONS = ("v4", "v5e", "v5p", "v6e")
# One host of each generation, as Cloud TPU names its accelerator types: what a compile-only
# process tells libtpu it is (without one, libtpu asks a metadata server and complains).
_HOST_ACCELERATOR = {"v4": "v4-8", "v5e": "v5litepod-4", "v5p": "v5p-8", "v6e": "v6e-4"}


class PlanError(UsageError):
  """A plan that cannot be made (bad topology, impossible mesh): one line for the user."""


def target_devices(topology: str, slices: int = 1) -> tuple[list, chips_lib.Chip | None]:
  """The devices of `topology` ('local', or a TPU topology such as 'v5e:4x4', 'v5p:2x2x2', of
  which `slices` slices joined over DCN) and their chip's facts. TPU devices are abstract: they
  compile, they do not run (each knows its `slice_index`)."""
  if slices < 1 or (topology == "local" and slices != 1):
    raise PlanError(f"--slices={slices}: a positive number of slices of a TPU topology "
                    "(--topology=local plans this machine's devices as they are)")
  if topology == "local":
    devices = jax.devices()
    return devices, chips_lib.chip_of(devices[0].device_kind)
  generation, _, shape = topology.partition(":")
  if generation not in TPU_GENERATIONS or not re.fullmatch(r"\d+(x\d+){1,2}", shape):
    raise PlanError(f"--topology={topology!r}: expected 'local' or <generation>:<chips per axis> with "
                    f"generation one of {', '.join(TPU_GENERATIONS)}, e.g. v5e:4x4, v6e:2x4, v5p:2x2x2")
  try:
    import libtpu  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    raise PlanError(f"--topology={topology}: the TPU compiler is not installed; "
                    f'pip install "jax[tpu]=={jax.__version__}" (no TPU needed)') from None
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  # Compiling only, no chip: several processes may hold the compiler at once (libtpu's lockfile
  # would refuse the second), and no TPU worker list or accelerator type is needed (libtpu
  # complains without them).
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
  from jax._src import hardware_utils  # pylint: disable=g-import-not-at-top
  if hardware_utils.num_available_tpu_chips_and_device_id()[0] == 0:  # (a TPU VM knows its own)
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", _HOST_ACCELERATOR[generation])
  try:
    devices = topologies.get_topology_desc(platform="tpu", topology_name=topology, num_slices=slices).devices
  except Exception as e:  # libtpu's own message names what is wrong with the shape
    raise PlanError(f"--topology={topology}: not a {generation} topology libtpu knows "
                    f"({str(e).splitlines()[0][:200]})") from None
  return list(devices), chips_lib.CHIPS[generation]


def target_name(topology: str, slices: int) -> str:
  """'v5e:4x4', or '2 x v5e:4x4' for two slices of it."""
  return topology if slices == 1 else f"{slices} x {topology}"


@dataclasses.dataclass
class Plan:
  """What one compiled step costs per chip. Bytes are per chip; FLOPs per step (all chips)."""
  topology: str
  chip: chips_lib.Chip | None
  chips: int  # in all slices
  mesh: dict[str, int]
  batches: dict[str, dict[str, int]]  # {dataset: rows, slots, encoded images, tokens}
  overrides: dict[str, Any]
  fits: bool | None = None  # None: the chip's memory is unknown (a CPU)
  hbm_bytes: float | None = None
  argument_bytes: int = 0
  output_bytes: int = 0
  alias_bytes: int = 0
  temp_bytes: int = 0
  code_bytes: int = 0
  largest: list[tuple[str, int]] = dataclasses.field(default_factory=list)
  xla_error: str = ""
  model_flops: float = 0.0  # models/flops.py: the model's matrix products, no recomputation
  model_flops_by_part: dict[str, float] = dataclasses.field(default_factory=dict)
  executed_flops: float = 0.0  # every matrix product the program runs (remat recomputation too)
  xla_flops_per_chip: float = 0.0  # XLA's count of the compiled program (a scanned body once)
  xla_bytes_per_chip: float = 0.0
  compute_s: float | None = None
  memory_s: float | None = None
  compile_s: float = 0.0  # this plan's trace + lower + compile (or cache read)
  cold_compile_s: float = 0.0  # the compile the numbers come from (this one, or the cached one's)
  cached: bool = False  # the compiler's numbers came from the plan cache (flamingo_jax/plan/cache.py)
  slices: int = 1  # of `topology`, joined over DCN
  mesh_layout: str = ""  # rules.describe: which axes cross slices
  communication: dict[str, Any] = dataclasses.field(default_factory=dict)  # comm.Communication.to_json
  ici_s: float | None = None  # ICI bytes per chip / the chip's ICI bandwidth
  dcn_s: float | None = None  # DCN bytes per chip / the chip's share of its host's DCN bandwidth

  @property
  def total_bytes(self) -> int:
    """Peak per-chip HBM the program needs: its arguments, outputs not aliased to a donated
    argument, temporaries and code."""
    return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes + self.code_bytes

  @property
  def step_time_s(self) -> float | None:
    """A lower bound: the chip cannot do its share of the FLOPs, or move its bytes, faster."""
    if self.compute_s is None:
      return None
    return max(self.compute_s, self.memory_s)

  @property
  def communication_s(self) -> float | None:
    """Time to send the step's collectives, ICI then DCN (no overlap between the two)."""
    if self.ici_s is None or self.dcn_s is None:
      return None
    return self.ici_s + self.dcn_s

  @property
  def step_time_estimate_s(self) -> float | None:
    """The step time if communication overlaps compute and memory traffic fully (XLA's async
    collectives): the largest of the three. `serial_step_time_s` is the no-overlap bound."""
    if self.compute_s is None or self.communication_s is None:
      return None
    return max(self.compute_s, self.memory_s, self.communication_s)

  @property
  def serial_step_time_s(self) -> float | None:
    if self.step_time_estimate_s is None:
      return None
    return max(self.compute_s, self.memory_s) + self.communication_s

  @property
  def bound_by(self) -> str | None:
    """Which term sets the estimate: 'compute', 'memory' or 'communication'."""
    if self.step_time_estimate_s is None:
      return None
    terms = {"compute": self.compute_s, "memory": self.memory_s, "communication": self.communication_s}
    return max(terms, key=terms.get)

  @property
  def mfu_estimate(self) -> float | None:
    """The MFU a step of the estimated time would reach."""
    if not self.step_time_estimate_s:
      return None
    return self.model_flops / self.step_time_estimate_s / (self.chips * self.chip.peak_flops)

  @property
  def samples_per_step(self) -> int:
    return sum(b["rows"] for b in self.batches.values())

  @property
  def mfu_ceiling(self) -> float | None:
    """The model FLOPs utilisation a step at the lower bound would reach."""
    if not self.step_time_s:
      return None
    return self.model_flops / self.step_time_s / (self.chips * self.chip.peak_flops)

  def to_json(self) -> dict[str, Any]:
    out = dataclasses.asdict(self)
    for name in ("total_bytes", "step_time_s", "samples_per_step", "mfu_ceiling", "communication_s",
                 "step_time_estimate_s", "serial_step_time_s", "bound_by", "mfu_estimate"):
      out[name] = getattr(self, name)
    out["samples_per_s_bound"] = self.step_time_s and self.samples_per_step / self.step_time_s
    # The rate a search ranks by: at the estimated step time where known, else at the bound.
    out["samples_per_s"] = (self.samples_per_step / self.step_time_estimate_s if self.step_time_estimate_s
                            else out["samples_per_s_bound"])
    return out


def abstract_step(cfg: ml_collections.ConfigDict, mesh) -> tuple[Any, tuple, dict]:
  """(the jitted step, its abstract arguments, packing) for `cfg` on `mesh`. An image buffer to
  derive from the data (`image_buffer=0`) is planned at every slot, its largest size."""
  rule_set = rules.logical_rules(cfg)
  variables = load.abstract_variables(cfg.model, mesh, rule_set)
  tx = optimizer.make_optimizer(cfg.optim)
  shardings = state_lib.state_shardings(variables["params"], tx, mesh)
  state = jax.tree_util.tree_map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                 jax.eval_shape(lambda p: state_lib.TrainState.create(p, tx), variables["params"]),
                                 shardings)
  packing = image_buffers.plan(cfg.data, {}, mesh.shape["data"] * mesh.shape["fsdp"])
  batches = {name: {k: jax.ShapeDtypeStruct(shape, dtype, sharding=rules.batch_sharding(mesh, len(shape)))
                    for k, (shape, dtype) in batch_lib.batch_shapes(name, cfg.data).items()}
             for name in batch_lib.mixture(cfg.data)}
  step = step_lib.jit_train_step(cfg, mesh, shardings, step_lib.NonFinitePolicy.from_config(cfg.train), packing)
  return step, (state, variables["frozen"], batches), packing


def make_plan(cfg: ml_collections.ConfigDict, topology: str, devices: Sequence | None = None,
              chip: chips_lib.Chip | None = None, hbm_bytes: float | None = None,
              overrides: dict[str, Any] | None = None, cache_dir: str = "") -> Plan:
  """Compiles `cfg`'s train step for `topology` and measures it (see `Plan`). With `cache_dir`,
  a TPU topology's compile results are read from (and written to) the plan cache."""
  if devices is None:
    devices, chip = target_devices(topology)
  slices = len(rules.slices_of(devices))
  found = config_check.problems(cfg, len(devices), 1, slices)  # the train CLI's rules, on the target
  if found:
    raise PlanError(f"{target_name(topology, slices)} ({len(devices)} chips): " + "; ".join(found))
  mesh = rules.make_mesh(cfg.mesh, devices)
  step, args, packing = abstract_step(cfg, mesh)
  sizes = metrics.batch_sizes(cfg, packing)
  plan = Plan(topology, chip, len(devices), dict(mesh.shape),
              {n: dict(zip(("rows", "slots", "encoded_images", "tokens"), s)) for n, s in sizes.items()},
              dict(overrides or {}), hbm_bytes=hbm_bytes or (chip and chip.hbm_bytes), slices=slices,
              mesh_layout=rules.describe(mesh))
  counts = metrics.step_flops(cfg, packing)
  plan.model_flops = counts.total
  plan.model_flops_by_part = {part: counts.forward[part] + counts.backward[part] for part in flops_lib.PARTS}
  start = time.perf_counter()
  with rules.activate(mesh, rules.logical_rules(cfg)):
    traced = step.trace(*args)
    plan.executed_flops = metrics.jaxpr_matmul_flops(traced.jaxpr)
    lowered = traced.lower()
    target = target_name(topology, slices) if topology != "local" else f"local:{len(devices)} x {devices[0].device_kind}"
    digest = plan_cache.key(lowered, target) if cache_dir else ""
    analysis = plan_cache.read(cache_dir, digest) if digest else None
    if analysis is not None and "communication" not in analysis and not analysis.get("xla_error"):
      analysis = None  # an entry from before communication was counted
    plan.cached = analysis is not None
    if analysis is None:
      analysis = _compile(lowered, comm.slice_of_partitions(mesh))
      analysis["compile_s"] = time.perf_counter() - start
      if digest:
        plan_cache.write(cache_dir, digest, analysis)
  plan.cold_compile_s = analysis.pop("compile_s")
  plan.compile_s = time.perf_counter() - start if plan.cached else plan.cold_compile_s
  _measure(plan, analysis, args, chip)
  return plan


def _compile(lowered, slice_of: list[int]) -> dict[str, Any]:
  """The compiled program's numbers: per-chip memory, XLA's costs and the communication of its
  partitioned module (plan/comm.py), or the compiler's out-of-memory message (any other compile
  error is raised)."""
  try:
    if len(slice_of) > 1:
      compiled, partitioned = comm.partitioned_hlo(lowered)
    else:  # one device: nothing to partition, nothing sent
      compiled, partitioned = lowered.compile(), ""
  except Exception as e:  # pylint: disable=broad-except
    if not _out_of_memory(e):
      raise
    return {"xla_error": _first_lines(e)}
  mem = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = (cost[0] if isinstance(cost, list) else cost) or {}
  return {"argument_bytes": mem.argument_size_in_bytes, "output_bytes": mem.output_size_in_bytes,
          "alias_bytes": mem.alias_size_in_bytes, "temp_bytes": mem.temp_size_in_bytes,
          "code_bytes": mem.generated_code_size_in_bytes, "xla_flops_per_chip": float(cost.get("flops", 0.0)),
          "xla_bytes_per_chip": float(cost.get("bytes accessed", 0.0)),
          "communication": (comm.count(partitioned, slice_of) if partitioned else comm.Communication()).to_json()}


def _measure(plan: Plan, analysis: dict[str, Any], args, chip: chips_lib.Chip | None) -> None:
  """The plan's memory, XLA's costs and the time bounds, from a compile's numbers (`_compile`)."""
  for name, value in analysis.items():
    setattr(plan, name, value)
  if plan.xla_error:
    plan.fits, plan.largest = False, largest_arguments(args)
    return
  if plan.hbm_bytes:
    plan.fits = plan.total_bytes <= plan.hbm_bytes
    if not plan.fits:
      plan.largest = largest_arguments(args)
  if chip is not None:
    plan.compute_s = plan.executed_flops / plan.chips / chip.peak_flops
    # Every argument is read and every output written at least once; XLA's count (a scanned
    # body once) is a lower bound too.
    moved = max(plan.xla_bytes_per_chip, plan.argument_bytes + plan.output_bytes)
    plan.memory_s = moved / chip.hbm_bandwidth
    sent = plan.communication
    if chip.ici_bandwidth and (chip.dcn_bandwidth or not sent["dcn_bytes_per_chip"]):
      plan.ici_s = sent["ici_bytes_per_chip"] / chip.ici_bandwidth
      plan.dcn_s = sent["dcn_bytes_per_chip"] / chip.dcn_bandwidth if sent["dcn_bytes_per_chip"] else 0.0


def largest_arguments(args, n: int = 8) -> list[tuple[str, int]]:
  """The `n` largest per-chip shards among the step's arguments: (path, bytes)."""
  sizes = []
  named = dict(zip(("state", "frozen", "batch"), args))
  for path, leaf in jax.tree_util.tree_leaves_with_path(named):
    shard = leaf.sharding.shard_shape(leaf.shape)
    sizes.append((rules.path_str(path), int(math.prod(shard)) * np.dtype(leaf.dtype).itemsize))
  return sorted(sizes, key=lambda s: -s[1])[:n]


def _out_of_memory(error: Exception) -> bool:
  text = str(error)
  return "RESOURCE_EXHAUSTED" in text or "Ran out of memory" in text or "out of memory" in text.lower()


def _first_lines(error: Exception, n: int = 12) -> str:
  return "\n".join(line for line in str(error).splitlines()[:n] if line.strip())
