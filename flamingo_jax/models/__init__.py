"""Pure Flax modules: vision tower -> perceiver resampler -> decoder LM with gated cross-attention."""
