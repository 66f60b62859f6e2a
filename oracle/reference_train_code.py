"""open_flamingo's training code (train/data.py, train/train_utils.py) as importable modules, and
the tokenizer shim it needs under transformers 5: for the data parity tests and the data
throughput benchmark."""
from __future__ import annotations

import importlib.util
import os
import sys
import types


def _load(name: str, path: str):
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  sys.modules[name] = module
  spec.loader.exec_module(module)
  return module


def load() -> types.SimpleNamespace:
  """The reference's `data` and `train_utils` modules (loaded from the installed open_flamingo)."""
  import open_flamingo  # pylint: disable=g-import-not-at-top
  train_dir = os.path.join(os.path.dirname(open_flamingo.__file__), "train")
  sys.modules.setdefault("wandb", types.ModuleType("wandb"))  # imported, used only when logging to W&B
  _load("data_utils", os.path.join(train_dir, "data_utils.py"))  # data.py star-imports it by name
  return types.SimpleNamespace(data=_load("of_train_data", os.path.join(train_dir, "data.py")),
                               train_utils=_load("of_train_utils", os.path.join(train_dir, "train_utils.py")))


class V4Tokenizer:
  """The reference reads `additional_special_tokens(_ids)`, which transformers 5 renamed."""

  def __init__(self, tok):
    object.__setattr__(self, "_tok", tok)

  def __getattr__(self, name):
    return getattr(self._tok, name)

  def __setattr__(self, name, value):
    setattr(self._tok, name, value)

  def __call__(self, *args, **kwargs):
    return self._tok(*args, **kwargs)

  @property
  def additional_special_tokens(self):
    return list(self._tok.extra_special_tokens)

  @property
  def additional_special_tokens_ids(self):
    return self._tok.convert_tokens_to_ids(self.additional_special_tokens)
