"""Train-step time: flamingo_jax's jitted step vs open_flamingo's PyTorch step, same model (built
in-process from tiny random towers), same batches, same recipe (AdamW, LAION weight 0.2, clip 1.0,
only the two special embedding rows trained), on this machine's CPU.

  python benchmarks/train_step.py [--family mpt] [--steps 10] [--mmc4-batch 4] [--length 64]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import jax  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from configs import tiny  # noqa: E402
from flamingo_jax.train import optimizer, step as step_lib  # noqa: E402
from flamingo_jax.train.state import TrainState  # noqa: E402
from flamingo_jax.weights import state_dict as sd_lib  # noqa: E402
from tests import reference_models as ref  # noqa: E402


def make_batches(rng, mmc4_batch, length):
  out = {}
  for name, b, t, n in (("mmc4", mmc4_batch, 3, length), ("laion", 2 * mmc4_batch, 1, 32)):
    ids = rng.integers(1, ref.EOC_ID, size=(b, n))
    ids[:, 0] = ref.MEDIA_ID
    ids[:, n // 2] = ref.MEDIA_ID if t > 1 else ids[:, n // 2]
    out[name] = {"images": rng.normal(size=(b, t, 1, ref.IMAGE_SIZE, ref.IMAGE_SIZE, 3)).astype(np.float32),
                 "input_ids": ids.astype(np.int32), "attention_mask": np.ones_like(ids, np.int32),
                 "labels": np.where(ids == ref.MEDIA_ID, -100, ids).astype(np.int32)}
  return out


def reference_step(model, batches):
  """One optimizer step as open_flamingo's train_one_epoch does it."""
  params = [p for p in model.parameters() if p.requires_grad]
  opt = reference_step.opt = getattr(reference_step, "opt", None) or torch.optim.AdamW(params, lr=1e-4)
  embed = model.lang_encoder.get_input_embeddings().weight
  for name, weight in (("laion", 0.2), ("mmc4", 1.0)):
    b = batches[name]
    out = model(torch.from_numpy(b["images"].transpose(0, 1, 2, 5, 3, 4).copy()),
                torch.from_numpy(b["input_ids"]).long(),
                attention_mask=torch.from_numpy(b["attention_mask"]).bool(),
                labels=torch.from_numpy(b["labels"]).long())
    (out.loss * weight).backward()
  mask = torch.zeros_like(embed.grad)
  mask[[ref.EOC_ID, ref.MEDIA_ID]] = 1
  embed.grad *= mask
  torch.nn.utils.clip_grad_norm_(params, 1.0)
  opt.step()
  opt.zero_grad(set_to_none=True)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--family", default="mpt", choices=["mpt", "gpt_neox", "opt"])
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--mmc4-batch", type=int, default=4)
  parser.add_argument("--length", type=int, default=64)
  args = parser.parse_args()
  torch.set_num_threads(os.cpu_count())
  rng = np.random.default_rng(0)
  batches = make_batches(rng, args.mmc4_batch, args.length)

  torch_model = ref.build_reference(args.family, every_n=1).train()
  for p in torch_model.parameters():
    p.requires_grad_(False)
  for module in (torch_model.perceiver, torch_model.lang_encoder.gated_cross_attn_layers,
                 torch_model.lang_encoder.get_input_embeddings()):
    for p in module.parameters():
      p.requires_grad_(True)

  cfg = tiny.get_config().unlock()
  cfg.model = ref.jax_config(args.family, 1)
  cfg.optim.update(learning_rate=1e-4, warmup_steps=1)
  variables = sd_lib.flamingo_to_flax(ref.state_dict_numpy(torch_model), cfg.model)
  tx = optimizer.make_optimizer(cfg.optim)
  state = TrainState.create(variables["params"], tx)
  step = jax.jit(step_lib.make_train_step(cfg, tx), donate_argnums=0)
  frozen = variables["frozen"]

  state, m = step(state, frozen, batches)  # compile
  jax.block_until_ready(m["loss"])
  start = time.perf_counter()
  for _ in range(args.steps):
    state, m = step(state, frozen, batches)
  jax.block_until_ready(m["loss"])
  ours = (time.perf_counter() - start) / args.steps

  reference_step(torch_model, batches)  # warm-up
  start = time.perf_counter()
  for _ in range(args.steps):
    reference_step(torch_model, batches)
  theirs = (time.perf_counter() - start) / args.steps
  print(f"{args.family}: MMC4 {args.mmc4_batch} x {args.length} tokens (3 images) + LAION "
        f"{2 * args.mmc4_batch} x 32 tokens per step; LM {ref.LM_LAYERS} x {ref.LM_DIM}, "
        f"resampler 6 x {ref.VIS_WIDTH}; CPU, {os.cpu_count()} cores")
  print(f"flamingo_jax {ours * 1e3:.1f} ms/step   open_flamingo {theirs * 1e3:.1f} ms/step   "
        f"speed-up {theirs / ours:.2f}x")


if __name__ == "__main__":
  main()
