"""Plans a training job before it is paid for: compiles the train step `train` would run, ahead
of time, for a TPU topology (from any machine, no TPU needed) or for this machine's devices,
and reports per chip whether it fits, its FLOPs, a step-time lower bound and the MFU ceiling.

  python -m flamingo_jax.plan --config=configs/of_9b.py:tpu --topology=v5e:8x8
  python -m flamingo_jax.plan --config=configs/of_3b.py:gpu --topology=local --json
  python -m flamingo_jax.plan --config=configs/of_9b.py:tpu --topology=v5e:8x8 --search
  python -m flamingo_jax.plan --config=configs/of_9b.py:tpu --topology=v5e:16x16 --slices=2 \
      --config.mesh.fsdp=256                  # fsdp within each slice, data across the two

`--config.…` overrides apply as in `train`. TPU topologies need the TPU compiler:
`pip install "jax[tpu]==<installed jax>"`. Exit status 1 when the step does not fit.

What the numbers mean (per chip unless said):
  memory      arguments (params, optimizer state, frozen weights, batch shards) + outputs not
              aliased to the donated state + temporaries (activations, gradients) + code,
              against the chip's HBM (flamingo_jax/chips.py).
  FLOPs       model: every matrix product of the model, forward and backward (models/flops.py),
              the numerator of MFU; executed: what the program runs, remat recomputation too.
              XLA's own count is shown, but it counts a scanned layer stack once.
  communication  the bytes each chip sends per step in every collective of the partitioned
              program (plan/comm.py), scanned layers counted per layer, over ICI (within a
              slice) and DCN (across slices), by kind and by part of the model; its time at the
              chip's link bandwidths (chips.py).
  step time   a lower bound without communication: max(executed FLOPs / peak FLOP/s, bytes /
              HBM bandwidth), where bytes is the larger of XLA's bytes accessed and arguments +
              outputs; and an estimate, max(compute, memory, communication): collectives fully
              overlapped with compute, as XLA's async collectives aim for (the sum, no overlap,
              beside it). Not modelled: latency of small collectives, link contention, imperfect
              overlap, host work; real MFU is below the estimate's.
"""
from __future__ import annotations

import json
import sys

from flamingo_jax import cli  # first: its quiet start precedes the libraries' imports
from absl import flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (optionally file.py:arg).",
                                          lock_config=True)
_TOPOLOGY = flags.DEFINE_string("topology", None, "'local' or a TPU topology, e.g. v5e:4x4, v5p:2x2x2.")
_SLICES = flags.DEFINE_integer("slices", 1, "Slices of --topology joined over the data-centre network "
                               "(multislice; the mesh's dcn_* sizes split the axes across them).")
_JSON = flags.DEFINE_bool("json", False, "Print the plan (or the search's plans) as JSON.")
_SEARCH = flags.DEFINE_bool("search", False, "Plan a grid of settings and rank what fits.")
_BATCHES = flags.DEFINE_list("search_batch", ["1", "2", "4", "8"], "Rows per data x fsdp chip of the dataset "
                             "with the longest rows (MMC4); the others keep their ratio to it.")
_REMAT = flags.DEFINE_list("search_remat", ["none", "dots_with_no_batch_dims_saveable", "full"],
                           "Remat policies to try.")
_TENSOR = flags.DEFINE_list("search_tensor", ["1", "2", "4"], "Tensor-parallel sizes to try.")
_SCAN = flags.DEFINE_list("search_scan", ["true", "false"], "scan_layers settings to try.")
_DATA = flags.DEFINE_list("search_data", ["1", "2"], "Data-parallel sizes within a slice to try (fsdp takes the "
                          "chips data and tensor leave).")
_DCN = flags.DEFINE_list("search_dcn", ["data", "fsdp"], "With --slices: the axis the slices split, to try.")
_HBM_GIB = flags.DEFINE_float("hbm_gib", None, "Memory per chip, GiB (default: the chip's).")
_CACHE = flags.DEFINE_string("compilation_cache", "~/.cache/flamingo_jax/xla",
                             "Where the plan cache keeps what compiles told the planner (plan/cache.py): "
                             "a step planned before is not compiled again ('' for none).")
flags.mark_flags_as_required(["config", "topology"])

GIB = 2 ** 30


def size(n: float) -> str:
  """Bytes for a person: GiB, or MiB below one GiB."""
  return f"{n / GIB:.2f} GiB" if abs(n) >= GIB else f"{n / 2 ** 20:.1f} MiB"


def report(plan, title: str) -> list[str]:
  """The plan as lines for a person."""
  chip = plan.chip
  hbm = f", {plan.hbm_bytes / GIB:.1f} GiB each" if plan.hbm_bytes else ""
  from flamingo_jax.plan import core  # pylint: disable=g-import-not-at-top
  lines = [f"{title} on {core.target_name(plan.topology, plan.slices)}: {plan.chips} x "
           f"{chip.name if chip else 'device'}{hbm}; mesh {plan.mesh_layout}"]
  lines.append("batch: " + "; ".join(f"{n} {b['rows']} rows x {b['tokens']} tokens, {b['encoded_images']} "
                                     f"of {b['rows'] * b['slots']} image slots encoded"
                                     for n, b in plan.batches.items()))
  lines += _memory_lines(plan)
  parts = ", ".join(f"{k} {v:.2e}" for k, v in plan.model_flops_by_part.items())
  lines.append(f"FLOPs per step: model {plan.model_flops:.3e} ({parts}); executed {plan.executed_flops:.3e}")
  if plan.xla_flops_per_chip:
    lines.append(f"XLA per chip: {plan.xla_flops_per_chip:.3e} FLOPs, {plan.xla_bytes_per_chip:.3e} bytes "
                 "accessed (a scanned layer stack counted once)")
  lines += _communication_lines(plan)
  if plan.step_time_s:
    bound = "compute" if plan.compute_s >= plan.memory_s else "memory"
    lines.append(f"step time >= {plan.step_time_s * 1e3:.3g} ms without communication ({bound}: compute "
                 f"{plan.compute_s * 1e3:.3g} ms at {chip.peak_flops / 1e12:.0f} TFLOP/s, memory "
                 f"{plan.memory_s * 1e3:.3g} ms at {chip.hbm_bandwidth / 1e9:.0f} GB/s); MFU ceiling {plan.mfu_ceiling:.1%}")
  if plan.step_time_estimate_s:
    lines.append(f"step time estimate {plan.step_time_estimate_s * 1e3:.3g} ms, bound by {plan.bound_by} (collectives "
                 f"overlapping compute; {plan.serial_step_time_s * 1e3:.3g} ms if none overlaps): samples/s "
                 f"{plan.to_json()['samples_per_s']:.4g}, MFU {plan.mfu_estimate:.1%}")
  lines.append(f"planned from the plan cache in {plan.compile_s:.1f} s (compiled in {plan.cold_compile_s:.1f} s "
               "when first planned)" if plan.cached else f"compiled in {plan.compile_s:.1f} s")
  return lines


def _communication_lines(plan) -> list[str]:
  sent = plan.communication
  if not sent:
    return []
  kinds = ", ".join(f"{k} {size(v)}" for k, v in sorted(sent["by_kind"].items(), key=lambda kv: -kv[1]) if v)
  parts = ", ".join(f"{k} {size(v)}" for k, v in sorted(sent["by_part"].items(), key=lambda kv: -kv[1]) if v)
  line = (f"communication per chip per step: ICI {size(sent['ici_bytes_per_chip'])}, DCN "
          f"{size(sent['dcn_bytes_per_chip'])} ({kinds}; by part: {parts})")
  if sent.get("uncounted_loops"):
    line += f" [{sent['uncounted_loops']} loops without a stated trip count counted once: a lower bound]"
  chip = plan.chip
  if plan.communication_s is not None:
    dcn = f" + DCN {plan.dcn_s * 1e3:.3g} ms at {chip.dcn_bandwidth / 1e9:.3g} GB/s" if plan.dcn_s else ""
    line += f"; {plan.communication_s * 1e3:.3g} ms: ICI {plan.ici_s * 1e3:.3g} ms at {chip.ici_bandwidth / 1e9:.0f} GB/s{dcn}"
  elif chip is not None:
    line += "; time unknown: this chip's link bandwidth is not in flamingo_jax/chips.py"
  return [line]


def _memory_lines(plan) -> list[str]:
  if plan.xla_error:
    return ["DOES NOT FIT: the compiler ran out of memory:", *("  " + l for l in plan.xla_error.splitlines()),
            *_largest(plan)]
  lines = [f"memory per chip: {size(plan.total_bytes)} = arguments {size(plan.argument_bytes)} + outputs "
           f"{size(plan.output_bytes)} - aliased to donated inputs {size(plan.alias_bytes)} + temporaries "
           f"{size(plan.temp_bytes)} + code {size(plan.code_bytes)}"]
  if plan.fits is None:
    return lines + ["fit unknown: this device's memory is not in flamingo_jax/chips.py (pass --hbm_gib)"]
  margin = plan.hbm_bytes - plan.total_bytes
  if plan.fits:
    return lines + [f"FITS with {size(margin)} ({margin / plan.hbm_bytes:.0%}) to spare"]
  return lines + [f"DOES NOT FIT: {size(-margin)} over {size(plan.hbm_bytes)}", *_largest(plan)]


def _largest(plan) -> list[str]:
  return ["largest arguments per chip: " + ", ".join(f"{p} {size(b)}" for p, b in plan.largest)]


def search_table(plans, title: str) -> list[str]:
  """The ranked plans that fit, and the overrides that launch the best."""
  from flamingo_jax.plan import search  # pylint: disable=g-import-not-at-top
  best = search.ranked(plans)
  if not best:
    return [f"{title}: nothing in the grid fits"]
  names = [k.split(".")[1] for k in best[0].overrides if k.endswith(".batch_size")]
  batch = lambda o: "/".join(str(o[f"data.{n}.batch_size"]) for n in names)
  width = max(10, len("/".join(names)), *(len(batch(p.overrides)) for p in best))
  head = (f"{'#':>2} {'/'.join(names):>{width}} {'mesh d,f,t':>10} {'slices':>6} {'remat':>32} {'scan':>5} {'GiB':>6} "
          f"{'est. ms':>8} {'bound by':>13} {'samples/s':>9} {'MFU est':>7}")
  lines = [f"{title}: {len(best)} of {len(plans)} planned settings fit, fastest first", head]
  for i, p in enumerate(best, 1):
    o, j = p.overrides, p.to_json()
    step = f"{p.step_time_estimate_s * 1e3:8.1f}" if p.step_time_estimate_s else f"{'?':>8}"
    rate = f"{j['samples_per_s']:9.1f}" if j["samples_per_s"] else f"{'?':>9}"
    mfu = f"{p.mfu_estimate:7.1%}" if p.mfu_estimate else f"{'?':>7}"
    across = "-" if p.slices == 1 else ("data" if o["mesh.dcn_data"] > 1 else "fsdp")
    lines.append(f"{i:>2} {batch(o):>{width}} "
                 f"{o['mesh.data']:>3},{o['mesh.fsdp']},{o['mesh.tensor']:<3} {across:>6} {o['model.remat_policy']:>32} "
                 f"{str(o['model.scan_layers']):>5} {p.total_bytes / GIB:6.2f} {step} {p.bound_by or '?':>13} {rate} {mfu}")
  lines.append("launch the best with: " + " ".join(f"--config.{k}={v}" for k, v in best[0].overrides.items()))
  return lines


def _integers(flag: str, values: list[str]) -> list[int]:
  try:
    return [int(v) for v in values]
  except ValueError:
    from flamingo_jax.plan import core  # pylint: disable=g-import-not-at-top
    raise core.PlanError(f"--{flag}={','.join(values)}: expected whole numbers") from None


def main(argv):
  del argv
  import jax  # pylint: disable=g-import-not-at-top
  if _TOPOLOGY.value != "local":  # compile for the TPU here; never start a local accelerator
    jax.config.update("jax_platforms", "cpu")
  from flamingo_jax.plan import core, search  # pylint: disable=g-import-not-at-top
  cfg, title = _CONFIG.value, flags.FLAGS["config"].config_filename
  hbm = _HBM_GIB.value and _HBM_GIB.value * GIB
  try:
    devices, chip = core.target_devices(_TOPOLOGY.value, _SLICES.value)
    if _SEARCH.value:
      grid = search.Grid(_integers("search_batch", _BATCHES.value), _REMAT.value,
                         _integers("search_tensor", _TENSOR.value),
                         [s.lower() in ("1", "true", "yes") for s in _SCAN.value],
                         _integers("search_data", _DATA.value), _DCN.value)
      plans = search.search(cfg, _TOPOLOGY.value, devices, chip, grid, hbm,
                            log=lambda line: print(line, file=sys.stderr, flush=True), cache_dir=_CACHE.value)
      print(json.dumps([p.to_json() for p in plans], indent=1, default=str) if _JSON.value
            else "\n".join(search_table(plans, title)))
      return 0 if search.ranked(plans) else 1
    plan = core.make_plan(cfg, _TOPOLOGY.value, devices, chip, hbm, cache_dir=_CACHE.value)
  except core.PlanError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(json.dumps(plan.to_json(), indent=1, default=str) if _JSON.value else "\n".join(report(plan, title)))
  return 1 if plan.fits is False else 0


if __name__ == "__main__":
  cli.run(main)
