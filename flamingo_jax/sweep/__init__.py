"""Config sweeps: a config file's `get_sweep(arg)` lists points of dotted overrides;
`python -m flamingo_jax.sweep` runs, resumes and compares them (see __main__)."""
from flamingo_jax.sweep.points import Point, SweepError, product, zipped  # noqa: F401
