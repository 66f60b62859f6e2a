"""OpenFlamingo-4B-vitl-rpj3b: ViT-L/14 + RedPajama-INCITE-Base-3B (GPT-NeoX), xattn every 2nd layer.

The `<image>`/`<|endofchunk|>` embedding rows stay frozen in this variant.
"""
from configs import common


def get_config(arg: str | None = None):
  lm = common.lm_config("gpt_neox", hidden_size=2560, num_layers=32, num_heads=32,
                        mlp_hidden_size=10240, rotary_pct=1.0, parallel_residual=False)
  c = common.released_variant(arg, lm=lm, every_n_layers=2, train_special_embeddings=False,
                              lm_path="checkpoints/RedPajama-INCITE-Base-3B-v1")
  return c.lock()
