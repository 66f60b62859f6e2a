"""Test-wide setup: 8 simulated CPU devices (before jax is imported) and fp32 matmuls."""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# PyTorch (the oracle), with torchvision (which loads triton), must load before anything pulls in
# TensorFlow (clu's writers do): the other order segfaults while torch imports triton.
import torch  # noqa: E402,F401
import torchvision  # noqa: E402,F401
import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
