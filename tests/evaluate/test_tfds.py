"""COCO and ImageNet through tensorflow-datasets give the examples (and results) the reference's
files give: the fixture datasets prepared as real TFDS datasets by TFDS's builders."""
import dataclasses
import json
import os

import pytest

from flamingo_jax.evaluate import catalog, datasets, runner
from tests.evaluate import tfds_fixture


@pytest.fixture(scope="module")
def tfds_dir(eval_data, tmp_path_factory):
  out = str(tmp_path_factory.mktemp("tfds"))
  tfds_fixture.write_coco(eval_data["coco"], out)
  tfds_fixture.write_imagenet(eval_data["imagenet"]["root"], out)
  return out


def _tfds_section(eval_cfg, task, name, tfds_dir, image_dir):
  section = eval_cfg.data[task]
  section.update(tfds_name=name, tfds_data_dir=tfds_dir, tfds_image_dir=str(image_dir))
  return section


def _same_examples(from_tfds, from_files):
  """Equal but for where the image lives; the images themselves byte for byte equal."""
  assert len(from_tfds) == len(from_files)
  for a, b in zip(from_tfds, from_files):
    assert dataclasses.replace(a, image_path="") == dataclasses.replace(b, image_path="")
    assert open(a.image_path, "rb").read() == open(b.image_path, "rb").read()


def test_coco_from_tfds_equals_the_karpathy_files(eval_cfg, tfds_dir, tmp_path):
  files = catalog.get_task("coco").read(eval_cfg.data.coco)
  section = _tfds_section(eval_cfg, "coco", "coco_captions/2014", tfds_dir, tmp_path / "images")
  from_tfds = catalog.get_task("coco").read(section)
  _same_examples(from_tfds.train, files.train)
  _same_examples(from_tfds.test, files.test)
  # A second read finds the images written out and leaves them alone.
  stamp = os.stat(from_tfds.test[0].image_path).st_mtime_ns
  catalog.get_task("coco").read(section)
  assert os.stat(from_tfds.test[0].image_path).st_mtime_ns == stamp


def test_imagenet_from_tfds_equals_the_image_folder(eval_cfg, tfds_dir, tmp_path):
  files = catalog.get_task("imagenet").read(eval_cfg.data.imagenet)
  section = _tfds_section(eval_cfg, "imagenet", "imagenet2012", tfds_dir, tmp_path / "images")
  with pytest.raises(ValueError, match="1000 classes but 3 class names"):
    catalog.get_task("imagenet").read(section)
  section.class_names = ""  # the 1000 ImageNet names, as the TFDS label feature has 1000 classes
  from_tfds = catalog.get_task("imagenet").read(section)
  assert from_tfds.class_names == datasets.imagenet_class_names()
  _same_examples(from_tfds.train, files.train)
  _same_examples(from_tfds.test, files.test)


def test_coco_task_results_are_the_same_from_tfds(tiny_model, eval_cfg, tfds_dir, tmp_path):
  eval_cfg.data.coco.annotations_json = ""  # references from the Karpathy sentences on both paths
  files, _ = runner.run(tiny_model, eval_cfg, ["coco"], [2], str(tmp_path / "files"), None)
  _tfds_section(eval_cfg, "coco", "coco_captions/2014", tfds_dir, tmp_path / "images")
  from_tfds, _ = runner.run(tiny_model, eval_cfg, ["coco"], [2], str(tmp_path / "tfds"), None)
  assert from_tfds == files
  preds = [json.load(open(tmp_path / d / "coco_2shot_random_seed42_predictions.json")) for d in ("files", "tfds")]
  assert preds[0] == preds[1]


def test_tfds_errors(eval_cfg, tfds_dir, tmp_path):
  section = _tfds_section(eval_cfg, "coco", "coco_captions/2014", str(tmp_path / "empty"), tmp_path / "img")
  with pytest.raises(FileNotFoundError, match="coco_captions/2014/1.1.0 is not prepared"):
    catalog.get_task("coco").read(section)
  section.update(tfds_data_dir=tfds_dir, tfds_image_dir="")
  with pytest.raises(ValueError, match="set tfds_image_dir"):
    catalog.get_task("coco").read(section)
  flickr = _tfds_section(eval_cfg, "flickr30", "coco_captions/2014", tfds_dir, tmp_path / "img")
  with pytest.raises(ValueError, match="only coco and imagenet"):
    catalog.get_task("flickr30").read(flickr)
