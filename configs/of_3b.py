"""OpenFlamingo-3B-vitl-mpt1b: ViT-L/14 + MPT-1B (MosaicGPT, QK LayerNorm), xattn every layer.

  python -m flamingo_jax.train --config=configs/of_3b.py:tpu --workdir=gs://bucket/run
"""
from configs import common


def get_config(arg: str | None = None):
  # MosaicGPT's no_bias (the mpt family's default) drops every Linear and LayerNorm bias.
  lm = common.lm_config("mpt", hidden_size=2048, num_layers=24, num_heads=16, mlp_hidden_size=8192,
                        qk_layer_norm=True, checkpoint_naming="mosaicgpt")
  c = common.released_variant(arg, lm=lm, every_n_layers=1, train_special_embeddings=True,
                              lm_path="checkpoints/mpt-1b-redpajama-200b")
  return c.lock()
