"""Answers an interleaved image-text prompt with a base checkpoint or a training run.

  python -m flamingo_jax.generate --checkpoint=/ckpt/of3b-base --image a.jpg --image b.jpg \
      --prompt "<image>Output: two cats.<|endofchunk|><image>Output:" [--num_beams 3]
  python -m flamingo_jax.generate --checkpoint=runs/tiny [--step=500] --image x.png --prompt "<image>"

--checkpoint is a base checkpoint (convert import) or a training workdir (its latest step, or
--step), local or gs://. Images are matched to the `<image>` tokens in order. Generation stops at
`<|endofchunk|>`.
"""
from __future__ import annotations

import sys

from flamingo_jax import cli  # first: its quiet start precedes the libraries' imports
from absl import app, flags
from flamingo_jax import runtime
import numpy as np

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Base checkpoint or training workdir.")
_STEP = flags.DEFINE_integer("step", None, "With a training workdir: the step (default: latest).")
_IMAGES = flags.DEFINE_multi_string("image", [], "Image files, one per <image> token, in order.")
_PROMPT = flags.DEFINE_string("prompt", None, "Interleaved prompt with <image> tokens.")
_TOKENIZER = flags.DEFINE_string("tokenizer", None, "Tokenizer dir (default: the checkpoint config's).")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 20, "Tokens to generate at most.", lower_bound=1)
_BEAMS = flags.DEFINE_integer("num_beams", 3, "Beam count (1 = greedy).", lower_bound=1)
_LENGTH_PENALTY = flags.DEFINE_float("length_penalty", 0.0, "Beam length penalty.")
flags.mark_flags_as_required(["checkpoint", "prompt"])


def main(argv):
  del argv
  from flamingo_jax.data import image_preprocess, tokenizer as tok_lib  # pylint: disable=g-import-not-at-top
  from flamingo_jax.generate import DecodeSettings, Sampler  # pylint: disable=g-import-not-at-top
  from flamingo_jax.weights import load  # pylint: disable=g-import-not-at-top
  n_media = _PROMPT.value.count(tok_lib.MEDIA_TOKEN)
  if n_media != len(_IMAGES.value):
    raise app.UsageError(f"The prompt has {n_media} <image> tokens but {len(_IMAGES.value)} --image files")
  images = [_read_image(p).convert("RGB") for p in _IMAGES.value]  # before any work
  runtime.use_compile_cache()
  loaded = load.load_model(_CHECKPOINT.value, step=_STEP.value, tokenizer_path=_TOKENIZER.value)
  print(f"model: {loaded.source}", file=sys.stderr)
  tok, model_cfg = loaded.tokenizer, loaded.config.model
  size = model_cfg.vision.image_size
  pixels = [image_preprocess.clip_preprocess(image, size) for image in images]
  vision_x = np.stack(pixels)[None, :, None] if pixels else np.zeros((1, 1, 1, size, size, 3), np.float32)
  input_ids = np.asarray([tok(_PROMPT.value, add_special_tokens=False)["input_ids"]], np.int32)
  settings = DecodeSettings(max_new_tokens=_MAX_NEW.value, num_beams=_BEAMS.value,
                            length_penalty=_LENGTH_PENALTY.value, eos_token_ids=(model_cfg.eoc_token_id,),
                            pad_token_id=model_cfg.pad_token_id)
  out = Sampler.from_loaded(loaded).generate(vision_x, input_ids, np.ones_like(input_ids), settings)
  print(tok.decode(out[0, input_ids.shape[1]:], skip_special_tokens=False).replace(tok_lib.PAD_TOKEN, ""))


def _read_image(path: str):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  try:
    return Image.open(path)
  except Image.UnidentifiedImageError:
    raise cli.UsageError(f"--image={path}: not an image file PIL can read") from None


if __name__ == "__main__":
  cli.run(main)
