"""`python -m flamingo_jax.evaluate` on a tiny base checkpoint and the fixture data."""
import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import pytest

from flamingo_jax.models import shapes
from flamingo_jax.weights import orbax_io

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(args):
  return subprocess.run([sys.executable, "-m", "flamingo_jax.evaluate", *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_cli_evaluates_a_base_checkpoint(tiny_cfg, eval_data, tmp_path, serve_gcs):
  """On a base checkpoint in a gs:// bucket, writing to a gs:// out_dir (the local GCS emulator)."""
  os.makedirs(tmp_path / "gcs" / "bucket")
  serve_gcs(str(tmp_path / "gcs"))
  ckpt = "gs://bucket/ckpt"
  init = jax.jit(lambda rng: nn.unbox(shapes.init_variables(tiny_cfg.model, rng)))
  orbax_io.save_base_checkpoint(ckpt, tiny_cfg, init(jax.random.PRNGKey(1)))
  data = [f"--eval_config.data.hateful_memes.{k}={v}" for k, v in eval_data["hateful_memes"].items()]
  out = tmp_path / "gcs" / "bucket" / "out"  # gs://bucket/out on the emulator's disk
  proc = _run([f"--checkpoint={ckpt}", "--task=hateful_memes", "--shots=0,2", "--out_dir=gs://bucket/out",
               "--eval_config.trial_seeds=1,2", "--model_name=of_3b", *data])
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.load(open(out / "results.json"))["results"]["hateful_memes"]
  assert [r["shots"] for r in results] == [0, 2] and all(len(r["trials"]) == 2 for r in results)
  assert "OpenFlamingo-3B-vitl-mpt1b (published, random)" in proc.stdout  # the markdown table
  assert not os.path.exists(os.path.join(ROOT, "gs:")) and "json: gs://bucket/out/results.json" in proc.stdout
  assert sorted(f for f in os.listdir(out) if not f.startswith(".gcs-")) == sorted(  # (emulator's dir marker)
      ["results.json", "results.md", "results.png"] +
      [f"hateful_memes_{s}shot_random_seed{seed}_predictions.json" for s in (0, 2) for seed in (1, 2)])


def test_cli_errors(tmp_path):
  proc = _run(["--task=coco", f"--checkpoint={tmp_path}"])
  assert proc.returncode != 0 and "no config.json" in proc.stderr
  proc = _run(["--task=coco", "--random_init"])
  assert proc.returncode != 0 and "--random_init needs --config" in proc.stderr
