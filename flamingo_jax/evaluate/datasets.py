"""Readers for the files OpenFlamingo's evaluation reads. Images are referenced by path, loaded later.

- COCO / Flickr30K captioning: Karpathy-split JSON (`dataset_coco.json`, `dataset_flickr30k.json`);
  demonstrations from split "train" (restval excluded), test examples from split "test".
  References for CIDEr: a COCO-format captions file if given (the reference's choice), otherwise
  all `sentences` of the Karpathy entry (the same captions for COCO).
- VQAv2, OK-VQA, VizWiz, TextVQA: the official VQA questions/annotations JSON. Questions and
  annotations are joined by question_id (the reference pairs them by position, which is the same
  for aligned files and silently wrong otherwise). Annotations may be absent (test-dev).
- HatefulMemes: JSON lines with id, img, text, label.
- ImageNet: an ImageFolder tree (`root/train/<wnid>/*.JPEG`), classes in sorted folder order.
- COCO and ImageNet can also come from tensorflow-datasets (tfds_datasets.py).
"""
from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from flamingo_jax.evaluate.examples import CaptionExample, ClassificationExample, TaskData, VQAExample

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
HATEFUL_MEMES_CLASSES = ("no", "yes")


def _load_json(path: str) -> Any:
  if not path or not os.path.exists(path):
    raise FileNotFoundError(f"Evaluation file not found: {path!r}")
  with open(path) as f:
    return json.load(f)


# ---------------------------------------------------------------------------------------------
# Captioning


def read_karpathy(json_path: str, split: str, dataset: str, image_dir: str,
                  val_image_dir: str | None = None) -> list[CaptionExample]:
  """Karpathy-split entries of `split` ("train" or "test"). COCO files under filepath "train2014"
  live in `image_dir`, the others in `val_image_dir`; Flickr30K has one directory."""
  if dataset not in ("coco", "flickr30"):
    raise ValueError(f"Unknown captioning dataset {dataset!r}")
  examples = []
  for entry in _load_json(json_path)["images"]:
    if entry["split"] != split:
      continue
    if dataset == "coco":
      directory = image_dir if entry["filepath"] == "train2014" else val_image_dir
      if directory is None:
        raise ValueError(f"{entry['filename']} is under {entry['filepath']}: set the val image dir")
      image_id = entry["cocoid"]
    else:
      directory, image_id = image_dir, entry["filename"].split(".")[0]
    sentences = tuple(s["raw"] for s in entry["sentences"])
    examples.append(CaptionExample(os.path.join(directory, entry["filename"]), sentences[0],
                                   image_id, sentences))
  if not examples:
    raise ValueError(f"No {split!r} entries in {json_path}")
  return examples


def read_coco_captions(annotations_path: str) -> dict[str, list[str]]:
  """A COCO-format captions file -> {str(image_id): [captions]} (ids as strings: Flickr30K's
  COCO-style file and the Karpathy file need not agree on int vs str)."""
  refs: dict[str, list[str]] = {}
  for ann in _load_json(annotations_path)["annotations"]:
    refs.setdefault(str(ann["image_id"]), []).append(ann["caption"])
  return refs


def caption_references(test: list[CaptionExample], annotations_path: str | None) -> dict[Any, list[str]]:
  """{image_id: reference captions} for the test examples."""
  if not annotations_path:
    return {e.image_id: list(e.references) for e in test}
  refs = read_coco_captions(annotations_path)
  missing = [e.image_id for e in test if str(e.image_id) not in refs]
  if missing:
    raise KeyError(f"{len(missing)} test images have no captions in {annotations_path}, e.g. {missing[:3]}")
  return {e.image_id: refs[str(e.image_id)] for e in test}


# ---------------------------------------------------------------------------------------------
# VQA


VQA_IMAGE_NAMINGS = ("coco", "as_given", "id_jpg")


def vqa_image_path(naming: str, image_dir: str, image_id: Any) -> str:
  """Where a question's image is, by how its dataset names image files: "coco" (VQAv2, OK-VQA:
  COCO_val2014_000000000042.jpg in a train2014/val2014/test2015 folder), "as_given" (VizWiz: the
  image_id is the file name), "id_jpg" (TextVQA: <image_id>.jpg)."""
  if naming == "coco":
    coco_split = os.path.basename(os.path.normpath(image_dir))
    if coco_split not in ("train2014", "val2014", "test2015"):
      raise ValueError(f"a COCO image dir must be named train2014, val2014 or test2015, got {image_dir!r}")
    return os.path.join(image_dir, f"COCO_{coco_split}_{int(image_id):012d}.jpg")
  if naming == "as_given":
    return os.path.join(image_dir, image_id)
  if naming == "id_jpg":
    return os.path.join(image_dir, f"{image_id}.jpg")
  raise ValueError(f"Unknown VQA image naming {naming!r}; known: {', '.join(VQA_IMAGE_NAMINGS)}")


def read_vqa(questions_path: str, annotations_path: str | None, image_dir: str,
             naming: str) -> list[VQAExample]:
  """Questions (with their annotation records, when given) in the questions file's order; images
  named as `vqa_image_path`'s `naming` says."""
  questions = _load_json(questions_path)["questions"]
  by_id = None
  if annotations_path:
    by_id = {a["question_id"]: a for a in _load_json(annotations_path)["annotations"]}
    missing = [q["question_id"] for q in questions if q["question_id"] not in by_id]
    if missing:
      raise KeyError(f"{len(missing)} questions of {questions_path} have no annotation, e.g. {missing[:3]}")
  return [VQAExample(vqa_image_path(naming, image_dir, q["image_id"]), q["question"], q["question_id"],
                     None if by_id is None else tuple(by_id[q["question_id"]]["answers"]))
          for q in questions]


# ---------------------------------------------------------------------------------------------
# Classification


def read_hateful_memes(jsonl_path: str, image_dir: str) -> list[ClassificationExample]:
  """Label 1 is class "yes" (hateful), 0 is "no"; only the basename of `img` is used."""
  if not os.path.exists(jsonl_path):
    raise FileNotFoundError(f"Evaluation file not found: {jsonl_path!r}")
  examples = []
  with open(jsonl_path) as f:
    for line in f:
      if line.strip():
        row = json.loads(line)
        examples.append(ClassificationExample(os.path.join(image_dir, os.path.basename(row["img"])),
                                              int(row["label"]), row["id"], row["text"]))
  return examples


def read_image_folder(root: str) -> tuple[list[ClassificationExample], list[str]]:
  """torchvision ImageFolder order: class folders sorted, files walked in sorted order."""
  if not os.path.isdir(root):
    raise FileNotFoundError(f"Image folder not found: {root!r}")
  classes = sorted(e.name for e in os.scandir(root) if e.is_dir())
  examples = []
  for label, name in enumerate(classes):
    for dirpath, _, files in sorted(os.walk(os.path.join(root, name), followlinks=True)):
      for fname in sorted(files):
        if fname.lower().endswith(IMAGE_EXTENSIONS):
          examples.append(ClassificationExample(os.path.join(dirpath, fname), label, len(examples)))
  return examples, classes


def imagenet_class_names() -> tuple[str, ...]:
  """The 1000 human-readable ImageNet class names OpenFlamingo prompts with, in wnid order."""
  path = os.path.join(os.path.dirname(__file__), "data", "imagenet_classnames.json")
  with open(path) as f:
    return tuple(json.load(f))


# ---------------------------------------------------------------------------------------------
# A task's demonstration pool and test split from its eval-config section (a task record's `load`).


def coco_data(section) -> TaskData:
  """COCO's Karpathy split (train2014 images for the demonstrations), or its TFDS dataset."""
  if section.get("tfds_name"):
    from flamingo_jax.evaluate import tfds_datasets  # pylint: disable=g-import-not-at-top
    return tfds_datasets.coco_data(section)
  kw = dict(dataset="coco", image_dir=section.train_image_dir, val_image_dir=section.get("val_image_dir") or None)
  return TaskData(read_karpathy(section.karpathy_json, "train", **kw), read_karpathy(section.karpathy_json, "test", **kw))


def flickr30_data(section) -> TaskData:
  kw = dict(dataset="flickr30", image_dir=section.image_dir)
  return TaskData(read_karpathy(section.karpathy_json, "train", **kw), read_karpathy(section.karpathy_json, "test", **kw))


def vqa_data(section, naming: str) -> TaskData:
  """A VQA task in the official file format; `naming`: `vqa_image_path`'s."""
  return TaskData(read_vqa(section.train_questions, section.train_annotations, section.train_image_dir, naming),
                  read_vqa(section.test_questions, section.test_annotations or None, section.test_image_dir, naming))


def hateful_memes_data(section) -> TaskData:
  return TaskData(read_hateful_memes(section.train_jsonl, section.image_dir),
                  read_hateful_memes(section.test_jsonl, section.image_dir), HATEFUL_MEMES_CLASSES)


def imagenet_data(section) -> TaskData:
  """ImageFolder train/ and val/ under `root` (or the TFDS dataset), with the class names."""
  names = _imagenet_names(section)
  if section.get("tfds_name"):
    from flamingo_jax.evaluate import tfds_datasets  # pylint: disable=g-import-not-at-top
    return tfds_datasets.imagenet_data(section, names)
  train, folders = read_image_folder(os.path.join(section.root, "train"))
  test, test_folders = read_image_folder(os.path.join(section.root, "val"))
  if folders != test_folders:
    raise ValueError("ImageNet train and val have different class folders")
  if len(names) != len(folders):
    raise ValueError(f"{len(folders)} class folders but {len(names)} class names")
  return TaskData(train, test, names)


def _imagenet_names(cfg) -> tuple[str, ...]:
  if not cfg.get("class_names"):
    return imagenet_class_names()
  with open(cfg.class_names) as f:
    return tuple(json.load(f))


def subset(examples: list, indices: np.ndarray) -> list:
  return [examples[int(i)] for i in indices]
