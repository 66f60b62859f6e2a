"""Datasets are records of the config (data.mixture, data/kinds.py): a mixture of three datasets
(LAION pairs, MMC4 documents, a second source of pairs with its own weight) trains, logs, saves
and resumes exactly; MMC4 alone trains without any LAION; a released config's mixture is
OpenFlamingo's."""
import importlib.util
import os

import numpy as np
import pytest

from configs import of_3b
from flamingo_jax import config_check
from flamingo_jax.data import batch as batch_lib, kinds, pipeline, tokenizer
from flamingo_jax.train import loop
from tests.train.test_train import REPO, _cfg


def _three(shards, **train):
  cfg = _cfg(shards, **train)
  cfg.data.mine = kinds.dataset("pairs", shards=os.path.join(shards, "laion-*.tar"), batch_size=8, max_tokens=12,
                                loss_weight=0.5, validation_shards=os.path.join(shards, "held_out", "laion-*.tar"))
  cfg.data.mixture = "laion,mmc4,mine"
  return cfg


@pytest.mark.slow
def test_a_three_dataset_mixture_trains_saves_and_resumes_exactly(shards, tmp_path, capfd):
  straight = loop.train_and_evaluate(_three(shards, num_steps=4, validate_every=4, validation_batches=1),
                                     str(tmp_path / "straight"))
  out = capfd.readouterr().out
  for h in straight.history:  # the loss weighs each dataset by its own loss_weight
    assert h["loss"] == pytest.approx(0.2 * h["loss_laion"] + 1.0 * h["loss_mmc4"] + 0.5 * h["loss_mine"], rel=1e-6)
  h = straight.history[-1]
  assert (f"loss {h['loss']:.4f}  laion {h['loss_laion']:.4f}  mmc4 {h['loss_mmc4']:.4f}  mine "
          f"{h['loss_mine']:.4f}  mean tanh") in out
  assert {"val/loss_laion", "val/loss_mmc4", "val/loss_mine", "val/loss"} <= set(straight.validated[-1])
  assert "laion" in out.split("held-out caption loss")[0]  # the image check reads the first pairs: LAION
  # Its own seed (data.seed + its place in the mixture): the same shards as LAION, another order.
  cfg = _three(shards)
  tok = tokenizer.load_tokenizer(cfg.tokenizer_path)
  iters, _ = pipeline.make_train_iterators(cfg.data, tok)
  assert list(iters) == ["laion", "mmc4", "mine"]
  assert not np.array_equal(next(iters["laion"])["input_ids"][:8, :12], next(iters["mine"])["input_ids"])
  # Saved with its own data position, and resumed exactly.
  interrupted = _three(shards, num_steps=2, validate_every=4, validation_batches=1)
  interrupted.checkpoint.every_steps = 2
  loop.train_and_evaluate(interrupted, str(tmp_path / "resumed"))
  assert os.path.isdir(tmp_path / "resumed" / "checkpoints" / "2" / "data_mine")
  resumed = loop.train_and_evaluate(_three(shards, num_steps=4, validate_every=4, validation_batches=1),
                                    str(tmp_path / "resumed"))
  np.testing.assert_array_equal([h["loss"] for h in resumed.history], [h["loss"] for h in straight.history[2:]])
  assert resumed.validated == straight.validated


@pytest.mark.slow
def test_mmc4_alone(shards, tmp_path, capfd):
  cfg = _cfg(shards, num_steps=2, validate_every=2, validation_batches=1)
  cfg.data.mixture = "mmc4"
  result = loop.train_and_evaluate(cfg, str(tmp_path))
  out = capfd.readouterr().out
  assert all(h["loss"] == h["loss_mmc4"] and "loss_laion" not in h for h in result.history)
  assert "laion" not in out and result.final == {}  # no pairs: no real-vs-blank-image check
  assert [n for n in os.listdir(tmp_path / "checkpoints" / "2") if n.startswith("data_")] == ["data_mmc4"]


def test_the_released_mixture_the_docs_own_pairs_and_a_mixture_s_mistakes(tmp_path):
  data = of_3b.get_config("cpu").data
  assert batch_lib.mixture(data) == ("laion", "mmc4")  # OpenFlamingo's: LAION pairs, MMC4 documents
  assert batch_lib.loss_weights(data) == {"laion": 0.2, "mmc4": 1.0}
  assert (data.laion.kind, data.laion.batch_size, data.mmc4.kind, data.mmc4.batch_size) == ("pairs", 64, "documents", 32)
  # docs/data.md's config file that adds one's own pairs to a released config, as written there.
  docs = open(os.path.join(REPO, "docs", "data.md")).read()
  (tmp_path / "my_of_3b.py").write_text(docs.split("```python\n")[1].split("```")[0])
  spec = importlib.util.spec_from_file_location("my_of_3b", tmp_path / "my_of_3b.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  mine = module.get_config("tpu")
  assert batch_lib.loss_weights(mine.data) == {"laion": 0.2, "mmc4": 1.0, "my_pairs": 0.5}
  assert config_check.problems(mine) == [] and batch_lib.image_slots("my_pairs", mine.data) == 1
  cfg = _cfg(os.path.join(REPO, "nowhere"))
  cfg.data.mixture = "laion,obelics,laion"
  cfg.data.mmc4.kind = "videos"
  found = config_check.problems(cfg)
  assert found[:2] == ["data.mixture='laion,obelics,laion' names a dataset twice",
                       "data.mixture names 'obelics', but the config has no dataset block data.obelics "
                       "(flamingo_jax.data.kinds.dataset(kind, ...))"], found
  cfg.data.mixture = "mmc4"
  assert config_check.problems(cfg)[0] == "data.mmc4.kind='videos': expected one of pairs, documents"
  with pytest.raises(ValueError, match="a pairs dataset has no field 'max_images'"):
    kinds.dataset("pairs", max_images=3)
