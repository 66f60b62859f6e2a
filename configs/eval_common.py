"""Evaluation settings and dataset paths (flamingo_jax/evaluate/). Defaults are OpenFlamingo's.

  python -m flamingo_jax.evaluate --checkpoint=/ckpt/of3b-base --task=coco,vqav2 \
      --shots=0,4,8,16,32 --eval_config.trial_seeds=42,43,44 --eval_config.data.coco.karpathy_json=...

`get_config("root=/data")` fills every dataset path with the layout of OpenFlamingo's
run_eval.sh under /data (mscoco_karpathy/, vqav2/, flickr30k/, okvqa/, textvqa/, vizwiz/,
hateful_memes/, imagenet/); any path can still be overridden with --eval_config.data.<task>.<field>.
"""
from __future__ import annotations

import os

import ml_collections

from configs import common


def _tfds_fields() -> dict:
  # Read the task through tensorflow-datasets instead of files: tfds_name "coco_captions/2014" or
  # "imagenet2012" (prepared under tfds_data_dir, "" = TFDS's default); images are written out
  # once under tfds_image_dir. The file paths of the section are then unused.
  return dict(tfds_name="", tfds_data_dir="", tfds_image_dir="")


def _data_config(root: str) -> ml_collections.ConfigDict:
  j = lambda *p: os.path.join(root, *p) if root else ""
  d = ml_collections.ConfigDict()
  d.coco = dict(  # Karpathy split; CIDEr references from captions_val2014.json, as the reference
      karpathy_json=j("mscoco_karpathy", "dataset_coco.json"),
      train_image_dir=j("mscoco_karpathy", "train2014"),
      val_image_dir=j("mscoco_karpathy", "val2014"),
      annotations_json=j("mscoco_karpathy", "annotations", "captions_val2014.json"),
      **_tfds_fields())
  d.flickr30 = dict(
      karpathy_json=j("flickr30k", "dataset_flickr30k.json"),
      image_dir=j("flickr30k", "flickr30k-images"),
      annotations_json=j("flickr30k", "dataset_flickr30k_coco_style.json"))
  vqa_files = {  # task: (dir, train questions, train annotations, test questions, test annotations,
                 #        train image dir, test image dir)
      "vqav2": ("vqav2", "v2_OpenEnded_mscoco_train2014_questions.json",
                "v2_mscoco_train2014_annotations.json", "v2_OpenEnded_mscoco_val2014_questions.json",
                "v2_mscoco_val2014_annotations.json", "train2014", "val2014"),
      "ok_vqa": ("okvqa", "OpenEnded_mscoco_train2014_questions.json",
                 "mscoco_train2014_annotations.json", "OpenEnded_mscoco_val2014_questions.json",
                 "mscoco_val2014_annotations.json", "train2014", "val2014"),
      "textvqa": ("textvqa", "train_questions_vqa_format.json", "train_annotations_vqa_format.json",
                  "val_questions_vqa_format.json", "val_annotations_vqa_format.json",
                  "train_images", "train_images"),
      "vizwiz": ("vizwiz", "train_questions_vqa_format.json", "train_annotations_vqa_format.json",
                 "val_questions_vqa_format.json", "val_annotations_vqa_format.json", "train", "val"),
  }
  for task, (sub, tq, ta, vq, va, tdir, vdir) in vqa_files.items():
    d[task] = dict(train_questions=j(sub, tq), train_annotations=j(sub, ta),
                   test_questions=j(sub, vq),
                   test_annotations=j(sub, va),  # "" for test-dev: predictions only, no score
                   train_image_dir=j(sub, tdir), test_image_dir=j(sub, vdir))
  d.hateful_memes = dict(image_dir=j("hateful_memes", "img"),
                         train_jsonl=j("hateful_memes", "train.json"),
                         test_jsonl=j("hateful_memes", "dev.json"))
  d.imagenet = dict(root=j("imagenet"),  # ImageFolder train/ and val/
                    class_names="",      # JSON list; "" = the 1000 names OpenFlamingo uses
                    **_tfds_fields())
  return d


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = common.parse_arg(arg, root="")
  c = ml_collections.ConfigDict()
  c.trial_seeds = "42"        # comma list: one trial per seed, mean and std reported
  c.num_samples = -1          # test examples per trial; -1: the whole test split
  c.query_set_size = 2048     # train examples random demonstrations are drawn from
  c.batch_size = 8            # global; rounded up to a multiple of the batch-axis devices
  c.demos = "random"          # 'random' (seeded) | 'rices' (CLIP image similarity)
  c.rices_cache_dir = ""      # <dir>/<task>.npy train-split embeddings (read, or written once)
  c.classification_kv_cache = True  # False: a full forward per class (the reference's no-cache path)
  c.prompt_ensembling = False       # average class scores over min(6, k!) demo permutations
  # The reference's zero-shot classification bug: demo images are kept, so the query's <image>
  # attends to the first demonstration image. True reproduces its published numbers.
  c.reference_zero_shot_classification_images = False
  c.cider_tokenizer = "python"      # 'python' (no Java) | 'stanford' (pycocoevalcap's Java PTB)
  c.vqa_normalization = "reference"  # 'reference' (OpenFlamingo's) | 'official' (VQA toolkit's)
  c.pad_multiple = 64               # prompts are left-padded to a multiple of this (fewer compiles)
  c.max_length = 2000               # prompt tokens kept (the reference truncates at 2000)
  c.image_cache_size = 1024         # preprocessed images kept in memory (demonstrations repeat)
  c.latent_cache_size = 4096        # images whose resampled latents are kept (each image is encoded
                                    # once per run; 0: every prompt encodes its images, as the reference)
  c.data = _data_config(a.root)
  return c
