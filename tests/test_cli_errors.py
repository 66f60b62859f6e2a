"""Ordinary mistakes on every command-line tool: each exits non-zero (2 usage and config, 1 at run
time) with one `error:` line naming the field, file or key, no traceback, and nothing written at
its output path. The cases run in parallel subprocesses (one device each)."""
import concurrent.futures
import os
import shutil
import subprocess
import sys
import tarfile

import numpy as np
import pytest

from flamingo_jax import cli, config_check
from configs import tiny
from tests.conftest import TEST_XLA_FLAGS
from tests.train.test_train import REPO

TINY = "--config=configs/tiny.py"
OUT = "{out}"  # each case's output path (a workdir, a file): it must not exist afterwards
BAD = "{bad}"  # a directory of broken inputs (_bad_files)

CASES = [  # (tool, arguments, exit code, what the error line names)
    ("train", ["--config=configs/nope.py", f"--workdir={OUT}"], 2, "nope.py"),
    ("train", [TINY], 2, "--workdir"),
    ("train", [TINY, f"--workdir={OUT}", "--config.optim.learning_ratee=1"], 2, "learning_ratee"),
    ("train", [TINY, f"--workdir={OUT}", "--config.model.xattn.every_n_layers=5"], 2, "model.xattn.every_n_layers=5"),
    ("train", [TINY, f"--workdir={OUT}", "--config.model.dtype=float17"], 2, "model.dtype='float17'"),
    ("train", [TINY, f"--workdir={OUT}", "--config.model.vision.patch_size=7"], 2, "model.vision.patch_size=7"),
    ("train", [TINY, f"--workdir={OUT}", "--config.mesh.fsdp=16"], 2, "needs 16 devices"),
    ("train", [TINY, f"--workdir={OUT}", "--config.mesh.dcn_data=2"], 2, "mesh.dcn_data=2, mesh.dcn_fsdp=1 needs 2 slices"),
    ("train", [TINY, f"--workdir={OUT}", "--config.optim.schedule=cosin"], 2, "optim.schedule='cosin'"),
    ("train", [TINY, f"--workdir={OUT}", "--config.data.laion.batch_size=0"], 2, "data.laion.batch_size=0"),
    ("train", [TINY, f"--workdir={OUT}", "--config.data.synthetic_dir=", "--config.data.laion.shards=/nowhere/laion-*.tar"],
     1, "/nowhere/laion-*.tar"),
    ("train", [TINY, f"--workdir={OUT}", "--config.data.laion.validation_shards=/nowhere/val-*.tar"], 1,
     "data.laion.validation_shards: No shards match '/nowhere/val-*.tar'"),
    ("train", [TINY, f"--workdir={OUT}", "--config.checkpoint.base=/nowhere/base"], 1, "/nowhere/base"),
    ("train", [TINY, f"--workdir={OUT}", "--config.tokenizer_path=/nowhere/tokenizer"], 1, "/nowhere/tokenizer"),
    ("train", [TINY, f"--workdir={OUT}", "--config.data.mmc4.matching=closest"], 2,
     "data.mmc4.matching='closest': expected one of argmax, one_to_one"),
    ("generate", ["--checkpoint=/nowhere/run", "--prompt=a cat"], 1, "/nowhere/run"),
    ("generate", ["--checkpoint=/nowhere/run", "--prompt=<image>a cat"], 2, "<image>"),
    ("evaluate", ["--task=coco", f"--out_dir={OUT}"], 2, "--checkpoint"),
    ("evaluate", ["--checkpoint=/nowhere/run", "--task=coco", f"--out_dir={OUT}"], 2, "/nowhere/run"),
    ("convert", ["export", "--base=/nowhere/base", f"--out={OUT}"], 1, "/nowhere/base"),
    ("info", ["--config=configs/none.py"], 2, "none.py"),
    ("plan", [TINY, "--topology=v9z:4x4"], 2, "v9z:4x4"),
    ("plan", [TINY, "--topology=local", "--config.mesh.fsdp=3"], 2, "mesh"),
    ("sweep", [TINY, f"--workdir={OUT}", "--only=99"], 2, "--only=99"),
    ("data.array_record", ["--shards=/nowhere/*.tar", f"--out_dir={OUT}"], 1, "/nowhere/*.tar"),
    # Bad files ({bad}: written by _bad_files).
    ("generate", ["--checkpoint=/nowhere/run", "--prompt=<image>", f"--image={BAD}/not_an_image.png"], 2,
     "not_an_image.png: not an image"),
    ("train", [TINY, f"--workdir={OUT}", "--config.data.synthetic_dir=", f"--config.data.laion.shards={BAD}/empty.tar"],
     1, "no samples"),
    ("train", [TINY, f"--workdir={OUT}", "--config.data.synthetic_dir=", f"--config.data.laion.shards={BAD}/random.tar"],
     1, "random.tar"),
    ("train", [TINY, f"--workdir={OUT}", "--config.data.synthetic_dir=",
               f"--config.data.laion.shards={BAD}/tar.array_record"], 1, "tar.array_record"),
    ("train", [f"--config={BAD}/syntax.py", f"--workdir={OUT}"], 2, "syntax.py: SyntaxError"),
    ("info", [f"--config={BAD}/train_config.json"], 2, "a .json file is a run's record"),
    ("convert", ["export", "--base=/nowhere/base", f"--out={OUT}/checkpoint.pt"], 1, "no such directory"),
    # Values a run cannot use: refused by the config check, before any data is read.
    ("train", [TINY, f"--workdir={OUT}", "--config.train.log_every=0"], 2, "train.log_every=0"),
    ("train", [TINY, f"--workdir={OUT}", "--config.optim.learning_rate=-0.001"], 2, "optim.learning_rate=-0.001"),
    ("train", [TINY, f"--workdir={OUT}", "--config.data.mmc4.max_tokens=0"], 2, "data.mmc4.max_tokens=0"),
    ("plan", [TINY, "--topology=v5e:2x2", "--config.model.lm.num_heads=2", "--config.mesh.tensor=4",
              "--config.mesh.data=1"], 2, "mesh.tensor=4 does not divide"),
    ("sweep", [TINY, f"--workdir={OUT}", "--parallel=0"], 2, "--parallel=0"),
    ("sweep", [TINY, f"--workdir={OUT}", "--config.train.log_every=0"], 2, "train.log_every=0"),
    ("data.synthetic", ["--images=-1", f"--out={OUT}"], 2, "--images=-1"),
    ("generate", ["--checkpoint=/nowhere/run", "--prompt=a cat", "--num_beams=0"], 2, "--num_beams=0"),
    ("evaluate", ["--checkpoint=/nowhere/run", "--task=cocoa", f"--out_dir={OUT}"], 2, "--task=cocoa"),
    ("evaluate", ["--random_init", TINY, "--config.mesh.tensor=2", "--config.mesh.data=1", "--task=coco",
                  f"--out_dir={OUT}"], 2, "mesh.tensor=2 needs 2 devices"),
    ("evaluate", ["--random_init", TINY, "--task=coco", "--shots=4", f"--out_dir={OUT}",
                  f"--eval_config=configs/eval_common.py:root={BAD}"], 1, "coco has 2 demonstrations"),
]


def _bad_files(directory) -> str:
  """Inputs a user gets wrong: an empty tar, random bytes as a tar, a tar named as ArrayRecord, a
  text file as an image, a config with a syntax error, a run's JSON record as a config, and a
  COCO-format set with 2 demonstrations."""
  from flamingo_jax.data import synthetic  # pylint: disable=g-import-not-at-top
  os.makedirs(directory)
  with tarfile.open(os.path.join(directory, "empty.tar"), "w"):
    pass
  rng = np.random.default_rng(0)
  with open(os.path.join(directory, "random.tar"), "wb") as f:
    f.write(rng.bytes(20_000))
  synthetic.write_shards(os.path.join(directory, "shards"), laion_shards=1, mmc4_shards=1, samples_per_shard=4)
  shutil.copy(os.path.join(directory, "shards", "laion-00000.tar"), os.path.join(directory, "tar.array_record"))
  for name, text in (("not_an_image.png", "hello"), ("syntax.py", "def get_config(:\n"),
                     ("train_config.json", '{"seed": null}')):
    with open(os.path.join(directory, name), "w") as f:
      f.write(text)
  synthetic.write_coco(directory, 2)
  return directory


def _run(case, out: str, bad: str = "") -> str:
  """'' when `case` fails as it should, else what went wrong."""
  tool, args, code, named = case
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": TEST_XLA_FLAGS}
  args = [a.replace(OUT, out).replace(BAD, bad) for a in args]
  proc = subprocess.run([sys.executable, "-m", f"flamingo_jax.{tool}", *args],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
  last = lines[-1] if lines else ""
  if (proc.returncode == code and last.startswith("error: ") and named in last
      and "Traceback" not in proc.stderr and not os.path.exists(out)):
    return ""
  return (f"{tool} {' '.join(args)}: exit {proc.returncode} (want {code}), written: {os.path.exists(out)}, "
          f"last line {last!r}\n{proc.stderr[-1500:]}")


@pytest.mark.slow
def test_every_cli_mistake_is_one_error_line(tmp_path):
  with concurrent.futures.ThreadPoolExecutor(4) as pool:  # a few processes at a time: memory
    bad = _bad_files(str(tmp_path / "bad"))
    failures = [f for f in pool.map(lambda n: _run(CASES[n], str(tmp_path / f"out{n}"), bad), range(len(CASES))) if f]
  assert not failures, f"{len(failures)} of {len(CASES)}:\n\n" + "\n\n".join(failures)


def test_config_rules_each_name_their_field():
  ok = tiny.get_config()
  assert config_check.problems(ok, devices=8) == []
  broken = {
      "model.lm.num_heads": (3, "model.lm.num_heads=3 does not divide the width 64"),
      "model.vision.heads": (5, "model.vision.heads=5 does not divide the width 64"),
      "model.xattn.every_n_layers": (0, "model.xattn.every_n_layers=0: must be 1..model.lm.num_layers=2"),
      "model.vision.patch_size": (7, "model.vision.image_size=64 is not a multiple of model.vision.patch_size=7"),
      "model.frozen_dtype": ("fp8", "model.frozen_dtype='fp8': expected one of"),
      "model.remat_policy": ("most", "model.remat_policy='most'"),
      "model.media_token_id": (512, "model.media_token_id=512 is outside the vocabulary"),
      "data.image_size": (32, "data.image_size=32 differs from model.vision.image_size=64"),
      "optim.schedule": ("step", "optim.schedule='step'"),
      "train.non_finite": ("ignore", "train.non_finite='ignore'"),
      "train.num_steps": (0, "train.num_steps=0"),
      "checkpoint.every_steps": (0, "checkpoint.every_steps=0"),
      "train.validate_every": (-5, "train.validate_every=-5"),
      "train.validation_batches": (0, "train.validation_batches=0: must be at least 1"),
  }
  for path, (value, message) in broken.items():
    cfg = ok.copy_and_resolve_references().unlock()
    *parents, leaf = path.split(".")
    node = cfg
    for key in parents:
      node = node[key]
    node[leaf] = value
    found = config_check.problems(cfg)
    assert len(found) == 1 and found[0].startswith(message), (path, found)
  scanned = ok.copy_and_resolve_references().unlock()
  scanned.model.update(scan_layers=True)
  scanned.model.lm.num_layers = 3
  scanned.model.xattn.every_n_layers = 2
  assert config_check.problems(scanned) == [
      "model.scan_layers=True needs model.lm.num_layers=3 divisible by model.xattn.every_n_layers=2"]
  opt = ok.copy_and_resolve_references().unlock()
  opt.model.lm.update(family="opt", max_positions=32)
  assert config_check.problems(opt) == [
      "data.mmc4.max_tokens=48 exceeds the LM's learned position table (model.lm.max_positions=32)"]
  assert config_check.problems(ok, devices=3) == [
      "data.laion.batch_size=16 does not divide over the 3 data x fsdp devices and 1 processes of mesh "
      "{'data': 3, 'fsdp': 1, 'tensor': 1}", "data.mmc4.batch_size=8 does not divide over the 3 data x fsdp "
      "devices and 1 processes of mesh {'data': 3, 'fsdp': 1, 'tensor': 1}"]
  two = ok.copy_and_resolve_references().unlock()
  two.mesh.update(data=-1, fsdp=-1)
  assert config_check.problems(two, devices=8)[0].startswith("mesh.data=-1, mesh.fsdp=-1, mesh.tensor=1: ")
  with pytest.raises(cli.UsageError, match=r"^the config has 2 problems: model.lm.num_heads=3 .*; train.num_steps=0"):
    bad = ok.copy_and_resolve_references().unlock()
    bad.model.lm.num_heads, bad.train.num_steps = 3, 0
    config_check.check(bad)


def test_an_error_line_starts_its_own_line_after_a_progress_bar(capsys):
  """A known problem raised while a progress bar is drawn: the bar is ended first, so the error
  is a line of its own (not appended to the bar's partial line)."""
  import tqdm  # pylint: disable=g-import-not-at-top

  def main():
    bar = tqdm.tqdm(total=10, desc="coco 0-shot")
    bar.update(3)
    raise FileNotFoundError("/nowhere/images: no such directory")
  assert cli.guard(main) == 1
  err = capsys.readouterr().err
  assert err.endswith("\nerror: /nowhere/images: no such directory\n"), repr(err[-200:])
