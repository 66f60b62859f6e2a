"""Decoder-only LMs (MPT, GPT-NeoX, OPT) as one parameterised stack; see `lm.py`."""
