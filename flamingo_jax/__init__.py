"""flamingo_jax: OpenFlamingo in JAX/Flax."""
