"""For the released variants, the name maps cover exactly the model's variables (from
jax.eval_shape, nothing allocated) and produce the key names and shapes of OpenFlamingo's
checkpoint.pt files (spec §3.2)."""
import flax.linen as nn
import jax
import numpy as np
import pytest

from configs import of_3b, of_4b, of_9b
from flamingo_jax.models import shapes
from flamingo_jax.weights import convert, names


def _paths(tree):
  return {tuple(str(getattr(k, "key", k)) for k in p) for p, _ in jax.tree_util.tree_leaves_with_path(tree)}


@pytest.mark.parametrize("get_config,prefix,dim,blocks", [
    (of_3b.get_config, "lang_encoder.transformer.blocks", 2048, range(24)),
    (of_4b.get_config, "lang_encoder.gpt_neox.layers", 2560, range(1, 32, 2)),
    (of_9b.get_config, "lang_encoder.transformer.blocks", 4096, range(3, 32, 4)),
])
def test_released_name_maps(get_config, prefix, dim, blocks):
  cfg = get_config("cpu")
  abstract = nn.unbox(shapes.abstract_variables(cfg.model))
  entries = names.flamingo_entries(cfg.model)
  mapped = {(e.collection, *e.path) for e in entries}
  want = {(c, *p) for c in abstract for p in _paths(abstract[c])} - {("params", "special_embeddings")}
  assert mapped == want
  # Shapes through the inverse transform equal the torch shapes of the released files.
  expected_torch = {
      "perceiver.latents": (64, 1024),
      "perceiver.layers.5.0.to_kv.weight": (1024, 1024),
      "perceiver.layers.0.1.1.weight": (4096, 1024),
      f"{prefix}.{blocks[0]}.gated_cross_attn_layer.attn.to_q.weight": (512, dim),
      f"{prefix}.{blocks[-1]}.gated_cross_attn_layer.ff.3.weight": (dim, 4 * dim),
      f"{prefix}.{blocks[0]}.gated_cross_attn_layer.attn_gate": (1,),
  }
  by_key = {k: e for e in entries for k in e.torch_keys}
  for key, shape in expected_torch.items():
    e = by_key[key]
    leaf = abstract[e.collection]
    for part in e.path:
      leaf = leaf[part]
    out = e.to_torch(np.zeros(leaf.shape, np.float32))
    assert out[e.torch_keys.index(key)].shape == shape, key
  ckpt_keys = {k for e in convert._checkpoint_entries(cfg.model) for k in e.torch_keys}
  xattn = {k for k in ckpt_keys if "gated_cross_attn_layer" in k}
  assert {int(k[len(prefix) + 1:].split(".")[0]) for k in xattn} == set(blocks)
  assert len(xattn) == 11 * len(blocks)  # per block: 2 gates, norm (2), q/kv/out, ff norm (2), 2 linears
  assert len([k for k in ckpt_keys if k.startswith("perceiver.")]) == 1 + 2 + 6 * 11


@pytest.mark.parametrize("get_config,hf", [("of_4b", "gpt_neox"), ("of_9b", "mpt")])
def test_lm_names_and_shapes_match_the_real_size_hf_model(get_config, hf):
  """The LM name map against the actual HF module at full size, on the meta device (nothing
  allocated): every mapped key exists with the shape our transform produces (vocab aside)."""
  import torch
  import transformers as tf
  cfg = {"of_4b": of_4b, "of_9b": of_9b}[get_config].get_config("cpu")
  lm = cfg.model.lm
  if hf == "gpt_neox":
    hf_cfg = tf.GPTNeoXConfig(vocab_size=50432, hidden_size=2560, num_hidden_layers=32,
                              num_attention_heads=32, intermediate_size=10240, rotary_pct=1.0,
                              use_parallel_residual=False, tie_word_embeddings=False)
    cls = tf.GPTNeoXForCausalLM
  else:
    hf_cfg = tf.MptConfig(d_model=4096, n_heads=32, n_layers=32, expansion_ratio=4, vocab_size=50432)
    cls = tf.MptForCausalLM
  with torch.device("meta"):
    model = cls(hf_cfg)
  hf_shapes = {k.replace("lm_head.", "embed_out.") if hf == "gpt_neox" else k: tuple(v.shape)
               for k, v in model.state_dict().items()}
  abstract = nn.unbox(shapes.abstract_variables(cfg.model))
  for e in names.lm_entries(lm):
    leaf = abstract[e.collection]
    for part in e.path:
      leaf = leaf[part]
    for key, array in zip(e.torch_keys, e.to_torch(np.zeros(leaf.shape, np.float32))):
      assert key in hf_shapes, key
      want = hf_shapes[key]
      if e.path[-2] in ("embed", "lm_head"):
        want = (lm.vocab_size, *want[1:])  # OpenFlamingo resizes 50432 rows to 50280
      assert array.shape == want, key
