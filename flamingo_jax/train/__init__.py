"""Training: optimizer, state, jitted step, Orbax checkpoints, metrics, the loop."""
