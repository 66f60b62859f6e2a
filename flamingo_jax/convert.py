"""Converts released OpenFlamingo weights to a flamingo_jax base checkpoint, and back.

Import (Hugging Face LM dir + CLIP weights [+ OpenFlamingo checkpoint.pt] -> Orbax):
  python -m flamingo_jax.convert import --config=configs/of_3b.py \\
      --lm_dir=/ckpt/mpt-1b-redpajama-200b --clip=/ckpt/ViT-L-14-openai.pt \\
      --openflamingo=/ckpt/OpenFlamingo-3B-vitl-mpt1b/checkpoint.pt --out=/ckpt/of3b-base
  (without --openflamingo the trainable parts are freshly initialised: a new training run)

Export (a base or training checkpoint -> OpenFlamingo checkpoint.pt, for PyTorch users):
  python -m flamingo_jax.convert export --base=/ckpt/of3b-base --out=checkpoint.pt \\
      [--train_workdir=/runs/of3b]   # take the trainable weights of its latest training step

The output is written to a temporary path and renamed: it is whole or absent.
"""
from __future__ import annotations

import sys

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Model config (import).", lock_config=True)
_LM_DIR = flags.DEFINE_string("lm_dir", None, "Hugging Face language-model directory (import).")
_CLIP = flags.DEFINE_string("clip", None, "open_clip ViT-L-14 'openai' weights file (import).")
_OF = flags.DEFINE_string("openflamingo", None, "OpenFlamingo checkpoint.pt (import, optional).")
_BASE = flags.DEFINE_string("base", None, "flamingo_jax base checkpoint directory (export).")
_WORKDIR = flags.DEFINE_string("train_workdir", None, "Training workdir whose latest step to export.")
_OUT = flags.DEFINE_string("out", None, "Output path.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed for freshly initialised trainable parts (import).")
_NEOX_HEAD = flags.DEFINE_enum("neox_head_name", "embed_out", ["embed_out", "lm_head"],
                               "GPT-NeoX output-table key on export: embed_out (released files, "
                               "transformers 4.x) or lm_head (transformers >= 5).")


def main(argv):
  from flamingo_jax.weights import convert, orbax_io  # pylint: disable=g-import-not-at-top
  from flamingo_jax.weights.readers import UnreadableCheckpointError  # pylint: disable=g-import-not-at-top
  from flamingo_jax.weights.state_dict import CheckpointMismatchError  # pylint: disable=g-import-not-at-top
  if len(argv) != 2 or argv[1] not in ("import", "export") or not _OUT.value:
    raise app.UsageError("usage: python -m flamingo_jax.convert import|export --out=PATH ... (see --help)")
  try:
    if argv[1] == "import":
      if _CONFIG.value is None:
        raise app.UsageError("import needs --config")
      variables = convert.import_weights(_CONFIG.value, lm_dir=_LM_DIR.value, clip_path=_CLIP.value,
                                         openflamingo_checkpoint=_OF.value, seed=_SEED.value)
      orbax_io.save_base_checkpoint(_OUT.value, _CONFIG.value, variables)
    else:
      if not _BASE.value:
        raise app.UsageError("export needs --base")
      config, variables = orbax_io.load_base_checkpoint(_BASE.value)
      if _WORKDIR.value:
        variables = dict(variables, params=_latest_trainable(_WORKDIR.value, config, variables))
      convert.save_checkpoint_pt(config, variables, _OUT.value, _NEOX_HEAD.value)
  except (CheckpointMismatchError, UnreadableCheckpointError, FileNotFoundError, FileExistsError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  print(f"wrote {_OUT.value}")


def _latest_trainable(workdir, config, variables):
  """The trainable params of a training run's latest checkpoint, restored onto this host."""
  import jax  # pylint: disable=g-import-not-at-top
  from flamingo_jax.train import checkpoint, optimizer  # pylint: disable=g-import-not-at-top
  from flamingo_jax.train.state import TrainState  # pylint: disable=g-import-not-at-top
  ckpt = checkpoint.Checkpointer(workdir, keep=1)
  step = ckpt.latest_step()
  if step is None:
    raise FileNotFoundError(f"No training checkpoint in {workdir}")
  abstract = jax.eval_shape(lambda p: TrainState.create(p, optimizer.make_optimizer(config.optim)),
                            variables["params"])
  state, _ = ckpt.restore(step, abstract)
  return state.params


if __name__ == "__main__":
  app.run(main)
