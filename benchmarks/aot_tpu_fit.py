"""Compiles a Flamingo forward+backward for a real TPU topology on this (CPU-only) machine and
prints the per-chip memory XLA plans and the FLOPs it counts: does a config fit before we pay
for a pod slice?

  python benchmarks/aot_tpu_fit.py --config=configs/of_9b.py:tpu --topology=v5e:4x4 \
      --mesh=data=1,fsdp=16,tensor=1 --batch=32 --length=256 --images=6

Needs `pip install "jax[tpu]==<installed jax version>"` (the TPU compiler, libtpu); no TPU.
"""
from __future__ import annotations

import time

from absl import app, flags
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import topologies
from jax.sharding import NamedSharding, PartitionSpec
from ml_collections import config_flags

from flamingo_jax.models import rules, shapes
from flamingo_jax.models.flamingo import Flamingo

_CONFIG = config_flags.DEFINE_config_file("config", "configs/of_9b.py:tpu", "Config file.")
_TOPOLOGY = flags.DEFINE_string("topology", "v5e:4x4", "TPU topology name.")
_MESH = flags.DEFINE_string("mesh", "data=1,fsdp=-1,tensor=1", "Mesh axis sizes.")
_BATCH = flags.DEFINE_integer("batch", 32, "Global batch.")
_LENGTH = flags.DEFINE_integer("length", 256, "Text length.")
_IMAGES = flags.DEFINE_integer("images", 6, "Images per sample.")


def main(argv):
  del argv
  cfg = _CONFIG.value.unlock()
  for part in _MESH.value.split(","):
    key, value = part.split("=")
    cfg.mesh[key] = int(value)
  devices = topologies.get_topology_desc(platform="tpu", topology_name=_TOPOLOGY.value).devices
  mesh = rules.make_mesh(cfg.mesh, devices)
  rule_set = rules.logical_rules(cfg)
  model = Flamingo(cfg.model)
  abstract = shapes.abstract_variables(cfg.model)
  shardings = nn.unbox(rules.variable_shardings(abstract, mesh, rule_set))
  abstract = jax.tree_util.tree_map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                    nn.unbox(abstract), shardings)
  size = cfg.model.vision.image_size
  b, length, t = _BATCH.value, _LENGTH.value, _IMAGES.value
  batch = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype, sharding=rules.batch_sharding(mesh, len(shape)))
  args = (batch((b, t, 1, size, size, 3), jnp.bfloat16), batch((b, length), jnp.int32),
          batch((b, length), jnp.int32))

  def loss_fn(params, frozen, vision_x, ids, mask):
    logits = model.apply({"params": params, "frozen": frozen}, vision_x, ids, mask)
    logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32))
    nll = -jnp.take_along_axis(logp, ids[:, 1:, None], axis=-1)[..., 0]
    return (nll * mask[:, 1:]).sum() / mask[:, 1:].sum()

  grad_fn = jax.jit(jax.value_and_grad(loss_fn), out_shardings=(
      NamedSharding(mesh, PartitionSpec()), shardings["params"]))
  start = time.time()
  with mesh, nn.logical_axis_rules(rule_set):
    compiled = grad_fn.lower(abstract["params"], abstract["frozen"], *args).compile()
  mem = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  gib = 2 ** 30
  print(f"topology {_TOPOLOGY.value} ({len(devices)} chips), mesh {dict(mesh.shape)}, "
        f"batch {b} x {length} tokens, {t} images; compiled in {time.time() - start:.1f}s")
  print(f"per chip: arguments {mem.argument_size_in_bytes / gib:.2f} GiB, outputs "
        f"{mem.output_size_in_bytes / gib:.2f} GiB, temporaries {mem.temp_size_in_bytes / gib:.2f} GiB")
  print(f"per chip FLOPs (forward+backward): {cost.get('flops', float('nan')):.3e}")


if __name__ == "__main__":
  app.run(main)
