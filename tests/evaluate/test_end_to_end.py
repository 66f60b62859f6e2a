"""Every task end to end on the fixture datasets, with the tiny config.

With random weights the numbers mean nothing: these tests check the plumbing (prompts, batching
over 8 devices, generation, scoring, files). A stand-in `generate` that answers correctly then
checks that predictions reach the metrics attached to the right examples.
"""
import json
import os

import numpy as np
import pytest

from flamingo_jax.evaluate import catalog, datasets, runner
from flamingo_jax.evaluate.inference import EvalModel
from flamingo_jax.evaluate.metrics import cider, classification, okvqa

ALL_TASKS = ["coco", "flickr30", "vqav2", "ok_vqa", "vizwiz", "textvqa", "hateful_memes", "imagenet"]


@pytest.fixture(autouse=True)
def _no_nltk_data(monkeypatch):
  """OK-VQA's stemmer needs NLTK data that cannot be downloaded here: a plain stand-in."""
  stemmer = okvqa.OkVqaStemmer(tokenize=str.split, pos_tag=lambda ws: [(w, "NN") for w in ws],
                               lemmatize_verb=lambda w: w, singularize=lambda w: w)
  monkeypatch.setattr(okvqa, "default_stemmer", lambda: stemmer)


def _oracle_vqa_accuracy(out_dir, task, shots, data_cfg):
  from open_flamingo.eval.vqa_metric import compute_vqa_accuracy
  path = os.path.join(out_dir, f"{task}_{shots}shot_random_seed42_predictions.json")
  return compute_vqa_accuracy(path, data_cfg.test_questions, data_cfg.test_annotations)


@pytest.mark.slow
def test_every_task_end_to_end(tiny_model, eval_cfg, tmp_path):
  out = str(tmp_path)
  results, paths = runner.run(tiny_model, eval_cfg, ALL_TASKS, [2], out, "of_9b")
  assert set(results) == set(ALL_TASKS)
  for task in ALL_TASKS:
    (row,) = results[task]
    assert row["shots"] == 2 and len(row["trials"]) == 1 and np.isfinite(row["mean"]), task
    preds = json.load(open(os.path.join(out, f"{task}_2shot_random_seed42_predictions.json")))
    assert len(preds) == 5 if task not in ("hateful_memes", "imagenet") else 6, task
  # The scores are what the reference's own metrics give on the written predictions.
  for task in ("vqav2", "vizwiz", "textvqa"):
    assert results[task][0]["mean"] == _oracle_vqa_accuracy(out, task, 2, eval_cfg.data[task])
  metrics = pytest.importorskip("sklearn.metrics")
  preds = json.load(open(os.path.join(out, "hateful_memes_2shot_random_seed42_predictions.json")))
  p_yes = [p["pred_score"] if p["pred_label"] == "yes" else 1 - p["pred_score"] for p in preds]
  assert results["hateful_memes"][0]["mean"] == pytest.approx(
      100 * metrics.roc_auc_score([p["gt_label"] for p in preds], p_yes))
  # Reports: JSON in the reference's layout, a markdown table beside the published numbers, a plot.
  saved = json.load(open(paths["json"]))
  assert saved["results"]["coco"][0].keys() == {"shots", "trials", "mean", "stddev"}
  assert saved["meta"]["devices"] == 8
  table = open(paths["md"]).read()
  assert "OpenFlamingo-9B-vitl-mpt7b (published, random)" in table and "| coco (CIDEr)" in table
  assert os.path.getsize(paths["png"]) > 1000


def test_zero_shot_and_rices(tiny_model, eval_cfg, tmp_path):
  eval_cfg.update(demos="rices", rices_cache_dir=str(tmp_path / "rices"), trial_seeds="1,2")
  results, _ = runner.run(tiny_model, eval_cfg, ["coco", "hateful_memes"], [0], str(tmp_path), None)
  assert [len(r[0]["trials"]) for r in results.values()] == [2, 2]
  features = np.load(tmp_path / "rices" / "coco.npy")
  assert features.shape == (6, tiny_model.cfg.vision.embed_dim)
  # The reference protocol (its zero-shot classification images: three images for one <image>
  # token; its evaluation order and ensembling shuffles), recorded in the report.
  eval_cfg.update(demos="random", protocol="reference", trial_seeds="42", prompt_ensembling=True)
  results, paths = runner.run(tiny_model, eval_cfg, ["hateful_memes"], [0], str(tmp_path), None)
  assert np.isfinite(results["hateful_memes"][0]["mean"])
  assert json.load(open(paths["json"]))["meta"]["protocol"] == {
      "protocol": "reference", "reference_demo_order": True, "reference_cached_scores": True,
      "reference_zero_shot_classification_images": True}
  assert ("Protocol: reference; the reference's behaviour for: reference_demo_order, reference_cached_scores, "
          "reference_zero_shot_classification_images") in open(paths["md"]).read()
  eval_cfg.protocol = "openflamingo"
  with pytest.raises(ValueError, match="--eval_config.protocol='openflamingo': expected one of default, reference"):
    runner.run(tiny_model, eval_cfg, ["hateful_memes"], [0], str(tmp_path), None)


def _answering_model(tiny_model, answers_by_image: dict[str, str]):
  """A stand-in for `generate` that looks at the query (last) image and returns its answer."""
  loader = tiny_model.images
  key = lambda img: tuple(np.round(np.asarray(img, np.float64).mean(axis=(0, 1)), 4))
  table = {key(loader.load(path)): text for path, text in answers_by_image.items()}
  eoc, pad = tiny_model.eoc_id, tiny_model.pad_id

  def generate(vision_x, ids, mask, settings):
    del mask
    max_new_tokens = settings.max_new_tokens
    vision = np.asarray(vision_x)
    rows = []
    for b in range(ids.shape[0]):
      last = max(t for t in range(vision.shape[1]) if np.abs(vision[b, t, 0]).sum() > 0)
      new = tiny_model.tok(table[key(vision[b, last, 0])], add_special_tokens=False)["input_ids"] + [eoc]
      rows.append(list(ids[b]) + (new + [pad] * max_new_tokens)[:max_new_tokens])
    return np.asarray(rows)

  return EvalModel(tiny_model.sampler, tiny_model.tok, pad_multiple=64, generate_fn=generate)


def test_correct_answers_reach_the_right_examples(tiny_model, eval_cfg, tmp_path):
  coco = catalog.get_task("coco").read(eval_cfg.data.coco).test
  vizwiz = catalog.get_task("vizwiz").read(eval_cfg.data.vizwiz).test
  vqav2 = catalog.get_task("vqav2").read(eval_cfg.data.vqav2).test
  out = str(tmp_path)
  # The fixture draws the same shapes for several tasks: one answer table per task.
  results, _ = runner.run(_answering_model(tiny_model, {e.image_path: e.caption for e in coco}),
                          eval_cfg, ["coco"], [2], out, None, progress=False)
  answers = {e.image_path: e.answers[0]["answer"] for e in vqav2 + vizwiz}
  vqa_results, _ = runner.run(_answering_model(tiny_model, answers), eval_cfg, ["vqav2", "vizwiz"], [2],
                              out, None, progress=False)
  results.update(vqa_results)
  expected_cider = cider.caption_cider(datasets.caption_references(coco, None),
                                       {e.image_id: e.caption.replace('"', "") for e in coco})
  assert results["coco"][0]["mean"] == pytest.approx(expected_cider) and expected_cider > 100
  assert results["vqav2"][0]["mean"] == 100.0
  # VizWiz's id-less identical answer records make even a right answer score below 100, exactly
  # as the reference's (official) evaluation scores it.
  assert results["vizwiz"][0]["mean"] == _oracle_vqa_accuracy(out, "vizwiz", 2, eval_cfg.data.vizwiz)
  assert results["vizwiz"][0]["mean"] < 100.0


def test_unknown_task_fails_before_any_work(tiny_model, eval_cfg, tmp_path):
  with pytest.raises(ValueError, match="--task=gqa: unknown task"):
    runner.run(tiny_model, eval_cfg, ["coco", "gqa"], [0], str(tmp_path), None)
  assert not os.listdir(tmp_path)


def test_guess_model_name(tiny_cfg):
  from configs import of_3b_instruct, of_9b
  assert runner.guess_model_name(of_9b.get_config("cpu")) == "of_9b"
  assert runner.guess_model_name(of_3b_instruct.get_config("cpu")) == "of_3b_instruct"
  assert runner.guess_model_name(tiny_cfg, "configs/of_4b.py:tpu") == "of_4b"
  assert runner.guess_model_name(tiny_cfg) is None
  assert classification.top1_accuracy([1], [1]) == 1.0


def test_cached_latents_give_the_same_results(tiny_model, eval_cfg, tmp_path):
  """With the latent cache every image is encoded once per run; captions and class scores are
  those of encoding each prompt's images with it."""
  cached = EvalModel(tiny_model.sampler, tiny_model.tok, pad_multiple=64, latent_cache_size=64)
  tasks = ["coco", "hateful_memes"]
  plain, _ = runner.run(tiny_model, eval_cfg, tasks, [2], str(tmp_path / "plain"), None)
  fast, _ = runner.run(cached, eval_cfg, tasks, [2], str(tmp_path / "cached"), None)
  for task in tasks:
    ours = json.load(open(tmp_path / "cached" / f"{task}_2shot_random_seed42_predictions.json"))
    theirs = json.load(open(tmp_path / "plain" / f"{task}_2shot_random_seed42_predictions.json"))
    assert ours == theirs or task == "hateful_memes"
    assert fast[task][0]["mean"] == pytest.approx(plain[task][0]["mean"], abs=1e-6)
  distinct = len(cached.latents) - 1  # less the blank image
  assert cached.latents.misses == distinct and cached.latents.hits > 0  # demonstrations repeat


def test_a_new_task_of_an_existing_kind_is_one_record(tiny_model, eval_cfg, tmp_path, monkeypatch):
  """A user's VQA set in the official file format: one record (catalog.vqa_task) and its data
  section; the runner prompts, decodes, post-processes, scores and reports it like VQAv2."""
  task = catalog.vqa_task("my_vqa", "my_vqa", ("q_train.json", "a_train.json", "q_val.json", "a_val.json"),
                          ("train2014", "val2014"), naming="coco", max_new_tokens=5)
  monkeypatch.setitem(catalog.TASKS, "my_vqa", task)
  assert catalog.data_section(task, "/data")["test_questions"] == "/data/my_vqa/q_val.json"
  with eval_cfg.unlocked():
    eval_cfg.data.my_vqa = eval_cfg.data.vqav2.to_dict()  # its data: the VQAv2 fixture's files
  vqav2 = catalog.get_task("vqav2").read(eval_cfg.data.vqav2).test
  model = _answering_model(tiny_model, {e.image_path: e.answers[0]["answer"] for e in vqav2})
  results, paths = runner.run(model, eval_cfg, ["my_vqa", "vqav2"], [2], str(tmp_path), None, progress=False)
  assert results["my_vqa"] == results["vqav2"] and results["my_vqa"][0]["mean"] == 100.0
  assert results["my_vqa"][0]["mean"] == _oracle_vqa_accuracy(str(tmp_path), "my_vqa", 2, eval_cfg.data.my_vqa)
  assert "| my_vqa (VQA accuracy) |" in open(paths["md"]).read()
