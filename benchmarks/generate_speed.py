"""Generation tokens/s: flamingo_jax's KV-cached `generate` vs open_flamingo's `generate`, on the
same small model (built in-process from random towers), the same prompts and settings.

  python benchmarks/generate_speed.py [--family mpt] [--new 32] [--batch 4] [--beams 1,3]

Both run on this machine's CPU. Compilation is excluded from our timing (one warm-up call per
setting), as is the reference's first call.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from flamingo_jax.generate import generate  # noqa: E402
from flamingo_jax.weights import state_dict as sd_lib  # noqa: E402
from tests import reference_models as ref  # noqa: E402


def _time(fn, repeats):
  fn()  # warm-up (compilation for JAX, allocator for torch)
  start = time.perf_counter()
  for _ in range(repeats):
    out = fn()
  return (time.perf_counter() - start) / repeats, out


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--family", default="mpt", choices=["mpt", "gpt_neox", "opt"])
  parser.add_argument("--new", type=int, default=32, help="new tokens per row")
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--beams", default="1,3")
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()
  torch.set_num_threads(os.cpu_count())

  torch_model = ref.build_reference(args.family, every_n=1)
  cfg = ref.jax_config(args.family, 1)
  variables = sd_lib.flamingo_to_flax(ref.state_dict_numpy(torch_model), cfg)
  vision, ids, mask = ref.sample_batch(np.random.default_rng(0), batch=max(args.batch, 3), length=16)
  vision, ids, mask = vision[:args.batch], ids[:args.batch], mask[:args.batch]
  ids[:, -1] = 5
  print(f"{args.family}: batch {args.batch}, prompt {ids.shape[1]} tokens, {args.new} new tokens, "
        f"LM {ref.LM_LAYERS} layers x {ref.LM_DIM}, CPU")
  print(f"{'beams':>5} {'ours tok/s':>11} {'open_flamingo tok/s':>20} {'speed-up':>9}  same tokens")
  for beams in [int(b) for b in args.beams.split(",")]:
    settings = dict(max_new_tokens=args.new, min_new_tokens=args.new, num_beams=beams)

    def ours():
      return generate(cfg, variables, vision, ids, mask, pad_token_id=ref.PAD_ID,
                      eos_token_ids=(ref.EOC_ID,), **settings)

    def theirs():
      with torch.no_grad():
        return torch_model.generate(ref.to_torch_images(vision), torch.from_numpy(ids),
                                    attention_mask=torch.from_numpy(mask), pad_token_id=ref.PAD_ID,
                                    **settings).numpy()

    t_ours, out_ours = _time(ours, args.repeats)
    t_ref, out_ref = _time(theirs, args.repeats)
    tokens = args.batch * args.new
    print(f"{beams:>5} {tokens / t_ours:>11.1f} {tokens / t_ref:>20.1f} {t_ref / t_ours:>8.2f}x  "
          f"{np.array_equal(out_ours, out_ref)}")


if __name__ == "__main__":
  main()
