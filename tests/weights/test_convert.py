"""Conversion: export loads into open_flamingo with the same logits; torch -> Flax -> torch is
bitwise; HF directories stream in; bad input is a clear error with nothing written."""
import os

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from configs import common
from flamingo_jax.models.flamingo import Flamingo
from flamingo_jax.weights import convert, names
from flamingo_jax.weights import state_dict as sd_lib
from flamingo_jax.weights.state_dict import CheckpointMismatchError
from tests import reference_models as ref

FAMILIES = [("opt", {}), ("gpt_neox", {"rotary_pct": 0.25}), ("mpt", {})]


def _config(family, **kw):
  c = common.base_config()
  c.model = ref.jax_config(family, 2, **kw)
  return c


@pytest.mark.parametrize("family,kw", FAMILIES)
def test_export_loads_into_reference_and_reproduces_logits(family, kw, tmp_path):
  source = ref.build_reference(family, 2, seed=0, **kw)
  cfg = _config(family, **kw)
  variables = sd_lib.flamingo_to_flax(ref.state_dict_numpy(source), cfg.model)
  path = str(tmp_path / "checkpoint.pt")
  convert.save_checkpoint_pt(cfg, variables, path, neox_head_name="lm_head")  # transformers 5 here
  target = ref.build_reference(family, 2, seed=1, **kw)  # different trainable weights
  # The LM and vision weights come from the base models, as in OpenFlamingo; copy them over.
  base = {k: v for k, v in source.state_dict().items()
          if not k.startswith("perceiver.") and "gated_cross_attn" not in k}
  target.load_state_dict(base, strict=False)
  result = target.load_state_dict(torch.load(path), strict=False)
  assert not result.unexpected_keys
  flamingo_params = {n for n, _ in target.named_parameters()
                     if n.startswith("perceiver.") or "gated_cross_attn_layer." in n}
  assert not flamingo_params & set(result.missing_keys)
  vision, ids, mask = ref.sample_batch(np.random.default_rng(0))
  with torch.no_grad():
    theirs = target(ref.to_torch_images(vision), torch.from_numpy(ids),
                    attention_mask=torch.from_numpy(mask).bool()).logits.numpy()
  ours = Flamingo(cfg.model).apply(variables, jnp.asarray(vision), jnp.asarray(ids), jnp.asarray(mask))
  assert np.abs(np.asarray(ours) - theirs)[mask.astype(bool)].max() < 1e-4


@pytest.mark.parametrize("family,kw,naming", [*[(f, k, "hf") for f, k in FAMILIES], ("mpt", {}, "mosaicgpt")])
def test_round_trip_is_bitwise(family, kw, naming, tmp_path):
  source = ref.build_reference(family, 2, **kw)
  cfg = _config(family, checkpoint_naming=naming, **kw)
  sd = ref.state_dict_numpy(source)
  if naming == "mosaicgpt":  # MosaicGPT's code is not in transformers: rename an HF MPT's keys
    hf, mosaic = names._LAYER_NAMES["hf_mpt"], names._LAYER_NAMES["mosaicgpt"]
    for part in ("norm_1", "norm_2", "up", "down"):
      sd = {k.replace(f".{hf[part]}.", f".{mosaic[part]}."): v for k, v in sd.items()}
    sd = {k.replace("transformer.norm_f", "transformer.ln_f"): v for k, v in sd.items()}
  variables = sd_lib.flamingo_to_flax(sd, cfg.model)
  # The LM, in its own naming, through the HF-directory importer's mapping and back.
  lm_sd = {names.hf_lm_key(k, family): v for k, v in sd.items() if k.startswith("lang_encoder.")}
  lm_vars = sd_lib.to_flax(lm_sd, names.lm_entries(cfg.model.lm))
  back = sd_lib.to_torch(lm_vars, names.lm_entries(cfg.model.lm))
  for key, value in back.items():  # transformers 5 calls GPT-NeoX's embed_out lm_head
    np.testing.assert_array_equal(value, lm_sd.get(key, lm_sd.get(key.replace("embed_out.", "lm_head."))),
                                  err_msg=key)
  # The checkpoint.pt keys: exported, written, read, imported, exported again.
  first = convert.export_state_dict(cfg, variables)
  torch.save({k: torch.from_numpy(v) for k, v in first.items()}, tmp_path / "a.pt")
  restored = {}
  convert.load_openflamingo_checkpoint(restored, cfg.model, str(tmp_path / "a.pt"), convert._expected(cfg.model))
  restored["frozen"]["lm"] = {**variables["frozen"]["lm"], **restored["frozen"]["lm"]}
  restored["frozen"]["vision"] = variables["frozen"]["vision"]
  second = convert.export_state_dict(cfg, restored)
  assert first.keys() == second.keys()
  for key in first:
    np.testing.assert_array_equal(first[key], second[key], err_msg=key)
  # Exactly the keys OpenFlamingo's filter would save from the live model.
  live = {n for n, p in source.named_parameters() if n.startswith("perceiver.")
          or "gated_cross_attn_layer." in n}
  assert live <= set(first)


def test_hf_directory_streams_in_sharded_safetensors_and_bin(tmp_path):
  lm = ref.build_lm("gpt_neox", rotary_pct=0.25)
  ref.perturb_(lm)
  lm.save_pretrained(tmp_path / "st", max_shard_size="100KB")
  assert len(list((tmp_path / "st").glob("*.safetensors"))) > 1
  cfg = _config("gpt_neox", rotary_pct=0.25)
  variables = convert.import_weights(cfg, lm_dir=str(tmp_path / "st"))
  want = sd_lib.to_flax(ref.state_dict_numpy(lm), names.lm_entries(cfg.model.lm))
  import jax
  jax.tree_util.tree_map(np.testing.assert_array_equal, variables["frozen"]["lm"], want["frozen"]["lm"])
  assert set(variables["params"]) >= {"perceiver", "xattn_1", "special_embeddings"}


def test_wrong_variant_is_a_clear_error_and_writes_nothing(tmp_path):
  source = ref.build_reference("mpt", 2)
  cfg = _config("mpt")
  variables = sd_lib.flamingo_to_flax(ref.state_dict_numpy(source), cfg.model)
  path = tmp_path / "a.pt"
  convert.save_checkpoint_pt(cfg, variables, str(path))
  other = _config("mpt")
  other.model.xattn.every_n_layers = 1  # a checkpoint of another variant: blocks 0 and 2 missing
  with pytest.raises(CheckpointMismatchError, match="gated_cross_attn_layer"):
    convert.load_openflamingo_checkpoint({}, other.model, str(path), convert._expected(other.model))
  wider = _config("mpt", hidden_size=96, num_heads=4)
  with pytest.raises(CheckpointMismatchError, match="Shape mismatch"):
    convert.load_openflamingo_checkpoint({}, wider.model, str(path), convert._expected(wider.model))
  from flamingo_jax.weights.readers import UnreadableCheckpointError
  (tmp_path / "junk.pt").write_bytes(b"junk")
  with pytest.raises(UnreadableCheckpointError, match="junk.pt"):
    convert.load_openflamingo_checkpoint({}, cfg.model, str(tmp_path / "junk.pt"), convert._expected(cfg.model))
  assert sorted(os.listdir(tmp_path)) == ["a.pt", "junk.pt"]


def test_hf_directory_with_a_pytorch_bin_file(tmp_path):
  lm = ref.build_lm("opt")
  ref.perturb_(lm)
  (tmp_path / "lm").mkdir()
  torch.save(lm.state_dict(), tmp_path / "lm" / "pytorch_model.bin")
  cfg = _config("opt")
  variables = convert.import_weights(cfg, lm_dir=str(tmp_path / "lm"))
  want = sd_lib.to_flax(ref.state_dict_numpy(lm), names.lm_entries(cfg.model.lm))
  import jax
  jax.tree_util.tree_map(np.testing.assert_array_equal, variables["frozen"]["lm"], want["frozen"]["lm"])
  with pytest.raises(CheckpointMismatchError, match="unexpected tensors"):
    convert.import_weights(_config("mpt"), lm_dir=str(tmp_path / "lm"))  # another family's weights
