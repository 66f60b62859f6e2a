"""Train-step time: flamingo_jax's jitted step vs open_flamingo's PyTorch step, same model (built
in-process from random towers), same batches, same recipe (AdamW, LAION weight 0.2, clip 1.0,
only the two special embedding rows trained).

  python benchmarks/train_step.py [--family mpt] [--steps 10] [--mmc4-batch 4] [--length 64]
  python benchmarks/train_step.py --size cpu224 --mmc4-batch 2 --length 128 --mmc4-images 6 \
      --real-images 1,3 --steps 3      # MMC4-realistic image counts: ours encodes real images only
  python benchmarks/train_step.py --size of_3b --device cuda --precision bf16 --mmc4-batch 8 --length 256

`--size tiny` (default) runs on this machine's CPU; `--size of_3b` builds OpenFlamingo-3B's shapes
(ViT-L/14, an MPT-1B-sized LM, cross-attention every layer) for an accelerator. `--precision bf16`
is OpenFlamingo's `amp_bf16` on the PyTorch side (fp32 weights under bf16 autocast) and our bf16
config (frozen weights stored in bf16, bf16 compute, fp32 trainable weights and optimizer state).
`fp32` is full fp32 on both sides (no TF32).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
# Both frameworks share one accelerator: JAX takes 45% of its memory instead of 75%.
os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.45")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from configs import tiny  # noqa: E402
from flamingo_jax.data import image_preprocess  # noqa: E402
from flamingo_jax.train import metrics, optimizer, step as step_lib  # noqa: E402
from flamingo_jax.train.state import TrainState  # noqa: E402
from flamingo_jax.weights import load, state_dict as sd_lib  # noqa: E402
from oracle import reference_models as ref  # noqa: E402

SIZES = {"tiny": ref.TINY, "cpu224": ref.CPU_224, "of_3b": ref.OF_3B}


def make_batches(rng, dims, mmc4_batch, length, slots, real=(None, None)):
  """An MMC4 batch (`slots` image slots per row, `real` = (min, max) of them holding an image,
  default all) and a LAION batch twice its size (one image, 32 tokens), as our pipeline makes
  them: uint8 pixels, `image_mask`, one <image> per real image."""
  eoc, media, _ = dims.special_ids
  out = {}
  for name, b, t, n in (("mmc4", mmc4_batch, slots, length), ("laion", 2 * mmc4_batch, 1, 32)):
    lo, hi = (real if name == "mmc4" and real[0] else (t, t))
    counts = rng.integers(lo, hi + 1, size=b)
    mask = np.arange(t)[None, :] < counts[:, None]
    ids = rng.integers(1, eoc, size=(b, n))
    for row, k in enumerate(counts):
      ids[row, [i * n // k for i in range(k)]] = media
    images = rng.integers(0, 256, size=(b, t, 1, dims.image_size, dims.image_size, 3), dtype=np.uint8)
    images *= mask[:, :, None, None, None, None].astype(np.uint8)
    out[name] = {"images": images, "image_mask": mask, "input_ids": ids.astype(np.int32),
                 "attention_mask": np.ones_like(ids, np.int32),
                 "labels": np.where(ids == media, -100, ids).astype(np.int32)}
  return out


def torch_batches(batches, device):
  """The same batches as the reference's loader gives them: CLIP-normalised float images
  (zeros in empty slots), channel-first, on `device`."""
  out = {}
  for name, b in batches.items():
    images = image_preprocess.normalize(b["images"]) * b["image_mask"][:, :, None, None, None, None]
    out[name] = (torch.from_numpy(images.transpose(0, 1, 2, 5, 3, 4).copy()).to(device),
                 torch.from_numpy(b["input_ids"]).long().to(device),
                 torch.from_numpy(b["attention_mask"]).bool().to(device),
                 torch.from_numpy(b["labels"]).long().to(device))
  return out


def reference_step(model, batches, special_ids, autocast):
  """One optimizer step as open_flamingo's train_one_epoch does it."""
  params = [p for p in model.parameters() if p.requires_grad]
  opt = reference_step.opt = getattr(reference_step, "opt", None) or torch.optim.AdamW(params, lr=1e-4)
  embed = model.lang_encoder.get_input_embeddings().weight
  for name, weight in (("laion", 0.2), ("mmc4", 1.0)):
    images, ids, mask, labels = batches[name]
    with autocast():
      loss = model(images, ids, attention_mask=mask, labels=labels).loss
    (loss * weight).backward()
  keep = torch.zeros_like(embed.grad)
  keep[list(special_ids)] = 1
  embed.grad *= keep
  torch.nn.utils.clip_grad_norm_(params, 1.0)
  opt.step()
  opt.zero_grad(set_to_none=True)


def _torch_attention(args) -> str:
  """HF's MPT has only eager attention (as MosaicGPT's default 'torch' attention is); SDPA elsewhere
  on an accelerator."""
  return "eager" if args.size == "tiny" or args.family == "mpt" else "sdpa"


def _sync(device):
  if device == "cuda":
    torch.cuda.synchronize()


def make_trainable(torch_model) -> None:
  """Training mode, with gradients for what OpenFlamingo trains: the resampler, the gated blocks
  and the input embeddings (of which the step keeps the special rows' gradient only)."""
  torch_model.train()
  for p in torch_model.parameters():
    p.requires_grad_(False)
  for module in (torch_model.perceiver, torch_model.lang_encoder.gated_cross_attn_layers,
                 torch_model.lang_encoder.get_input_embeddings()):
    for p in module.parameters():
      p.requires_grad_(True)


def build(args, dims):
  """The reference model (trainable parts as OpenFlamingo trains them) and our config and
  variables converted from it."""
  with torch.device(args.device):  # random init on the accelerator is much faster
    torch_model = ref.build_reference(args.family, every_n=1, dims=dims,
                                      attn_implementation=_torch_attention(args))
  make_trainable(torch_model)
  cfg = tiny.get_config().unlock()
  cfg.model = ref.jax_config(args.family, 1, dims=dims)
  if args.precision == "bf16":
    cfg.model.update(dtype="bfloat16", frozen_dtype="bfloat16")
  cfg.optim.update(learning_rate=1e-4, warmup_steps=1)
  return torch_model, cfg, sd_lib.flamingo_to_flax(ref.state_dict_numpy(torch_model), cfg.model)


def ours_runner(args, cfg, variables, batches):
  """(run n steps -> seconds per step, matrix-product FLOPs per step, the same with every image slot
  encoded (the work the reference does), description of the packing)."""
  tx = optimizer.make_optimizer(cfg.optim)
  state = TrainState.create(variables["params"], tx)
  frozen = jax.device_put(load.cast(variables, cfg.model)["frozen"])
  mask = batches["mmc4"]["image_mask"]  # one device: one group; all real -> nothing to pack
  packing = {"mmc4": None if args.no_packing or mask.all() else (1, int(mask.sum()))}
  step = jax.jit(step_lib.make_train_step(cfg, packing=packing), donate_argnums=0)
  device_batches = jax.device_put(batches)
  flops = metrics.jaxpr_matmul_flops(step.trace(state, frozen, device_batches).jaxpr)
  every_slot = metrics.jaxpr_matmul_flops(jax.jit(step_lib.make_train_step(cfg)).trace(
      state, frozen, device_batches).jaxpr)
  compiled = step.lower(state, frozen, device_batches).compile()
  box = {"state": state}

  def run(n):
    for _ in range(n):
      box["state"], m = compiled(box["state"], frozen, device_batches)
    jax.block_until_ready(m["loss"])
  return run, flops, every_slot, packing["mmc4"]


def theirs_runner(args, torch_model, batches, dims):
  autocast = ((lambda: torch.autocast(args.device, dtype=torch.bfloat16))
              if args.precision == "bf16" else contextlib.nullcontext)
  tb = torch_batches(batches, args.device)

  def run(n):
    for _ in range(n):
      reference_step(torch_model, tb, dims.special_ids[:2], autocast)
    _sync(args.device)
  return run


def _seconds_per_step(run, steps):
  start = time.perf_counter()
  run(steps)
  return (time.perf_counter() - start) / steps


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--family", default="mpt", choices=["mpt", "gpt_neox", "opt"])
  parser.add_argument("--size", default="tiny", choices=sorted(SIZES))
  parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                      help="the reference's device; JAX runs on its default backend")
  parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
  parser.add_argument("--steps", type=int, default=10, help="timed steps per round")
  parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of ours and theirs")
  parser.add_argument("--mmc4-batch", type=int, default=4)
  parser.add_argument("--mmc4-images", type=int, default=3, help="image slots per MMC4 row")
  parser.add_argument("--real-images", default="", help="min,max real images per MMC4 row (default: all)")
  parser.add_argument("--no-packing", action="store_true", help="run every slot through the tower")
  parser.add_argument("--length", type=int, default=64)
  parser.add_argument("--skip-reference", action="store_true")
  args = parser.parse_args()
  dims = SIZES[args.size]
  torch.set_num_threads(os.cpu_count())
  if args.precision == "fp32":
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    jax.config.update("jax_default_matmul_precision", "highest")
  real = tuple(int(x) for x in args.real_images.split(",")) if args.real_images else (None, None)
  batches = make_batches(np.random.default_rng(0), dims, args.mmc4_batch, args.length, args.mmc4_images, real)
  torch_model, cfg, variables = build(args, dims)
  ours, flops, every_slot, packing = ours_runner(args, cfg, variables, batches)
  theirs = None if args.skip_reference else theirs_runner(args, torch_model, batches, dims)
  ours(1)
  if theirs:
    theirs(1)  # warm-up
  times = {"ours": [], "theirs": []}
  for _ in range(args.rounds):  # alternating, so that drifts of the machine hit both
    times["ours"].append(_seconds_per_step(ours, args.steps))
    if theirs:
      times["theirs"].append(_seconds_per_step(theirs, args.steps))
  real_count = int(batches["mmc4"]["image_mask"].sum())
  print(f"{args.family} {args.size}: MMC4 {args.mmc4_batch} x {args.length} tokens ({args.mmc4_images} slots, "
        f"{real_count} real images; ours encodes "
        f"{f'{packing[1]}, + 1 blank only if a token attends an empty slot' if packing else args.mmc4_batch * args.mmc4_images}) "
        f"+ LAION {2 * args.mmc4_batch} x 32 tokens per step; LM {dims.lm_layers} x {dims.lm_dim}, ViT "
        f"{dims.vis_layers} x {dims.vis_width} at {dims.image_size} px; {args.precision}; JAX "
        f"{jax.__version__} {jax.default_backend()} ({jax.devices()[0].device_kind}), torch {torch.__version__} "
        f"{args.device}; {args.rounds} rounds of {args.steps} steps")
  med = lambda xs: float(np.median(xs))
  print(f"flamingo_jax {med(times['ours']) * 1e3:.1f} ms/step (rounds {', '.join(f'{t * 1e3:.0f}' for t in times['ours'])}), "
        f"{flops / med(times['ours']) / 1e12:.2f} TFLOP/s ({flops / 1e12:.3f} TFLOP of matrix products per step, "
        f"the blank image counted; "
        f"{every_slot / 1e12:.3f} with every image slot encoded, as the reference does (it does more: its "
        f"resampler also takes the image tokens' input gradient): packing alone can give "
        f"{every_slot / flops:.2f}x at equal FLOP/s)")
  if theirs:
    ratios = [b / a for a, b in zip(times["ours"], times["theirs"])]
    print(f"open_flamingo {med(times['theirs']) * 1e3:.1f} ms/step (rounds "
          f"{', '.join(f'{t * 1e3:.0f}' for t in times['theirs'])})   speed-up {med(ratios):.2f}x "
          f"(per round {min(ratios):.2f}-{max(ratios):.2f}x)")


if __name__ == "__main__":
  main()
