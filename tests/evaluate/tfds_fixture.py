"""The fixture COCO and ImageNet datasets prepared as real TFDS datasets (`coco_captions/2014`,
`imagenet2012`) by TFDS's own builders and writer: only the source of the examples is replaced
(the fixture files instead of the downloads), so the records, features and layout on disk are
what `tfds build` writes."""
from __future__ import annotations

import json
import os

import tensorflow_datasets as tfds


class _CocoCaptionsFromFixture(tfds.builder_cls("coco_captions"), skip_registration=True):
  name = "coco_captions"

  def __init__(self, karpathy_json: str, image_dirs: dict, **kw):
    self._karpathy, self._image_dirs = karpathy_json, image_dirs
    super().__init__(config="2014", **kw)

  def _split_generators(self, dl_manager):
    with open(self._karpathy) as f:
      entries = json.load(f)["images"]
    # Stored in reverse so the reader's restoring of the Karpathy order is put to the test.
    entries = entries[::-1]
    return {split: self._examples([e for e in entries if e["split"] == split])
            for split in sorted({e["split"] for e in entries})}

  def _examples(self, entries):
    for e in entries:
      yield e["filename"], {
          "image": os.path.join(self._image_dirs[e["filepath"]], e["filename"]),
          "image/filename": e["filename"], "image/id": e["cocoid"],
          "objects": [],
          "captions": [{"id": s["sentid"], "text": s["raw"]} for s in e["sentences"]]}


class _ImagenetFromFixture(tfds.builder_cls("imagenet2012"), skip_registration=True):
  name = "imagenet2012"

  def __init__(self, root: str, wnids: list[str], **kw):
    self._root, self._wnids = root, wnids
    super().__init__(**kw)

  def _split_generators(self, dl_manager):
    return {"train": self._examples("train"), "validation": self._examples("val")}

  def _examples(self, folder):
    # The fixture's classes are labels 0..n-1 of the real 1000-class label feature.
    for label, wnid in reversed(list(enumerate(self._wnids))):
      for fname in sorted(os.listdir(os.path.join(self._root, folder, wnid)), reverse=True):
        yield fname, {"image": os.path.join(self._root, folder, wnid, fname), "file_name": fname,
                      "label": label}


def write_coco(karpathy_cfg: dict, data_dir: str) -> None:
  """Prepares `coco_captions/2014` under data_dir from the fixture's Karpathy JSON (with sentence
  ids added, as in the real file) and images."""
  with open(karpathy_cfg["karpathy_json"]) as f:
    karpathy = json.load(f)
  sentid = 0
  for entry in karpathy["images"]:
    for s in entry["sentences"]:
      s["sentid"], sentid = sentid, sentid + 1
  numbered = os.path.join(data_dir, "dataset_coco_numbered.json")
  os.makedirs(data_dir, exist_ok=True)
  with open(numbered, "w") as f:
    json.dump(karpathy, f)
  dirs = {"train2014": karpathy_cfg["train_image_dir"], "val2014": karpathy_cfg["val_image_dir"]}
  _CocoCaptionsFromFixture(numbered, dirs, data_dir=data_dir).download_and_prepare(
      download_config=tfds.download.DownloadConfig(try_download_gcs=False))


def write_imagenet(root: str, data_dir: str) -> None:
  """Prepares `imagenet2012` under data_dir from the fixture's ImageFolder tree."""
  wnids = sorted(os.listdir(os.path.join(root, "train")))
  _ImagenetFromFixture(root, wnids, data_dir=data_dir).download_and_prepare(
      download_config=tfds.download.DownloadConfig(try_download_gcs=False))
