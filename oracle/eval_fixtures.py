"""Tiny evaluation datasets in the reference's file formats (the evaluation tests' fixtures and
benchmarks/eval_speed.py's data), with images drawn by PIL.

`write_all(root)` writes every task's files under `root` and returns the eval config's `data`
section pointing at them. Captions and answers describe the drawn shapes, so they are consistent
(not that a random tiny model can read them).
"""
from __future__ import annotations

import json
import os

from PIL import Image, ImageDraw

COLORS = {"red": (220, 30, 30), "green": (30, 180, 60), "blue": (40, 60, 220), "yellow": (230, 210, 40)}
SHAPES = ("circle", "square")
META = {"info": {"description": "fixture"}, "task_type": "Open-Ended", "data_type": "mscoco",
        "data_subtype": "val2014", "license": {"name": "fixture"}}


def draw(path: str, color: str, shape: str, size=(80, 60)) -> None:
  """A shape on a grey background; non-square, so the CLIP resize + center crop both run."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  img = Image.new("RGB", size, (128, 128, 128))
  d = ImageDraw.Draw(img)
  box = (20, 10, 60, 50)
  (d.ellipse if shape == "circle" else d.rectangle)(box, fill=COLORS[color])
  img.save(path)


def _items(n: int, offset: int = 0):
  colors = list(COLORS)
  for i in range(offset, offset + n):
    yield i, colors[i % len(colors)], SHAPES[(i // len(colors)) % len(SHAPES)]


def write_karpathy(root: str, dataset: str, n_train: int = 6, n_test: int = 5) -> dict:
  images, annotations = [], []
  for i, color, shape in _items(n_train + n_test):
    split = "train" if i < n_train else "test"
    if dataset == "coco":
      filepath = "train2014" if split == "train" else "val2014"
      filename = f"COCO_{filepath}_{i:012d}.jpg"
      draw(os.path.join(root, filepath, filename), color, shape)
      image_id = i
    else:
      filepath, filename = "flickr30k-images", f"{1000 + i}.jpg"
      draw(os.path.join(root, filepath, filename), color, shape)
      image_id = str(1000 + i)
    sentences = [f"A {color} {shape} on a grey background.", f"a {shape} that is {color}",
                 f"One {color} {shape}."]
    entry = {"split": split, "filepath": filepath, "filename": filename,
             "sentences": [{"raw": s, "tokens": s.lower().split()} for s in sentences]}
    if dataset == "coco":
      entry["cocoid"] = i
    images.append(entry)
    annotations += [{"image_id": image_id, "id": 10 * i + j, "caption": s} for j, s in enumerate(sentences)]
  json.dump({"images": images, "dataset": dataset}, open(os.path.join(root, "karpathy.json"), "w"))
  json.dump({"images": [{"id": a} for a in sorted({a["image_id"] for a in annotations}, key=str)],
             "annotations": annotations, "info": {}, "licenses": [], "type": "captions"},
            open(os.path.join(root, "captions_coco_format.json"), "w"))
  if dataset == "coco":
    return dict(karpathy_json=os.path.join(root, "karpathy.json"),
                train_image_dir=os.path.join(root, "train2014"),
                val_image_dir=os.path.join(root, "val2014"),
                annotations_json=os.path.join(root, "captions_coco_format.json"))
  return dict(karpathy_json=os.path.join(root, "karpathy.json"),
              image_dir=os.path.join(root, "flickr30k-images"),
              annotations_json=os.path.join(root, "captions_coco_format.json"))


def _vqa_split(root: str, dataset: str, split: str, n: int, offset: int, with_answers: bool,
               aligned: bool = False):
  image_dir = os.path.join(root, {"vqav2": "train2014" if split == "train" else "val2014",
                                  "ok_vqa": "train2014" if split == "train" else "val2014",
                                  "vizwiz": split, "textvqa": "images"}[dataset])
  questions, annotations = [], []
  for i, color, shape in _items(n, offset):
    if dataset in ("vqav2", "ok_vqa"):
      image_id, fname = i, f"COCO_{os.path.basename(image_dir)}_{i:012d}.jpg"
    elif dataset == "vizwiz":
      image_id = fname = f"VizWiz_{split}_{i:08d}.jpg"
    else:
      image_id, fname = f"{i:016x}", f"{i:016x}.jpg"
    draw(os.path.join(image_dir, fname), color, shape)
    qid = 500 + i
    questions.append({"question": f"What color is the {shape}?", "image_id": image_id, "question_id": qid})
    answers = [color] * 7 + ["dark " + color, "unanswerable", color]
    recs = [{"answer": a, "answer_confidence": "yes"} if dataset == "vizwiz" else
            {"answer": a, "answer_confidence": "yes", "answer_id": j + 1} for j, a in enumerate(answers)]
    annotations.append({"question_id": qid, "image_id": image_id, "question_type": "what color",
                        "answer_type": "other", "answers": recs, "multiple_choice_answer": color})
  if not aligned:
    annotations.reverse()  # not aligned with the questions: pairing must go by question_id
  qpath = os.path.join(root, f"{split}_questions.json")
  apath = os.path.join(root, f"{split}_annotations.json")
  json.dump(dict(META, questions=questions), open(qpath, "w"))
  json.dump(dict(META, annotations=annotations), open(apath, "w"))
  return qpath, (apath if with_answers else ""), image_dir


def write_vqa(root: str, dataset: str, n_train: int = 6, n_test: int = 5, aligned: bool = False) -> dict:
  """A VQA dataset's files; `aligned`: annotations in the questions' order (open_flamingo's
  loader pairs them by index; ours by question_id, which the default order tests)."""
  tq, ta, tdir = _vqa_split(root, dataset, "train", n_train, 0, True, aligned)
  vq, va, vdir = _vqa_split(root, dataset, "val", n_test, n_train, True, aligned)
  return dict(train_questions=tq, train_annotations=ta, test_questions=vq, test_annotations=va,
              train_image_dir=tdir, test_image_dir=vdir)


def write_hateful_memes(root: str, n_train: int = 6, n_test: int = 6) -> dict:
  paths = {}
  for split, n, offset in (("train", n_train, 0), ("dev", n_test, n_train)):
    rows = []
    for i, color, shape in _items(n, offset):
      draw(os.path.join(root, "img", f"{i:05d}.png"), color, shape)
      rows.append({"id": i, "img": f"img/{i:05d}.png", "label": i % 2,
                   "text": f"this {shape} is {color}"})
    paths[split] = os.path.join(root, f"{split}.json")
    with open(paths[split], "w") as f:
      f.write("\n".join(json.dumps(r) for r in rows) + "\n")
  return dict(image_dir=os.path.join(root, "img"), train_jsonl=paths["train"], test_jsonl=paths["dev"])


def write_imagenet(root: str, per_class_train: int = 2, per_class_val: int = 2) -> dict:
  classes = {"n01": ("red", "circle"), "n02": ("blue", "square"), "n03": ("green", "circle")}
  for split, n in (("train", per_class_train), ("val", per_class_val)):
    for wnid, (color, shape) in classes.items():
      for j in range(n):
        draw(os.path.join(root, split, wnid, f"{wnid}_{j}.JPEG"), color, shape)
  names = os.path.join(root, "class_names.json")
  json.dump(["red circle", "blue square", "green ball"], open(names, "w"))
  return dict(root=root, class_names=names)


def write_all(root: str) -> dict:
  data = {"coco": write_karpathy(os.path.join(root, "coco"), "coco"),
          "flickr30": write_karpathy(os.path.join(root, "flickr30k"), "flickr30"),
          "hateful_memes": write_hateful_memes(os.path.join(root, "hateful_memes")),
          "imagenet": write_imagenet(os.path.join(root, "imagenet"))}
  for task in ("vqav2", "ok_vqa", "vizwiz", "textvqa"):
    data[task] = write_vqa(os.path.join(root, task), task)
  return data
