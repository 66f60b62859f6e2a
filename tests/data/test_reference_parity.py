"""Parity with OpenFlamingo's own preprocessing (open_flamingo/train/data.py) and label masking
(the training loop in train_utils.py), run on the same synthetic samples with the same tokenizer.

Randomness is controlled, not disabled: the reference's flip (torch) and single-image drop
(`random`) are seeded, their draws read back, and the same values fed to our functions.
"""
import io
import json
import os
import random
import types

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("webdataset")  # the reference's data.py imports it
open_flamingo = pytest.importorskip("open_flamingo")
from open_clip.transform import image_transform  # pylint: disable=g-import-not-at-top
from PIL import Image  # pylint: disable=g-import-not-at-top

from flamingo_jax.data import image_preprocess, laion, mmc4, tokenizer  # pylint: disable=g-import-not-at-top
from flamingo_jax.data.skips import Skip  # pylint: disable=g-import-not-at-top
from flamingo_jax.data.tar_source import TarShardSource  # pylint: disable=g-import-not-at-top
from flamingo_jax.data.text import TextEncoder  # pylint: disable=g-import-not-at-top
from oracle import reference_train_code  # pylint: disable=g-import-not-at-top

SIZE, LAION_LEN, MAX_IMAGES = 64, 16, 3


@pytest.fixture(scope="module")
def ref():
  """The reference's train/data.py and train_utils.py as modules."""
  return reference_train_code.load()


@pytest.fixture(scope="module")
def ref_tok(tokenizer_dir):
  return reference_train_code.V4Tokenizer(tokenizer.load_tokenizer(tokenizer_dir))


class _Scripted:
  """Stands in for our numpy Generator: returns the reference's own draws, in our order."""

  def __init__(self, *values):
    self._values = list(values)

  def random(self):
    return self._values.pop(0)


def _records(shards, kind, n):
  source = TarShardSource([os.path.join(shards, f"{kind}-00001.tar")])  # shard 0 has broken samples
  return [source[i] for i in range(n)]


def _reference_labels(ref, tok, laion_batch, mmc4_batch):
  """Runs one step of the reference's training loop with a model that records its labels."""
  seen = []

  class Recorder(torch.nn.Module):
    def __init__(self):
      super().__init__()
      self.w = torch.nn.Parameter(torch.zeros(()))

    def forward(self, vision_x, lang_x, attention_mask, labels):
      seen.append(labels.clone().numpy())
      return (self.w * 0.0,)

  model = Recorder()
  opt = torch.optim.SGD(model.parameters(), lr=0.0)
  args = types.SimpleNamespace(precision="fp32", fsdp=False, num_epochs=1, rank=0, gradient_accumulation_steps=1,
                               loss_multiplier_laion=1.0, loss_multiplier_mmc4=1.0, freeze_lm_embeddings=True,
                               report_to_wandb=False, logging_steps=1000)

  class Loader(list):
    num_batches = 1

  ref.train_utils.train_one_epoch(args, model, 0, Loader([laion_batch]), Loader([mmc4_batch]), tok, opt,
                                  torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0), "cpu", None)
  return seen


def test_laion_matches_reference(ref, ref_tok, tok, shards):
  records = _records(shards, "laion", 8)
  transform = image_transform(SIZE, is_train=False)
  pil = [Image.open(io.BytesIO(r["jpg"])).convert("RGB") for r in records]
  captions = [r["txt"].decode("utf-8") for r in records]
  ids, mask = ref.data.preprocess_laion_text(captions, ref_tok, max_tokens=LAION_LEN)
  encoder, media = TextEncoder(tok), tokenizer.special_ids(tok)["media"]
  ours = [laion.preprocess(r, encoder, laion.Settings(image_size=SIZE, max_tokens=LAION_LEN, media_id=media))
          for r in records]
  batch = {k: np.stack([o[k] for o in ours]) for k in ours[0]}
  width = ids.shape[1]  # the reference pads to the longest caption, we to max_tokens
  np.testing.assert_array_equal(batch["input_ids"][:, :width], ids.numpy())
  np.testing.assert_array_equal(batch["attention_mask"][:, :width], mask.numpy())
  assert np.all(batch["input_ids"][:, width:] == tok.pad_token_id)
  for seed in range(6):  # both outcomes of the one flip per batch
    torch.manual_seed(seed)
    flip = float(torch.rand(1))
    torch.manual_seed(seed)
    ref_images = ref.data.preprocess_image(pil, transform).numpy().transpose(0, 2, 3, 1)
    got = image_preprocess.normalize(laion.flip_batch(batch, _Scripted(flip))["images"][:, 0, 0])
    np.testing.assert_allclose(got, ref_images, atol=1e-5)
  mmc4_dummy = (torch.zeros(1, 1, 3, SIZE, SIZE), [(ids[:1], mask[:1])])
  ref_labels = _reference_labels(ref, ref_tok, (torch.zeros(len(records), 3, SIZE, SIZE), (ids, mask)), mmc4_dummy)[0]
  np.testing.assert_array_equal(batch["labels"][:, :width], ref_labels)
  assert np.all(batch["labels"][:, width:] == -100)


def _ours_mmc4(record, tok, flip_u, drop_u, max_tokens):
  ids = tokenizer.special_ids(tok)
  return mmc4.preprocess(record, TextEncoder(tok), _Scripted(flip_u, drop_u), mmc4.Settings(
      image_size=SIZE, max_tokens=max_tokens, max_images=MAX_IMAGES, sim_threshold=0.24, min_images=1,
      min_image_bytes=11_000, matching="argmax", random_flip=True, media_id=ids["media"], eoc_id=ids["eoc"]))


@pytest.mark.parametrize("max_tokens", [48, 14])  # 14: most documents lose text and images
def test_mmc4_matches_reference(ref, ref_tok, tok, shards, max_tokens):
  transform = image_transform(SIZE, is_train=False)
  kept, skipped, reordered = [], 0, 0
  for i, record in enumerate(_records(shards, "mmc4", 24)):
    torch.manual_seed(i)
    flip_u = float(torch.rand(1))
    random.seed(i)
    drop_u = random.random()
    torch.manual_seed(i)
    random.seed(i)
    try:
      ref_images, (ref_ids, ref_mask) = ref.data.preprocess_interleaved(
          (record["json"],), ref_tok, transform, sim_threshold=0.24, min_num_images=1,
          max_num_images=MAX_IMAGES, max_tokens=max_tokens)
    except ValueError:
      assert isinstance(_ours_mmc4(record, tok, flip_u, drop_u, max_tokens), Skip)
      skipped += 1
      continue
    ours = _ours_mmc4(record, tok, flip_u, drop_u, max_tokens)
    assert not isinstance(ours, Skip), ours
    np.testing.assert_array_equal(ours["input_ids"], ref_ids[0].numpy())
    np.testing.assert_array_equal(ours["attention_mask"], ref_mask[0].numpy())
    # Same pictures; ours in <image> order, the reference's in image-index order.
    doc = json.loads(record["json"])
    _, sentence_ixs = mmc4.select_images(doc["text_list"], doc["image_info"],
                                         np.asarray(doc["similarity_matrix"]), sim_threshold=0.24,
                                         max_images=MAX_IMAGES, min_image_bytes=11_000, matching="argmax")
    order = mmc4.token_order(sentence_ixs)[:int(ours["image_mask"].sum())]
    reordered += order != sorted(order)
    ref_hwc = ref_images.numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(image_preprocess.normalize(ours["images"][:len(order), 0]), ref_hwc[order],
                               atol=1e-5)
    kept.append((ours, ref_ids, ref_mask))
  print(f"kept {len(kept)}, skipped {skipped}, reordered {reordered}")
  assert kept and skipped and reordered, (len(kept), skipped, reordered)
  mmc4_batch = (torch.zeros(len(kept), MAX_IMAGES, 3, SIZE, SIZE), [(i, m) for _, i, m in kept])
  laion_dummy = (torch.zeros(1, 3, SIZE, SIZE), (kept[0][1], kept[0][2]))
  ref_labels = _reference_labels(ref, ref_tok, laion_dummy, mmc4_batch)[1]
  np.testing.assert_array_equal(np.stack([o["labels"] for o, _, _ in kept]), ref_labels)


def _gpt_records(shards, n_docs):
  """ChatGPT-format documents (spec 4.2) built from the synthetic MMC4 shard's pictures, with 1 to
  MAX_IMAGES images whose markers appear in order (the reference's image order)."""
  pictures = [info["image_base64"] for r in _records(shards, "mmc4", 24) if "json" in r
              for info in json.loads(r["json"]).get("image_info", []) if "image_base64" in info]
  rng = random.Random(0)
  records = []
  for d in range(n_docs):
    n = 1 + d % MAX_IMAGES
    words = ["a", "red", "circle", "on", "the", "left", "two", "blue", "squares"]
    intro = " ".join(rng.choices(words, k=12 if d % 2 else 0))  # long: no image within 10 tokens
    example = intro + "".join(f"{' '.join(rng.choices(words, k=rng.randint(0, 6)))} _!_IMAGE{k + 1}_!_ "
                              for k in range(n)) + " ".join(rng.choices(words, k=4))
    image_map = {f"_!_IMAGE{k + 1}_!_": {"base64_image": rng.choice(pictures)} for k in range(n)}
    records.append({"json": json.dumps({"is_gpt": True, "example": example, "image_map": image_map}).encode()})
  return records


@pytest.mark.parametrize("max_tokens", [48, 10])
def test_chatgpt_sequences_match_reference(ref, ref_tok, tok, shards, max_tokens):
  size = 224  # the reference zero-pads these documents' images at a hard-coded 224 pixels
  transform = image_transform(size, is_train=False)
  ids = tokenizer.special_ids(tok)
  kept = skipped = 0
  for i, record in enumerate(_gpt_records(shards, 6)):
    torch.manual_seed(i)
    flip_u = float(torch.rand(1))
    torch.manual_seed(i)
    ours = mmc4.preprocess(record, TextEncoder(tok), _Scripted(flip_u), mmc4.Settings(
        image_size=size, max_tokens=max_tokens, max_images=MAX_IMAGES, sim_threshold=0.24, min_images=1,
        min_image_bytes=11_000, matching="argmax", random_flip=True, media_id=ids["media"], eoc_id=ids["eoc"]))
    try:
      ref_images, (ref_ids, ref_mask) = ref.data.preprocess_interleaved(
          (record["json"],), ref_tok, transform, sim_threshold=0.24, min_num_images=1,
          max_num_images=MAX_IMAGES, max_tokens=max_tokens)
    except ValueError:
      assert isinstance(ours, Skip)
      skipped += 1
      continue
    assert not isinstance(ours, Skip), ours
    np.testing.assert_array_equal(ours["input_ids"], ref_ids[0].numpy())
    np.testing.assert_array_equal(ours["attention_mask"], ref_mask[0].numpy())
    shown = int(ours["image_mask"].sum())
    np.testing.assert_allclose(image_preprocess.normalize(ours["images"][:shown, 0]),
                               ref_images[:shown].numpy().transpose(0, 2, 3, 1), atol=1e-5)
    assert not ours["images"][shown:].any()
    kept += 1
  print(f"kept {kept}, skipped {skipped}")
  assert kept and (skipped or max_tokens > 20)
