"""`--search`: plans a grid of settings (per-chip batch, remat policy, mesh split: data x fsdp x
tensor within a slice and slices on data or fsdp, scan) and ranks what fits by its estimated
samples/s (plan/core.Plan.step_time_estimate_s: communication counted).

Memory grows with the batch, so for each (split, remat, scan) the batches are tried from the
smallest up and the first that does not fit ends that column: a grid of B batches costs at most
B compiles per column, usually fewer. Compiles are cached (the persistent compilation cache),
so a second search over the same grid is quick.
"""
from __future__ import annotations

import dataclasses
import itertools
import time
from typing import Any, Sequence

import ml_collections

from flamingo_jax import chips as chips_lib, overrides as overrides_lib
from flamingo_jax.data import batch as batch_lib
from flamingo_jax.models import rules
from flamingo_jax.plan.core import Plan, PlanError, make_plan


@dataclasses.dataclass(frozen=True)
class Grid:
  """The settings to try. `batches`: rows per data x fsdp chip of the mixture's longest-row
  dataset (MMC4 in the released configs; the others keep their ratio to it, `batch_overrides`); the mesh of a slice: `data` replicas x `tensor` splits, fsdp over
  the rest; `dcn`: the axis the slices split ('data' or 'fsdp'; several slices only)."""
  batches: Sequence[int] = (1, 2, 4, 8)
  remat: Sequence[str] = ("none", "dots_with_no_batch_dims_saveable", "full")
  tensor: Sequence[int] = (1, 2, 4)
  scan: Sequence[bool] = (True, False)
  data: Sequence[int] = (1,)
  dcn: Sequence[str] = ("data",)


@dataclasses.dataclass(frozen=True)
class Split:
  """One mesh of the grid: within a slice data x fsdp x tensor, and where the slices go."""
  data: int
  tensor: int
  dcn: str = "data"


def batch_overrides(data_cfg: ml_collections.ConfigDict, per_chip: int, shards: int) -> dict[str, int]:
  """{"data.<name>.batch_size": rows} of every dataset for `per_chip` rows per chip of the one
  with the longest rows (the first such), the others in the config's ratio to it (at least one row
  per chip). E.g. LAION 64, MMC4 32 (256 tokens) -> per_chip 2 on 8 chips: MMC4 16, LAION 32."""
  names = batch_lib.mixture(data_cfg)
  anchor = max(names, key=lambda n: data_cfg[n].max_tokens)  # max keeps the first of equals
  ratio = {n: data_cfg[n].batch_size / data_cfg[anchor].batch_size for n in names}
  return {f"data.{n}.batch_size": max(1, round(per_chip * ratio[n])) * shards for n in names}


def point_overrides(cfg: ml_collections.ConfigDict, chips: int, per_chip: int, split: Split, remat: str,
                    scan: bool, slices: int = 1) -> dict[str, Any]:
  """The `--config.…` overrides of one grid point for `slices` slices of `chips` chips."""
  fsdp = chips // (split.tensor * split.data)
  shards = split.data * fsdp * slices  # the chips that split the batch
  return {**batch_overrides(cfg.data, per_chip, shards),
          "mesh.data": split.data, "mesh.fsdp": fsdp, "mesh.tensor": split.tensor,
          "mesh.dcn_data": slices if split.dcn == "data" else 1, "mesh.dcn_fsdp": slices if split.dcn == "fsdp" else 1,
          "model.remat_policy": remat, "model.scan_layers": scan}


def _columns(grid: Grid, chips: int, slices: int) -> list[tuple[Split, str, bool]]:
  """(split, remat, scan) of every column whose mesh fits the slice's chips."""
  if any(d not in ("data", "fsdp") for d in grid.dcn):
    raise PlanError(f"--search_dcn={','.join(grid.dcn)}: each is 'data' or 'fsdp'")
  splits = [Split(d, t, dcn) for t, d, dcn in itertools.product(grid.tensor, grid.data, grid.dcn if slices > 1 else ["data"])
            if chips % (t * d) == 0]
  if not splits:
    raise PlanError(f"--search_tensor={','.join(map(str, grid.tensor))} x --search_data="
                    f"{','.join(map(str, grid.data))}: none divides {chips} chips")
  return list(itertools.product(dict.fromkeys(splits), grid.remat, grid.scan))


def search(cfg: ml_collections.ConfigDict, topology: str, devices: list, chip: chips_lib.Chip | None,
           grid: Grid, hbm_bytes: float | None = None, log=print, cache_dir: str = "") -> list[Plan]:
  """Every plan made over `grid` (fitting or not), in the order made; progress lines to `log`;
  `cache_dir`: the plan cache (make_plan)."""
  slices = len(rules.slices_of(devices))
  chips = len(devices) // slices  # per slice
  columns = _columns(grid, chips, slices)
  plans, start, total = [], time.perf_counter(), len(columns) * len(grid.batches)
  for n, (split, remat, scan) in enumerate(columns):
    for per_chip in sorted(grid.batches):
      overrides = point_overrides(cfg, chips, per_chip, split, remat, scan, slices)
      plan = make_plan(overrides_lib.apply(cfg, overrides), topology, devices, chip, hbm_bytes, overrides,
                       cache_dir)
      plans.append(plan)
      done = n * len(grid.batches) + sorted(grid.batches).index(per_chip) + 1
      elapsed = time.perf_counter() - start
      where = f" slices on {split.dcn}" if slices > 1 else ""
      log(f"[{done}/{total}] data={split.data} tensor={split.tensor}{where} remat={remat} scan={scan} batch "
          f"{per_chip}/chip: {describe_fit(plan)} (elapsed {elapsed / 60:.1f} min, ETA at most "
          f"{elapsed / done * (total - done) / 60:.1f} min)")
      if plan.fits is False:
        break  # larger batches need more memory still
  return plans


def ranked(plans: list[Plan]) -> list[Plan]:
  """The plans that fit, fastest estimated samples/s first (unknown speed last)."""
  fitting = [p for p in plans if p.fits is not False]
  return sorted(fitting, key=lambda p: -(p.to_json()["samples_per_s"] or 0.0))


def describe_fit(plan: Plan) -> str:
  gib = 2 ** 30
  if plan.fits is None:
    return f"needs {plan.total_bytes / gib:.2f} GiB per chip (chip memory unknown)"
  if plan.xla_error:
    return "does not fit (the compiler ran out of memory)"
  verdict = "fits" if plan.fits else "does not fit"
  return f"{verdict}: {plan.total_bytes / gib:.2f} of {plan.hbm_bytes / gib:.1f} GiB"
