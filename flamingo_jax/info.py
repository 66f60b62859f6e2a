"""Prints a config's total and trainable parameter counts, computed from shapes alone.

  python -m flamingo_jax.info --config=configs/of_9b.py
"""
from __future__ import annotations

from flamingo_jax import cli  # first: its quiet start precedes the libraries' imports
from ml_collections import config_flags

from flamingo_jax.models import rules, shapes

_CONFIG = config_flags.DEFINE_config_file("config", None, "Model config file.", lock_config=True)


def parameter_counts(model_cfg) -> dict[str, int]:
  """Counts per top-level module and per collection (no allocation: `jax.eval_shape`)."""
  # Counted in the unrolled layout (per-block names); scanning changes the layout, not the count.
  model_cfg = model_cfg.copy_and_resolve_references()
  with model_cfg.unlocked():
    model_cfg.scan_layers = False
  variables = shapes.abstract_variables(model_cfg)
  counts = {}
  for collection, tree in variables.items():
    for name, sub in tree.items():
      counts[f"{collection}/{name}"] = rules.count_params(sub)
  counts["trainable"] = rules.count_params(variables.get("params", {}))
  counts["frozen"] = rules.count_params(variables.get("frozen", {}))
  counts["total"] = counts["trainable"] + counts["frozen"]
  # OpenFlamingo's own numbers: its factory marks the whole input-embedding table trainable (and
  # masks the gradient to two rows in training); its checkpoint.pt saves every "embed" weight.
  lm = variables["frozen"]["lm"]
  table = rules.count_params(lm["embed"])
  core = counts["params/perceiver"] + sum(v for k, v in counts.items() if k.startswith("params/xattn_"))
  counts["openflamingo_reported_trainable"] = core + table
  head = rules.count_params(lm["lm_head"]) if "lm_head" in lm else 0
  counts["openflamingo_checkpoint_params"] = core + table + head
  return counts


def main(argv):
  del argv
  counts = parameter_counts(_CONFIG.value.model)
  width = max(len(k) for k in counts)
  for key, value in counts.items():
    if key.startswith("params/xattn_") or key.startswith("frozen/"):
      continue
    print(f"{key:<{width}}  {value:>15,}")
  xattn = sum(v for k, v in counts.items() if k.startswith("params/xattn_"))
  print(f"{'params/xattn_* (all)':<{width}}  {xattn:>15,}")
  for key in ("frozen/vision", "frozen/lm"):
    print(f"{key:<{width}}  {counts.get(key, 0):>15,}")


if __name__ == "__main__":
  cli.run(main)
