"""Few-shot evaluation speed: our evaluation suite's loop (flamingo_jax.evaluate: demos, prompts,
cached latents, KV-cached beam search, postprocessing, the metric) next to open_flamingo's own
`evaluate_vqa` loop, on the same model, data, demos and seeds; queries/s and the ratio per shot
count.

  python benchmarks/eval_speed.py [--shots 0,4,32] [--queries 8] [--train 40]

The model is a small random one (ViT 64 x 2 at 64 px, LM 64 x 2 with a gated block before every
layer, the project's tiny tokenizer) built in PyTorch and converted; the data is VQAv2-format
fixture data (oracle/eval_fixtures.py) with `--train` demonstration candidates. Both loops decode
as OpenFlamingo's VQA does (3 beams, up to 5 new tokens) on this machine's CPU in fp32.
`ours` is a first run (compiles included) and `ours, compiled` a second one through the same
compiled sampler with empty image and latent caches.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import jax  # noqa: E402
import torch  # noqa: E402

from configs import eval_common, tiny  # noqa: E402
from flamingo_jax.data import tokenizer as tok_lib  # noqa: E402
from flamingo_jax.evaluate import runner  # noqa: E402
from flamingo_jax.evaluate.inference import EvalModel  # noqa: E402
from flamingo_jax.generate import Sampler  # noqa: E402
from flamingo_jax.models import rules  # noqa: E402
from flamingo_jax.weights import load, state_dict as sd_lib  # noqa: E402
from oracle import eval_fixtures, reference_eval, reference_models as ref  # noqa: E402

TOKENIZER = os.path.join(os.path.dirname(__file__), "..", "flamingo_jax", "assets", "tiny_tokenizer")
# The tiny tokenizer's 512 ids (its added tokens last, as the oracle expects); long positions for
# 32-shot prompts (about 1,100 tokens).
DIMS = ref.Dims(vocab=512, vis_width=64, vis_layers=2, image_size=64, patch=8, lm_dim=64, lm_heads=4,
                lm_layers=2, max_positions=2048)


def eval_config(data: dict, queries: int, train: int):
  c = eval_common.get_config()
  c.data.vqav2.update(data)
  c.update(batch_size=8, query_set_size=train, num_samples=queries, trial_seeds="42", demos="random")
  return c


def run_ours(sampler: Sampler, cfg, shots: int, out_dir: str) -> tuple[float, float]:
  """(seconds, VQA accuracy) of one evaluation through a fresh EvalModel around `sampler`."""
  model = EvalModel(sampler, tok_lib.load_tokenizer(TOKENIZER), pad_multiple=cfg.pad_multiple,
                    max_length=cfg.max_length, latent_cache_size=cfg.latent_cache_size)
  start = time.perf_counter()
  results, _ = runner.run(model, cfg, ["vqav2"], [shots], out_dir, progress=False)
  return time.perf_counter() - start, results["vqav2"][0]["mean"]


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--shots", default="0,4,32")
  parser.add_argument("--queries", type=int, default=8, help="test questions per shot count")
  parser.add_argument("--train", type=int, default=40, help="demonstration candidates (query set)")
  args = parser.parse_args()
  torch.set_num_threads(os.cpu_count())
  jax.config.update("jax_default_matmul_precision", "highest")
  torch_model = ref.build_reference("mpt", every_n=1, dims=DIMS)
  model_cfg = ref.jax_config("mpt", 1, dims=DIMS)
  cfg = tiny.get_config().unlock()  # one device, fp32
  cfg.model = model_cfg
  mesh, rule_set = rules.make_mesh(cfg.mesh), rules.logical_rules(cfg)
  variables = load.place(sd_lib.flamingo_to_flax(ref.state_dict_numpy(torch_model), model_cfg), model_cfg, mesh, rule_set)
  sampler = Sampler(model_cfg, variables, mesh=mesh, rules=rule_set)
  theirs = reference_eval.ReferenceEvalModel(torch_model, tok_lib.load_tokenizer(TOKENIZER), DIMS.image_size)
  with tempfile.TemporaryDirectory() as tmp:
    data = eval_fixtures.write_vqa(os.path.join(tmp, "vqav2"), "vqav2", n_train=args.train,
                                   n_test=args.queries, aligned=True)
    ecfg = eval_config(data, args.queries, args.train)
    print(f"VQAv2-format fixture, {args.queries} queries, {args.train} demonstration candidates, batch "
          f"{ecfg.batch_size}, 3 beams; LM {DIMS.lm_layers} x {DIMS.lm_dim}, ViT {DIMS.vis_layers} x "
          f"{DIMS.vis_width} at {DIMS.image_size} px; JAX {jax.__version__} ({jax.default_backend()}), "
          f"torch {torch.__version__}, {os.cpu_count()} CPU cores", flush=True)
    print(f"{'shots':>5} {'ours q/s':>9} {'ours, compiled':>15} {'open_flamingo q/s':>18} {'ratio':>7} "
          f"{'(compiled)':>10}  accuracy ours / theirs")
    with reference_eval.single_process_group():
      for shots in [int(s) for s in args.shots.split(",")]:
        first, accuracy = run_ours(sampler, ecfg, shots, os.path.join(tmp, f"ours{shots}"))
        again, _ = run_ours(sampler, ecfg, shots, os.path.join(tmp, f"ours{shots}b"))
        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):  # the VQA API's own prints
          their_accuracy = reference_eval.evaluate_vqa(theirs, data, shots, args.queries, args.train, workdir=tmp)
        ref_s = time.perf_counter() - start
        q = args.queries
        print(f"{shots:>5} {q / first:>9.2f} {q / again:>15.2f} {q / ref_s:>18.3f} {ref_s / first:>6.1f}x "
              f"{ref_s / again:>9.1f}x  {accuracy:.2f} / {their_accuracy:.2f}", flush=True)


if __name__ == "__main__":
  main()
