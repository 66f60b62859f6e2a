"""Per-module parity with the reference: vision tower, resampler, gated block, plain decoders."""
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from flamingo_jax.models.decoders.lm import DecoderLM
from flamingo_jax.models.flamingo import Flamingo
from flamingo_jax.weights import names
from flamingo_jax.weights import state_dict as sd_lib
from oracle import reference_models as ref

TOL = 1e-4


@pytest.fixture(scope="module")
def mpt_pair():
  torch_model = ref.build_reference("mpt", every_n=2)
  cfg = ref.jax_config("mpt", 2)
  return torch_model, Flamingo(cfg), sd_lib.flamingo_to_flax(ref.state_dict_numpy(torch_model), cfg)


def _max_diff(a, b):
  return float(np.abs(np.asarray(a) - np.asarray(b)).max())


def test_vision_tower_gives_patch_tokens_without_ln_post(mpt_pair):
  torch_model, model, variables = mpt_pair
  images = np.random.default_rng(1).normal(size=(2, ref.IMAGE_SIZE, ref.IMAGE_SIZE, 3)).astype(np.float32)
  ours = model.apply(variables, jnp.asarray(images), method=lambda m, x: m.vision(x))
  with torch.no_grad():
    theirs = torch_model.vision_encoder(torch.from_numpy(images.transpose(0, 3, 1, 2)))[1].numpy()
  assert ours.shape == (2, (ref.IMAGE_SIZE // ref.PATCH) ** 2, ref.VIS_WIDTH)
  assert _max_diff(ours, theirs) < TOL
  # The trap: open_clip >= 2.23 layer-norms these tokens. Ours must not (ln_post is non-trivial here).
  with torch.no_grad():
    normed = torch_model.vision_encoder.ln_post(torch.from_numpy(np.array(ours))).numpy()
  assert _max_diff(ours, normed) > 1e-2


def test_perceiver_resampler(mpt_pair):
  torch_model, model, variables = mpt_pair
  x = np.random.default_rng(2).normal(size=(2, 3, 1, 16, ref.VIS_WIDTH)).astype(np.float32)
  ours = model.apply(variables, jnp.asarray(x), method=lambda m, v: m.perceiver(v))
  with torch.no_grad():
    theirs = torch_model.perceiver(torch.from_numpy(x)).numpy()
  assert ours.shape == (2, 3, 64, ref.VIS_WIDTH)
  assert _max_diff(ours, theirs) < TOL


@pytest.mark.parametrize("text_time_case", ["cumsum", "more_images_than_slots"])
def test_gated_cross_attention_block(mpt_pair, text_time_case):
  torch_model, model, variables = mpt_pair
  rng = np.random.default_rng(3)
  x = rng.normal(size=(2, 10, ref.LM_DIM)).astype(np.float32)
  media = rng.normal(size=(2, 2, 64, ref.VIS_WIDTH)).astype(np.float32)
  locations = np.zeros((2, 10), bool)
  locations[0, [0, 5]] = True
  locations[1, [3]] = True
  if text_time_case == "more_images_than_slots":  # text_time 3 points past the 2 image slots
    locations[0, 8] = True
  block = torch_model.lang_encoder.gated_cross_attn_layers[1]
  with torch.no_grad():
    theirs = block(torch.from_numpy(x), torch.from_numpy(media),
                   media_locations=torch.from_numpy(locations)).numpy()
  text_time = jnp.cumsum(jnp.asarray(locations), axis=-1)
  ours = model.apply(variables, jnp.asarray(x), jnp.asarray(media), text_time,
                     method=lambda m, x, media, tt: m.xattn[1](x, m.xattn[1].media_kv(media), tt))
  assert _max_diff(ours, theirs) < TOL


@pytest.mark.parametrize("family,torch_kw,jax_kw", [
    ("opt", {}, {}),
    ("gpt_neox", dict(use_parallel_residual=False, rotary_pct=0.25), dict(parallel_residual=False, rotary_pct=0.25)),
    ("mpt", {}, {}),
])
def test_plain_decoder_matches_hf(family, torch_kw, jax_kw):
  """The decoder alone (no Flamingo wrapper) against the HF model, with left padding."""
  torch.manual_seed(0)
  lm = ref.build_lm(family, **torch_kw)
  ref.perturb_(lm)
  sd = {names.flamingo_lm_key(k, family): v for k, v in ref.state_dict_numpy(lm).items()}
  cfg = ref.jax_config(family, 1, **jax_kw)
  variables = sd_lib.to_flax(sd, names.lm_entries_in_flamingo_namespace(cfg.lm))
  _, ids, mask = ref.sample_batch(np.random.default_rng(4))
  ours = DecoderLM(cfg.lm).apply({"frozen": variables["frozen"]["lm"]}, jnp.asarray(ids),
                                jnp.asarray(mask))
  with torch.no_grad():
    theirs = lm(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits.numpy()
  valid = mask.astype(bool)
  assert np.abs(np.asarray(ours) - theirs)[valid].max() < TOL


@pytest.mark.parametrize("family", ["opt", "gpt_neox", "mpt"])
def test_closed_gates_give_the_plain_language_model(family):
  """With both gates at 0 every gated block is the identity, whatever the images."""
  torch_model = ref.build_reference(family, every_n=1)
  cfg = ref.jax_config(family, 1, **({"rotary_pct": 0.25} if family == "gpt_neox" else {}))
  variables = sd_lib.flamingo_to_flax(ref.state_dict_numpy(torch_model), cfg)
  for name, block in variables["params"].items():
    if name.startswith("xattn_"):
      block["attn_gate"] = np.zeros_like(block["attn_gate"])
      block["ff_gate"] = np.zeros_like(block["ff_gate"])
  vision, ids, mask = ref.sample_batch(np.random.default_rng(5))
  flamingo_logits = Flamingo(cfg).apply(variables, jnp.asarray(vision), jnp.asarray(ids),
                                        jnp.asarray(mask))
  lm_logits = DecoderLM(cfg.lm).apply({"frozen": variables["frozen"]["lm"]}, jnp.asarray(ids),
                                      jnp.asarray(mask))
  valid = mask.astype(bool)
  np.testing.assert_allclose(np.asarray(flamingo_logits)[valid], np.asarray(lm_logits)[valid],
                             rtol=0, atol=1e-6)
  # Open gates do change them: the comparison above is not vacuous.
  variables["params"]["xattn_0"]["attn_gate"] += 0.5
  opened = Flamingo(cfg).apply(variables, jnp.asarray(vision), jnp.asarray(ids), jnp.asarray(mask))
  assert np.abs(np.asarray(opened) - np.asarray(lm_logits))[valid].max() > 1e-3
