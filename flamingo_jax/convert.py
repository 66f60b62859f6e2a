"""Converts released OpenFlamingo weights into a flamingo_jax base checkpoint, and back.

IMPORT: released weights -> a base checkpoint (Orbax) that training, generation and evaluation load.

  python -m flamingo_jax.convert import --config=configs/of_3b.py \\
      --lm_dir=/ckpt/mpt-1b-redpajama-200b --clip=/ckpt/ViT-L-14.pt \\
      --openflamingo=/ckpt/OpenFlamingo-3B-vitl-mpt1b/checkpoint.pt --out=/ckpt/of3b-base

  --config        the variant: configs/of_3b.py (mpt-1b-redpajama-200b[-dolly]),
                  configs/of_4b.py (RedPajama-INCITE-{Base,Instruct}-3B-v1), configs/of_9b.py
                  (mpt-7b); a config file of your own for other LMs (e.g. OPT). Frozen weights are
                  stored in the config's model.frozen_dtype: bf16 for the default tpu/gpu backends,
                  fp32 with `configs/of_3b.py:cpu` or `--config.model.frozen_dtype=float32`.
  --lm_dir        the Hugging Face LM directory, downloaded beforehand: config.json plus
                  *.safetensors or pytorch_model*.bin (single or sharded, with or without index).
  --clip          open_clip's ViT-L-14 "openai" weights: OpenAI's ViT-L-14.pt (TorchScript), or a
                  state dict / safetensors file with "visual.*" keys.
  --openflamingo  optional: an OpenFlamingo checkpoint.pt (released file or training checkpoint).
                  Without it the trainable parts (resampler, gated blocks, <image> and
                  <|endofchunk|> rows) are freshly initialised with --seed: a new training run.
  --tokenizer     optional (default: --lm_dir if it holds a tokenizer): checked, with
                  OpenFlamingo's <|endofchunk|>, <image> and <PAD> added, against the config's
                  vocabulary size and token ids, and recorded in the checkpoint's config.

  The LM's 50432-row tables are cut to len(tokenizer) = 50280 rows, as OpenFlamingo does.
  Tensors are read one at a time: peak memory is about one copy of the converted weights.

EXPORT: a base checkpoint (and optionally a training run) -> an OpenFlamingo checkpoint.pt.

  python -m flamingo_jax.convert export --base=/ckpt/of3b-base --out=/ckpt/checkpoint.pt \\
      [--train_workdir=/runs/of3b]

  --train_workdir takes the trainable weights of that run's latest step (a sharded run restores
  onto this one host). The file has exactly the keys of the released checkpoint.pt files
  (perceiver, gated blocks, LM embedding tables), in fp32; in PyTorch:
  model.load_state_dict(torch.load(path), strict=False).

Outputs are written under a temporary name and renamed: whole or absent. On bad input (missing or
unexpected keys, shape mismatch, another variant, unreadable file) it prints one error naming the
keys or file and exits with status 1.
"""
from __future__ import annotations

import os
import sys

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "import: model config file, e.g. configs/of_9b.py "
                                          "(or configs/of_9b.py:cpu).", lock_config=True)
_LM_DIR = flags.DEFINE_string("lm_dir", None, "import: Hugging Face language-model directory.")
_CLIP = flags.DEFINE_string("clip", None, "import: open_clip ViT-L-14 'openai' weights file.")
_OF = flags.DEFINE_string("openflamingo", None, "import, optional: OpenFlamingo checkpoint.pt.")
_TOKENIZER = flags.DEFINE_string("tokenizer", None, "import, optional: tokenizer directory to check "
                                 "(default: --lm_dir when it has one).")
_SEED = flags.DEFINE_integer("seed", 0, "import: seed of freshly initialised trainable parts.")
_BASE = flags.DEFINE_string("base", None, "export: flamingo_jax base checkpoint directory.")
_WORKDIR = flags.DEFINE_string("train_workdir", None, "export, optional: training workdir whose "
                               "latest step's trainable weights to export.")
_OUT = flags.DEFINE_string("out", None, "Output: the base checkpoint directory (import, must not "
                           "exist) or the checkpoint.pt file (export).")
_NEOX_HEAD = flags.DEFINE_enum("neox_head_name", "embed_out", ["embed_out", "lm_head"],
                               "export: GPT-NeoX output-table key: embed_out (released files, "
                               "transformers 4.x) or lm_head (transformers >= 5).")

USAGE = "usage: python -m flamingo_jax.convert import|export --out=PATH ... (see --help)"


def main(argv):
  if len(argv) != 2 or argv[1] not in ("import", "export") or not _OUT.value:
    raise app.UsageError(USAGE)
  from flamingo_jax.weights import convert  # pylint: disable=g-import-not-at-top
  from flamingo_jax.weights.readers import UnreadableCheckpointError  # pylint: disable=g-import-not-at-top
  from flamingo_jax.weights.state_dict import CheckpointMismatchError  # pylint: disable=g-import-not-at-top
  try:
    if argv[1] == "import":
      _require(("config", _CONFIG.value), ("lm_dir", _LM_DIR.value), ("clip", _CLIP.value))
      convert.import_checkpoint(_CONFIG.value, _OUT.value, lm_dir=_LM_DIR.value, clip_path=_CLIP.value,
                                openflamingo_checkpoint=_OF.value, tokenizer_dir=_TOKENIZER.value,
                                seed=_SEED.value)
    else:
      _require(("base", _BASE.value))
      params = _latest_trainable(_WORKDIR.value) if _WORKDIR.value else None
      convert.export_checkpoint(_BASE.value, _OUT.value, params=params, neox_head_name=_NEOX_HEAD.value)
  except (CheckpointMismatchError, UnreadableCheckpointError, FileNotFoundError, FileExistsError,
          ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  print(f"wrote {os.path.abspath(_OUT.value)}")


def _require(*named):
  absent = [f"--{name}" for name, value in named if value is None]
  if absent:
    raise app.UsageError(f"missing {', '.join(absent)}; {USAGE}")


def _latest_trainable(workdir: str):
  """The trainable params (only those, not the optimizer state) of a training run's latest
  checkpoint, restored as numpy onto this host whatever mesh wrote them, in the layout (scanned
  or not) the run used."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  from flamingo_jax.train import checkpoint  # pylint: disable=g-import-not-at-top
  from etils import epath  # pylint: disable=g-import-not-at-top
  if not (epath.Path(workdir) / "checkpoints").is_dir():  # local or gs://
    raise FileNotFoundError(f"No training checkpoints in {workdir}")
  ckpt = checkpoint.Checkpointer(workdir, keep=1)
  step = ckpt.latest_step()
  state_dir = ckpt.directory / str(step) / "state"
  if step is None or not state_dir.is_dir():
    raise FileNotFoundError(f"No training checkpoint in {ckpt.directory}")
  state_dir = str(state_dir)
  with ocp.PyTreeCheckpointer() as checkpointer:
    stored = checkpointer.metadata(state_dir).item_metadata.tree["params"]
    item = {"params": _tree_map(lambda m: np.zeros((), m.dtype), stored)}
    args = {"params": _tree_map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), stored)}
    state = checkpointer.restore(state_dir, args=ocp.args.PyTreeRestore(
        item=item, restore_args=args, partial_restore=True))
  print(f"trainable weights of step {step} in {ckpt.directory}")
  return state["params"]


def _tree_map(fn, tree):
  return {k: _tree_map(fn, v) if isinstance(v, dict) else fn(v) for k, v in tree.items()}


if __name__ == "__main__":
  app.run(main)
