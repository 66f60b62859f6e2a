"""Evaluation data through tensorflow-datasets, for the tasks TFDS has: COCO captioning
(`coco_captions`, Karpathy splits) and ImageNet (`imagenet2012`).

The evaluation addresses images by path (decoded in threads, CLIP features cached per path), and
TFDS keeps the encoded images inside its record files, so the images of each split read are
written out once, byte for byte, under `image_dir/<name>/<config>/<version>/<split>/` and read
from there; an image already there is not rewritten. Evaluation never downloads: the dataset
must have been prepared (`tfds build coco_captions --data_dir=...`).

Examples come out in the order of the reference's files, so seeded demonstration draws and
`num_samples` pick the same examples as from the Karpathy JSON or an ImageFolder: COCO by
Karpathy sentence id (sentences are numbered in the Karpathy file's order), ImageNet by
(class, file name), as torchvision's ImageFolder walks the class folders.
"""
from __future__ import annotations

import os
from typing import Iterator

from flamingo_jax.evaluate.examples import CaptionExample, ClassificationExample, TaskData

# The Karpathy splits used: demonstrations from "train" (not "restval", as the reference).
COCO_SPLITS = {"train": "train", "test": "test"}
IMAGENET_SPLITS = {"train": "train", "test": "validation"}


def _records(name: str, split: str, data_dir: str, image_dir: str,
             filename_key: str) -> Iterator[tuple[str, dict]]:
  """(image path, numpy record) for every example of a prepared TFDS split, writing each encoded
  image to its path under `image_dir` first if it is not there yet."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top  (pulls in TensorFlow)
  if not image_dir:
    raise ValueError(f"TFDS dataset {name!r}: set tfds_image_dir (where its images are written out)")
  builder = tfds.builder(name, data_dir=data_dir or None)
  if not builder.is_prepared():
    raise FileNotFoundError(f"TFDS dataset {builder.info.full_name} is not prepared under "
                            f"{builder.data_dir} (prepare it with `tfds build`; evaluation never downloads)")
  out_dir = os.path.join(image_dir, builder.info.full_name, split)
  os.makedirs(out_dir, exist_ok=True)
  ds = builder.as_dataset(split=split, shuffle_files=False,
                          decoders={"image": tfds.decode.SkipDecoding()})
  for record in tfds.as_numpy(ds):
    path = os.path.join(out_dir, os.path.basename(record[filename_key].decode()))
    if not os.path.exists(path):
      tmp = f"{path}.tmp{os.getpid()}"  # renamed into place: never a half-written image
      with open(tmp, "wb") as f:
        f.write(record["image"])
      os.replace(tmp, path)
    yield path, record


def read_coco_captions_tfds(name: str, split: str, data_dir: str, image_dir: str) -> list[CaptionExample]:
  """Karpathy-split COCO from `coco_captions`: the same examples as `read_karpathy` on
  dataset_coco.json (image id = cocoid, caption = the first sentence, references = all)."""
  examples = []
  for path, r in _records(name, split, data_dir, image_dir, "image/filename"):
    texts = tuple(t.decode() for t in r["captions"]["text"])
    if not texts:
      raise ValueError(f"{name} {split}: image {r['image/id']} has no captions")
    examples.append((int(min(r["captions"]["id"])), CaptionExample(path, texts[0], int(r["image/id"]), texts)))
  if not examples:
    raise ValueError(f"TFDS {name} split {split!r} is empty")
  return [e for _, e in sorted(examples, key=lambda x: x[0])]


def read_imagenet_tfds(name: str, split: str, data_dir: str, image_dir: str) -> tuple[list[ClassificationExample], int]:
  """`imagenet2012` examples in ImageFolder order (ids numbered in that order), and the number
  of classes of its label feature."""
  rows = sorted(((int(r["label"]), os.path.basename(p), p)
                 for p, r in _records(name, split, data_dir, image_dir, "file_name")))
  if not rows:
    raise ValueError(f"TFDS {name} split {split!r} is empty")
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  num_classes = tfds.builder(name, data_dir=data_dir or None).info.features["label"].num_classes
  return [ClassificationExample(p, label, i) for i, (label, _, p) in enumerate(rows)], num_classes


def _args(section) -> tuple[str, str, str]:
  return section.tfds_name, section.get("tfds_data_dir", ""), section.get("tfds_image_dir", "")


def coco_data(section) -> TaskData:
  """COCO's demonstration pool and test split from the TFDS dataset `section.tfds_name`."""
  name, *rest = _args(section)
  return TaskData(*(read_coco_captions_tfds(name, COCO_SPLITS[s], *rest) for s in ("train", "test")))


def imagenet_data(section, class_names: tuple[str, ...]) -> TaskData:
  """ImageNet's demonstration pool and test split from the TFDS dataset `section.tfds_name`."""
  name, *rest = _args(section)
  (train, n), (test, _) = (read_imagenet_tfds(name, IMAGENET_SPLITS[s], *rest) for s in ("train", "test"))
  if len(class_names) != n:
    raise ValueError(f"{name} has {n} classes but {len(class_names)} class names")
  return TaskData(train, test, class_names)
