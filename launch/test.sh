#!/usr/bin/env bash
# The test suite: 8 simulated CPU devices, the PyTorch reference as the oracle.
set -euo pipefail
cd "$(dirname "$0")/.."
export XLA_FLAGS="${XLA_FLAGS:---xla_force_host_platform_device_count=8}" JAX_PLATFORMS=cpu
exec python3 -m pytest tests "$@"
