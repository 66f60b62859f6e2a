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
