"""Conversion from the files users start from (HF LM directory, CLIP weights, checkpoint.pt)
through an Orbax base checkpoint back to a checkpoint.pt: bitwise for every LM family and
naming, loadable by open_flamingo with the same logits, streamed, dtype-aware, and strict."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.torch
import torch

from configs import common
from flamingo_jax.models.flamingo import Flamingo
from flamingo_jax.weights import convert, load, names, orbax_io, readers
from flamingo_jax.weights import state_dict as sd_lib
from flamingo_jax.weights.readers import UnreadableCheckpointError
from flamingo_jax.weights.state_dict import CheckpointMismatchError
from oracle import reference_models as ref
from tests.weights import released_files as files

NEOX = {"rotary_pct": 0.25}


def _config(family, **kw):
  c = common.base_config()
  c.model = ref.jax_config(family, 2, **kw)
  return c


def _stored(variables, entries):
  """Flax variables -> {torch key: array} through the name map (the stored tensors, as torch)."""
  return sd_lib.to_torch(variables, entries)


# (family, LM kwargs, naming, what else the variant exercises)
VARIANTS = {
    "opt": ("opt", {}, "hf", dict(torchscript_clip=True, strip_prefix="model.")),
    "gpt_neox": ("gpt_neox", NEOX, "hf", dict(training_dict=True, fmt="bin")),
    "mpt": ("mpt", {}, "hf", {}),
    "mpt-mosaicgpt": ("mpt", {"qk_layer_norm": True}, "mosaicgpt", {}),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_released_files_to_orbax_to_checkpoint_pt(variant, tmp_path):
  """torch -> Orbax -> torch is bitwise; for the HF namings the exported file, loaded into the
  reference with strict=False, reproduces the JAX logits."""
  family, kw, naming, extra = VARIANTS[variant]
  source = ref.build_reference(family, 2, seed=0, **{k: v for k, v in kw.items() if k != "qk_layer_norm"})
  cfg = _config(family, checkpoint_naming=naming, **kw)
  lm_sd = files.lm_state_dict(source, family, naming, qk_layer_norm=kw.get("qk_layer_norm", False))
  model_type = "mosaic_gpt" if naming == "mosaicgpt" else family
  written = files.write_lm_dir(str(tmp_path / "lm"), lm_sd, model_type, extra_rows=3,
                               fmt=extra.get("fmt", "safetensors"), strip_prefix=extra.get("strip_prefix", ""))
  clip = files.write_clip(str(tmp_path / "clip.pt"), source, torchscript=extra.get("torchscript_clip", False))
  released = files.write_openflamingo_pt(str(tmp_path / "of.pt"), source,
                                         training_dict=extra.get("training_dict", False))

  convert.import_checkpoint(cfg, str(tmp_path / "base"), lm_dir=str(tmp_path / "lm"),
                            clip_path=str(tmp_path / "clip.pt"), openflamingo_checkpoint=str(tmp_path / "of.pt"))
  assert sorted(os.listdir(tmp_path / "base")) == ["config.json", "frozen", "params"]
  config, variables = orbax_io.load_base_checkpoint(str(tmp_path / "base"))

  # The frozen towers, back in their source naming, are bitwise the files' tensors (vocab cut).
  lm_back = _stored(variables, names.lm_entries(cfg.model.lm))
  for key, value in lm_back.items():
    want = written.get(key.removeprefix(extra.get("strip_prefix", "")), written.get(key.replace("lm_head.", "embed_out.")))
    np.testing.assert_array_equal(value, want.numpy()[:value.shape[0]], err_msg=key)
  vision_back = _stored(variables, names.vision_entries(cfg.model.vision))
  assert len(vision_back) == len(clip)
  for key, value in vision_back.items():
    np.testing.assert_array_equal(value, clip[key.replace("vision_encoder.", "visual.", 1)].numpy(), err_msg=key)

  # Export: exactly the released file's keys, bitwise.
  neox_head = "lm_head" if family == "gpt_neox" else "embed_out"  # the live model's name here (transformers 5)
  convert.export_checkpoint(str(tmp_path / "base"), str(tmp_path / "out.pt"), neox_head_name=neox_head)
  exported = torch.load(tmp_path / "out.pt")
  assert set(exported) == set(released) == files.released_keys(source)
  for key in exported:
    assert exported[key].dtype == torch.float32
    np.testing.assert_array_equal(exported[key].numpy(), released[key].numpy(), err_msg=key)

  if naming == "mosaicgpt":  # no PyTorch MosaicGPT to run
    return
  target = ref.build_reference(family, 2, seed=1, **kw)  # other trainable weights
  base = {k: v for k, v in source.state_dict().items() if k not in released}
  target.load_state_dict(base, strict=False)  # LM and vision come from their own files in OpenFlamingo
  # The safetensors export is what PyTorch users load without a pickle: the same state dict.
  convert.export_checkpoint(str(tmp_path / "base"), str(tmp_path / "out.safetensors"), neox_head_name=neox_head)
  exported = safetensors.torch.load_file(str(tmp_path / "out.safetensors"))
  result = target.load_state_dict(exported, strict=False)
  assert not result.unexpected_keys and not set(released) & set(result.missing_keys)
  vision, ids, mask = ref.sample_batch(np.random.default_rng(0))
  with torch.no_grad():
    theirs = target(ref.to_torch_images(vision), torch.from_numpy(ids),
                    attention_mask=torch.from_numpy(mask).bool()).logits.numpy()
  ours = Flamingo(config.model).apply(variables, jnp.asarray(vision), jnp.asarray(ids), jnp.asarray(mask))
  assert np.abs(np.asarray(ours) - theirs)[mask.astype(bool)].max() < 1e-4


def test_sharded_bf16_directory_into_bf16_frozen_weights_with_fresh_trainables(tmp_path):
  """Sharded safetensors with an index, stored bf16 and kept bf16 (the config's frozen_dtype):
  no fp32 detour, no rounding; trainable parts fresh, special rows from the LM's table."""
  lm = ref.build_lm("gpt_neox", **NEOX)
  ref.perturb_(lm)
  lm.to(torch.bfloat16).save_pretrained(tmp_path / "lm", max_shard_size="100KB")
  assert len(list((tmp_path / "lm").glob("*.safetensors"))) > 1
  assert (tmp_path / "lm" / "model.safetensors.index.json").exists()
  source = ref.build_reference("gpt_neox", 2, **NEOX)
  files.write_clip(str(tmp_path / "clip.pt"), source)
  cfg = _config("gpt_neox", **NEOX)
  cfg.model.frozen_dtype = "bfloat16"
  variables = convert.import_weights(cfg, lm_dir=str(tmp_path / "lm"), clip_path=str(tmp_path / "clip.pt"))
  table = variables["frozen"]["lm"]["embed"]["embedding"]
  assert {x.dtype for x in jax.tree_util.tree_leaves(variables["frozen"])} == {np.dtype(jnp.bfloat16)}
  assert {x.dtype for x in jax.tree_util.tree_leaves(variables["params"])} == {np.dtype(np.float32)}
  for key, value in _stored(variables, names.lm_entries(cfg.model.lm)).items():
    want = lm.state_dict()[key.replace("embed_out.", "lm_head.")]
    np.testing.assert_array_equal(value.view(np.int16), want.view(torch.int16).numpy(), err_msg=key)
  np.testing.assert_array_equal(variables["params"]["special_embeddings"],
                                np.asarray(table[[ref.EOC_ID, ref.MEDIA_ID]], np.float32))
  assert float(np.abs(variables["params"]["xattn_1"]["attn_gate"]).max()) == 0.0  # gates start closed


def test_bf16_frozen_table_exports_the_trained_rows_exactly(tmp_path):
  """The trainable <image>/<|endofchunk|> rows are kept in fp32 even when the table is bf16."""
  source = ref.build_reference("mpt", 2)
  released = files.write_openflamingo_pt(str(tmp_path / "of.pt"), source)
  files.write_lm_dir(str(tmp_path / "lm"), files.lm_state_dict(source, "mpt"), "mpt")
  files.write_clip(str(tmp_path / "clip.pt"), source)
  cfg = _config("mpt")
  cfg.model.frozen_dtype = "bfloat16"
  convert.import_checkpoint(cfg, str(tmp_path / "base"), lm_dir=str(tmp_path / "lm"),
                            clip_path=str(tmp_path / "clip.pt"), openflamingo_checkpoint=str(tmp_path / "of.pt"))
  convert.export_checkpoint(str(tmp_path / "base"), str(tmp_path / "out.pt"))
  key = "lang_encoder.transformer.wte.weight"
  table, want = torch.load(tmp_path / "out.pt")[key], released[key]
  rows = [ref.EOC_ID, ref.MEDIA_ID]
  expected = want.to(torch.bfloat16).float()  # frozen rows: as stored (bf16)
  expected[rows] = want[rows]                  # trained rows: exact
  np.testing.assert_array_equal(table.numpy(), expected.numpy())


def test_torchscript_clip_archive_reads_in_its_own_dtype(tmp_path):
  source = ref.build_reference("opt", 2)
  sd = files.write_clip(str(tmp_path / "ViT-L-14.pt"), source, torchscript=True, dtype=torch.float16)
  got = dict(readers.iter_file_tensors(str(tmp_path / "ViT-L-14.pt")))
  assert set(got) == {*sd, "logit_scale"}
  for key, value in sd.items():
    assert got[key].dtype == np.float16
    np.testing.assert_array_equal(got[key], value.numpy(), err_msg=key)


def _inputs(tmp_path, family="mpt", **kw):
  source = ref.build_reference(family, 2, **kw)
  files.write_lm_dir(str(tmp_path / "lm"), files.lm_state_dict(source, family), family)
  files.write_clip(str(tmp_path / "clip.pt"), source)
  files.write_openflamingo_pt(str(tmp_path / "of.pt"), source)
  return dict(lm_dir=str(tmp_path / "lm"), clip_path=str(tmp_path / "clip.pt"),
              openflamingo_checkpoint=str(tmp_path / "of.pt"))


def test_bad_inputs_are_clear_errors_and_write_nothing(tmp_path):
  inputs = _inputs(tmp_path)
  out = str(tmp_path / "out" / "base")
  os.makedirs(tmp_path / "out")

  def fails(error, match, cfg=None, **changes):
    with pytest.raises(error, match=match):
      convert.import_checkpoint(cfg or _config("mpt"), out, **{**inputs, **changes})
    assert os.listdir(tmp_path / "out") == []  # nothing half-written, no temp dirs left

  every_layer = _config("mpt")
  every_layer.model.xattn.every_n_layers = 1  # a checkpoint of another variant: blocks 0 and 2 missing
  fails(CheckpointMismatchError, r"trainable tensors missing.*blocks\.0\.gated_cross_attn_layer", every_layer)
  wider = _config("mpt", hidden_size=96, num_heads=4)
  fails(CheckpointMismatchError, r"shape mismatch for transformer\.\S+ is \(\d+, 64\), expected \(\d+, 96\)", wider)
  (tmp_path / "junk.pt").write_bytes(b"junk")
  fails(UnreadableCheckpointError, "junk.pt", openflamingo_checkpoint=str(tmp_path / "junk.pt"))
  fails(UnreadableCheckpointError, "nowhere.pt", clip_path=str(tmp_path / "nowhere.pt"))
  torch.save({"visual.conv1.weight": torch.zeros(64, 3, 8, 8)}, tmp_path / "partial_clip.pt")
  fails(CheckpointMismatchError, r"vision tensors missing.*class_embedding", clip_path=str(tmp_path / "partial_clip.pt"))
  fails(CheckpointMismatchError, "model_type='mpt'.*'opt'", _config("opt"))  # another family's LM
  os.remove(tmp_path / "lm" / "config.json")
  fails(UnreadableCheckpointError, "No config.json")
  (tmp_path / "lm" / "config.json").write_text("{}")  # no model_type: the keys tell
  fails(CheckpointMismatchError, r"map to no variable.*transformer\.blocks", _config("opt"))
  (tmp_path / "lm" / "model.safetensors.index.json").write_text('{"weight_map": {"a": "model-00002.safetensors"}}')
  fails(UnreadableCheckpointError, "model-00002.safetensors")
  os.remove(tmp_path / "lm" / "model.safetensors.index.json")
  # A tokenizer whose vocabulary does not line up with the config (the project's tiny one: 512).
  tok_dir = os.path.join(os.path.dirname(convert.__file__), "..", "assets", "tiny_tokenizer")
  fails(CheckpointMismatchError, r"len\(tokenizer\) = 512 but lm.vocab_size = 100", tokenizer_dir=tok_dir)
  # An existing output is never overwritten.
  os.makedirs(out)
  with pytest.raises(FileExistsError, match="refusing to overwrite"):
    convert.import_checkpoint(_config("mpt"), out, **inputs)


def test_checkpoint_pt_tables_must_match_the_vocabulary(tmp_path):
  """Unlike the LM's own files, a checkpoint.pt with other table sizes is another tokenizer."""
  inputs = _inputs(tmp_path)
  sd = torch.load(inputs["openflamingo_checkpoint"])
  sd["lang_encoder.transformer.wte.weight"] = torch.cat([sd["lang_encoder.transformer.wte.weight"], torch.zeros(2, 64)])
  torch.save(sd, tmp_path / "of.pt")
  with pytest.raises(CheckpointMismatchError, match="has 102 rows but the config's vocabulary"):
    convert.import_weights(_config("mpt"), **inputs)


def test_base_checkpoint_layout_select_and_dtypes(tmp_path):
  """Scanned variables are stored unrolled and come back scanned (through the loader); partial,
  cast reads."""
  from configs import tiny
  import flax.linen as nn
  from flamingo_jax.models import shapes
  cfg = tiny.get_config().unlock()
  cfg.model.scan_layers = True
  rng = np.random.default_rng(0)
  variables = jax.tree_util.tree_map(lambda x: rng.normal(size=x.shape).astype(x.dtype),
                                     nn.unbox(shapes.abstract_variables(cfg.model)))
  orbax_io.save_base_checkpoint(str(tmp_path / "base"), cfg, variables)
  config, stored = orbax_io.load_base_checkpoint(str(tmp_path / "base"))
  assert "layers" not in stored["params"] and "xattn_0" in stored["params"]
  loaded = load.load_model(str(tmp_path / "base"))
  back = jax.device_get(loaded.variables)
  assert loaded.config.model.scan_layers and "layers" in back["params"]
  jax.tree_util.tree_map(np.testing.assert_array_equal, back, variables)
  _, part = orbax_io.load_base_checkpoint(str(tmp_path / "base"), select=lambda c, p: p[:2] == ("lm", "embed"),
                                          dtypes={"frozen": "bfloat16"})
  assert part["params"] == {} and list(part["frozen"]) == ["lm"] and list(part["frozen"]["lm"]) == ["embed"]
  assert part["frozen"]["lm"]["embed"]["embedding"].dtype == jnp.bfloat16
  with pytest.raises(FileExistsError):
    orbax_io.save_base_checkpoint(str(tmp_path / "base"), cfg, variables)
  with pytest.raises(Exception):
    orbax_io.save_base_checkpoint(str(tmp_path / "bad"), cfg, {"params": {"x": object()}, "frozen": {}})
  assert sorted(os.listdir(tmp_path)) == ["base"]
  with pytest.raises(FileNotFoundError, match="no config.json"):
    orbax_io.load_base_checkpoint(str(tmp_path / "nowhere"))
