"""OpenFlamingo-9B-vitl-mpt7b: ViT-L/14 + MPT-7B, xattn every 4th layer."""
from configs import common


def get_config(arg: str | None = None):
  lm = common.lm_config("mpt", hidden_size=4096, num_layers=32, num_heads=32,
                        mlp_hidden_size=16384)
  c = common.released_variant(arg, lm=lm, every_n_layers=4, train_special_embeddings=True,
                              lm_path="checkpoints/mpt-7b")
  return c.lock()
