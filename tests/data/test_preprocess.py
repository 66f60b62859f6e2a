"""Per-sample preprocessing: labels, fixed-length text, MMC4 matching and text assembly, the CLIP
transform, and the synthetic shards themselves."""
import base64
import filecmp
import json
import os

import jax
import numpy as np
import pytest
import tokenizers
import transformers
from PIL import Image

from flamingo_jax.data import image_preprocess, labels, mmc4, pipeline, synthetic, tokenizer
from flamingo_jax.data.skips import Skip
from flamingo_jax.data.tar_source import TarShardSource
from flamingo_jax.data.text import TextEncoder

M, E, P = 9, 8, 7  # media, eoc, pad ids in the crafted sequences


def test_mmc4_label_masking():
  ids = np.array([[1, 2, M, 3, 4, E, 5, M, 6, E, 0, P, P]])
  # before the first image, the image tokens, text between an eoc and the next image (5), and
  # everything after the last eoc (EOS 0 and pads) are ignored; eoc tokens are trained.
  want = [-100, -100, -100, 3, 4, E, -100, -100, 6, E, -100, -100, -100]
  np.testing.assert_array_equal(labels.mmc4_labels(ids, P, M, E)[0], want)
  # No image at all: nothing is trained.
  assert np.all(labels.mmc4_labels(np.array([[1, 2, E, 0]]), P, M, E) == -100)


def test_laion_label_masking_uses_the_pad_id():
  np.testing.assert_array_equal(labels.laion_labels(np.array([M, 3, 4, E, 0, P]), P, M), [-100, 3, 4, E, 0, -100])
  # A pad id shared with EOS masks EOS too, as the reference's `labels == pad_token_id`.
  np.testing.assert_array_equal(labels.laion_labels(np.array([M, 3, E, 0, 0]), 0, M), [-100, 3, E, -100, -100])


def _bos_tokenizer(tokenizer_dir):
  """The tiny tokenizer with an OPT-style BOS post-processor."""
  base = transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
  backend = tokenizers.Tokenizer.from_str(base.backend_tokenizer.to_str())
  backend.post_processor = tokenizers.processors.TemplateProcessing(
      single="<|endoftext|> $A", special_tokens=[("<|endoftext|>", 0)])
  tok = transformers.PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>",
                                             bos_token="<|endoftext|>")
  tok.add_special_tokens({"additional_special_tokens": [tokenizer.EOC_TOKEN, tokenizer.MEDIA_TOKEN]})
  tok.add_special_tokens({"pad_token": tokenizer.PAD_TOKEN})
  return tok


@pytest.mark.parametrize("bos", [False, True])
def test_text_encoder_matches_the_tokenizer_call(tok, tokenizer_dir, bos):
  tok = _bos_tokenizer(tokenizer_dir) if bos else tok
  enc = TextEncoder(tok)
  text = "<image>two red circles on the left<|endofchunk|><image>one blue square<|endofchunk|><|endoftext|>"
  for length in (3, 8, 12, 40):
    want = tok(text, max_length=length, truncation=True, padding="max_length")
    ids, mask = enc.encode(text, length)
    np.testing.assert_array_equal(ids, want["input_ids"])
    np.testing.assert_array_equal(mask, want["attention_mask"])
  assert (enc.encode(text, 40)[0][0] == 0) == bos


def test_matching():
  sim = np.array([[0.3, 0.29], [0.31, 0.1]])
  np.testing.assert_array_equal(mmc4.match_images(sim, "argmax"), [0, 0])
  np.testing.assert_array_equal(mmc4.match_images(sim, "one_to_one"), [1, 0])
  np.testing.assert_array_equal(mmc4.match_images(np.array([[0.3, 0.1]] * 3), "one_to_one"), [0, 1, -1])
  with pytest.raises(ValueError, match="matching"):
    mmc4.match_images(sim, "hungarian")


def test_text_assembly_and_image_order():
  text = mmc4.build_text(["a", "b c", "d"], [2, 0, 2], "</s>")
  assert text == "<image>a b c<|endofchunk|><image><|endofchunk|><image>d<|endofchunk|></s>"
  # Image 1 (sentence 0) comes first; the two images of sentence 2 appear in reverse order.
  assert mmc4.token_order([2, 0, 2]) == [1, 2, 0]


def _doc(images, sim, text=("a red thing", "filler")):
  info = [{"image_base64": base64.b64encode(b).decode()} for b in images]
  return {"json": json.dumps({"text_list": list(text), "image_info": info, "similarity_matrix": sim}).encode()}


def _mmc4(record, tok, **kw):
  ids = tokenizer.special_ids(tok)
  args = dict(image_size=32, max_tokens=32, max_images=3, sim_threshold=0.24, min_images=1,
              min_image_bytes=11_000, matching="argmax", random_flip=False, media_id=ids["media"],
              eoc_id=ids["eoc"])
  return mmc4.preprocess(record, TextEncoder(tok), np.random.default_rng(0), mmc4.Settings(**{**args, **kw}))


def test_mmc4_filters(tok):
  rng = np.random.default_rng(0)
  big, small = synthetic.jpeg(synthetic.draw(rng, 64)[0]), synthetic.jpeg(synthetic.draw(rng, 32)[0], 60)
  assert len(big) >= 11_000 > len(small)
  assert _mmc4(_doc([small], [[0.3, 0.1]]), tok) == Skip("no_valid_image")
  assert _mmc4(_doc([big], [[0.2, 0.1]]), tok) == Skip("below_similarity_threshold")
  assert _mmc4(_doc([big], [[0.3]]), tok) == Skip("bad_similarity_matrix")
  assert _mmc4({"json": b"{"}, tok) == Skip("bad_json")
  assert _mmc4({"json": b'{"is_gpt": 1}'}, tok) == Skip("missing_field")
  assert _mmc4({"json": b'[1, 2]'}, tok) == Skip("bad_json")
  two = _mmc4(_doc([big, big], [[0.1, 0.3], [0.3, 0.1]]), tok)
  assert two["image_mask"].tolist() == [True, True, False]
  assert _mmc4(_doc([big, big], [[0.1, 0.3], [0.3, 0.1]]), tok, min_images=3) == Skip("too_few_images")


def _gpt_doc(example, images):
  image_map = {f"_!_IMAGE{k + 1}_!_": {"base64_image": base64.b64encode(b).decode()} for k, b in enumerate(images)}
  return {"json": json.dumps({"is_gpt": True, "example": example, "image_map": image_map}).encode()}


def test_gpt_text():
  example = "Intro. _!_IMAGE1_!_ A cat. _!_IMAGE2_!_ A dog. _!_IMAGE3_!_ A bird."
  assert mmc4.build_gpt_text(example, 3, "</s>") == (
      "Intro.<image>A cat.<|endofchunk|><image>A dog.<|endofchunk|><image>A bird.<|endofchunk|></s>",
      ["_!_IMAGE1_!_", "_!_IMAGE2_!_", "_!_IMAGE3_!_"])
  # More markers than max_images: the text stops before the third image's chunk, keeping two.
  assert mmc4.build_gpt_text(example, 2, "</s>") == (
      "Intro.<image>A cat.<|endofchunk|><image>A dog.<|endofchunk|></s>", ["_!_IMAGE1_!_", "_!_IMAGE2_!_"])


def test_gpt_documents(tok):
  rng = np.random.default_rng(1)
  pictures = [synthetic.draw(rng, 32)[0] for _ in range(3)]
  jpegs = [synthetic.jpeg(p) for p in pictures]
  # Markers out of numeric order: images follow the text, not the image_map's numbering.
  sample = _mmc4(_gpt_doc("_!_IMAGE2_!_ two. _!_IMAGE1_!_ one. _!_IMAGE3_!_ three.", jpegs), tok)
  assert sample["image_mask"].tolist() == [True, True, True]
  decoded = [image_preprocess.clip_resize(image_preprocess.decode(b), 32) for b in jpegs]
  for slot, k in enumerate([1, 0, 2]):
    np.testing.assert_array_equal(sample["images"][slot, 0], decoded[k])
  ids = tokenizer.special_ids(tok)
  assert int((sample["input_ids"] == ids["media"]).sum()) == 3
  # A single image is kept (no 50% drop on this path), even at min_images=1.
  assert not isinstance(_mmc4(_gpt_doc("_!_IMAGE1_!_ one.", jpegs[:1]), tok), Skip)
  assert _mmc4(_gpt_doc("_!_IMAGE1_!_ one. _!_IMAGE4_!_", jpegs[:1]), tok) == Skip("missing_field")
  assert _mmc4(_gpt_doc("no images at all", jpegs[:1]), tok) == Skip("too_few_images")
  assert _mmc4(_gpt_doc("_!_IMAGE1_!_ x", [b"not an image"]), tok) == Skip("undecodable_image")


def test_clip_preprocess_matches_open_clip_transform():
  from open_clip.transform import image_transform  # pylint: disable=g-import-not-at-top
  for shape in ((90, 130, 3), (130, 90, 3), (64, 64, 3), (64, 64), (90, 70)):  # 2-D: a grayscale image
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8))
    theirs = image_transform(64, is_train=False)(img).numpy().transpose(1, 2, 0)
    np.testing.assert_allclose(image_preprocess.clip_preprocess(img, 64), theirs, atol=1e-5)
    # Training's route: uint8 pixels, normalised on the device, equal to the float path.
    pixels = image_preprocess.clip_resize(img, 64)
    assert pixels.dtype == np.uint8
    on_device = np.asarray(jax.jit(image_preprocess.normalize)(pixels))
    np.testing.assert_allclose(on_device, image_preprocess.clip_preprocess(img, 64), atol=1e-6, rtol=0)


def test_hflip_mirrors_any_dtype_channels_and_layout():
  rng = np.random.default_rng(0)
  for dtype in (np.uint8, np.float32, np.int64):
    for channels in (1, 3, 4):
      x = (rng.random((2, 4, 6, channels)) * 200).astype(dtype)
      for view in (x, x[:, ::2], np.swapaxes(x, 1, 2), x[..., ::-1, :], np.asfortranarray(x)):
        got = image_preprocess.hflip(view)
        np.testing.assert_array_equal(got, view[..., ::-1, :])
        assert got.flags.c_contiguous and not np.shares_memory(got, view)


def test_synthetic_shards_are_deterministic_and_well_formed(tmp_path, shards):
  again = synthetic.write_shards(str(tmp_path), laion_shards=2, mmc4_shards=2, samples_per_shard=24, seed=0)
  for path in again["laion"] + again["mmc4"]:
    assert filecmp.cmp(path, os.path.join(shards, os.path.basename(path)), shallow=False), path
  # The held-out shards lie apart (the training globs do not match them) and share no image.
  assert all(os.path.dirname(p) == str(tmp_path / "held_out") for p in again["laion_held_out"] + again["mmc4_held_out"])
  assert not set(pipeline.expand_shards(str(tmp_path / "*.tar"))) & set(again["laion_held_out"] + again["mmc4_held_out"])
  images = lambda paths: {r["jpg"] for r in TarShardSource(paths) if "jpg" in r}
  assert not images(again["laion"]) & images(again["laion_held_out"]) and len(images(again["laion_held_out"])) == 24
  other = synthetic.write_shards(str(tmp_path / "s1"), laion_shards=1, mmc4_shards=0, samples_per_shard=4, seed=1)
  assert not filecmp.cmp(other["laion"][0], again["laion"][0], shallow=False)
  docs = [json.loads(r["json"]) for r in TarShardSource(again["mmc4"][1:])]
  sizes = [len(base64.b64decode(i["image_base64"])) for d in docs for i in d["image_info"]]
  assert sum(s >= 11_000 for s in sizes) > 0.8 * len(sizes)  # all but the deliberately small ones
  assert max(len(d["image_info"]) for d in docs) >= 3
  for d in docs:
    assert np.asarray(d["similarity_matrix"]).shape == (len(d["image_info"]), len(d["text_list"]))


def test_synthetic_captions_describe_the_picture():
  rng = np.random.default_rng(3)
  for _ in range(10):
    img, caption = synthetic.draw(rng, 64)
    count, color, _, _, _, region = caption.split()
    x = np.asarray(img).astype(int)
    hit = np.all(np.abs(x - synthetic.COLORS[color]) < 8, axis=-1)  # the named colour's pixels
    ys, xs = np.nonzero(hit)
    x0, y0, x1, y1 = (v * 64 for v in synthetic.REGIONS[region])
    assert hit.sum() > 20 * synthetic.COUNTS.index(count) + 20
    assert x0 <= xs.mean() <= x1 and y0 <= ys.mean() <= y1, caption
