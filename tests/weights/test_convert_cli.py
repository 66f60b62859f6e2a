"""The conversion CLI as a newcomer runs it, on the tiny config: a Hub-style LM directory (MosaicGPT
names, with its tokenizer) + CLIP weights + checkpoint.pt -> base checkpoint -> checkpoint.pt.
Bad input exits non-zero with one message and leaves nothing at the output path."""
import json
import os
import shutil
import subprocess
import sys

import flax.linen as nn
import jax
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from configs import tiny
from flamingo_jax.models import shapes
from flamingo_jax.weights import convert, names, orbax_io
from flamingo_jax.weights import state_dict as sd_lib
from tests.conftest import library_lines

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOKENIZER = os.path.join(REPO, "flamingo_jax", "assets", "tiny_tokenizer")


def _run(*args, without_torch=None):
  """The CLI in a subprocess; `without_torch=DIR` hides PyTorch from it (as on a runtime-only install)."""
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  if without_torch:
    os.makedirs(without_torch, exist_ok=True)
    with open(os.path.join(without_torch, "torch.py"), "w") as f:
      f.write("raise ModuleNotFoundError(\"No module named 'torch'\", name='torch')\n")
    env["PYTHONPATH"] = os.pathsep.join([str(without_torch), env.get("PYTHONPATH", "")])
  return subprocess.run([sys.executable, "-m", "flamingo_jax.convert", *args], cwd=REPO,
                        capture_output=True, text=True, env=env)


def _write_inputs(tmp_path, cfg):
  """Random weights for the tiny config, written as the files a user downloads."""
  rng = np.random.default_rng(0)
  variables = jax.tree_util.tree_map(lambda x: rng.normal(size=x.shape).astype(x.dtype),
                                     nn.unbox(shapes.abstract_variables(cfg.model)))
  lm = {k: torch.from_numpy(np.ascontiguousarray(v))
        for k, v in sd_lib.to_torch(variables, names.lm_entries(cfg.model.lm)).items()}
  os.makedirs(tmp_path / "lm")
  save_file(lm, str(tmp_path / "lm" / "model.safetensors"))
  (tmp_path / "lm" / "config.json").write_text(json.dumps({"model_type": "mosaic_gpt"}))
  for f in os.listdir(TOKENIZER):
    shutil.copy(os.path.join(TOKENIZER, f), tmp_path / "lm")
  vision = sd_lib.to_torch(variables, names.vision_entries(cfg.model.vision))
  torch.save({k.replace("vision_encoder.", "visual.", 1): torch.from_numpy(np.ascontiguousarray(v))
              for k, v in vision.items()}, tmp_path / "clip.pt")
  released = convert.export_state_dict(cfg, variables)
  torch.save({k: torch.from_numpy(v) for k, v in released.items()}, tmp_path / "of.pt")
  return released


def test_help_explains_both_directions():
  out = _run("--help")  # (absl exits 1 after printing help)
  for text in ("IMPORT", "EXPORT", "--lm_dir", "--clip", "--openflamingo", "--train_workdir", "50280"):
    assert text in out.stdout, text
  usage = _run("import", "--out=/tmp/x")
  assert usage.returncode != 0 and "--config" in usage.stderr and "--lm_dir" in usage.stderr


@pytest.mark.slow
def test_import_then_export_then_errors(tmp_path):
  cfg = tiny.get_config()
  released = _write_inputs(tmp_path, cfg)
  common = [f"--lm_dir={tmp_path / 'lm'}", f"--clip={tmp_path / 'clip.pt'}", f"--openflamingo={tmp_path / 'of.pt'}"]
  out = _run("import", f"--config={REPO}/configs/tiny.py", *common, f"--out={tmp_path / 'base'}")
  assert out.returncode == 0, out.stderr[-3000:]
  assert not library_lines(out.stdout + out.stderr), library_lines(out.stdout + out.stderr)  # quiet
  config, _ = orbax_io.load_base_checkpoint(str(tmp_path / "base"))
  assert config.tokenizer_path == str(tmp_path / "lm")  # checked against the config, then recorded

  out = _run("export", f"--base={tmp_path / 'base'}", f"--out={tmp_path / 'checkpoint.pt'}")
  assert out.returncode == 0, out.stderr[-3000:]
  exported = torch.load(tmp_path / "checkpoint.pt")
  assert set(exported) == set(released)
  for key, value in released.items():
    np.testing.assert_array_equal(exported[key].numpy(), value, err_msg=key)

  # Without PyTorch: safetensors holds the same state dict; a checkpoint.pt is refused before any
  # work, saying what to install.
  no_torch = tmp_path.parent / f"{tmp_path.name}-no-torch"
  out = _run("export", f"--base={tmp_path / 'base'}", f"--out={tmp_path / 'checkpoint.safetensors'}",
             without_torch=no_torch)
  assert out.returncode == 0, out.stderr[-3000:]
  exported = load_file(str(tmp_path / "checkpoint.safetensors"))
  assert set(exported) == set(released)
  for key, value in released.items():
    np.testing.assert_array_equal(exported[key].numpy(), value, err_msg=key)
  out = _run("export", f"--base={tmp_path / 'base'}", f"--out={tmp_path / 'x.pt'}", without_torch=no_torch)
  assert out.returncode == 2 and out.stderr.strip().splitlines() == [
      "error: --format=pt (a checkpoint.pt) needs PyTorch: pip install -e '.[pytorch]'; "
      "or --format=safetensors, which needs none"], out.stderr

  # Errors: one line naming the problem, exit status 1, nothing at the output path.
  out = _run("import", f"--config={REPO}/configs/tiny.py", *common[:1], f"--clip={tmp_path / 'of.pt'}",
             f"--out={tmp_path / 'base2'}")
  assert out.returncode == 1 and "error:" in out.stderr and "of.pt" in out.stderr, out.stderr[-3000:]
  out = _run("export", f"--base={tmp_path / 'nowhere'}", f"--out={tmp_path / 'x.pt'}")
  assert out.returncode == 1 and "nowhere" in out.stderr
  for target, said in ((tmp_path / "no" / "x.pt", "no such directory"), (tmp_path / "lm", "is a directory")):
    out = _run("export", f"--base={tmp_path / 'base'}", f"--out={target}", "--format=safetensors")
    assert out.returncode == 1 and len(out.stderr.splitlines()) == 1 and said in out.stderr, out.stderr
  assert sorted(os.listdir(tmp_path)) == ["base", "checkpoint.pt", "checkpoint.safetensors", "clip.pt", "lm", "of.pt"]
