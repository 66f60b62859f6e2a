"""Shared config builders: one function per component, composed by each `of_*.py` file.

Every model dimension is a field, so any size is one `--config.model.lm.hidden_size=...` away.
Derived values are computed visibly in the `get_config` of each variant.
"""
from __future__ import annotations

import ml_collections
from ml_collections import config_dict


def parse_arg(arg: str | None, **defaults):
  """Parses 'key=value,key2=value2' (or a bare backend name) into typed defaults, as big_vision does."""
  result = dict(defaults)
  if not arg:
    return ml_collections.ConfigDict(result)
  for part in arg.split(","):
    if not part:
      continue
    if "=" not in part:
      part = f"backend={part}"  # `of_3b.py:tpu` is the common case.
    key, value = part.split("=", 1)
    if key not in result:
      raise ValueError(f"Unknown config argument {key!r}; known: {sorted(result)}")
    default = result[key]
    if isinstance(default, bool):
      result[key] = value.lower() in ("1", "true", "yes")
    elif default is None:
      result[key] = value
    else:
      result[key] = type(default)(value)
  return ml_collections.ConfigDict(result)


def vision_config(**overrides) -> ml_collections.ConfigDict:
  """open_clip ViT-L/14 at 224 px, as OpenFlamingo uses it (QuickGELU, patch tokens, no ln_post)."""
  c = ml_collections.ConfigDict(dict(
      image_size=224, patch_size=14, width=1024, layers=24, heads=16, mlp_ratio=4.0,
      embed_dim=768,  # width of `proj`; kept for checkpoint shape fidelity, never applied.
      ln_eps=1e-5,
  ))
  c.update(overrides)
  return c


def perceiver_config(**overrides) -> ml_collections.ConfigDict:
  """OpenFlamingo's PerceiverResampler(dim=1024) defaults."""
  c = ml_collections.ConfigDict(dict(
      depth=6, dim_head=64, heads=8, num_latents=64, ff_mult=4,
      # Absent from the released models; set them for video (frames > 1) or media-time embeddings.
      max_num_media=config_dict.placeholder(int),
      max_num_frames=config_dict.placeholder(int),
  ))
  c.update(overrides)
  return c


def xattn_config(every_n_layers: int, **overrides) -> ml_collections.ConfigDict:
  """The tanh-gated cross-attention block inserted before every Nth decoder layer."""
  c = ml_collections.ConfigDict(dict(
      every_n_layers=every_n_layers, dim_head=64, heads=8, ff_mult=4,
      only_attend_immediate_media=True,
  ))
  c.update(overrides)
  return c


def lm_config(family: str, **overrides) -> ml_collections.ConfigDict:
  """A decoder LM: generic defaults, then the family's own (`flamingo_jax/models/families.py`),
  then `overrides`. Fields not used by a family are ignored by it."""
  from flamingo_jax.models import families  # pylint: disable=g-import-not-at-top
  c = ml_collections.ConfigDict(dict(
      family=family,            # a key of families.FAMILIES: 'mpt' | 'gpt_neox' | 'opt'
      vocab_size=50280,         # len(tokenizer) after OpenFlamingo adds its tokens.
      hidden_size=2048,
      num_layers=24,
      num_heads=16,
      mlp_hidden_size=8192,
      max_positions=2048,
      ln_eps=1e-5,
      tie_embeddings=True,
      embed_init_std=0.02,      # init std of the token table (matters for an LM not pretrained)
      # MPT
      alibi_bias_max=8,
      qk_layer_norm=False,      # mpt-1b-redpajama-200b (MosaicGPT) has it.
      checkpoint_naming="hf",   # 'hf' | 'mosaicgpt' (mpt-1b-redpajama-200b's own module names)
      use_bias=False,           # biases of the attention and MLP projections
      norm_bias=True,           # LayerNorm bias (HF MPT has none)
      # GPT-NeoX
      rotary_pct=1.0,
      rotary_base=10000.0,
      parallel_residual=False,
      activation="gelu",        # 'gelu' (exact) | 'gelu_new' | 'relu' | 'quick_gelu'
      # OPT
      do_layer_norm_before=True,
      word_embed_proj_dim=config_dict.placeholder(int),
  ))
  c.update(families.get_family(family).defaults)
  c.update(overrides)
  return c


def model_config(lm: ml_collections.ConfigDict, every_n_layers: int,
                 train_special_embeddings: bool) -> ml_collections.ConfigDict:
  """The whole Flamingo model."""
  return ml_collections.ConfigDict(dict(
      vision=vision_config(),
      perceiver=perceiver_config(),
      xattn=xattn_config(every_n_layers),
      lm=lm,
      # Ids as OpenFlamingo's tokenizer assigns them (the GPT-NeoX BPE has 50277 base tokens).
      eoc_token_id=50277,
      media_token_id=50278,
      pad_token_id=50279,
      # Whether the `<image>`/`<|endofchunk|>` embedding rows are trained (3B, 9B) or frozen (4B).
      train_special_embeddings=train_special_embeddings,
      dtype="float32",          # compute dtype
      param_dtype="float32",    # trainable parameters (and optimizer state)
      frozen_dtype="float32",   # frozen weights as stored and fed
      remat_policy="none",      # 'none' | 'full' | any jax.checkpoint_policies name
      scan_layers=False,        # nn.scan over LM layer groups, ViT blocks, resampler layers (compile time)
  ))


def mesh_config(**overrides) -> ml_collections.ConfigDict:
  """Mesh sizes (models/rules.py, docs/pods.md). Within a slice (devices over the chips' links):
  data, fsdp, tensor. Across slices (a count of slices over the data-centre network; a GPU node
  or a CPU host is a slice): dcn_data, dcn_fsdp, each multiplying its axis. One size of each
  group may be -1: all that remains (devices per slice, slices)."""
  from flamingo_jax.models import rules  # pylint: disable=g-import-not-at-top
  c = ml_collections.ConfigDict(dict(rules.MESH_DEFAULTS))
  c.update(overrides)
  return c


# Logical axis -> mesh axes. Parameters shard their `embed` dim over fsdp and their
# `mlp`/`heads`/`vocab` dim over tensor; activations shard `batch` over (data, fsdp).
SHARDING_RULES = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("vision_embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", None),
    ("vocab", "tensor"),
    ("length", None),
    ("media", None),
    ("latents", None),
    ("layers", None),
    ("act_embed", None),
    ("act_mlp", "tensor"),
    ("act_heads", "tensor"),
    ("act_vocab", "tensor"),
    ("norm", None),
    ("patch", None),
)


def base_config(backend: str = "cpu", tiny: bool = False) -> ml_collections.ConfigDict:
  """Everything but the model: mesh, sharding rules, backend, seed, training fields."""
  from configs import data, train_common  # pylint: disable=g-import-not-at-top
  c = ml_collections.ConfigDict()
  c.backend = backend
  c.seed = 42
  c.mesh = mesh_config()
  c.sharding_rules = SHARDING_RULES
  c.update(train_common.train_config(tiny))
  c.data = data.get_data_config(tiny=tiny)
  return c


def apply_backend(c: ml_collections.ConfigDict) -> None:
  """Precision follows the backend: bf16 compute and frozen weights on accelerators, fp32 on CPU."""
  if c.backend not in ("cpu", "gpu", "tpu"):
    raise ValueError(f"backend must be cpu, gpu or tpu, got {c.backend!r}")
  if c.backend in ("gpu", "tpu"):
    c.model.dtype = "bfloat16"
    c.model.frozen_dtype = "bfloat16"
    c.model.remat_policy = "nothing_saveable"
    c.model.scan_layers = True


def released_variant(arg: str | None, *, lm: ml_collections.ConfigDict, every_n_layers: int,
                     train_special_embeddings: bool, lm_path: str) -> ml_collections.ConfigDict:
  """A released OpenFlamingo model: ViT-L/14 + resampler + the given LM."""
  a = parse_arg(arg, backend="tpu")
  c = base_config(a.backend)
  c.model = model_config(lm, every_n_layers, train_special_embeddings)
  # Local paths: nothing is downloaded at run time.
  c.lm_path = lm_path
  c.tokenizer_path = lm_path
  apply_backend(c)
  return c
