"""The generation CLI on a tiny base checkpoint with two real image files."""
import os
import subprocess
import sys

import flax.linen as nn
import jax
import numpy as np
import pytest

from configs import tiny
from flamingo_jax.data import synthetic
from flamingo_jax.models import shapes
from flamingo_jax.weights import orbax_io

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_generate_cli(tmp_path):
  cfg = tiny.get_config().unlock()
  cfg.tokenizer_path = os.path.join(REPO, cfg.tokenizer_path)
  orbax_io.save_base_checkpoint(str(tmp_path / "base"), cfg,
                                nn.unbox(shapes.init_variables(cfg.model, jax.random.PRNGKey(0))))
  rng = np.random.default_rng(0)
  paths = []
  for i in range(2):
    img, _ = synthetic.draw(rng, 80)
    img.save(tmp_path / f"{i}.jpg")
    paths.append(f"--image={tmp_path / f'{i}.jpg'}")
  args = [sys.executable, "-m", "flamingo_jax.generate", f"--checkpoint={tmp_path / 'base'}", *paths,
          "--prompt=<image>two red circles on the left<|endofchunk|><image>", "--max_new_tokens=4"]
  out = subprocess.run(args, cwd=REPO, capture_output=True, text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.strip()
  bad = subprocess.run(args[:-2] + ["--prompt=<image>"], cwd=REPO, capture_output=True, text=True,
                       env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert bad.returncode != 0 and "<image> tokens" in bad.stderr
