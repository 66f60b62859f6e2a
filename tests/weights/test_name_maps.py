"""For the released variants, the name maps cover exactly the model's variables (jax.eval_shape)
and give exactly the keys and shapes of OpenFlamingo's checkpoint.pt files (spec 3.2) and of the
language models' own files (the real-size HF modules on the meta device; MosaicGPT from the spec's
architecture notes). Nothing is downloaded or allocated."""
import functools

import jax
import numpy as np
import pytest

from configs import of_3b, of_4b, of_9b
from flamingo_jax.weights import convert, names

VOCAB, HF_VOCAB = 50280, 50432
VARIANTS = {  # config, decoder prefix in the Flamingo namespace, D, xattn layers, embedding tables
    "of_3b": (of_3b, "lang_encoder.transformer.blocks", 2048, range(24), ["lang_encoder.transformer.wte.weight"]),
    "of_4b": (of_4b, "lang_encoder.gpt_neox.layers", 2560, range(1, 32, 2),
              ["lang_encoder.gpt_neox.embed_in.weight", "lang_encoder.embed_out.weight"]),
    "of_9b": (of_9b, "lang_encoder.transformer.blocks", 4096, range(3, 32, 4), ["lang_encoder.transformer.wte.weight"]),
}
CHECKPOINT_PARAMS = {"of_3b": 1_046_992_944, "of_4b": 1_218_197_536, "of_9b": 1_384_781_840}  # spec 2.2


@functools.lru_cache(maxsize=None)
def _model(variant):
  cfg = VARIANTS[variant][0].get_config("cpu").model
  return cfg, convert.expected_variables(cfg)


def _paths(tree):
  return {tuple(str(getattr(k, "key", k)) for k in p) for p, _ in jax.tree_util.tree_leaves_with_path(tree)}


def released_checkpoint_shapes(variant) -> dict[str, tuple]:
  """Every key and shape of the released checkpoint.pt, written out from the spec's lists."""
  _, prefix, dim, blocks, tables = VARIANTS[variant]
  out = {"perceiver.latents": (64, 1024), "perceiver.norm.weight": (1024,), "perceiver.norm.bias": (1024,)}
  for l in range(6):
    p = f"perceiver.layers.{l}"
    for norm in ("0.norm_media", "0.norm_latents", "1.0"):
      out[f"{p}.{norm}.weight"] = out[f"{p}.{norm}.bias"] = (1024,)
    out.update({f"{p}.0.to_q.weight": (512, 1024), f"{p}.0.to_kv.weight": (1024, 1024),
                f"{p}.0.to_out.weight": (1024, 512), f"{p}.1.1.weight": (4096, 1024),
                f"{p}.1.3.weight": (1024, 4096)})
  for i in blocks:
    p = f"{prefix}.{i}.gated_cross_attn_layer"
    out.update({f"{p}.attn_gate": (1,), f"{p}.ff_gate": (1,), f"{p}.attn.norm.weight": (dim,),
                f"{p}.attn.norm.bias": (dim,), f"{p}.attn.to_q.weight": (512, dim),
                f"{p}.attn.to_kv.weight": (1024, 1024), f"{p}.attn.to_out.weight": (dim, 512),
                f"{p}.ff.0.weight": (dim,), f"{p}.ff.0.bias": (dim,), f"{p}.ff.1.weight": (4 * dim, dim),
                f"{p}.ff.3.weight": (dim, 4 * dim)})
  out.update({t: (VOCAB, dim) for t in tables})
  return out


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_maps_cover_the_model_and_give_the_released_checkpoint_keys(variant):
  model, expected = _model(variant)
  mapped = {(e.collection, *e.path) for e in names.flamingo_entries(model)}
  want = {(c, *p) for c in expected for p in _paths(expected[c])}
  assert mapped == want - {("params", "special_embeddings")}
  assert ("params", "special_embeddings") in want or variant == "of_4b"
  shapes = convert.torch_shapes(model, convert.checkpoint_entries(model), expected)
  assert shapes == released_checkpoint_shapes(variant)
  assert sum(int(np.prod(s)) for s in shapes.values()) == CHECKPOINT_PARAMS[variant]


def mosaicgpt_1b_shapes() -> dict[str, tuple]:
  """mpt-1b-redpajama-200b (MosaicGPT) as spec 2.2 describes it: d_model 2048, 24 layers, mlp
  ratio 4, QK-LayerNorm, no_bias (no Linear or LayerNorm biases), tied wte, ALiBi (no wpe).
  Module names from MosaicGPT's code (provisional until checked against the real file)."""
  d = 2048
  out = {"transformer.wte.weight": (HF_VOCAB, d), "transformer.ln_f.weight": (d,)}
  for i in range(24):
    p = f"transformer.blocks.{i}"
    out.update({f"{p}.ln_1.weight": (d,), f"{p}.ln_2.weight": (d,), f"{p}.attn.Wqkv.weight": (3 * d, d),
                f"{p}.attn.q_ln.weight": (d,), f"{p}.attn.k_ln.weight": (d,),
                f"{p}.attn.out_proj.weight": (d, d), f"{p}.mlp.mlp_up.weight": (4 * d, d),
                f"{p}.mlp.mlp_down.weight": (d, 4 * d)})
  return out


def hf_meta_shapes(variant) -> dict[str, tuple]:
  """The real-size HF module's state dict shapes, built on the meta device (nothing allocated).
  The keys are as the Hub files name them (GPT-NeoX's head `embed_out`; MPT's tied head unsaved)."""
  import torch
  import transformers as tf
  if variant == "of_4b":  # RedPajama-INCITE-3B
    config = tf.GPTNeoXConfig(vocab_size=HF_VOCAB, hidden_size=2560, num_hidden_layers=32, num_attention_heads=32,
                              intermediate_size=10240, rotary_pct=1.0, use_parallel_residual=False,
                              tie_word_embeddings=False)
    cls = tf.GPTNeoXForCausalLM
  else:  # mpt-7b
    config = tf.MptConfig(d_model=4096, n_heads=32, n_layers=32, expansion_ratio=4, vocab_size=HF_VOCAB)
    cls = tf.MptForCausalLM
  with torch.device("meta"):
    model = cls(config)
  sd = {k.replace("lm_head.", "embed_out.") if variant == "of_4b" else k: tuple(v.shape)
        for k, v in model.state_dict().items()}
  if variant == "of_9b":
    sd.pop("lm_head.weight")  # tied to transformer.wte
  return sd


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_lm_maps_give_the_language_models_own_keys_and_shapes(variant):
  model, expected = _model(variant)
  ours = convert.torch_shapes(model, names.lm_entries(model.lm), expected)
  theirs = mosaicgpt_1b_shapes() if variant == "of_3b" else hf_meta_shapes(variant)
  cut = {k: (VOCAB, *s[1:]) if s[0] == HF_VOCAB else s for k, s in theirs.items()}  # OpenFlamingo's resize
  assert ours == cut
  # The checkpoint.pt tables are these same tensors at their FlamingoLayer-namespace names.
  for key in VARIANTS[variant][4]:
    assert names.hf_lm_key(key, model.lm.family) in ours
