"""The model wrapper: tokenization, class scoring (cached and not) and RICES embeddings."""
import functools
import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import torch

from flamingo_jax.evaluate import clip_features
from flamingo_jax.models.flamingo import Flamingo
from flamingo_jax.weights import state_dict as sd_lib
from oracle import reference_models as ref


def test_tokenize_left_pads_to_a_bucket(tiny_model):
  texts = ["<image>Output:", "<image>Output:a red circle<|endofchunk|>\n<image>Output:"]
  ids, mask = tiny_model.tokenize(texts)
  assert ids.shape == (2, 64)
  assert mask.sum(1).tolist() == [len(tiny_model.tok(t)["input_ids"]) for t in texts]
  assert (ids[0, :-int(mask[0].sum())] == tiny_model.pad_id).all() and mask[:, -1].all()
  assert ids[1, -1] == ids[0, -1]  # both end with "Output:"


def _rows(eval_data):
  img = lambda i: f"{eval_data['hateful_memes']['image_dir']}/{i:05d}.png"
  texts = ["<image>Output:a red circle<|endofchunk|>\n<image>Output:",
           "<image>is an image with: 'this circle is red' written on it. Is it hateful? Answer:",
           "Output:one<|endofchunk|>\nOutput:two blue squares here<|endofchunk|>\n<image>Output:"]
  return texts, [[img(0), img(1)], [img(2)], [img(3)]]


def _expected_score(model, text, paths, class_tokens, length=64, slots=2):
  """One row, one forward: mean log-prob of the class tokens after the prompt. The row is
  right-padded to a fixed shape (causal: later padding cannot change earlier logits), so one
  compiled forward serves every case."""
  row = model.tok(text)["input_ids"] + class_tokens
  ids = np.full((1, length), model.pad_id, np.int32)
  ids[0, :len(row)] = row
  mask = (np.arange(length) < len(row)).astype(np.int32)[None]
  vision = np.zeros((1, slots, 1) + model.images.load(paths[0]).shape, np.float32)
  for j, p in enumerate(paths):
    vision[0, j, 0] = model.images.load(p)
  lp = np.asarray(_forward(model.cfg.to_json())(jax.device_get(model.variables), vision, ids, mask)[0],
                  np.float64)
  m = len(class_tokens)
  return float(np.mean([lp[len(row) - m - 1 + j, t] for j, t in enumerate(class_tokens)]))


@functools.lru_cache(maxsize=1)
def _forward(cfg_json):
  model = Flamingo(ml_collections.ConfigDict(json.loads(cfg_json)))
  return jax.jit(lambda v, x, ids, mask: jax.nn.log_softmax(model.apply(v, x, ids, mask), axis=-1))


@pytest.mark.slow
def test_class_scores_are_per_row_log_likelihoods(tiny_model, eval_data):
  """Cached and uncached scoring agree with an unpadded single-row forward: padding and batch
  neighbours change nothing (the reference's cached path lets class tokens see left padding)."""
  texts, images = _rows(eval_data)
  classes = tiny_model.class_token_ids(["yes", "red circle", "no"])
  assert [len(t) for t in classes] == [2, 3, 1]
  cached = tiny_model.class_scores(texts, images, classes, use_cache=True)
  uncached = tiny_model.class_scores(texts, images, classes, use_cache=False)
  assert cached.shape == (3, 3)
  np.testing.assert_allclose(cached, uncached, atol=2e-4)
  for i in range(3):
    for c, toks in enumerate(classes):
      assert cached[i, c] == pytest.approx(_expected_score(tiny_model, texts[i], images[i], toks), abs=2e-4)


def test_rices_embedding_is_open_clip_encode_image():
  """Our vision tower's ln_post + proj on the class token equals open_clip's encode_image."""
  torch_model = ref.build_reference("mpt")
  cfg = ref.jax_config("mpt")
  variables = sd_lib.flamingo_to_flax(ref.state_dict_numpy(torch_model), cfg)
  images = np.random.default_rng(0).normal(size=(3, ref.IMAGE_SIZE, ref.IMAGE_SIZE, 3)).astype(np.float32)
  ours = np.asarray(clip_features.image_embeddings(cfg, variables, jnp.asarray(images)))
  with torch.no_grad():
    theirs = torch_model.vision_encoder(torch.from_numpy(images.transpose(0, 3, 1, 2)))[0]
    theirs = (theirs / theirs.norm(dim=-1, keepdim=True)).numpy()
  assert ours.shape == (3, cfg.vision.embed_dim)
  np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_rices_feature_cache(tmp_path):
  calls = []
  compute = lambda: calls.append(1) or np.ones((4, 3), np.float32)
  first = clip_features.load_or_compute(str(tmp_path), "coco", 4, compute)
  again = clip_features.load_or_compute(str(tmp_path), "coco", 4, compute)
  assert len(calls) == 1 and (first == again).all() and (tmp_path / "coco.npy").exists()
  with pytest.raises(ValueError, match="stale"):
    clip_features.load_or_compute(str(tmp_path), "coco", 5, compute)
  torch.save(torch.full((2, 3), 0.5), tmp_path / "vqav2.pkl")  # the reference's cache format
  assert (clip_features.load_or_compute(str(tmp_path), "vqav2", 2, compute) == 0.5).all()


def test_embed_images_matches_direct_embedding(tiny_model, eval_data):
  paths = [f"{eval_data['hateful_memes']['image_dir']}/{i:05d}.png" for i in range(3)]
  emb = tiny_model.embed_images(paths, batch_size=2)
  direct = clip_features.image_embeddings(tiny_model.cfg, jax.device_get(tiny_model.variables),
                                          jnp.stack([tiny_model.images.load(p) for p in paths]))
  np.testing.assert_allclose(emb, np.asarray(direct), atol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(emb, axis=-1), 1.0, atol=1e-5)


def test_decoded_text_gets_the_reference_era_space_clean_up():
  from flamingo_jax.evaluate.inference import clean_up_spaces
  assert clean_up_spaces("a dog , yes . it 's here ? do n't") == "a dog, yes. it's here? don't"
