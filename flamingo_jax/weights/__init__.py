"""Weight name maps, readers and writers between PyTorch checkpoints and Flax variables."""
