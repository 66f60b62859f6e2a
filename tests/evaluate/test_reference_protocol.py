"""The reference protocol against open_flamingo 2.0.1's own evaluation loops: `evaluate_captioning`
and `evaluate_classification` (Hateful Memes) run on a small random OpenFlamingo model, ours on
the same model converted, the same fixture files, seed, shots 0 and 2, and batching. In the
reference protocol every prompt (its demonstrations, their order), caption, answer and class score
(with the KV cache and without) is the reference's, and so are CIDEr, VQA accuracy and ROC AUC."""
import os

import jax
import numpy as np
import pytest

from configs import eval_common, tiny
from flamingo_jax.data import tokenizer as tok_lib
from flamingo_jax.evaluate import catalog, prompts, protocol, runner, tasks
from flamingo_jax.evaluate.inference import EvalModel
from flamingo_jax.generate import Sampler
from flamingo_jax.models import rules
from flamingo_jax.weights import load, state_dict as sd_lib

pytest.importorskip("open_flamingo")
torch = pytest.importorskip("torch")

from oracle import eval_fixtures, reference_eval, reference_models as ref  # noqa: E402
from oracle import reference_protocol  # noqa: E402

TOKENIZER = os.path.join(os.path.dirname(__file__), "..", "..", "flamingo_jax", "assets", "tiny_tokenizer")
DIMS = ref.Dims(vocab=512, vis_width=64, vis_layers=2, image_size=64, patch=8, lm_dim=64, lm_heads=4,
                lm_layers=2, max_positions=2048)
BATCH, SEED, TRAIN, TEST = 4, 42, 8, 8


def _converted(family: str):
  """(theirs, ours): open_flamingo's Flamingo (random, perturbed) with `family`'s LM, in the
  reference's EvalModel, and the same weights converted in ours."""
  torch_model = ref.build_reference(family, every_n=1, dims=DIMS)
  model_cfg = ref.jax_config(family, 1, dims=DIMS)
  cfg = tiny.get_config().unlock()
  cfg.model = model_cfg
  mesh, rule_set = rules.make_mesh(cfg.mesh), rules.logical_rules(cfg)
  variables = load.place(sd_lib.flamingo_to_flax(ref.state_dict_numpy(torch_model), model_cfg), model_cfg, mesh, rule_set)
  ours = EvalModel(Sampler(model_cfg, variables, mesh=mesh, rules=rule_set), tok_lib.load_tokenizer(TOKENIZER))
  theirs = reference_protocol.RecordingEvalModel(torch_model, tok_lib.load_tokenizer(TOKENIZER), DIMS.image_size)
  return theirs, ours


@pytest.fixture(scope="module")
def models():
  return _converted("mpt")


def _eval_cfg(data: dict):
  c = eval_common.get_config()
  c.data.coco.update(data["coco"])
  c.data.vqav2.update(data["vqav2"])
  c.data.hateful_memes.update(data["hateful_memes"])
  c.update(batch_size=BATCH, query_set_size=TRAIN, num_samples=TEST, trial_seeds=str(SEED), demos="random",
           protocol="reference")
  return protocol.resolve(c)


def _our_prompts(model, name: str, data, shots: int, cfg) -> list[str]:
  """Our prompts, in our evaluation order (the reference's, in this protocol)."""
  task = catalog.get_task(name)
  plan = tasks.make_plan(model, task, data, shots, SEED, cfg, progress=False)
  return [prompts.build_prompt(task, [data.train[j] for j in demos], data.test[int(i)], shots, data.class_names)
          for i, demos in zip(plan.test, plan.demos)]


def _captioning(theirs, ours, data, cfg, shots, tmp_path) -> str:
  """The same prompts in the same order, the same captions, the same CIDEr."""
  from open_flamingo.eval.coco_metric import postprocess_captioning_generation
  theirs.generated.clear()
  their_cider = reference_protocol.evaluate_captioning(theirs, data["coco"], shots, TEST, TRAIN, str(tmp_path),
                                                       seed=SEED, batch_size=BATCH)
  coco = catalog.get_task("coco").read(cfg.data.coco)
  assert _our_prompts(ours, "coco", coco, shots, cfg) == [p for p, _ in theirs.generated]
  generated = tasks.run_generation(ours, catalog.get_task("coco"), coco, shots, SEED, cfg, progress=False)
  assert [text for _, text in generated] == [postprocess_captioning_generation(o).replace('"', "")
                                             for _, o in theirs.generated]
  results, _ = runner.run(ours, cfg, ["coco"], [shots], str(tmp_path / f"coco{shots}"), progress=False)
  assert abs(results["coco"][0]["mean"] - their_cider) <= 1e-6, (results["coco"][0]["mean"], their_cider)
  return f"COCO {shots}-shot CIDEr {results['coco'][0]['mean']:.6f} / {their_cider:.6f}"


def _vqa(theirs, ours, data, cfg, shots, tmp_path) -> str:
  """VQAv2: the same prompts, answers and accuracy (the reference loop batches by 8)."""
  theirs.generated.clear()
  their_accuracy = reference_eval.evaluate_vqa(theirs, data["vqav2"], shots, TEST, TRAIN, str(tmp_path), seed=SEED)
  vqa = catalog.get_task("vqav2").read(cfg.data.vqav2)
  assert _our_prompts(ours, "vqav2", vqa, shots, cfg) == [p for p, _ in theirs.generated]
  results, _ = runner.run(ours, cfg, ["vqav2"], [shots], str(tmp_path / f"vqa{shots}"), progress=False)
  assert results["vqav2"][0]["mean"] == their_accuracy
  return f"VQAv2 {shots}-shot accuracy {results['vqav2'][0]['mean']:.2f} / {their_accuracy:.2f}"


def _hateful_memes(theirs, ours, data, cfg, shots, tmp_path, kv_cache: bool = False) -> str:
  """With or without the KV cache: the same prompts, class scores and ROC AUC."""
  theirs.scored.clear()
  cfg = cfg.copy_and_resolve_references()
  cfg.classification_kv_cache = kv_cache
  their_auc = reference_protocol.evaluate_hateful_memes(theirs, data["hateful_memes"], shots, TEST, TRAIN,
                                                        str(tmp_path), seed=SEED, batch_size=BATCH, kv_cache=kv_cache)
  memes = catalog.get_task("hateful_memes").read(cfg.data.hateful_memes)
  assert _our_prompts(ours, "hateful_memes", memes, shots, cfg) == [p for p, _ in theirs.scored]
  _, scores = tasks.run_classification(ours, catalog.get_task("hateful_memes"), memes, shots, SEED, cfg, progress=False)
  difference = np.abs(scores - np.asarray([s for _, s in theirs.scored])).max()
  assert difference <= 1e-4
  results, _ = runner.run(ours, cfg, ["hateful_memes"], [shots], str(tmp_path / f"hm{shots}"), progress=False)
  assert results["hateful_memes"][0]["mean"] == pytest.approx(100 * their_auc, abs=1e-9)
  return (f"Hateful Memes {shots}-shot{' KV-cached' if kv_cache else ''} ROC AUC "
          f"{results['hateful_memes'][0]['mean']:.4f} / {100 * their_auc:.4f}, class scores within {difference:.1e}")


def _hateful_memes_cached(theirs, ours, data, cfg, shots, tmp_path) -> str:
  """The reference's KV-cached scores (its default), which attend to the padding: ours in the
  reference protocol are the same; ours masking the padding are not, on these padded batches."""
  figures = _hateful_memes(theirs, ours, data, cfg, shots, tmp_path, kv_cache=True)
  masked = cfg.copy_and_resolve_references()
  masked.update(classification_kv_cache=True, reference_cached_scores=False)
  memes = catalog.get_task("hateful_memes").read(cfg.data.hateful_memes)
  _, scores = tasks.run_classification(ours, catalog.get_task("hateful_memes"), memes, shots, SEED, masked, progress=False)
  gap = np.abs(scores - np.asarray([s for _, s in theirs.scored])).max()
  assert gap > 1e-5  # (the agreement above is 5e-7; only "yes" has two tokens here)
  return f"{figures} (masking the padding instead: {gap:.1e})"


@pytest.mark.slow
def test_reference_protocol_reproduces_open_flamingos_own_loops(models, tmp_path):
  theirs, ours = models
  data = {"coco": eval_fixtures.write_karpathy(str(tmp_path / "coco"), "coco", n_train=TRAIN, n_test=TEST),
          "vqav2": eval_fixtures.write_vqa(str(tmp_path / "vqav2"), "vqav2", n_train=TRAIN, n_test=TEST, aligned=True),
          "hateful_memes": eval_fixtures.write_hateful_memes(str(tmp_path / "hm"), n_train=TRAIN, n_test=TEST)}
  cfg = _eval_cfg(data)
  jax.config.update("jax_default_matmul_precision", "highest")
  figures = []
  with reference_eval.single_process_group():
    for shots in (0, 2):
      figures += [check(theirs, ours, data, cfg, shots, tmp_path) for check in (_captioning, _vqa, _hateful_memes, _hateful_memes_cached)]
  print("ours / open_flamingo's: " + "; ".join(figures))
  # Our default protocol gives the same test subset, with other queries' demonstrations.
  default = cfg.copy_and_resolve_references()
  default.update(protocol="default", reference_demo_order=False)
  coco, task = catalog.get_task("coco").read(cfg.data.coco), catalog.get_task("coco")
  plans = [tasks.make_plan(ours, task, coco, 2, SEED, c, progress=False) for c in (default, cfg)]
  assert sorted(plans[0].test.tolist()) == sorted(plans[1].test.tolist())
  assigned = [{(int(i), tuple(d)) for i, d in zip(p.test, p.demos)} for p in plans]
  assert assigned[0] != assigned[1]


@pytest.mark.parametrize("family", ["gpt_neox", "opt"])
def test_reference_cached_scores_for_rotary_and_learned_positions(family, tmp_path):
  """The reference's KV-cached class scores of a padded batch (its continuation attends to the
  padding, at the positions its plain forward gives it) for the other position schemes (MPT's
  ALiBi: the test above), against its EvalModel's own cached path; masking the padding differs."""
  from PIL import Image
  theirs, ours = _converted(family)
  memes = eval_fixtures.write_hateful_memes(str(tmp_path), n_train=4, n_test=0)
  images = [[os.path.join(memes["image_dir"], f)] for f in sorted(os.listdir(memes["image_dir"]))]
  texts = ["<image>is this meme hateful? Answer:", "<image>Text: a long meme text, is it hateful or not at all? Answer:",
           "<image>Text: hi Answer:", "<image>Text: some text here Answer:"]
  names = ["no", "yes", "not at all"]  # one, two and seven tokens
  expected = theirs.get_rank_classifications(texts, [[Image.open(p[0])] for p in images], names, True, True).numpy()
  classes = ours.class_token_ids(names)
  np.testing.assert_allclose(ours.class_scores(texts, images, classes, True, reference_cache=True), expected, atol=1e-5)
  assert np.abs(ours.class_scores(texts, images, classes, True) - expected).max() > 1e-3
