"""A newcomer's first hour, as the README tells it: a short tiny run, then the README's "use the
trained model" commands exactly as written, each on a machine as a user has it (no JAX_PLATFORMS;
libtpu installed but no TPU), each succeeding with only our own lines; and every command in the
README's code blocks names a module that exists and flags it defines."""
import concurrent.futures
import os
import re
import shlex
import subprocess
import sys

import pytest

from tests.conftest import TEST_XLA_FLAGS, library_lines

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(REPO, "README.md")

def code_blocks(text: str) -> list[tuple[str, str]]:
  """(the heading above it, the block's text) for every ```bash block of a markdown text."""
  blocks, heading = [], ""
  for part in re.split(r"(^#+ [^\n]*$|^```bash\n.*?^```$)", text, flags=re.M | re.S):
    if part.startswith("#"):
      heading = part.lstrip("#").strip()
    elif part.startswith("```bash"):
      blocks.append((heading, part.removeprefix("```bash\n").removesuffix("```")))
  return blocks


def commands(block: str) -> list[str]:
  """The block's commands: continuation lines joined, comments and blank lines dropped."""
  joined = re.sub(r"\\\n\s*", " ", block)
  return [line.split("  #")[0].strip() for line in joined.splitlines()
          if line.strip() and not line.strip().startswith("#")]


def user_env(home: str) -> dict[str, str]:
  """The test environment less what makes it a test machine (a user sets no JAX_PLATFORMS,
  simulates no devices and sets no JAX cache): the tools' own compilation cache is the clone's
  (FLAMINGO_JAX_COMPILE_CACHE, as a user would point it); -O0 stays, for speed."""
  drop = ("JAX_PLATFORMS", "XLA_FLAGS", "JAX_COMPILATION_CACHE_DIR")
  env = {k: v for k, v in os.environ.items() if k not in drop}
  env.update(XLA_FLAGS=TEST_XLA_FLAGS, FLAMINGO_JAX_COMPILE_CACHE=os.path.join(home, "xla_cache"))
  return env


def _run(command: str, cwd: str) -> subprocess.CompletedProcess:
  return subprocess.run(command, shell=True, cwd=cwd, env=user_env(cwd), capture_output=True, text=True,
                        timeout=600, executable="/bin/bash")


@pytest.fixture(scope="module")
def newcomer(tmp_path_factory):
  """A directory laid out as a clone (configs/ and the package linked) after a short tiny run:
  30 steps of `configs/tiny.py` into runs/tiny, its shards written where data.synthetic_dir says."""
  home = tmp_path_factory.mktemp("clone")
  for name in ("configs", "flamingo_jax"):
    os.symlink(os.path.join(REPO, name), home / name)
  proc = _run("python -m flamingo_jax.train --config=configs/tiny.py --workdir=runs/tiny "
              "--config.train.num_steps=30 --config.data.synthetic_dir=runs/shards", str(home))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert not library_lines(proc.stdout + proc.stderr), library_lines(proc.stdout + proc.stderr)
  assert os.path.exists(home / "runs" / "shards" / "held_out")  # the globs followed the field
  assert not os.path.exists(home / "runs" / "synthetic_shards")
  assert os.listdir(home / "xla_cache")  # the persistent compilation cache is on by default
  return str(home), proc.stdout


@pytest.mark.slow
def test_the_readme_next_commands_run_as_written_and_quietly(newcomer):
  home, _ = newcomer
  blocks = [b for h, b in code_blocks(open(README).read()) if "use the trained model" in h.lower()]
  assert blocks, "README: no bash block under a 'Use the trained model' heading"
  for command in commands(blocks[0]):
    command = command.replace("python ", f"{shlex.quote(sys.executable)} ", 1)
    proc = _run(command, home)
    assert proc.returncode == 0, (command, proc.stderr[-3000:])
    noise = library_lines(proc.stdout + proc.stderr)
    assert not noise, (command, noise)
  assert os.path.exists(os.path.join(home, "runs", "tiny", "checkpoint.safetensors"))
  snippet = re.search(r"use the trained model.*?```python\n(.*?)```", open(README).read(), re.S | re.I)
  assert snippet, "README: no Python example under 'Use the trained model'"
  proc = _run(f"{shlex.quote(sys.executable)} -c {shlex.quote(snippet.group(1))}", home)
  assert proc.returncode == 0 and proc.stdout.strip(), proc.stderr[-3000:]


@pytest.mark.slow
def test_other_tools_are_quiet(newcomer, tmp_path):
  """The tools the README block does not run, on their ordinary success path."""
  home, _ = newcomer
  shards = os.path.join(home, "runs", "shards")
  python = shlex.quote(sys.executable)
  for command in (
      f"{python} -m flamingo_jax.info --config=configs/tiny.py",
      f"{python} -m flamingo_jax.plan --config=configs/tiny.py --topology=v5e:2x2",
      f"{python} -m flamingo_jax.convert export --train_workdir=runs/tiny --out={tmp_path}/checkpoint.pt",
      f"{python} -m flamingo_jax.data.array_record --shards='{shards}/laion-000*.tar' --out_dir={tmp_path}/ar",
      f"{python} -m flamingo_jax.data.synthetic --images=2 --out={tmp_path}/images"):
    proc = _run(command, home)
    assert proc.returncode == 0, (command, proc.stderr[-3000:])
    assert not library_lines(proc.stdout + proc.stderr), (command, library_lines(proc.stdout + proc.stderr))


def _defined_flags(module: str) -> str:
  """The help text of `python -m <module>`: every flag it defines appears in it."""
  proc = subprocess.run([sys.executable, "-m", module, "--helpfull" if module != "flamingo_jax.data.synthetic"
                         else "--help"], cwd=REPO, capture_output=True, text=True, timeout=300,
                        env={**os.environ, "JAX_PLATFORMS": "cpu"})
  return proc.stdout + proc.stderr


def test_every_readme_command_names_a_module_and_flags_that_exist():
  wanted: dict[str, set[str]] = {}
  scripts = []
  for _, block in code_blocks(open(README).read()):
    for command in commands(block):
      for part in command.split("&&"):
        words = shlex.split(part.strip())
        if words[:2] == ["python", "-m"]:
          flags = {w[2:].split("=")[0] for w in words[3:] if w.startswith("--")}
          wanted.setdefault(words[2], set()).update(f for f in flags if not f.startswith("config."))
        elif words and words[0] == "bash":
          scripts.append(words[1])
  assert "flamingo_jax.train" in wanted and scripts
  for script in scripts:
    assert os.path.exists(os.path.join(REPO, script)), script
  with concurrent.futures.ThreadPoolExecutor(4) as pool:
    helps = dict(zip(wanted, pool.map(_defined_flags, wanted)))
  for module, flags in wanted.items():
    assert "No module named" not in helps[module], module
    for flag in flags:
      names = "|".join(re.escape(f) for f in {flag, flag.replace("_", "-")})
      assert re.search(rf"--(\[no\])?({names})\b", helps[module]), (module, flag)
