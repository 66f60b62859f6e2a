"""Generation tokens/s: flamingo_jax's KV-cached `generate` vs open_flamingo's `generate`, on the
same small model (built in-process from random towers), the same prompts and settings.

  python benchmarks/generate_speed.py [--family mpt] [--new 32] [--batch 4] [--beams 1,3]
  python benchmarks/generate_speed.py --size of_3b --device cuda

By default both run on this machine's CPU on a tiny model; `--size of_3b` builds OpenFlamingo-3B's
shapes for an accelerator. fp32 on both sides, TF32 off. Compilation is excluded from our timing
(one warm-up call per setting), as is the reference's first call.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.45")  # PyTorch shares the accelerator

import jax  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from flamingo_jax.generate import generate  # noqa: E402
from flamingo_jax.weights import state_dict as sd_lib  # noqa: E402
from tests import reference_models as ref  # noqa: E402


SIZES = {"tiny": ref.TINY, "of_3b": ref.OF_3B}


def _time(fn, repeats):
  """Mean seconds per call after one warm-up; `fn` returns a host array, so each call has finished."""
  fn()  # warm-up (compilation for JAX, allocator for torch)
  start = time.perf_counter()
  for _ in range(repeats):
    out = fn()
  return (time.perf_counter() - start) / repeats, out


def _print_logit_agreement(cfg, variables, torch_model, vision, ids, mask, device):
  """The prompt's logits from both models: greedy tokens can only agree where these do."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from flamingo_jax.models.flamingo import Flamingo  # pylint: disable=g-import-not-at-top
  ours = np.asarray(Flamingo(cfg).apply(variables, jnp.asarray(vision), jnp.asarray(ids),
                                        jnp.asarray(mask)))
  with torch.no_grad():
    theirs = torch_model(ref.to_torch_images(vision).to(device), torch.from_numpy(ids).to(device),
                         attention_mask=torch.from_numpy(mask).bool().to(device)).logits
  theirs = theirs.float().cpu().numpy()
  real = mask.astype(bool)
  diff = np.abs(ours - theirs)[real].max()
  top2 = np.sort(theirs[:, -1], axis=-1)[:, -2:]
  print(f"prompt logits: max |ours - reference| {diff:.2e} over real tokens (logit std "
        f"{theirs[real].std():.2f}); last-token top-2 margins {np.round(top2[:, 1] - top2[:, 0], 4)}")


def _agreement(ours: np.ndarray, theirs: np.ndarray, prompt_len: int) -> str:
  """'yes', or how many rows agree and the first new token where a row parts."""
  if ours.shape == theirs.shape and np.array_equal(ours, theirs):
    return "yes"
  n = min(ours.shape[1], theirs.shape[1])
  differs = ours[:, :n] != theirs[:, :n]
  first = [int(np.argmax(row)) - prompt_len for row in differs if row.any()]
  return f"{len(ours) - len(first)}/{len(ours)} rows; others part at new token {first}"


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--family", default="mpt", choices=["mpt", "gpt_neox", "opt"])
  parser.add_argument("--new", type=int, default=32, help="new tokens per row")
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--beams", default="1,3")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--size", default="tiny", choices=sorted(SIZES))
  parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                      help="the reference's device; JAX runs on its default backend")
  args = parser.parse_args()
  dims = SIZES[args.size]
  torch.set_num_threads(os.cpu_count())
  torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
  jax.config.update("jax_default_matmul_precision", "highest")

  with torch.device(args.device):
    torch_model = ref.build_reference(args.family, every_n=1, dims=dims, attn_implementation=(
        "eager" if args.size == "tiny" or args.family == "mpt" else "sdpa"))
  cfg = ref.jax_config(args.family, 1, dims=dims)
  variables = sd_lib.flamingo_to_flax(ref.state_dict_numpy(torch_model), cfg)
  variables = jax.device_put(variables)
  vision, ids, mask = ref.sample_batch(np.random.default_rng(0), batch=max(args.batch, 3), length=16,
                                       dims=dims)
  vision, ids, mask = vision[:args.batch], ids[:args.batch], mask[:args.batch]
  ids[:, -1] = 5
  pad_id = dims.special_ids[2]
  print(f"{args.family} {args.size}: batch {args.batch}, prompt {ids.shape[1]} tokens, {args.new} "
        f"new tokens, LM {dims.lm_layers} layers x {dims.lm_dim}; JAX {jax.default_backend()}, "
        f"torch {args.device}")
  _print_logit_agreement(cfg, variables, torch_model, vision, ids, mask, args.device)
  print(f"{'beams':>5} {'ours tok/s':>11} {'open_flamingo tok/s':>20} {'speed-up':>9}  same tokens")
  for beams in [int(b) for b in args.beams.split(",")]:
    settings = dict(max_new_tokens=args.new, min_new_tokens=args.new, num_beams=beams)

    def ours():
      return np.asarray(generate(cfg, variables, vision, ids, mask, pad_token_id=pad_id,
                                 eos_token_ids=(dims.special_ids[0],), **settings))

    def theirs():
      with torch.no_grad():
        return torch_model.generate(
            ref.to_torch_images(vision).to(args.device), torch.from_numpy(ids).to(args.device),
            attention_mask=torch.from_numpy(mask).to(args.device), pad_token_id=pad_id,
            **settings).cpu().numpy()

    t_ours, out_ours = _time(ours, args.repeats)
    t_ref, out_ref = _time(theirs, args.repeats)
    tokens = args.batch * args.new
    print(f"{beams:>5} {tokens / t_ours:>11.1f} {tokens / t_ref:>20.1f} {t_ref / t_ours:>8.2f}x  "
          f"{_agreement(out_ours, out_ref, ids.shape[1])}")


if __name__ == "__main__":
  main()
