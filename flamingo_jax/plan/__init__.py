"""Planning a training job before paying for it: `python -m flamingo_jax.plan` (see __main__)."""
