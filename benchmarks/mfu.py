"""MFU of the real train step: the step `train` compiles (both datasets, the optimizer, the config's
mesh, remat, scan and dtypes) from random weights, timed on this machine's accelerator.

  python benchmarks/mfu.py --config=configs/of_3b.py:gpu --config.data.mmc4.batch_size=16 \
      --config.data.laion.batch_size=32 [--reference] [--profile]
  python benchmarks/mfu.py --config=configs/of_9b.py:gpu --config.data.mmc4.batch_size=8 \
      --config.data.laion.batch_size=16
  python benchmarks/mfu.py --config=configs/tiny.py --steps=3          # CPU: it runs

Prints the median step time after warm-up, samples/s and tokens/s, the model FLOPs per step (the
analytic count training's MFU uses, every scanned layer counted: flamingo_jax/models/flops.py),
achieved TFLOP/s, MFU against the chip's peak (flamingo_jax/chips.py) and peak device memory.
`--real_images=1,3` gives each MMC4 row 1-3 real images (its other slots empty) and packs them as
training does. `--reference` times open_flamingo's step (amp_bf16 on an accelerator, the same
model and batches) and prints the ratio; `--profile` adds where the step's device time goes.
`--json=PATH` writes every figure.
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.45")  # --reference shares the device

from absl import app, flags  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from flamingo_jax import chips  # noqa: E402
from flamingo_jax.data import batch as batch_lib  # noqa: E402
from flamingo_jax.models import rules  # noqa: E402
from flamingo_jax.train import image_buffers, metrics, optimizer, profile, state as state_lib  # noqa: E402
from flamingo_jax.train import step as step_lib  # noqa: E402
from flamingo_jax.weights import load  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", "configs/of_3b.py:gpu", "Training config (+ --config.… overrides).")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps (median reported).")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed steps after the compile.")
_REAL = flags.DEFINE_string("real_images", "", "min,max real images per MMC4 row (default: every slot).")
_REFERENCE = flags.DEFINE_bool("reference", False, "Also time open_flamingo's step on the same model and batches.")
_PROFILE = flags.DEFINE_bool("profile", False, "Trace 3 steps and print the top device ops by time.")
_PEAK = flags.DEFINE_float("peak_tflops", 0.0, "Peak bf16 TFLOP/s per device, for a chip chips.py lacks.")
_JSON = flags.DEFINE_string("json", "", "Write the figures here as JSON (after each stage, so a later stage's failure keeps them).")
_TRACE_DIR = flags.DEFINE_string("trace_dir", "", "With --profile: keep the trace and the compiled program's text here.")


def random_batches(cfg, rng: np.random.Generator, real: tuple[int, int] | None = None) -> dict:
  """Batches of the config's shapes as the pipeline makes them (uint8 pixels, one <image> token per
  real image, labels -100 on it); MMC4 rows hold `real` = (min, max) real images, else every slot."""
  out = {}
  for name in batch_lib.mixture(cfg.data):
    shapes = batch_lib.batch_shapes(name, cfg.data)
    (b, t, *_), length = shapes["images"][0], shapes["input_ids"][0][1]
    lo, hi = real if (real and name == "mmc4") else (t, t)
    counts = rng.integers(lo, hi + 1, size=b)
    mask = np.arange(t)[None, :] < counts[:, None]
    ids = rng.integers(1, cfg.model.eoc_token_id, size=(b, length))
    for row, k in enumerate(counts):
      ids[row, [i * length // k for i in range(k)]] = cfg.model.media_token_id
    images = rng.integers(0, 256, size=shapes["images"][0], dtype=np.uint8)
    images *= mask[:, :, None, None, None, None].astype(np.uint8)
    out[name] = {"images": images, "image_mask": mask, "input_ids": ids.astype(np.int32),
                 "attention_mask": np.ones_like(ids, np.int32),
                 "labels": np.where(ids == cfg.model.media_token_id, -100, ids).astype(np.int32)}
  return out


def packing_for(cfg, batches: dict, groups: int) -> dict:
  """The packing a run would derive for these batches: each device's buffer holds its most real
  images (no margin: the batches are fixed)."""
  out = {name: None for name in batch_lib.mixture(cfg.data)}
  mask = batches["mmc4"]["image_mask"]
  most = int(image_buffers.per_group_counts(mask, groups).max())
  if most < mask.size // groups and cfg.data.mmc4.batch_size % groups == 0:
    out["mmc4"] = (groups, max(most, 1))
  return out


def build(cfg, batches):
  """(compiled step, state, frozen, device batches, packing, compile seconds, XLA's FLOPs per device)."""
  mesh, rule_set = rules.make_mesh(cfg.mesh), rules.logical_rules(cfg)
  variables = load.initial_variables(cfg, mesh, rule_set)
  tx = optimizer.make_optimizer(cfg.optim)
  shardings = state_lib.state_shardings(variables["params"], tx, mesh)
  packing = packing_for(cfg, batches, mesh.shape["data"] * mesh.shape["fsdp"])
  with rules.activate(mesh, rule_set):
    state = state_lib.create_on_mesh(variables["params"], tx, shardings)
    step = step_lib.jit_train_step(cfg, mesh, shardings, step_lib.NonFinitePolicy.from_config(cfg.train), packing)
    device_batches = {name: rules.global_batch(b, mesh) for name, b in batches.items()}
    start = time.perf_counter()
    compiled = step.lower(state, variables["frozen"], device_batches).compile()
    compile_s = time.perf_counter() - start
  cost = compiled.cost_analysis()
  cost = (cost[0] if isinstance(cost, list) else cost) or {}
  return compiled, state, variables["frozen"], device_batches, packing, compile_s, float(cost.get("flops", 0.0))


def time_steps(compiled, state, frozen, batches, warmup: int, steps: int):
  """(seconds of each timed step, the final state): each step waited for before the next."""
  times = []
  for i in range(warmup + steps):
    start = time.perf_counter()
    state, m = compiled(state, frozen, batches)
    jax.block_until_ready(m["loss"])
    if i >= warmup:
      times.append(time.perf_counter() - start)
  return times, state


def peak_memory_bytes() -> int | None:
  stats = jax.local_devices()[0].memory_stats() or {}
  return stats.get("peak_bytes_in_use")


def mfu(flops_per_step: float, step_s: float, peak_flops: float | None, devices: int) -> float | None:
  """Model FLOPs per second over the devices' peak (None when the peak is unknown)."""
  return flops_per_step / step_s / (peak_flops * devices) if peak_flops else None


def figures(cfg, packing, times, compile_s, xla_flops) -> dict:
  """Every reported figure of our step."""
  sizes = metrics.batch_sizes(cfg, packing)
  samples = sum(rows for rows, *_ in sizes.values())
  tokens = sum(rows * length for rows, _, _, length in sizes.values())
  flops = metrics.step_flops(cfg, packing)
  step_s = statistics.median(times)
  chip = chips.chip_of(jax.devices()[0].device_kind)
  peak = _PEAK.value * 1e12 if _PEAK.value else (chip and chip.peak_flops)
  return {"device": jax.devices()[0].device_kind, "devices": jax.device_count(), "jax": jax.__version__,
          "batches": {n: dict(zip(("rows", "slots", "encoded_images", "tokens"), s)) for n, s in sizes.items()},
          "step_s": step_s, "step_s_all": times, "samples_per_s": samples / step_s, "tokens_per_s": tokens / step_s,
          "model_flops": flops.total, "model_flops_by_part": {p: flops.forward[p] + flops.backward[p] for p in flops.forward},
          "xla_flops_per_device": xla_flops, "achieved_tflops": flops.total / step_s / 1e12,
          "peak_tflops_per_device": peak and peak / 1e12, "mfu": mfu(flops.total, step_s, peak, jax.device_count()),
          "peak_memory_bytes": peak_memory_bytes(), "compile_s": compile_s}


def report(cfg, f: dict) -> list[str]:
  b = f["batches"]
  lines = [f"{cfg.model.lm.family} LM {cfg.model.lm.num_layers} x {cfg.model.lm.hidden_size}, ViT "
           f"{cfg.model.vision.layers} x {cfg.model.vision.width}; {cfg.model.dtype} compute, "
           f"remat {cfg.model.remat_policy}, scan {cfg.model.scan_layers}; on {f['devices']} x {f['device']} "
           f"(JAX {f['jax']})",
           f"batch: MMC4 {b['mmc4']['rows']} x {b['mmc4']['tokens']} tokens x {b['mmc4']['slots']} slots "
           f"({b['mmc4']['encoded_images']} images encoded) + LAION {b['laion']['rows']} x {b['laion']['tokens']}",
           f"step {f['step_s'] * 1e3:.1f} ms (median of {len(f['step_s_all'])}, range "
           f"{min(f['step_s_all']) * 1e3:.1f}-{max(f['step_s_all']) * 1e3:.1f}); compile {f['compile_s']:.1f} s",
           f"{f['samples_per_s']:.1f} samples/s, {f['tokens_per_s']:.0f} tokens/s",
           f"model FLOPs/step {f['model_flops']:.3e} (" + ", ".join(
               f"{p} {v / f['model_flops']:.0%}" for p, v in f["model_flops_by_part"].items()) + ")",
           f"achieved {f['achieved_tflops']:.2f} TFLOP/s; MFU " +
           (f"{f['mfu']:.1%} of {f['peak_tflops_per_device']:.0f} TFLOP/s x {f['devices']}" if f["mfu"] is not None
            else "n/a (no peak known for this device: --peak_tflops)")]
  if f["peak_memory_bytes"]:
    lines.append(f"peak device memory {f['peak_memory_bytes'] / 2 ** 30:.2f} GiB")
  return lines


def reference_seconds(cfg, batches, steps: int, warmup: int) -> list[float]:
  """open_flamingo's step (benchmarks/train_step.py's) on the same model shapes and batches."""
  import torch  # pylint: disable=g-import-not-at-top
  import train_step as ts  # pylint: disable=g-import-not-at-top  (benchmarks/)
  from oracle import reference_models as ref  # pylint: disable=g-import-not-at-top
  device = "cuda" if torch.cuda.is_available() else "cpu"
  dims = ref.dims_of(cfg.model)
  with torch.device(device):
    model = ref.build_reference(cfg.model.lm.family, every_n=cfg.model.xattn.every_n_layers, dims=dims,
                                attn_implementation="eager" if cfg.model.lm.family == "mpt" else "sdpa")
  ts.make_trainable(model)
  autocast = ((lambda: torch.autocast(device, dtype=torch.bfloat16)) if cfg.model.dtype == "bfloat16"
              else ts.contextlib.nullcontext)
  tb = ts.torch_batches(batches, device)
  times = []
  for i in range(warmup + steps):
    start = time.perf_counter()
    ts.reference_step(model, tb, dims.special_ids[:2], autocast)
    ts._sync(device)  # pylint: disable=protected-access
    if i >= warmup:
      times.append(time.perf_counter() - start)
  return times


def write_json(f: dict) -> None:
  """--json's file, replaced whole (a run killed while writing leaves the previous stage's)."""
  if _JSON.value:
    with open(_JSON.value + ".tmp", "w") as out:
      json.dump(f, out, indent=1)
    os.replace(_JSON.value + ".tmp", _JSON.value)


def profile_steps(compiled, state, frozen, device_batches) -> dict:
  """Where 3 steps' device time goes (flamingo_jax/train/profile.py); --trace_dir keeps the trace
  and the compiled program's text, to read them again elsewhere."""
  with tempfile.TemporaryDirectory() as scratch:
    trace_dir = _TRACE_DIR.value or scratch
    with jax.profiler.trace(trace_dir):
      time_steps(compiled, state, frozen, device_batches, 0, 3)
    hlo = compiled.as_text()
    if _TRACE_DIR.value:
      with open(os.path.join(trace_dir, "compiled_hlo.txt"), "w") as out:
        out.write(hlo)
    return profile.summarize(trace_dir, hlo, steps=3)


def main(argv):
  del argv
  cfg = _CONFIG.value
  real = tuple(int(x) for x in _REAL.value.split(",")) if _REAL.value else None
  batches = random_batches(cfg, np.random.default_rng(0), real)
  compiled, state, frozen, device_batches, packing, compile_s, xla_flops = build(cfg, batches)
  times, state = time_steps(compiled, state, frozen, device_batches, _WARMUP.value, _STEPS.value)
  f = figures(cfg, packing, times, compile_s, xla_flops)
  print("\n".join(report(cfg, f)), flush=True)
  write_json(f)
  if _PROFILE.value:
    f["profile"] = profile_steps(compiled, state, frozen, device_batches)
    print("\n".join(profile.table(f["profile"])), flush=True)
    write_json(f)
  if _REFERENCE.value:
    theirs = reference_seconds(cfg, batches, _STEPS.value, _WARMUP.value)
    p, x = cfg.model.perceiver, cfg.model.xattn
    if (p.depth, p.heads, p.dim_head, p.num_latents, x.heads, x.dim_head) != (6, 8, 64, 64, 8, 64):
      print("note: open_flamingo's resampler and gated blocks have fixed sizes (depth 6, 64 latents, "
            "8 heads of 64), not this config's: the ratio compares different models", flush=True)
    f["reference_step_s"] = statistics.median(theirs)
    f["reference_step_s_all"] = theirs
    f["speedup"] = f["reference_step_s"] / f["step_s"]
    print(f"open_flamingo {f['reference_step_s'] * 1e3:.1f} ms/step: flamingo_jax is {f['speedup']:.2f}x", flush=True)
    write_json(f)


if __name__ == "__main__":
  app.run(main)
