"""Readers of the reference's file formats, on the fixture files."""
import json
import os

import pytest

from flamingo_jax.evaluate import catalog, datasets


def test_coco_karpathy(eval_data):
  cfg = eval_data["coco"]
  train = datasets.read_karpathy(cfg["karpathy_json"], "train", "coco", cfg["train_image_dir"],
                                 cfg["val_image_dir"])
  test = datasets.read_karpathy(cfg["karpathy_json"], "test", "coco", cfg["train_image_dir"],
                                cfg["val_image_dir"])
  assert (len(train), len(test)) == (6, 5)
  assert train[0].image_path == os.path.join(cfg["train_image_dir"], "COCO_train2014_000000000000.jpg")
  assert test[0].image_path.startswith(cfg["val_image_dir"]) and test[0].image_id == 6
  assert test[0].caption == test[0].references[0] and len(test[0].references) == 3
  assert all(os.path.exists(e.image_path) for e in train + test)
  refs = datasets.caption_references(test, cfg["annotations_json"])
  assert refs == {e.image_id: list(e.references) for e in test}


def test_flickr_ids_are_file_stems_and_match_string_or_int_coco_ids(eval_data):
  cfg = eval_data["flickr30"]
  test = datasets.read_karpathy(cfg["karpathy_json"], "test", "flickr30", cfg["image_dir"])
  assert test[0].image_id == "1006"
  assert datasets.caption_references(test, cfg["annotations_json"])["1006"][0] == test[0].caption


def test_vqa_joins_by_question_id_and_builds_image_paths(eval_data):
  for task, naming, name in (("vqav2", "coco", "COCO_val2014_000000000006.jpg"),
                             ("vizwiz", "as_given", "VizWiz_val_00000006.jpg"),
                             ("textvqa", "id_jpg", "0000000000000006.jpg")):
    cfg = eval_data[task]
    test = datasets.read_vqa(cfg["test_questions"], cfg["test_annotations"], cfg["test_image_dir"], naming)
    assert os.path.basename(test[0].image_path) == name and os.path.exists(test[0].image_path)
    # The annotation file is in reverse order; each question still gets its own answers.
    assert test[0].answers[0]["answer"] == "blue" and test[1].answers[0]["answer"] == "yellow"
  no_answers = datasets.read_vqa(cfg["test_questions"], None, cfg["test_image_dir"], "id_jpg")
  assert no_answers[0].answers is None


def test_vqa_errors(eval_data, tmp_path):
  cfg = eval_data["vqav2"]
  with pytest.raises(ValueError, match="train2014, val2014 or test2015"):
    datasets.read_vqa(cfg["test_questions"], None, str(tmp_path), "coco")
  anns = json.load(open(cfg["test_annotations"]))
  anns["annotations"] = anns["annotations"][1:]
  json.dump(anns, open(tmp_path / "a.json", "w"))
  with pytest.raises(KeyError, match="no annotation"):
    datasets.read_vqa(cfg["test_questions"], str(tmp_path / "a.json"), cfg["test_image_dir"], "coco")
  with pytest.raises(FileNotFoundError):
    datasets.read_vqa(str(tmp_path / "missing.json"), None, cfg["test_image_dir"], "coco")


def test_hateful_memes_and_imagenet(eval_data):
  cfg = eval_data["hateful_memes"]
  test = datasets.read_hateful_memes(cfg["test_jsonl"], cfg["image_dir"])
  assert [e.label for e in test[:2]] == [0, 1] and test[0].text.startswith("this")
  assert os.path.exists(test[0].image_path)
  data = catalog.get_task("imagenet").read(_Cfg(eval_data["imagenet"]))
  assert data.class_names == ("red circle", "blue square", "green ball")
  assert [e.label for e in data.test] == [0, 0, 1, 1, 2, 2]
  assert len(datasets.imagenet_class_names()) == 1000


class _Cfg(dict):
  """A dict with attribute access, standing in for a ConfigDict section."""
  __getattr__ = dict.__getitem__
