"""Parity with open_flamingo's PyTorch `Flamingo` (fp32 logits within 1e-4 max abs)."""
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from flamingo_jax.models.flamingo import Flamingo
from flamingo_jax.weights import state_dict as sd_lib
from oracle import reference_models as ref

TOL = 1e-4


def _jax_model(family, every_n, sd, **lm_overrides):
  cfg = ref.jax_config(family, every_n, **lm_overrides)
  model = Flamingo(cfg)
  variables = sd_lib.flamingo_to_flax(sd, cfg)
  return model, variables


def _ref_logits(torch_model, vision, ids, mask):
  with torch.no_grad():
    out = torch_model(ref.to_torch_images(vision), torch.from_numpy(ids),
                      attention_mask=torch.from_numpy(mask).bool())
  return out.logits.numpy()


def _assert_close_on_tokens(ours, theirs, mask):
  """Compares logits at real tokens; pad positions' outputs are meaningless in both."""
  ours, theirs = np.asarray(ours), np.asarray(theirs)
  assert ours.shape == theirs.shape
  diff = np.abs(ours - theirs)[mask.astype(bool)].max()
  assert diff < TOL, f"max abs logit diff {diff:.3g}"


CASES = [
    ("opt", 1, {}, {}),
    ("opt", 2, {}, {}),
    ("gpt_neox", 1, dict(use_parallel_residual=False, rotary_pct=0.5),
     dict(parallel_residual=False, rotary_pct=0.5)),
    ("gpt_neox", 2, dict(use_parallel_residual=True, rotary_pct=1.0), dict(parallel_residual=True)),
    ("mpt", 1, {}, {}),
    ("mpt", 2, {}, {}),
]


@pytest.mark.parametrize("family,every_n,torch_kw,jax_kw", CASES,
                         ids=[f"{c[0]}-n{c[1]}-{i}" for i, c in enumerate(CASES)])
def test_flamingo_logits_match_reference(family, every_n, torch_kw, jax_kw):
  torch_model = ref.build_reference(family, every_n, **torch_kw)
  model, variables = _jax_model(family, every_n, ref.state_dict_numpy(torch_model), **jax_kw)
  vision, ids, mask = ref.sample_batch(np.random.default_rng(0))
  ours = model.apply(variables, jnp.asarray(vision), jnp.asarray(ids), jnp.asarray(mask))
  _assert_close_on_tokens(ours, _ref_logits(torch_model, vision, ids, mask), mask)
