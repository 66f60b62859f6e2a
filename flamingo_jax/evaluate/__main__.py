"""Evaluates a Flamingo base checkpoint on OpenFlamingo's benchmarks.

  python -m flamingo_jax.evaluate --checkpoint=/ckpt/of3b-base --task=coco --shots=0,4,8,16,32 \
      --eval_config=configs/eval_common.py:root=/data --eval_config.trial_seeds=42,43,44

Tasks: coco, flickr30, vqav2, ok_vqa, vizwiz, textvqa, hateful_memes, imagenet. Writes
results.json, results.md and results.png (beside the published OpenFlamingo numbers of the same
model) and per-trial predictions into --out_dir. `--random_init` evaluates random weights of
--config (checks the plumbing; the numbers mean nothing).
"""
from __future__ import annotations

import json
import os

from absl import app, flags, logging
import ml_collections
from ml_collections import config_flags

import configs
from flamingo_jax import runtime

_EVAL_CONFIG = config_flags.DEFINE_config_file(
    "eval_config", os.path.join(os.path.dirname(configs.__file__), "eval_common.py"),
    "Evaluation settings and dataset paths (file.py[:root=/data]).", lock_config=True)
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Model config file; default: the one stored in the checkpoint.", lock_config=True)
_CHECKPOINT = flags.DEFINE_string("checkpoint", None,
                                  "Base checkpoint dir (python -m flamingo_jax.convert import).")
_RANDOM_INIT = flags.DEFINE_bool("random_init", False,
                                 "Random weights from --config instead of a checkpoint.")
_TASK = flags.DEFINE_list("task", None, "Tasks to evaluate, comma separated.")
_SHOTS = flags.DEFINE_list("shots", ["0", "4", "8", "16", "32"], "Shot counts, comma separated.")
_OUT_DIR = flags.DEFINE_string("out_dir", "eval_results", "Where results and predictions go.")
_TOKENIZER = flags.DEFINE_string("tokenizer", None, "Tokenizer dir (default: the config's).")
_MODEL_NAME = flags.DEFINE_string("model_name", None, "Published-results key to compare with "
                                  "(of_3b, of_3b_instruct, of_4b, of_4b_instruct, of_9b); guessed if unset.")
flags.mark_flags_as_required(["task"])


def _model_config():
  """The model config: --config, else the one stored in the checkpoint (read without JAX)."""
  if _RANDOM_INIT.value and _CONFIG.value is None:
    raise app.UsageError("--random_init needs --config")
  if not _RANDOM_INIT.value and not _CHECKPOINT.value:
    raise app.UsageError("--checkpoint is required (or --random_init with --config)")
  if _CONFIG.value is not None:
    return _CONFIG.value
  path = os.path.join(_CHECKPOINT.value, "config.json")
  if not os.path.exists(path):
    raise app.UsageError(f"Not a flamingo_jax base checkpoint (no config.json): {_CHECKPOINT.value}")
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def _variables(cfg):
  import jax  # pylint: disable=g-import-not-at-top
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  if _RANDOM_INIT.value:
    from flamingo_jax.models import shapes  # pylint: disable=g-import-not-at-top
    init = jax.jit(lambda rng: nn.unbox(shapes.init_variables(cfg.model, rng)))
    return init(jax.random.PRNGKey(cfg.seed))
  from flamingo_jax.weights import orbax_io  # pylint: disable=g-import-not-at-top
  stored, variables = orbax_io.load_base_checkpoint(_CHECKPOINT.value)
  if bool(cfg.model.scan_layers) != bool(stored.model.scan_layers):
    raise app.UsageError("--config and the checkpoint disagree on model.scan_layers; set "
                         f"--config.model.scan_layers={stored.model.scan_layers}")
  return variables


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  cfg = _model_config()
  runtime.start(cfg.backend)
  from flamingo_jax.evaluate import runner  # pylint: disable=g-import-not-at-top
  config_path = config_flags.get_config_filename(flags.FLAGS["config"]) if _CONFIG.value else None
  model_name = _MODEL_NAME.value or runner.guess_model_name(cfg, config_path)
  model = runner.load_model(cfg, _variables(cfg), _EVAL_CONFIG.value, _TOKENIZER.value)
  _, paths = runner.run(model, _EVAL_CONFIG.value, _TASK.value, runner.parse_ints(",".join(_SHOTS.value)),
                        _OUT_DIR.value, model_name)
  for kind, path in paths.items():
    print(f"{kind}: {path}")
  if "md" in paths:
    with open(paths["md"]) as f:
      print(f.read())


if __name__ == "__main__":
  app.run(main)
