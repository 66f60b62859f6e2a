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
      [--train_workdir=/runs/of3b] [--step=N]
  python -m flamingo_jax.convert export --train_workdir=runs/tiny --out=runs/tiny/checkpoint.pt
  python -m flamingo_jax.convert export --train_workdir=runs/tiny --out=runs/tiny/checkpoint.safetensors

  --train_workdir takes the trainable weights of that run's latest step or --step (a sharded run
  restores onto this one host); without --base, the embedding tables come from what the run
  started from (its base checkpoint or seeded initialisation, recorded in the workdir). The file has exactly the keys of the released checkpoint.pt files
  (perceiver, gated blocks, LM embedding tables), in fp32; in PyTorch:
  model.load_state_dict(torch.load(path), strict=False). A checkpoint.pt needs PyTorch here
  (pip install -e '.[pytorch]'); --format=safetensors (or an --out ending in .safetensors) needs
  none and holds the same state dict: safetensors.torch.load_file(path).

Outputs are written under a temporary name and renamed: whole or absent. On bad input (missing or
unexpected keys, shape mismatch, another variant, unreadable file) it prints one error naming the
keys or file and exits with status 1.
"""
from __future__ import annotations

import os

from flamingo_jax import cli  # first: its quiet start precedes the libraries' imports
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
_BASE = flags.DEFINE_string("base", None, "export: flamingo_jax base checkpoint directory (or a "
                            "training workdir).")
_WORKDIR = flags.DEFINE_string("train_workdir", None, "export: training workdir whose trainable "
                               "weights to export (latest step, or --step); alone, its frozen "
                               "tables come from the run's own base checkpoint or seed.")
_STEP = flags.DEFINE_integer("step", None, "export: the training step (default: the latest).")
_OUT = flags.DEFINE_string("out", None, "Output: the base checkpoint directory (import, must not "
                           "exist) or the checkpoint.pt file (export).")
_FORMAT = flags.DEFINE_enum("format", None, ["pt", "safetensors"],
                            "export: pt (torch.save, needs PyTorch: pip install -e '.[pytorch]') or "
                            "safetensors (needs no PyTorch; safetensors.torch.load_file reads it). "
                            "Default: safetensors for a .safetensors --out, else pt.")
_NEOX_HEAD = flags.DEFINE_enum("neox_head_name", "embed_out", ["embed_out", "lm_head"],
                               "export: GPT-NeoX output-table key: embed_out (released files, "
                               "transformers 4.x) or lm_head (transformers >= 5).")

USAGE = "usage: python -m flamingo_jax.convert import|export --out=PATH ... (see --help)"


def main(argv):
  if len(argv) != 2 or argv[1] not in ("import", "export") or not _OUT.value:
    raise app.UsageError(USAGE)
  from flamingo_jax.weights import convert  # pylint: disable=g-import-not-at-top
  if argv[1] == "import":
    _require(("config", _CONFIG.value), ("lm_dir", _LM_DIR.value), ("clip", _CLIP.value))
    convert.import_checkpoint(_CONFIG.value, _OUT.value, lm_dir=_LM_DIR.value, clip_path=_CLIP.value,
                              openflamingo_checkpoint=_OF.value, tokenizer_dir=_TOKENIZER.value,
                              seed=_SEED.value)
  else:
    if _BASE.value is None and _WORKDIR.value is None:
      raise app.UsageError(f"missing --base or --train_workdir; {USAGE}")
    fmt = convert.export_format(_OUT.value, _FORMAT.value)
    _check_export_target(_OUT.value, fmt)
    what = convert.export_checkpoint(_BASE.value or _WORKDIR.value, _OUT.value,
                                     train_workdir=_WORKDIR.value if _BASE.value else None,
                                     step=_STEP.value, neox_head_name=_NEOX_HEAD.value, fmt=fmt)
    print(f"exported {what}")
  print(f"wrote {os.path.abspath(_OUT.value)}")


def _check_export_target(out: str, fmt: str) -> None:
  """Before any work: PyTorch for a checkpoint.pt, and a directory `out` can be written in."""
  if fmt == "pt" and not _has_torch():
    raise cli.UsageError("--format=pt (a checkpoint.pt) needs PyTorch: pip install -e '.[pytorch]'; "
                         "or --format=safetensors, which needs none")
  directory = os.path.dirname(os.path.abspath(out))
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"--out={out}: no such directory {directory}")
  if not os.access(directory, os.W_OK):
    raise PermissionError(f"--out={out}: cannot write in {directory}")
  if os.path.isdir(out):
    raise IsADirectoryError(f"--out={out} is a directory; give a file name, e.g. {out}/checkpoint.pt")


def _has_torch() -> bool:
  try:
    import torch  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    return False
  return True


def _require(*named):
  absent = [f"--{name}" for name, value in named if value is None]
  if absent:
    raise app.UsageError(f"missing {', '.join(absent)}; {USAGE}")


if __name__ == "__main__":
  cli.run(main)
