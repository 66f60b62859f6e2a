"""The train state: step, trainable params and their optimizer state. The frozen tree travels
beside it, as a separate, never-differentiated argument."""
from __future__ import annotations

from typing import Any

import flax.struct
import jax
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any

  @classmethod
  def create(cls, params, tx: optax.GradientTransformation) -> "TrainState":
    return cls(step=jax.numpy.zeros((), jax.numpy.int32), params=params, opt_state=tx.init(params))


def state_shardings(params: Any, tx: optax.GradientTransformation, mesh: Mesh) -> TrainState:
  """Where each leaf of the state for `params` (arrays or ShapeDtypeStructs, with shardings)
  lives: the optimizer's moments exactly as their parameters, scalars (step, counts) replicated.
  (Left to the compiler, state made from zeros lands on one device, whatever the params' sharding.)"""
  by_path = {_param_path(path): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(params)}
  replicated = NamedSharding(mesh, PartitionSpec())

  def sharding(path, leaf):
    param = by_path.get(_param_path(path))
    return param.sharding if param is not None and param.shape == leaf.shape else replicated

  abstract = jax.eval_shape(lambda p: TrainState.create(p, tx), params)
  return jax.tree_util.tree_map_with_path(sharding, abstract)


def _param_path(path) -> tuple:
  """The dict keys of a key path: a parameter's path, also inside the optimizer's state."""
  return tuple(k.key for k in path if isinstance(k, jax.tree_util.DictKey))


def create_on_mesh(params: Any, tx: optax.GradientTransformation, shardings: TrainState) -> TrainState:
  """A fresh state for `params`, made directly where `state_shardings` says each leaf lives."""
  return jax.jit(lambda p: TrainState.create(p, tx), out_shardings=shardings)(params)
