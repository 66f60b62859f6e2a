"""Evaluates a Flamingo base checkpoint or training run on OpenFlamingo's benchmarks.

  python -m flamingo_jax.evaluate --checkpoint=/ckpt/of3b-base --task=coco --shots=0,4,8,16,32 \
      --eval_config=configs/eval_common.py:root=/data --eval_config.trial_seeds=42,43,44
  python -m flamingo_jax.evaluate --checkpoint=runs/tiny [--step=1000] --task=coco ...

--checkpoint may be local or gs://; a training workdir gives its latest step (or --step).

Tasks: coco, flickr30, vqav2, ok_vqa, vizwiz, textvqa, hateful_memes, imagenet. Writes
results.json, results.md and results.png (beside the published OpenFlamingo numbers of the same
model) and per-trial predictions into --out_dir. `--random_init` evaluates random weights of
--config (checks the plumbing; the numbers mean nothing).
"""
from __future__ import annotations

import os

from flamingo_jax import cli  # first: its quiet start precedes the libraries' imports
from absl import app, flags
from ml_collections import config_flags

import configs
from flamingo_jax import paths, runtime

_EVAL_CONFIG = config_flags.DEFINE_config_file(
    "eval_config", os.path.join(os.path.dirname(configs.__file__), "eval_common.py"),
    "Evaluation settings and dataset paths (file.py[:root=/data]).", lock_config=True)
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file; default: the one stored in the checkpoint (whose model it must "
    "describe; it may change backend, mesh, dtypes, layout).", lock_config=True)
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Base checkpoint dir (python -m flamingo_jax.convert "
                                  "import) or training workdir (python -m flamingo_jax.train).")
_STEP = flags.DEFINE_integer("step", None, "With a training workdir: the step to evaluate (default: latest).")
_RANDOM_INIT = flags.DEFINE_bool("random_init", False,
                                 "Random weights from --config instead of a checkpoint.")
_TASK = flags.DEFINE_list("task", None, "Tasks to evaluate, comma separated.")
_SHOTS = flags.DEFINE_list("shots", ["0", "4", "8", "16", "32"], "Shot counts, comma separated.")
_OUT_DIR = flags.DEFINE_string("out_dir", "eval_results", "Where results and predictions go.")
_TOKENIZER = flags.DEFINE_string("tokenizer", None, "Tokenizer dir (default: the config's).")
_MODEL_NAME = flags.DEFINE_string("model_name", None, "Published-results key to compare with "
                                  "(of_3b, of_3b_instruct, of_4b, of_4b_instruct, of_9b); guessed if unset.")
flags.mark_flags_as_required(["task"])


def main(argv):
  del argv
  if _RANDOM_INIT.value and _CONFIG.value is None:
    raise app.UsageError("--random_init needs --config")
  if not _RANDOM_INIT.value and not _CHECKPOINT.value:
    raise app.UsageError("--checkpoint is required (or --random_init with --config)")
  from flamingo_jax.evaluate import runner  # pylint: disable=g-import-not-at-top
  from flamingo_jax.weights import load  # pylint: disable=g-import-not-at-top
  try:
    shots = runner.parse_ints(",".join(_SHOTS.value))
  except ValueError:
    raise app.UsageError(f"--shots={','.join(_SHOTS.value)}: expected whole numbers, e.g. 0,4,8") from None
  runner.check_request(_TASK.value, shots)
  cfg = _CONFIG.value
  if not _RANDOM_INIT.value:
    try:  # read without JAX, so that the backend can be chosen first
      cfg = load.effective_config(load.stored_config(_CHECKPOINT.value)[0], cfg)
    except (FileNotFoundError, ValueError) as e:
      raise app.UsageError(str(e)) from e
  runtime.start(cfg.backend)
  from flamingo_jax.evaluate.inference import EvalModel  # pylint: disable=g-import-not-at-top
  config_path = config_flags.get_config_filename(flags.FLAGS["config"]) if _CONFIG.value else None
  model_name = _MODEL_NAME.value or runner.guess_model_name(cfg, config_path)
  loaded = load.load_model(_CHECKPOINT.value, config=_CONFIG.value, step=_STEP.value,
                           tokenizer_path=_TOKENIZER.value, random_init=_RANDOM_INIT.value)
  print(f"Evaluating {loaded.source}", flush=True)
  model = EvalModel.from_loaded(loaded, _EVAL_CONFIG.value)
  _, written = runner.run(model, _EVAL_CONFIG.value, _TASK.value, shots,
                        _OUT_DIR.value, model_name)
  for kind, path in written.items():
    print(f"{kind}: {path}")
  if "md" in written:
    print(paths.read_text(written["md"]))


if __name__ == "__main__":
  cli.run(main)
