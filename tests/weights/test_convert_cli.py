"""The conversion CLI end to end: HF LM dir + CLIP weights file -> Orbax base checkpoint ->
OpenFlamingo checkpoint.pt; errors exit non-zero and leave nothing at the output path."""
import os
import subprocess
import sys

import numpy as np
import torch

from flamingo_jax.weights import orbax_io, names
from flamingo_jax.weights import state_dict as sd_lib
from tests import reference_models as ref

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = '''
from configs import common
from tests import reference_models as ref
def get_config():
  c = common.base_config()
  c.model = ref.jax_config("mpt", 2)
  return c
'''


def _run(*args):
  return subprocess.run([sys.executable, "-m", "flamingo_jax.convert", *args], cwd=REPO,
                        capture_output=True, text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})


def test_import_then_export(tmp_path):
  model = ref.build_reference("mpt", 2)
  lm = ref.build_lm("mpt")  # the reference's LM weights, as a Hugging Face directory
  lm_sd = {names.hf_lm_key(k, "mpt"): v for k, v in model.state_dict().items()
           if k.startswith("lang_encoder.") and "gated_cross" not in k and "old_decoder" not in k}
  assert not lm.load_state_dict(lm_sd, strict=False).missing_keys
  lm.save_pretrained(tmp_path / "lm")
  clip = {f"visual.{k.removeprefix('vision_encoder.')}": v for k, v in model.state_dict().items()
          if k.startswith("vision_encoder.")}
  torch.save(clip, tmp_path / "clip.pt")
  (tmp_path / "cfg.py").write_text(CONFIG)

  out = _run("import", f"--config={tmp_path / 'cfg.py'}", f"--lm_dir={tmp_path / 'lm'}",
             f"--clip={tmp_path / 'clip.pt'}", f"--out={tmp_path / 'base'}")
  assert out.returncode == 0, out.stderr[-2000:]
  _, variables = orbax_io.load_base_checkpoint(str(tmp_path / "base"))
  want = sd_lib.flamingo_to_flax(ref.state_dict_numpy(model), ref.jax_config("mpt", 2))
  for tower in ("vision", "lm"):
    for path, value in _leaves(want["frozen"][tower]):
      np.testing.assert_array_equal(_at(variables["frozen"][tower], path), value, err_msg=str(path))

  out = _run("export", f"--base={tmp_path / 'base'}", f"--out={tmp_path / 'checkpoint.pt'}")
  assert out.returncode == 0, out.stderr[-2000:]
  sd = torch.load(tmp_path / "checkpoint.pt")
  assert "perceiver.latents" in sd and "lang_encoder.transformer.wte.weight" in sd

  bad = _run("export", f"--base={tmp_path / 'nowhere'}", f"--out={tmp_path / 'x.pt'}")
  assert bad.returncode != 0 and "nowhere" in bad.stderr
  assert not os.path.exists(tmp_path / "x.pt")


def _leaves(tree, prefix=()):
  for k, v in tree.items():
    if isinstance(v, dict):
      yield from _leaves(v, prefix + (k,))
    else:
      yield prefix + (k,), v


def _at(tree, path):
  for p in path:
    tree = tree[p]
  return np.asarray(tree)
