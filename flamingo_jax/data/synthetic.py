"""Synthetic LAION- and MMC4-format WebDataset shards whose text depends on what is drawn.

Each image shows 1-3 shapes of one colour and kind in one region; its caption says so
("two red circles on the left"), so only a model that looks can predict it. MMC4 documents
interleave several such images with their sentences and unrelated filler sentences, with a CLIP-like
similarity matrix. A few samples are deliberately broken (undecodable image, missing field, empty
text, invalid JSON) to exercise the skip-and-count path. Deterministic for a seed.

  python -m flamingo_jax.data.synthetic --out runs/synthetic_shards
"""
from __future__ import annotations

import argparse
import base64
import io
import json
import os
import sys
import tarfile

import numpy as np
from PIL import Image, ImageDraw

COLORS = {"red": (220, 30, 30), "green": (30, 170, 60), "blue": (40, 70, 220),
          "yellow": (235, 210, 30), "purple": (140, 50, 170), "orange": (245, 140, 20)}
SHAPES = ("circle", "square", "triangle")
REGIONS = {"left": (0.0, 0.2, 0.5, 0.8), "right": (0.5, 0.2, 1.0, 0.8),
           "top": (0.2, 0.0, 0.8, 0.5), "bottom": (0.2, 0.5, 0.8, 1.0)}
COUNTS = ("one", "two", "three")
FILLER = ("the weather was nice that day", "we went home after lunch",
          "this is a short note", "more pictures follow below", "thanks for reading")


def draw(rng: np.random.Generator, size: int) -> tuple[Image.Image, str]:
  """A noisy-background image with 1-3 shapes of one colour and kind in one region, and its
  caption, e.g. "two red circles on the left"."""
  color, shape = rng.choice(list(COLORS)), rng.choice(SHAPES)
  region, count = rng.choice(list(REGIONS)), int(rng.integers(1, 4))
  # Noise keeps the JPEGs above the reference's 11 KB image filter at 64 px.
  noise = rng.integers(150, 256, size=(size, size, 3), dtype=np.uint8)
  img = Image.fromarray(noise)
  d = ImageDraw.Draw(img)
  x0, y0, x1, y1 = (int(v * size) for v in REGIONS[region])
  r = max(3, size // 10)
  for _ in range(count):
    cx, cy = int(rng.integers(x0 + r, x1 - r)), int(rng.integers(y0 + r, y1 - r))
    box = (cx - r, cy - r, cx + r, cy + r)
    fill = COLORS[color]
    if shape == "circle":
      d.ellipse(box, fill=fill)
    elif shape == "square":
      d.rectangle(box, fill=fill)
    else:
      d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
  plural = "s" if count > 1 else ""
  return img, f"{COUNTS[count - 1]} {color} {shape}{plural} on the {region}"


def jpeg(img: Image.Image, quality: int = 100) -> bytes:
  """JPEG bytes; full quality without chroma subsampling by default (large files on purpose)."""
  buf = io.BytesIO()
  img.save(buf, format="JPEG", quality=quality, subsampling=0)
  return buf.getvalue()


def _stem(path: str) -> str:
  """Shard name without extensions: sample keys must not contain dots (WebDataset splits there)."""
  return os.path.basename(path).split(".", 1)[0]


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
  info = tarfile.TarInfo(name)
  info.size = len(data)
  info.mtime = 0  # byte-identical shards for a seed
  tar.addfile(info, io.BytesIO(data))


def laion_shard(path: str, rng: np.random.Generator, samples: int, size: int, broken: bool) -> None:
  """One LAION-format shard: `{key}.jpg` + `{key}.txt` pairs. If `broken`, samples 1-3 have an
  undecodable image, a blank caption and no image."""
  with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
    for i in range(samples):
      key = f"{_stem(path)}_{i:06d}"
      img, caption = draw(rng, size)
      data, text = jpeg(img), caption
      if broken and i == 1:
        data = b"not a jpeg"
      if broken and i == 2:
        text = "   "
      if not (broken and i == 3):  # sample 3 of a broken shard has no image at all
        _add(tar, f"{key}.jpg", data)
      _add(tar, f"{key}.txt", text.encode())


def _b64(data: bytes) -> str:
  return base64.b64encode(data).decode()


def mmc4_document(rng: np.random.Generator, size: int) -> dict:
  """One MMC4-format document: sentences, base64 JPEGs and an images x sentences similarity.

  1-3 pictures each have a caption sentence (similarity 0.26-0.35, else 0.05-0.15) between filler
  sentences. `image_info` lists them in a shuffled order, so image order differs from sentence
  order. Sometimes there is also an off-topic picture (below the 0.24 threshold everywhere) or a
  small one (< 11 KB, which the size filter drops although it matches a sentence).
  """
  size = max(size, 64)
  n = int(rng.integers(1, 4))
  drawn = [draw(rng, size) for _ in range(n)]
  text_list, match = [], []
  for _, caption in drawn:
    if rng.random() < 0.5:
      text_list.append(str(rng.choice(FILLER)))
    match.append(len(text_list))
    text_list.append(caption)
  text_list.append(str(rng.choice(FILLER)))
  images = [jpeg(img) for img, _ in drawn]
  sims = [np.full(len(text_list), 0.1) for _ in drawn]
  for row, j in zip(sims, match):
    row[j] = 0.3
  if rng.random() < 0.2:  # off-topic picture
    images.append(jpeg(draw(rng, size)[0]))
    sims.append(np.full(len(text_list), 0.1))
  if rng.random() < 0.2:  # too small to keep, although it matches a caption
    images.append(jpeg(draw(rng, 32)[0], quality=60))
    sims.append(np.where(np.arange(len(text_list)) == match[0], 0.3, 0.1))
  sim = np.stack(sims) + rng.uniform(-0.04, 0.05, size=(len(images), len(text_list)))
  order = rng.permutation(len(images))
  info = [{"image_name": f"img{k}.jpg", "image_base64": _b64(images[k]),
           "matched_text_index": int(sim[k].argmax()), "matched_sim": float(sim[k].max())}
          for k in order]
  return {"text_list": text_list, "image_info": info, "similarity_matrix": sim[order].tolist()}


def mmc4_shard(path: str, rng: np.random.Generator, samples: int, size: int, broken: bool) -> None:
  """One MMC4-format shard: a `{key}.json` document per sample. If `broken`, samples 1-3 have an
  undecodable (but large enough) image, no `text_list`, and invalid JSON."""
  with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
    for i in range(samples):
      key = f"{_stem(path)}_{i:06d}"
      doc = mmc4_document(rng, size)
      if broken and i == 1:
        doc["image_info"] = [dict(doc["image_info"][0], image_base64=_b64(b"x" * 12000))]
        doc["similarity_matrix"] = [[0.3] * len(doc["text_list"])]
      if broken and i == 2:
        del doc["text_list"]
      data = json.dumps(doc).encode()
      if broken and i == 3:
        data = data[:len(data) // 2]
      _add(tar, f"{key}.json", data)


HELD_OUT_DIR = "held_out"


def write_shards(out: str, *, laion_shards: int = 4, mmc4_shards: int = 4, samples_per_shard: int = 64,
                 image_size: int = 64, seed: int = 0, held_out_shards: int = 1) -> dict[str, list[str]]:
  """Writes `out/laion-NNNNN.tar` and `out/mmc4-NNNNN.tar` (shard 0 of each holds broken samples)
  and, apart from them, `held_out_shards` of each under `out/held_out/` (the validation data: drawn
  from other seeds, never matched by the training globs); returns
  {"laion": [...], "mmc4": [...], "laion_held_out": [...], "mmc4_held_out": [...]}.
  The same arguments give byte-identical files."""
  paths = {}
  for kind, count, write in (("laion", laion_shards, laion_shard), ("mmc4", mmc4_shards, mmc4_shard)):
    for held_out, n in ((False, count), (True, held_out_shards)):
      directory = os.path.join(out, HELD_OUT_DIR) if held_out else out
      os.makedirs(directory, exist_ok=True)
      written = paths.setdefault(f"{kind}_held_out" if held_out else kind, [])
      for s in range(n):
        path = os.path.join(directory, f"{kind}-{s:05d}.tar")
        rng = np.random.default_rng([seed, s, kind == "mmc4", *([1] if held_out else [])])
        temporary = f"{path}.tmp{os.getpid()}"  # (another process may be writing the same shard)
        write(temporary, rng, samples_per_shard, image_size, broken=s == 0 and not held_out)
        os.replace(temporary, path)  # a shard is whole or absent
        written.append(path)
  return paths


LAION_FAULTS = ("undecodable_image", "missing_field", "missing_field", "empty_text")  # (no image, no text)
MMC4_FAULTS = ("bad_json", "missing_field", "undecodable_image", "no_valid_image", "below_similarity_threshold")


def tag(i: int) -> str:
  """A sample's name in letters, which the tiny tokenizer keeps intact: 0 -> 'a', 27 -> 'bb'."""
  out = ""
  while True:
    out = "abcdefghijklmnopqrstuvwxyz"[i % 26] + out
    i //= 26
    if not i:
      return out


def _faulty_laion(rng: np.random.Generator, key: str, name: str, fault: str | None, size: int) -> list[tuple[str, bytes]]:
  img, _ = draw(rng, size)
  members = {"jpg": jpeg(img), "txt": f"sample {name}".encode()}
  if fault == "undecodable_image":
    members["jpg"] = b"not a jpeg" * 100
  elif fault == "missing_field":
    del members["jpg" if rng.random() < 0.5 else "txt"]
  elif fault == "empty_text":
    members["txt"] = b"  \n "
  return [(f"{key}.{ext}", data) for ext, data in members.items()]


def _faulty_mmc4(rng: np.random.Generator, key: str, name: str, fault: str | None, size: int) -> list[tuple[str, bytes]]:
  """A document that names itself ("document <name>") with two captioned images (so that it is
  never one of the single-image documents the reference drops at random), or its broken form."""
  drawn = [draw(rng, size) for _ in range(2)]
  text_list = [f"document {name}", drawn[0][1], drawn[1][1], str(rng.choice(FILLER))]
  images = [_b64(jpeg(img)) for img, _ in drawn]
  sim = [[0.1, 0.3, 0.1, 0.1], [0.1, 0.1, 0.3, 0.1]]
  if fault == "undecodable_image":
    images = [_b64(b"x" * 12000)] * 2
  elif fault == "no_valid_image":
    images = [_b64(jpeg(draw(rng, 32)[0], quality=60))] * 2  # under the 11 KB filter
  elif fault == "below_similarity_threshold":
    sim = [[0.1] * 4] * 2
  doc = {"text_list": text_list, "similarity_matrix": sim,
         "image_info": [{"image_name": f"img{k}.jpg", "image_base64": b} for k, b in enumerate(images)]}
  if fault == "missing_field":
    del doc["text_list"]
  data = json.dumps(doc).encode()
  return [(f"{key}.json", data[:len(data) // 3] if fault == "bad_json" else data)]


def write_faulty_shards(out: str, kind: str, *, shards: int = 4, samples_per_shard: int = 50, bad_every: int = 10,
                        image_size: int = 64, seed: int = 0) -> dict[str, str | None]:
  """`out/{kind}-NNNNN.tar` shards in which every `bad_every`-th sample is broken, cycling through
  every fault the pipeline skips, and the last sample of each shard is cut off mid-member (the file
  truncated, as an interrupted copy leaves it). Each good sample names itself in its text
  ("sample <tag>", "document <tag>"), so a batch says which samples it holds. Returns
  {sample key: the skip reason the pipeline must give it, or None for a good sample}."""
  faults, make = {"laion": (LAION_FAULTS, _faulty_laion), "mmc4": (MMC4_FAULTS, _faulty_mmc4)}[kind]
  os.makedirs(out, exist_ok=True)
  manifest, n_bad = {}, 0
  for s in range(shards):
    path, rng = os.path.join(out, f"{kind}-{s:05d}.tar"), np.random.default_rng([seed, s, 7])
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
      for i in range(samples_per_shard):
        key, fault = f"{kind}{s:02d}_{i:04d}", None
        if i % bad_every == bad_every - 1 and i < samples_per_shard - 1:
          fault, n_bad = faults[n_bad % len(faults)], n_bad + 1
        for name, data in make(rng, key, tag(len(manifest)), fault, image_size):
          _add(tar, name, data)
        manifest[key] = "missing_field" if fault == "missing_field" else fault
    with tarfile.open(path) as tar:
      last = tar.getmembers()[-1]
    with open(path, "r+b") as f:
      f.truncate(last.offset_data + last.size // 2)
    manifest[key] = "unreadable_member"
  return manifest


def corpus(seed: int = 0, n: int = 2000) -> list[str]:
  """Text of the kind the shards hold, plus seeded pseudo-words so a small BPE has enough merges
  (for training the tiny tokenizer)."""
  rng = np.random.default_rng(seed)
  words = [f"{c} {col} {s}{p} on the {r}" for c in COUNTS for col in COLORS for s in SHAPES
           for p in ("", "s") for r in REGIONS]
  letters = list("abcdefghijklmnopqrstuvwxyz")
  pseudo = ["".join(rng.choice(letters, size=int(rng.integers(3, 8)))) for _ in range(n)]
  return words * 20 + list(FILLER) * 20 + pseudo


def write_images(out: str, n: int, *, image_size: int = 64, seed: int = 10_000) -> list[tuple[str, str]]:
  """Writes `n` captioned images as PNG files (`out/image_{i}.png`, plus `captions.txt`) from a
  seed the shards do not use, so that they are held out; returns (path, caption) pairs."""
  os.makedirs(out, exist_ok=True)
  rng = np.random.default_rng(seed)
  pairs = []
  for i in range(n):
    img, caption = draw(rng, image_size)
    path = os.path.join(out, f"image_{i}.png")
    img.save(path)
    pairs.append((path, caption))
  with open(os.path.join(out, "captions.txt"), "w") as f:
    f.writelines(f"{os.path.basename(p)}\t{c}\n" for p, c in pairs)
  return pairs


def write_coco(out: str, n: int, *, image_size: int = 64, seed: int = 20_000) -> str:
  """Writes a COCO-captioning-format evaluation set of held-out synthetic images: `n` test and
  `n` train (demonstration) images under `out/mscoco_karpathy/` in the layout
  `configs/eval_common.py:root=<out>` reads (the Karpathy split file, train2014/, val2014/,
  annotations/captions_val2014.json). Returns that directory."""
  root = os.path.join(out, "mscoco_karpathy")
  entries, annotations = [], []
  rng = np.random.default_rng(seed)
  for i in range(2 * n):
    split, folder = ("train", "train2014") if i < n else ("test", "val2014")
    img, caption = draw(rng, image_size)
    filename = f"COCO_{folder}_{i:012d}.jpg"
    os.makedirs(os.path.join(root, folder), exist_ok=True)
    img.save(os.path.join(root, folder, filename), quality=95)
    entries.append({"filepath": folder, "filename": filename, "split": split, "cocoid": i,
                    "sentences": [{"raw": caption}]})
    if split == "test":
      annotations.append({"image_id": i, "id": i, "caption": caption})
  os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
  with open(os.path.join(root, "dataset_coco.json"), "w") as f:
    json.dump({"images": entries, "dataset": "coco"}, f)
  with open(os.path.join(root, "annotations", "captions_val2014.json"), "w") as f:
    json.dump({"annotations": annotations,
               "images": [{"id": e["cocoid"], "file_name": e["filename"]} for e in entries if e["split"] == "test"]}, f)
  return root


def main() -> None:
  parser = argparse.ArgumentParser(description="Write synthetic LAION/MMC4 WebDataset shards, or "
                                   "(--images N) N held-out captioned image files.")
  parser.add_argument("--out", required=True)
  parser.add_argument("--images", type=int, default=0, help="write N image files instead of shards")
  parser.add_argument("--coco", type=int, default=0, help="write a COCO-captioning-format evaluation set "
                      "of N test and N demonstration images instead of shards (evaluate with "
                      "--eval_config=configs/eval_common.py:root=OUT)")
  parser.add_argument("--laion-shards", type=int, default=4)
  parser.add_argument("--mmc4-shards", type=int, default=4)
  parser.add_argument("--samples-per-shard", type=int, default=64)
  parser.add_argument("--image-size", type=int, default=64)
  parser.add_argument("--seed", type=int, default=0)
  a = parser.parse_args()
  bad = [f"--{k.replace('_', '-')}={v}" for k, v in vars(a).items() if isinstance(v, int) and v < 0]
  bad += [f"--{k.replace('_', '-')}=0" for k in ("samples_per_shard", "image_size") if getattr(a, k) == 0]
  if bad:
    print(f"error: {bad[0]}: counts must be >= 0, and samples per shard and the image size >= 1", file=sys.stderr)
    sys.exit(2)
  if a.coco:
    root = write_coco(a.out, a.coco, image_size=a.image_size, seed=20_000 + a.seed)
    print(f"wrote a COCO-format evaluation set of {a.coco} test and {a.coco} demonstration images to {root}")
    return
  if a.images:
    pairs = write_images(a.out, a.images, image_size=a.image_size, seed=10_000 + a.seed)
    print(f"wrote {len(pairs)} images and captions.txt to {a.out}")
    return
  paths = write_shards(a.out, laion_shards=a.laion_shards, mmc4_shards=a.mmc4_shards,
                       samples_per_shard=a.samples_per_shard, image_size=a.image_size, seed=a.seed)
  print(f"wrote {len(paths['laion'])} LAION and {len(paths['mmc4'])} MMC4 shards to {a.out} and "
        f"{len(paths['laion_held_out'])} + {len(paths['mmc4_held_out'])} held-out ones to "
        f"{os.path.join(a.out, HELD_OUT_DIR)}")


if __name__ == "__main__":
  main()
