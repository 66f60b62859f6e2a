"""The evaluation tasks, one record each: where a task's files are, how they are read, its prompt
template, decoding preset, post-processing and metric. The runner (`tasks.py`) reads a task's
record and the eval config, nothing else, and `configs/eval_common.py` makes each task's
`data.<task>` section from its record's files.

Adding a task of an existing kind is one `Task` record in `TASKS` (plus its data), e.g. a VQA set
in the VQAv2 file format:

  vqa_task("gqa", "gqa", ("train_questions.json", "train_annotations.json", "val_questions.json",
                          "val_annotations.json"), ("images", "images"), naming="id_jpg", max_new_tokens=5)

(`vqa_task` fills in VQA's loader, template, post-processing, decoding and metric), then
`--task=gqa` with its files under `root/gqa/` or `--eval_config.data.gqa.<field>=...`.
"""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Callable, Mapping

import ml_collections

from flamingo_jax.evaluate import datasets, prompts, scoring
from flamingo_jax.evaluate.examples import TaskData
from flamingo_jax.generate.search import DecodeSettings


@dataclasses.dataclass(frozen=True)
class Task:
  """One evaluation task.

  `kind` picks the prompt layout and the loop: "captioning" and "vqa" generate (a "\\n" after
  each demonstration), "classification" scores every class name by likelihood (no separator).
  """
  name: str
  kind: str                                          # "captioning" | "vqa" | "classification"
  metric: str                                        # what the number is, for reports
  load: Callable[[ml_collections.ConfigDict], TaskData]  # its data.<task> section -> pool and test split
  template: Callable[..., str]                       # (example, class names, with_answer) -> its prompt chunk
  score: Callable[..., scoring.Trial]                # (outputs, eval config, section, class names) -> Trial
  decoding: DecodeSettings | None = None             # the generation preset; None: class likelihoods
  postprocess: Callable[[str], str] | None = None    # a generation -> the answer that is scored
  files: Mapping[str, str] = dataclasses.field(default_factory=dict)  # section field -> path under root
  tfds: bool = False                                 # may be read through tensorflow-datasets instead
  rices_name: str = ""                               # the reference's cached-feature file stem

  @property
  def generates(self) -> bool:
    return self.decoding is not None

  def read(self, section: ml_collections.ConfigDict) -> TaskData:
    """The demonstration pool and test split its `data.<task>` section points at."""
    if section.get("tfds_name") and not self.tfds:
      raise ValueError(f"Task {self.name!r} has no TFDS dataset (only "
                       f"{' and '.join(t.name for t in TASKS.values() if t.tfds)} do)")
    return self.load(section)


def vqa_task(name: str, directory: str, files: tuple[str, str, str, str], image_dirs: tuple[str, str],
         naming: str, max_new_tokens: int, postprocess: Callable[[str], str] = prompts.postprocess_vqa) -> Task:
  """A VQA task in the official VQA file format (questions and annotations JSON under `directory`,
  images under `image_dirs` (train, test) named as `datasets.vqa_image_path`'s `naming` says)."""
  fields = ("train_questions", "train_annotations", "test_questions", "test_annotations")
  paths = {f: f"{directory}/{p}" for f, p in zip(fields, files)}  # test_annotations "" at test-dev: no score
  paths.update(train_image_dir=f"{directory}/{image_dirs[0]}", test_image_dir=f"{directory}/{image_dirs[1]}")
  return Task(name, "vqa", "VQA accuracy", load=functools.partial(datasets.vqa_data, naming=naming),
              template=prompts.vqa_chunk, score=scoring.vqa_score,
              decoding=prompts.eval_decoding(max_new_tokens), postprocess=postprocess, files=paths, rices_name=name)


TASKS: dict[str, Task] = {t.name: t for t in (
    Task("coco", "captioning", "CIDEr", load=datasets.coco_data, template=prompts.caption_chunk,
         score=scoring.cider_score, decoding=prompts.eval_decoding(20), postprocess=prompts.postprocess_caption,
         # Karpathy split; CIDEr references from captions_val2014.json, as the reference
         files=dict(karpathy_json="mscoco_karpathy/dataset_coco.json", train_image_dir="mscoco_karpathy/train2014",
                    val_image_dir="mscoco_karpathy/val2014",
                    annotations_json="mscoco_karpathy/annotations/captions_val2014.json"),
         tfds=True, rices_name="coco"),
    Task("flickr30", "captioning", "CIDEr", load=datasets.flickr30_data, template=prompts.caption_chunk,
         score=scoring.cider_score, decoding=prompts.eval_decoding(20), postprocess=prompts.postprocess_caption,
         files=dict(karpathy_json="flickr30k/dataset_flickr30k.json", image_dir="flickr30k/flickr30k-images",
                    annotations_json="flickr30k/dataset_flickr30k_coco_style.json"),
         rices_name="flickr30"),
    vqa_task("vqav2", "vqav2", ("v2_OpenEnded_mscoco_train2014_questions.json", "v2_mscoco_train2014_annotations.json",
                            "v2_OpenEnded_mscoco_val2014_questions.json", "v2_mscoco_val2014_annotations.json"),
         ("train2014", "val2014"), naming="coco", max_new_tokens=5),
    vqa_task("ok_vqa", "okvqa", ("OpenEnded_mscoco_train2014_questions.json", "mscoco_train2014_annotations.json",
                             "OpenEnded_mscoco_val2014_questions.json", "mscoco_val2014_annotations.json"),
         ("train2014", "val2014"), naming="coco", max_new_tokens=5, postprocess=prompts.postprocess_ok_vqa),
    vqa_task("vizwiz", "vizwiz", ("train_questions_vqa_format.json", "train_annotations_vqa_format.json",
                              "val_questions_vqa_format.json", "val_annotations_vqa_format.json"),
         ("train", "val"), naming="as_given", max_new_tokens=5),
    vqa_task("textvqa", "textvqa", ("train_questions_vqa_format.json", "train_annotations_vqa_format.json",
                                "val_questions_vqa_format.json", "val_annotations_vqa_format.json"),
         ("train_images", "train_images"), naming="id_jpg", max_new_tokens=10),
    Task("hateful_memes", "classification", "ROC AUC x 100", load=datasets.hateful_memes_data,
         template=prompts.hateful_memes_chunk, score=scoring.roc_auc_score,
         files=dict(image_dir="hateful_memes/img", train_jsonl="hateful_memes/train.json",
                    test_jsonl="hateful_memes/dev.json"), rices_name="hateful_memes"),
    Task("imagenet", "classification", "top-1 accuracy (%)", load=datasets.imagenet_data,
         template=prompts.imagenet_chunk, score=scoring.top1_score,
         files=dict(root="imagenet",    # ImageFolder train/ and val/
                    class_names=""),    # JSON list; "" = the 1000 names OpenFlamingo uses
         tfds=True, rices_name="imagenet"),
)}


def get_task(name: str) -> Task:
  if name not in TASKS:
    raise ValueError(f"Unknown task {name!r}; known: {', '.join(TASKS)}")
  return TASKS[name]


def data_section(task: Task, root: str) -> dict[str, Any]:
  """The eval config's `data.<task>` section: the task's files under `root` ("" without a root),
  and the TFDS fields where it may be read through tensorflow-datasets."""
  section = {field: os.path.join(root, path) if root and path else "" for field, path in task.files.items()}
  if task.tfds:
    # tfds_name "coco_captions/2014" or "imagenet2012" (prepared under tfds_data_dir, "" = TFDS's
    # default); images are written out once under tfds_image_dir; the file paths are then unused.
    section.update(tfds_name="", tfds_data_dir="", tfds_image_dir="")
  return section
