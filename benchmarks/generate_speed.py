"""Generation tokens/s: flamingo_jax's KV-cached `generate` vs open_flamingo's `generate`, on the
same small model (built in-process from random towers), the same prompts and settings.

  python benchmarks/generate_speed.py [--family mpt] [--new 32] [--batch 4] [--beams 1,3]
  python benchmarks/generate_speed.py --size of_3b --device cuda [--shots 32]
  python benchmarks/generate_speed.py --size cpu224 --shots 32 --beams 1,3 --breakdown

By default both run on this machine's CPU on a tiny model; `--size of_3b` builds OpenFlamingo-3B's
shapes for an accelerator. fp32 on both sides, TF32 off. Compilation is excluded from our timing
(one warm-up call per setting), as is the reference's first call.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.45")  # PyTorch shares the accelerator

import jax  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import jax.numpy as jnp  # noqa: E402
from flamingo_jax.generate import Sampler, generate  # noqa: E402
from flamingo_jax.weights import state_dict as sd_lib  # noqa: E402
from oracle import reference_models as ref  # noqa: E402


SIZES = {"tiny": ref.TINY, "of_3b": ref.OF_3B, "cpu224": ref.CPU_224}


def _time(fn, repeats):
  """Mean seconds per call after one warm-up; `fn` returns a host array, so each call has finished."""
  fn()  # warm-up (compilation for JAX, allocator for torch)
  start = time.perf_counter()
  for _ in range(repeats):
    out = fn()
  return (time.perf_counter() - start) / repeats, out


def _both_logits(cfg, variables, torch_model, vision, ids, mask, device):
  """Full-forward logits of both models for the same inputs, as float32 numpy."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from flamingo_jax.models.flamingo import Flamingo  # pylint: disable=g-import-not-at-top
  ours = np.asarray(Flamingo(cfg).apply(variables, jnp.asarray(vision), jnp.asarray(ids),
                                        jnp.asarray(mask)))
  with torch.no_grad():
    theirs = torch_model(ref.to_torch_images(vision).to(device), torch.from_numpy(ids).to(device),
                         attention_mask=torch.from_numpy(mask).bool().to(device)).logits
  return ours, theirs.float().cpu().numpy()


def _print_logit_agreement(ours, theirs, mask):
  """The prompt's logits from both models: greedy tokens can only agree where these do."""
  real = mask.astype(bool)
  top2 = np.sort(theirs[:, -1], axis=-1)[:, -2:]
  print(f"prompt logits: max |ours - reference| {np.abs(ours - theirs)[real].max():.2e} over real "
        f"tokens (logit std {theirs[real].std():.2f}); last-token top-2 margins "
        f"{np.round(top2[:, 1] - top2[:, 0], 4)}")


def _explain_divergence(logits_fn, ref_tokens: np.ndarray, mask: np.ndarray, first: list[int]):
  """Where greedy rows part: both models read the reference's whole output (teacher forcing), and
  at each row's first differing step we print the reference's top-2 margin next to the largest
  logit difference there. A margin below the difference is a near-tie that rounding flips."""
  full_mask = np.concatenate([mask, np.ones((mask.shape[0], ref_tokens.shape[1] - mask.shape[1]),
                                             mask.dtype)], axis=1)
  ours, theirs = logits_fn(ref_tokens, full_mask)
  prompt = mask.shape[1]
  new = np.abs(ours - theirs)[:, prompt - 1:-1]
  print(f"  teacher-forced on the reference's tokens: max |ours - reference| {new.max():.2e} "
        f"over all {new.shape[1]} generated positions")
  for row, step in first:
    pos = prompt - 1 + step
    top2 = np.sort(theirs[row, pos])[-2:]
    print(f"  row {row} parts at new token {step}: reference top-2 margin {top2[1] - top2[0]:.2e}, "
          f"max |ours - reference| there {np.abs(ours[row, pos] - theirs[row, pos]).max():.2e}")


def _first_differences(ours: np.ndarray, theirs: np.ndarray, prompt_len: int) -> list[tuple[int, int]]:
  """(row, new-token index) where each row that differs first parts."""
  n = min(ours.shape[1], theirs.shape[1])
  differs = ours[:, :n] != theirs[:, :n]
  return [(i, int(np.argmax(row)) - prompt_len) for i, row in enumerate(differs) if row.any()]


def _greedy_breakdown(sampler, vision, ids, mask, new: int, repeats: int) -> dict[str, float]:
  """Where a kept Sampler's greedy time goes, each piece timed on its own (mean ms): the vision
  tower and resampler, the prefill given those latents, one extend step, one token choice, and
  the host's round trip per token (the whole loop less its pieces)."""
  from flamingo_jax.generate import search  # pylint: disable=g-import-not-at-top
  from flamingo_jax.generate.search import DecodeSettings  # pylint: disable=g-import-not-at-top
  ready = lambda x: jax.tree_util.tree_map(lambda a: a.block_until_ready(), x)
  max_len = ids.shape[1] + new
  t_media, media = _time(lambda: ready(sampler.encode_images(vision)), repeats)
  t_prefill, (logits, state) = _time(lambda: ready(sampler.prefill(None, ids, mask, max_len, media=media)), repeats)
  token = np.asarray(logits.argmax(-1), np.int32)
  carried = [state]  # extend donates its state: each call continues the last one's

  def extend():
    carried[0] = ready(sampler.extend(token, carried[0]))[1]
  t_extend, _ = _time(extend, min(repeats, new - 2))
  s = DecodeSettings(max_new_tokens=new, min_new_tokens=new, num_beams=1)
  seq = jnp.zeros((ids.shape[0], max_len), jnp.int32)
  finished = jnp.zeros((ids.shape[0],), bool)
  t_choose, _ = _time(lambda: ready(search.choose(logits, seq, finished, jnp.int32(ids.shape[1]),
                                                  jax.random.PRNGKey(0), s=s, prompt_len=ids.shape[1])), repeats)
  t_total, _ = _time(lambda: sampler.generate(vision, ids, mask, s, eos_token_ids=(), pad_token_id=0), repeats)
  pieces = t_media + t_prefill + (new - 1) * t_extend + new * t_choose
  return {"vision+resampler": t_media * 1e3, "prefill": t_prefill * 1e3, "extend per token": t_extend * 1e3,
          "choice per token": t_choose * 1e3,
          "host per token": max(0.0, t_total - pieces) / new * 1e3, "total": t_total * 1e3}


def few_shot_batch(rng: np.random.Generator, batch: int, shots: int, dims, per_shot: int = 10):
  """Few-shot prompts as evaluation builds them: `shots` demonstrations (<image>, text,
  <|endofchunk|>) then the query (<image>, text); one left pad in the first row (an all-ones mask
  is dropped by transformers 5, which open_flamingo's forward needs); (B, shots + 1) images.

    shots=1, per_shot=2:  ids [pad, <image>, t, t, <eoc>, <image>, t, t]   (row 0)
  """
  eoc, media, pad = dims.special_ids
  length = 1 + (shots + 1) * (per_shot + 2) - 1
  ids = rng.integers(1, eoc, size=(batch, length))
  mask = np.ones((batch, length), np.int64)
  for s in range(shots + 1):
    start = 1 + s * (per_shot + 2)
    ids[:, start] = media
    if s < shots:
      ids[:, start + per_shot + 1] = eoc
  ids[0, 0], mask[0, 0] = pad, 0
  vision = rng.normal(size=(batch, shots + 1, 1, dims.image_size, dims.image_size, 3)).astype(np.float32)
  return vision, ids, mask


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--family", default="mpt", choices=["mpt", "gpt_neox", "opt"])
  parser.add_argument("--new", type=int, default=32, help="new tokens per row")
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--beams", default="1,3")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--size", default="tiny", choices=sorted(SIZES))
  parser.add_argument("--lm-layers", type=int, default=0, help="override the size's LM depth")
  parser.add_argument("--shots", type=int, default=0,
                      help="few-shot prompts with this many demonstrations (33 images at 32 shots)")
  parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                      help="the reference's device; JAX runs on its default backend")
  parser.add_argument("--json", default="", help="also write the figures here")
  parser.add_argument("--breakdown", action="store_true", help="where greedy time goes (vision, prefill, "
                      "extend and choice per token, host per token)")
  args = parser.parse_args()
  results = {"size": args.size, "family": args.family, "batch": args.batch, "shots": args.shots,
             "new_tokens": args.new, "jax_backend": jax.default_backend(), "torch_device": args.device,
             "jax": jax.__version__, "torch": torch.__version__, "beams": {}}
  dims = SIZES[args.size]
  if args.lm_layers:
    dims = dataclasses.replace(dims, lm_layers=args.lm_layers)
  torch.set_num_threads(os.cpu_count())
  torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
  jax.config.update("jax_default_matmul_precision", "highest")

  with torch.device(args.device):
    torch_model = ref.build_reference(args.family, every_n=1, dims=dims, attn_implementation=(
        "eager" if args.size == "tiny" or args.family == "mpt" else "sdpa"))
  cfg = ref.jax_config(args.family, 1, dims=dims)
  variables = sd_lib.flamingo_to_flax(ref.state_dict_numpy(torch_model), cfg)
  variables = jax.device_put(variables)
  if args.shots:
    vision, ids, mask = few_shot_batch(np.random.default_rng(0), args.batch, args.shots, dims)
  else:
    vision, ids, mask = ref.sample_batch(np.random.default_rng(0), batch=max(args.batch, 3), length=16,
                                         dims=dims)
    vision, ids, mask = vision[:args.batch], ids[:args.batch], mask[:args.batch]
  ids[:, -1] = 5
  pad_id = dims.special_ids[2]
  print(f"{args.family} {args.size}: batch {args.batch}, prompt {ids.shape[1]} tokens ({vision.shape[1]} images), {args.new} "
        f"new tokens, LM {dims.lm_layers} layers x {dims.lm_dim}; JAX {jax.default_backend()}, "
        f"torch {args.device}")
  logits = lambda i, m: _both_logits(cfg, variables, torch_model, vision, i, m, args.device)
  _print_logit_agreement(*logits(ids, mask), mask)
  print(f"{'beams':>5} {'ours tok/s':>11} {'generate() tok/s':>14} {'open_flamingo tok/s':>20} {'speed-up':>9} "
        f"{'generate()':>9}  same tokens")
  sampler = Sampler(cfg, variables)  # compiles once per shape, reused by every timed call
  for beams in [int(b) for b in args.beams.split(",")]:
    settings = dict(max_new_tokens=args.new, min_new_tokens=args.new, num_beams=beams)

    def ours():
      return np.asarray(sampler.generate(vision, ids, mask, pad_token_id=pad_id,
                                         eos_token_ids=(dims.special_ids[0],), **settings))

    def theirs():
      with torch.no_grad():
        return torch_model.generate(
            ref.to_torch_images(vision).to(args.device), torch.from_numpy(ids).to(args.device),
            attention_mask=torch.from_numpy(mask).to(args.device), pad_token_id=pad_id,
            **settings).cpu().numpy()

    def one_shot():  # the convenience function: a new Sampler per call, compiled functions shared
      return np.asarray(generate(cfg, variables, vision, ids, mask, pad_token_id=pad_id,
                                 eos_token_ids=(dims.special_ids[0],), **settings))

    t_ours, out_ours = _time(ours, args.repeats)
    t_one, _ = _time(one_shot, args.repeats)
    t_ref, out_ref = _time(theirs, args.repeats)
    tokens = args.batch * args.new
    first = _first_differences(out_ours, out_ref, ids.shape[1])
    same = "yes" if not first and out_ours.shape == out_ref.shape else (
        f"{len(out_ours) - len(first)}/{len(out_ours)} rows; others part at new token {[s for _, s in first]}")
    print(f"{beams:>5} {tokens / t_ours:>11.1f} {tokens / t_one:>14.1f} {tokens / t_ref:>20.1f} "
          f"{t_ref / t_ours:>8.2f}x {t_ref / t_one:>8.2f}x  {same}", flush=True)
    results["beams"][beams] = {"ours_tokens_per_s": tokens / t_ours, "one_shot_tokens_per_s": tokens / t_one,
                               "reference_tokens_per_s": tokens / t_ref, "speedup": t_ref / t_ours,
                               "one_shot_speedup": t_ref / t_one, "same_tokens": same}
    if args.json:
      with open(args.json, "w") as out:
        json.dump(results, out, indent=1)
    if first and beams == 1:
      _explain_divergence(logits, out_ref, mask, first)
  if args.breakdown:
    parts = _greedy_breakdown(sampler, vision, ids, mask, args.new, args.repeats)
    results["greedy_breakdown_ms"] = parts
    print("greedy, kept Sampler (ms): " + ", ".join(f"{k} {v:.1f}" for k, v in parts.items()), flush=True)
    if args.json:
      with open(args.json, "w") as out:
        json.dump(results, out, indent=1)


if __name__ == "__main__":
  main()
