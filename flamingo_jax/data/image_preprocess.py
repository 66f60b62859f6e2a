"""CLIP's evaluation transform, as open_clip builds it for OpenFlamingo, channel-last.

Resize the shorter side to `size` with PIL bicubic (aspect kept), center-crop `size`, RGB, scale
to [0, 1], normalise with CLIP's mean/std. PIL's resize is used (not a JAX resize) so that pixels
match the reference's. Training batches carry the resized uint8 pixels (`clip_resize`: a quarter of
the bytes between processes and to the device); `normalize` (numpy or jax arrays) finishes the
transform, on the device in training.
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)
Image.MAX_IMAGE_PIXELS = 1_000_000_000  # as the reference: large web images are not an error


def decode(data: bytes) -> Image.Image:
  """Encoded bytes -> RGB PIL image (raises on undecodable data; PIL raises many types)."""
  img = Image.open(io.BytesIO(data))
  img.load()
  return _rgb(img)


def clip_preprocess(img: Image.Image, size: int) -> np.ndarray:
  """PIL image -> float32 (size, size, 3), CLIP-normalised."""
  return normalize(clip_resize(img, size))


def normalize(pixels):
  """uint8 (..., 3) pixels -> float32 CLIP-normalised ones; numpy in, numpy out, jax in, jax out."""
  return (pixels.astype(np.float32) / np.float32(255.0) - CLIP_MEAN) / CLIP_STD


def clip_resize(img: Image.Image, size: int) -> np.ndarray:
  """PIL image -> uint8 (size, size, 3): CLIP's resize and center crop, before normalisation."""
  w, h = img.size
  if (w, h) != (size, size):  # at the size already, resize and crop would copy it twice
    if w <= h:
      new_w, new_h = size, int(size * h / w)
    else:
      new_w, new_h = int(size * w / h), size
    img = img.resize((new_w, new_h), Image.BICUBIC)
    left, top = int(round((new_w - size) / 2.0)), int(round((new_h - size) / 2.0))
    img = img.crop((left, top, left + size, top + size))
  return np.asarray(_rgb(img), np.uint8)


def _rgb(img: Image.Image) -> Image.Image:
  """The image in RGB mode; itself if it is already (PIL's convert() would copy it)."""
  return img if img.mode == "RGB" else img.convert("RGB")


def hflip(images: np.ndarray) -> np.ndarray:
  """Mirrors channel-last images (..., H, W, C) left-right, as torchvision's horizontal flip."""
  images = np.ascontiguousarray(images)
  # Each pixel's C values as one opaque element, so the reversed copy moves whole pixels (2.5x
  # faster than reversing the W axis of a (..., W, C) view, which copies byte by byte).
  pixels = images.view(np.dtype((np.void, images.shape[-1] * images.itemsize)))[..., 0]
  return np.ascontiguousarray(pixels[..., ::-1]).view(images.dtype).reshape(images.shape)
