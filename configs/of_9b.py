"""OpenFlamingo-9B-vitl-mpt7b: ViT-L/14 + MPT-7B, xattn every 4th layer."""
from configs import common
from flamingo_jax import sweep


def get_config(arg: str | None = None):
  lm = common.lm_config("mpt", hidden_size=4096, num_layers=32, num_heads=32,
                        mlp_hidden_size=16384)
  c = common.released_variant(arg, lm=lm, every_n_layers=4, train_special_embeddings=True,
                              lm_path="checkpoints/mpt-7b")
  return c.lock()


def get_sweep(arg: str | None = None):
  """Learning rate x warmup for OF-9B, one TPU VM job per point:

    python -m flamingo_jax.sweep --config=configs/of_9b.py:tpu --workdir=gs://bucket/of9b-lr \
        --launch=tpu_vm --tpus=v5e-a,v5e-b,v5e-c,v5e-d,v5e-e,v5e-f --config.data.mmc4.shards=...
  """
  del arg
  return sweep.product({"optim.learning_rate": [1e-4, 2e-4, 5e-4], "optim.warmup_steps": [1000, 5000]})
