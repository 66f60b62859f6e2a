"""The input pipeline: tokenizer ids, synthetic shards through Grain, determinism, exact resume,
disjoint per-process reading, bad samples skipped and counted, label masking."""
import os

import numpy as np
import pytest

from configs import tiny
from flamingo_jax.data import labels, pipeline, samples, synthetic, tokenizer
from flamingo_jax.data.tar_source import ShardError, TarShardSource


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("shards"))
  synthetic.write_shards(out, laion_shards=2, mmc4_shards=2, samples_per_shard=24, seed=0)
  return out


@pytest.fixture(scope="module")
def tok():
  return tokenizer.load_tokenizer(tiny.get_config().tokenizer_path)


def _cfg(shards, seed=0):
  c = tiny.get_config().data.copy_and_resolve_references()
  c.synthetic_dir = ""
  c.seed = seed
  c.laion.shards = os.path.join(shards, "laion-*.tar")
  c.mmc4.shards = os.path.join(shards, "mmc4-*.tar")
  c.laion.batch_size, c.mmc4.batch_size = 4, 2
  return c


def test_tokenizer_ids_follow_openflamingo_order(tok):
  cfg = tiny.get_config()
  ids = tokenizer.special_ids(tok)
  assert (ids["eoc"], ids["media"], ids["pad"]) == (cfg.model.eoc_token_id, cfg.model.media_token_id,
                                                    cfg.model.pad_token_id)
  assert len(tok) == cfg.model.lm.vocab_size and ids["eos"] == 0


def test_batches_have_the_contract_shapes(shards, tok):
  iters, counter = pipeline.make_train_iterators(_cfg(shards), tok)
  b = pipeline.first_batches(iters)[0]
  size = tiny.get_config().data.image_size
  assert b["laion"]["images"].shape == (4, 1, 1, size, size, 3)
  assert b["mmc4"]["images"].shape == (2, 3, 1, size, size, 3)
  for name, length in (("laion", 16), ("mmc4", 48)):
    for key in ("input_ids", "attention_mask", "labels"):
      assert b[name][key].shape == (b[name]["images"].shape[0], length)
      assert b[name][key].dtype == np.int32
  media = tokenizer.special_ids(tok)["media"]
  # Every <image> token has an image slot and image_mask agrees with the count.
  n_media = (b["mmc4"]["input_ids"] == media).sum(1)
  np.testing.assert_array_equal(n_media, b["mmc4"]["image_mask"].sum(1))


def test_same_seed_same_batches_whatever_the_workers(shards, tok):
  a = pipeline.first_batches(pipeline.make_train_iterators(_cfg(shards), tok)[0], 2)
  cfg = _cfg(shards)
  cfg.workers = 2
  b = pipeline.first_batches(pipeline.make_train_iterators(cfg, tok)[0], 2)
  for x, y in zip(a, b):
    for name in x:
      for key in x[name]:
        np.testing.assert_array_equal(x[name][key], y[name][key])
  c = pipeline.first_batches(pipeline.make_train_iterators(_cfg(shards, seed=1), tok)[0], 1)
  assert not np.array_equal(a[0]["laion"]["input_ids"], c[0]["laion"]["input_ids"])


def test_restored_iterator_continues_exactly(shards, tok):
  iters, _ = pipeline.make_train_iterators(_cfg(shards), tok)
  pipeline.first_batches(iters, 2)
  state = {k: it.get_state() for k, it in iters.items()}
  expected = pipeline.first_batches(iters, 2)
  fresh, _ = pipeline.make_train_iterators(_cfg(shards), tok)
  for k, it in fresh.items():
    it.set_state(state[k])
  got = pipeline.first_batches(fresh, 2)
  for x, y in zip(expected, got):
    for name in x:
      np.testing.assert_array_equal(x[name]["input_ids"], y[name]["input_ids"])
      np.testing.assert_array_equal(x[name]["images"], y[name]["images"])


def test_processes_read_disjoint_samples(shards):
  source = TarShardSource(pipeline.expand_shards(os.path.join(shards, "laion-*.tar")))
  import grain
  ds = grain.MapDataset.source(source)
  keys = [set(r["__key__"] for r in ds[i::2]) for i in range(2)]
  assert keys[0] and keys[1] and not keys[0] & keys[1]
  assert len(keys[0] | keys[1]) == len(source)


def test_bad_samples_are_skipped_and_counted(shards, tok):
  iters, counter = pipeline.make_train_iterators(_cfg(shards), tok)
  pipeline.first_batches(iters, 40)  # > one pass over every shard, broken samples included
  for reason in ("laion/undecodable_image", "laion/empty_text", "laion/missing_field",
                 "mmc4/missing_field", "mmc4/no_valid_image"):
    assert counter.counts[reason] >= 1, counter.counts


def test_unreadable_shard_is_named(tmp_path):
  bad = tmp_path / "broken.tar"
  bad.write_bytes(b"this is not a tar file at all" * 100)
  with pytest.raises(ShardError, match="broken.tar"):
    TarShardSource([str(bad)])


def test_all_bad_data_raises_instead_of_hanging(tmp_path, tok):
  out = tmp_path / "bad"
  out.mkdir()
  import tarfile, io
  with tarfile.open(out / "laion-00000.tar", "w") as t:
    for i in range(50):
      info = tarfile.TarInfo(f"s{i}.txt")
      info.size = 3
      t.addfile(info, io.BytesIO(b"abc"))
  cfg = _cfg(str(tmp_path))
  cfg.laion.shards = str(out / "laion-*.tar")
  cfg.max_skip_ratio = 0.5
  counter = pipeline.SkipCounter()
  with pytest.raises(ValueError, match="skipped"):
    next(iter(pipeline.make_dataset("laion", cfg, tok, counter)))


def test_label_masking_follows_the_reference_rules():
  M, E, P = 9, 8, 7  # media, eoc, pad
  ids = np.array([[1, 2, M, 3, 4, E, 5, M, 6, E, 0, P, P]])
  mask = (ids != P).astype(np.int32)
  got = labels.mmc4_labels(ids, mask, M, E)[0]
  # before the first image, the image tokens, text between an eoc and the next image (5),
  # and everything after the last eoc (EOS 0 and pads) are ignored; eoc tokens are trained.
  want = [-100, -100, -100, 3, 4, E, -100, -100, 6, E, -100, -100, -100]
  np.testing.assert_array_equal(got, want)
  lab = labels.laion_labels(np.array([[M, 3, 4, E, 0, P]]), np.array([[1, 1, 1, 1, 1, 0]]), M)[0]
  np.testing.assert_array_equal(lab, [-100, 3, 4, E, 0, -100])


def test_clip_preprocess_matches_open_clip_transform():
  import torch
  from PIL import Image
  from open_clip.transform import image_transform
  from flamingo_jax.data.image_preprocess import clip_preprocess
  img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (90, 130, 3), dtype=np.uint8))
  ours = clip_preprocess(img, 64)
  theirs = image_transform(64, is_train=False)(img).numpy().transpose(1, 2, 0)
  np.testing.assert_allclose(ours, theirs, atol=1e-5)
