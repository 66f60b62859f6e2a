"""One way to get a model to run: config, variables placed on the mesh, tokenizer.

Training, generation, evaluation and export all load through here, so the rules are decided once:

- **Source.** `path` is a base checkpoint (`config.json`, from `convert import`) or a training
  workdir (`train_config.json`, written by training): its step `step` (default: the latest) gives
  the trainable weights, the run's base checkpoint or, without one, its seeded initialisation
  gives the frozen ones. `random_init` takes the seeded initialisation of `config` alone.
- **Config precedence.** The checkpoint's model architecture wins; a `config` given beside it
  supplies everything else (backend, mesh, sharding rules, compute/param/frozen dtypes, remat,
  scan layout, paths) and must describe the same architecture, or the differing fields are named.
- **Layout.** Stored weights are unrolled; they are converted to the scanned layout when the
  effective config scans (and a scanned run's weights to unrolled when it does not).
- **Casting.** Trainable weights in `model.param_dtype`, frozen ones in `model.frozen_dtype`,
  cast while reading (no full-precision copy in memory).
- **Placement.** On `mesh` (default: the config's) by the config's logical-axis rules.
- **Tokenizer.** `tokenizer_path` or the config's, checked against the vocabulary size and the
  special-token ids.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath
from jax.sharding import Mesh

from flamingo_jax import config_check, paths, tree, workdir
from flamingo_jax.data import tokenizer as tok_lib
from flamingo_jax.models import layer_groups, rules, shapes
from flamingo_jax.weights import orbax_io

# Model fields that say how to run the model, not what it is: a config may change them.
RUNTIME_MODEL_FIELDS = ("dtype", "param_dtype", "frozen_dtype", "remat_policy", "scan_layers")


@dataclasses.dataclass
class LoadedModel:
  """A model ready to run: the effective config, its variables on the mesh, tokenizer, mesh."""
  config: ml_collections.ConfigDict
  variables: dict
  tokenizer: Any
  mesh: Mesh
  rules: tuple
  source: str = ""  # what was loaded, for messages ("step 1000 of runs/tiny", ...)


def load_model(path: str | None = None, *, config: ml_collections.ConfigDict | None = None,
               mesh: Mesh | None = None, step: int | None = None, tokenizer_path: str | None = None,
               random_init: bool = False) -> LoadedModel:
  """Loads a base checkpoint, a training workdir or (`random_init`) `config`'s seeded weights."""
  if random_init:
    if config is None:
      raise ValueError("random_init needs a config")
    cfg, source = config, f"random weights of the config (seed {config.seed})"
  else:
    if path is None:
      raise ValueError("load_model needs a path (base checkpoint or training workdir)")
    stored, run = stored_config(path)
    cfg = effective_config(stored, config)
  if mesh is None:  # the train CLI's rules for the model and its mesh, before anything is read
    config_check.check_model(cfg, jax.device_count(), len(rules.slices_of(jax.devices())))
    mesh = rules.make_mesh(cfg.mesh)
  rule_set = rules.logical_rules(cfg)
  if random_init:
    variables = init_variables(cfg, mesh, rule_set)
  else:
    variables, source = read_variables(path, stored, run, step, dtypes(cfg.model))
    variables = layer_groups.to_layout(variables, cfg.model, bool(cfg.model.scan_layers))
    variables = place(variables, cfg.model, mesh, rule_set)
  tok_path = tokenizer_path or cfg.tokenizer_path
  tok = tok_lib.load_tokenizer(tok_path)
  tok_lib.check_tokenizer(tok, cfg.model, tok_path)
  return LoadedModel(cfg, variables, tok, mesh, rule_set, source)


def stored_config(path: str) -> tuple[ml_collections.ConfigDict, bool]:
  """(the config stored at `path`, whether `path` is a training workdir rather than a base
  checkpoint); read without JAX."""
  if (epath.Path(paths.resolve(path)) / "config.json").exists():
    return orbax_io.load_config(path), False
  run = workdir.read_run_config(path)
  if run is None:
    raise FileNotFoundError(f"Not a flamingo_jax base checkpoint (no config.json) nor a training "
                            f"workdir (no {workdir.RUN_CONFIG}): {paths.resolve(path)}")
  return run, True


def read_variables(path: str, stored: ml_collections.ConfigDict, is_run: bool, step: int | None,
                   dtypes_: dict | None = None, select=None) -> tuple[dict, str]:
  """(host variables in the unrolled layout, cast to `dtypes_` while reading; a description) of
  a base checkpoint or (`is_run`) a training workdir, whose config is `stored`. `select(collection,
  path)` limits what is read from a base checkpoint (see orbax_io.load_base_checkpoint)."""
  if not is_run:
    if step is not None:
      raise ValueError(f"{path} is a base checkpoint: it has no steps (step is for training workdirs)")
    _, variables = orbax_io.load_base_checkpoint(path, select=select, dtypes=dtypes_)
    return variables, f"base checkpoint {paths.resolve(path)}"
  step, params = workdir.restore_trainable(path, step)
  frozen = initial_frozen(stored, (dtypes_ or {}).get("frozen"), select)  # unrolled, maybe partial
  params = layer_groups.to_layout({"params": params}, stored.model, False)["params"]
  return {"params": params, "frozen": frozen}, f"step {step} of {paths.resolve(path)}"


def initial_frozen(run: ml_collections.ConfigDict, dtype=None, select=None) -> dict:
  """The frozen weights a training run started from (host arrays, unrolled): its base
  checkpoint's (cast to `dtype` while reading; `select` limits what is read), or those of its
  seeded initialisation."""
  if run.checkpoint.base:
    keep = lambda c, p: c == "frozen" and (select is None or select(c, p))
    _, variables = orbax_io.load_base_checkpoint(run.checkpoint.base, select=keep,
                                                 dtypes={"frozen": dtype} if dtype else None)
    return variables["frozen"]
  seeded = jax.device_get(_seeded_init(run.model, run.seed, None))
  return layer_groups.to_layout(seeded, run.model, False)["frozen"]


def dtypes(model_cfg: ml_collections.ConfigDict) -> dict[str, np.dtype]:
  """The stored-and-fed dtype of each collection: trainable param_dtype, frozen frozen_dtype."""
  return {"params": jnp.dtype(model_cfg.param_dtype), "frozen": jnp.dtype(model_cfg.frozen_dtype)}


def effective_config(stored: ml_collections.ConfigDict,
                     config: ml_collections.ConfigDict | None) -> ml_collections.ConfigDict:
  """`config` where given (its architecture checked against `stored`'s), else `stored`."""
  if config is None:
    return stored
  ours, theirs = _architecture(config.model), _architecture(stored.model)
  differ = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
  if differ:
    shown = "; ".join(f"model.{k}: config {ours.get(k)!r}, checkpoint {theirs.get(k)!r}" for k in differ[:6])
    raise ValueError(f"The config describes another model than the checkpoint ({len(differ)} "
                     f"fields differ): {shown}")
  return config


def _architecture(model: ml_collections.ConfigDict) -> dict[str, Any]:
  """The model config's fields that define the model (not how it runs), flattened."""
  return {".".join(p): list(v) if isinstance(v, tuple) else v for p, v in tree.leaves(model.to_dict())
          if len(p) > 1 or p[0] not in RUNTIME_MODEL_FIELDS}


def cast(variables: Any, model_cfg: ml_collections.ConfigDict) -> dict:
  """Host variables in the config's dtypes: trainable in param_dtype, frozen in frozen_dtype."""
  want = dtypes(model_cfg)
  variables = nn.unbox(variables)
  return {c: jax.tree_util.tree_map(lambda x, d=want[c]: np.asarray(x, d), v) for c, v in variables.items()}


def place(variables: Any, model_cfg: ml_collections.ConfigDict, mesh: Mesh, rule_set) -> dict:
  """Variables (host or device, either dtype) cast to the config's dtypes and put on the mesh by
  its logical-axis rules."""
  shardings = variable_shardings(model_cfg, mesh, rule_set)
  variables = cast(jax.device_get(variables), model_cfg)
  variables = jax.device_put({c: variables[c] for c in shardings}, shardings)
  rules.check_collections(variables)
  return variables


def variable_shardings(model_cfg: ml_collections.ConfigDict, mesh: Mesh, rule_set) -> dict:
  """{collection: tree of NamedShardings}: where `place` puts each variable."""
  return nn.unbox(rules.variable_shardings(shapes.abstract_variables(model_cfg), mesh, rule_set))


def abstract_variables(model_cfg: ml_collections.ConfigDict, mesh: Mesh, rule_set) -> dict:
  """What `place` would put on the mesh, as shapes only (ShapeDtypeStructs with the config's
  dtypes and shardings): planning a job allocates nothing."""
  shardings, want = variable_shardings(model_cfg, mesh, rule_set), dtypes(model_cfg)
  abstract = nn.unbox(shapes.abstract_variables(model_cfg))
  return {c: jax.tree_util.tree_map(lambda a, s, d=want[c]: jax.ShapeDtypeStruct(a.shape, d, sharding=s),
                                    abstract[c], shardings[c]) for c in shardings}


def init_variables(cfg: ml_collections.ConfigDict, mesh: Mesh, rule_set) -> dict:
  """The seeded initialisation of `cfg.model` (seed `cfg.seed`), made directly on the mesh."""
  variables = _seeded_init(cfg.model, cfg.seed, (mesh, rule_set))
  rules.check_collections(variables)
  return variables


def _seeded_init(model_cfg, seed: int, placement) -> dict:
  """Random variables; on `placement` = (mesh, rules) when given (each device makes its own
  shards), else on the default device. JAX's partitionable PRNG makes them equal either way."""
  init = lambda rng: nn.unbox(shapes.init_variables(model_cfg, rng))
  if placement is None:
    return jax.jit(init)(jax.random.PRNGKey(seed))
  mesh, rule_set = placement
  shardings = nn.unbox(rules.variable_shardings(shapes.abstract_variables(model_cfg), mesh, rule_set))
  with rules.activate(mesh, rule_set):
    return jax.jit(init, out_shardings=shardings)(jax.random.PRNGKey(seed))


def initial_variables(cfg: ml_collections.ConfigDict, mesh: Mesh, rule_set) -> dict:
  """What a training run starts from, on the mesh: its base checkpoint (cast while reading,
  converted to the run's layout), or its seeded initialisation."""
  if not cfg.checkpoint.base:
    return init_variables(cfg, mesh, rule_set)
  stored, variables = orbax_io.load_base_checkpoint(cfg.checkpoint.base, dtypes=dtypes(cfg.model))
  effective_config(stored, cfg)  # the base checkpoint must be of this model
  variables = layer_groups.to_layout(variables, cfg.model, bool(cfg.model.scan_layers))
  return place(variables, cfg.model, mesh, rule_set)
