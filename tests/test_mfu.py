"""benchmarks/mfu.py on this CPU at widths where matrix products dominate: it runs the real step,
its model FLOPs are XLA's count of the compiled unrolled step within a few percent, MFU is taken
against the given peak, and the profile splits the device time by part of the model."""
import json
import os
import subprocess
import sys

import pytest

from flamingo_jax import chips
from flamingo_jax.train import profile
from tests.conftest import TEST_XLA_FLAGS
from tests.train.test_train import REPO

WIDE = ["--config.model.lm.hidden_size=512", "--config.model.lm.mlp_hidden_size=2048",
        "--config.model.lm.num_heads=8", "--config.model.vision.width=256", "--config.model.vision.heads=4"]


@pytest.mark.slow
def test_mfu_benchmark_runs_counts_and_profiles(tmp_path):
  out = tmp_path / "mfu.json"
  run = subprocess.run([sys.executable, "benchmarks/mfu.py", "--config=configs/tiny.py", *WIDE,
                        "--real_images=1,2", "--steps=2", "--warmup=1", "--peak_tflops=2", "--profile",
                        f"--json={out}"], cwd=REPO, capture_output=True, text=True,
                       env={**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": TEST_XLA_FLAGS})
  assert run.returncode == 0, run.stderr[-3000:]
  f = json.loads(out.read_text())
  # The analytic count (training's MFU uses it) vs XLA's count of the same compiled program,
  # elementwise work included; the MMC4 images are packed (1-2 real of 3 slots per row).
  assert f["batches"]["mmc4"]["encoded_images"] < f["batches"]["mmc4"]["rows"] * f["batches"]["mmc4"]["slots"]
  assert f["devices"] == 1 and f["model_flops"] <= f["xla_flops_per_device"] < 1.05 * f["model_flops"]
  assert f["mfu"] == pytest.approx(f["model_flops"] / f["step_s"] / 2e12)
  assert f["samples_per_s"] == pytest.approx((f["batches"]["mmc4"]["rows"] + f["batches"]["laion"]["rows"]) / f["step_s"])
  assert f"MFU {f['mfu']:.1%} of 2 TFLOP/s x 1" in run.stdout
  parts = f["profile"]["parts"]
  assert {"vision tower", "resampler", "cross-attention", "LM layers", "LM head + loss"} <= set(parts), parts
  assert sum(p["share"] for p in parts.values()) == pytest.approx(1.0)
  assert 0 < f["profile"]["busy_ms"] <= f["profile"]["op_ms"] * 1.0001 and f["profile"]["ops"]
  assert "device time per step" in run.stdout and "top ops:" in run.stdout


def test_peaks_and_op_scopes():
  assert chips.chip_of("NVIDIA H200").peak_flops == 989e12 and chips.chip_of("NVIDIA H100 80GB HBM3").name == "NVIDIA H100 80GB"
  assert chips.chip_of("TPU v5 lite").peak_flops == 197e12 and chips.chip_of("cpu") is None
  hlo = ('  %fusion.7 = f32[8]{0} fusion(%p), kind=kLoop, calls=%c, metadata={op_type="dot_general" '
         'op_name="jit(train_step)/jvp(Flamingo)/vision/blocks_0/attn/dot_general" source_file="x.py"}\n'
         '  ROOT %add.3 = f32[] add(%a, %b), metadata={op_name="jit(train_step)/add"}\n')
  assert profile.op_scopes(hlo) == {"fusion.7": "jit(train_step)/jvp(Flamingo)/vision/blocks_0/attn/dot_general",
                                    "add.3": "jit(train_step)/add"}
  assert [profile.part_of(s) for s in profile.op_scopes(hlo).values()] == ["vision tower", profile.OTHER]
  events = [{"ph": "X", "name": "fusion.7", "ts": 0, "dur": 10}, {"ph": "X", "name": "add.3", "ts": 5, "dur": 10},
            {"ph": "X", "name": "host_thing", "ts": 0, "dur": 99}]  # overlapping ops: 15 us busy, 20 in ops
  assert profile.device_op_times(events, profile.op_scopes(hlo)) == ({"fusion.7": 10.0, "add.3": 10.0}, 15.0)
  # A GPU trace: the kernel on the device's track counts, its launch on the host's does not.
  gpu = [{"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "/host:CPU"}},
         {"ph": "M", "name": "process_name", "pid": 2, "args": {"name": "/device:GPU:0"}},
         {"ph": "X", "pid": 1, "name": "fusion.7", "ts": 0, "dur": 50},
         {"ph": "X", "pid": 2, "name": "loop_fusion_kernel", "args": {"hlo_op": "fusion.7"}, "ts": 60, "dur": 4}]
  assert profile.device_op_times(gpu, profile.op_scopes(hlo)) == ({"fusion.7": 4.0}, 4.0)
