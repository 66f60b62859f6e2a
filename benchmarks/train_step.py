"""Train-step time: flamingo_jax's jitted step vs open_flamingo's PyTorch step, same model (built
in-process from random towers), same batches, same recipe (AdamW, LAION weight 0.2, clip 1.0,
only the two special embedding rows trained).

  python benchmarks/train_step.py [--family mpt] [--steps 10] [--mmc4-batch 4] [--length 64]
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
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from configs import tiny  # noqa: E402
from flamingo_jax.train import metrics, optimizer, step as step_lib  # noqa: E402
from flamingo_jax.train.state import TrainState  # noqa: E402
from flamingo_jax.weights import load, state_dict as sd_lib  # noqa: E402
from oracle import reference_models as ref  # noqa: E402

SIZES = {"tiny": ref.TINY, "of_3b": ref.OF_3B}


def make_batches(rng, dims, mmc4_batch, length, mmc4_images):
  """An MMC4 batch (several images per row) and a LAION batch twice its size (one image, 32 tokens)."""
  eoc, media, _ = dims.special_ids
  out = {}
  for name, b, t, n in (("mmc4", mmc4_batch, mmc4_images, length), ("laion", 2 * mmc4_batch, 1, 32)):
    ids = rng.integers(1, eoc, size=(b, n))
    ids[:, [i * n // t for i in range(t)]] = media
    images = rng.normal(size=(b, t, 1, dims.image_size, dims.image_size, 3)).astype(np.float32)
    out[name] = {"images": images, "image_mask": np.ones((b, t), bool), "input_ids": ids.astype(np.int32),
                 "attention_mask": np.ones_like(ids, np.int32),
                 "labels": np.where(ids == media, -100, ids).astype(np.int32)}
  return out


def torch_batches(batches, device):
  """The same batches as torch tensors on `device`, images channel-first as the reference takes them."""
  return {name: (torch.from_numpy(b["images"].transpose(0, 1, 2, 5, 3, 4).copy()).to(device),
                 torch.from_numpy(b["input_ids"]).long().to(device),
                 torch.from_numpy(b["attention_mask"]).bool().to(device),
                 torch.from_numpy(b["labels"]).long().to(device))
          for name, b in batches.items()}


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


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--family", default="mpt", choices=["mpt", "gpt_neox", "opt"])
  parser.add_argument("--size", default="tiny", choices=sorted(SIZES))
  parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                      help="the reference's device; JAX runs on its default backend")
  parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--mmc4-batch", type=int, default=4)
  parser.add_argument("--mmc4-images", type=int, default=3)
  parser.add_argument("--length", type=int, default=64)
  parser.add_argument("--skip-reference", action="store_true")
  args = parser.parse_args()
  dims = SIZES[args.size]
  torch.set_num_threads(os.cpu_count())
  if args.precision == "fp32":
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    jax.config.update("jax_default_matmul_precision", "highest")
  rng = np.random.default_rng(0)
  batches = make_batches(rng, dims, args.mmc4_batch, args.length, args.mmc4_images)

  with torch.device(args.device):  # random init on the accelerator is much faster
    torch_model = ref.build_reference(args.family, every_n=1, dims=dims,
                                      attn_implementation=_torch_attention(args))
  torch_model.train()
  for p in torch_model.parameters():
    p.requires_grad_(False)
  for module in (torch_model.perceiver, torch_model.lang_encoder.gated_cross_attn_layers,
                 torch_model.lang_encoder.get_input_embeddings()):
    for p in module.parameters():
      p.requires_grad_(True)

  cfg = tiny.get_config().unlock()
  cfg.model = ref.jax_config(args.family, 1, dims=dims)
  if args.precision == "bf16":
    cfg.model.update(dtype="bfloat16", frozen_dtype="bfloat16")
  cfg.optim.update(learning_rate=1e-4, warmup_steps=1)
  variables = sd_lib.flamingo_to_flax(ref.state_dict_numpy(torch_model), cfg.model)
  tx = optimizer.make_optimizer(cfg.optim)
  state = TrainState.create(variables["params"], tx)
  frozen = jax.device_put(load.cast(variables, cfg.model)["frozen"])
  del variables
  step = jax.jit(step_lib.make_train_step(cfg.model, cfg.optim), donate_argnums=0)
  device_batches = jax.device_put(batches)

  flops = metrics.program_flops(step, state, frozen, device_batches) or 0.0
  compiled = step.lower(state, frozen, device_batches).compile()
  state, m = compiled(state, frozen, device_batches)
  jax.block_until_ready(m["loss"])
  start = time.perf_counter()
  for _ in range(args.steps):
    state, m = compiled(state, frozen, device_batches)
  jax.block_until_ready(m["loss"])
  ours = (time.perf_counter() - start) / args.steps
  where = f"JAX {jax.default_backend()} ({jax.devices()[0].device_kind}), torch {args.device}"
  print(f"{args.family} {args.size}: MMC4 {args.mmc4_batch} x {args.length} tokens "
        f"({args.mmc4_images} images) + LAION {2 * args.mmc4_batch} x 32 tokens per step; LM "
        f"{dims.lm_layers} x {dims.lm_dim}, ViT {dims.vis_layers} x {dims.vis_width} at "
        f"{dims.image_size} px; {args.precision}; {where}")
  print(f"flamingo_jax {ours * 1e3:.1f} ms/step, {flops / ours / 1e12:.1f} TFLOP/s "
        f"({flops / 1e12:.2f} TFLOP per step by XLA's count), loss {float(m['loss']):.4f}")
  if args.skip_reference:
    return
  del state, frozen, device_batches, compiled, step  # give the accelerator's memory to PyTorch
  jax.clear_caches()

  autocast = ((lambda: torch.autocast(args.device, dtype=torch.bfloat16))
              if args.precision == "bf16" else contextlib.nullcontext)
  tb = torch_batches(batches, args.device)
  reference_step(torch_model, tb, dims.special_ids[:2], autocast)  # warm-up
  _sync(args.device)
  start = time.perf_counter()
  for _ in range(args.steps):
    reference_step(torch_model, tb, dims.special_ids[:2], autocast)
  _sync(args.device)
  theirs = (time.perf_counter() - start) / args.steps
  print(f"flamingo_jax {ours * 1e3:.1f} ms/step   open_flamingo {theirs * 1e3:.1f} ms/step   "
        f"speed-up {theirs / ours:.2f}x")


if __name__ == "__main__":
  main()
