#!/usr/bin/env bash
# The test suite: 8 simulated CPU devices, the PyTorch reference as the oracle, two test processes
# (a test file stays in one, with its fixtures; TEST_WORKERS=0 runs everything in this process).
set -euo pipefail
cd "$(dirname "$0")/.."
export XLA_FLAGS="${XLA_FLAGS:---xla_force_host_platform_device_count=8}" JAX_PLATFORMS=cpu  # (tests/conftest.py adds -O0)
exec python3 -m pytest tests -n "${TEST_WORKERS:-2}" --dist loadfile --durations=30 "$@"
