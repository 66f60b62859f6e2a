"""Test-wide setup: 8 simulated CPU devices (before jax is imported), fp32 matmuls, and one
persistent compilation cache for the session."""
import atexit
import contextlib
import os
import re
import shutil
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
# Compiling dominates the time of the tests' tiny programs: LLVM at -O0 compiles them in about
# half the time (XLA's own HLO passes, which decide what is computed, are unchanged). Subprocesses
# that set their own XLA_FLAGS add TEST_XLA_FLAGS.
TEST_XLA_FLAGS = "--xla_backend_optimization_level=0"
if "xla_backend_optimization_level" not in os.environ["XLA_FLAGS"]:
  os.environ["XLA_FLAGS"] += " " + TEST_XLA_FLAGS
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Many tests compile the same tiny train step, in this process and in the subprocesses they start
# (which inherit these variables): a session-wide cache compiles each program once. Cached
# executables are the ones a fresh compile would build, so results are unchanged.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="flamingo_jax_xla_cache_")
  atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

# PyTorch (the oracle), with torchvision (which loads triton), must load before anything pulls in
# TensorFlow (clu's writers do): the other order segfaults while torch imports triton.
import torch  # noqa: E402,F401
import torchvision  # noqa: E402,F401
import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")


# What libraries print that is not ours: absl/glog-style records, Python warnings, libtpu's and
# TensorFlow's start-up notices, tracebacks.
LIBRARY_LINE = re.compile(
    r"^[IWEF]\d{4} \d\d:\d\d:\d\d|^(WARNING|INFO|ERROR):(absl|root|jax|orbax)|Warning: |^WARNING: |"
    r"TPU_ACCELERATOR_TYPE|TPU_WORKER_HOSTNAMES|jellyfish|host bounds|oneDNN|tensorflow|"
    r"Traceback|CheckpointManager|orbax|Unable to initialize backend")


def library_lines(output: str) -> list[str]:
  lines = [line for chunk in output.splitlines() for line in chunk.split("\r")]
  return [line for line in lines if LIBRARY_LINE.search(line)]


_LINGERING = []  # emulators kept serving until the test process ends


@pytest.fixture
def serve_gcs(tmp_path, monkeypatch):
  """`serve_gcs(root)` serves `root/<bucket>/<object>` as gs:// for this test through the local
  GCS emulator, with its variables in os.environ (so subprocesses reach it too).

  `linger=True` keeps it serving after the test: a data iterator's read-ahead threads may still
  be reading when the test ends, and array_record's GCS client retries a vanished server for
  minutes, which would hold up the process's exit."""
  from tests.fake_gcs import FakeGcs  # pylint: disable=g-import-not-at-top
  with contextlib.ExitStack() as stack:
    def serve(root: str, linger: bool = False) -> FakeGcs:
      gcs = FakeGcs(root, str(tmp_path))
      if linger:
        _LINGERING.append(gcs.__enter__())
      else:
        stack.enter_context(gcs)
      for key, value in gcs.env().items():
        monkeypatch.setenv(key, value)
      return gcs
    yield serve
