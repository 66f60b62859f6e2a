"""Primitive layers shared by every tower: Dense, LayerNorm, Embed, activations, attention.

Each parameterised layer takes `collection`: frozen towers (vision, LM) store their weights in
the non-trainable "frozen" collection, trainable modules in "params". Every parameter carries
logical axis names (see `rules.py`), which the mesh rules map onto devices.

Layout: Dense kernels are (in, out), the transpose of torch.nn.Linear.weight.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array
Dtype = Any
FROZEN = "frozen"
TRAINABLE = "params"


def make_param(module: nn.Module, collection: str, name: str, init_fn: Callable, shape: Sequence[int],
               dtype: Dtype, axes: Sequence[str | None]) -> Array:
  """Declares a parameter in `collection` with logical axis names; returns its value."""
  init = nn.with_logical_partitioning(init_fn, tuple(axes))
  if collection == TRAINABLE:
    return module.param(name, init, tuple(shape), dtype)
  var = module.variable(collection, name, lambda: init(module.make_rng("params"), tuple(shape), dtype))
  return var.value


def constrain(x: Array, axes: Sequence[str | None]) -> Array:
  """Logical sharding constraint on an activation (a no-op outside a mesh with rules)."""
  return nn.with_logical_constraint(x, tuple(axes))


class Dense(nn.Module):
  """y = x @ kernel (+ bias) over the last `len(in_axes)` dims of x.

  `features` may be a tuple, giving a kernel of shape (*in, *features), e.g. (embed, 3, heads, kv).
  """
  features: int | tuple[int, ...]
  in_axes: tuple[str | None, ...] = ("embed",)
  out_axes: tuple[str | None, ...] = ("mlp",)
  use_bias: bool = False
  collection: str = TRAINABLE
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  kernel_init: Callable | None = None  # default: fan-in truncated normal over the in dims
  # Return a tuple, one output per index of the first feature dim (a fused k/v or q/k/v kernel):
  # each is its own matrix product, so no gradient is padded back into the fused shape.
  split_outputs: bool = False

  @nn.compact
  def __call__(self, x: Array) -> Array:
    features = (self.features,) if isinstance(self.features, int) else tuple(self.features)
    n_in = len(self.in_axes)
    in_shape = x.shape[-n_in:]
    init = self.kernel_init or nn.initializers.variance_scaling(
        1.0, "fan_in", "truncated_normal", in_axis=tuple(range(n_in)),
        out_axis=tuple(range(n_in, n_in + len(features))))
    kernel = make_param(self, self.collection, "kernel", init, (*in_shape, *features),
                        self.param_dtype, (*self.in_axes, *self.out_axes))
    # Leading dims merged into one: both the forward and the kernel's gradient are then plain
    # matrix products (XLA:CPU runs a gradient contracting over several dims several times slower).
    lead = x.shape[:-n_in]
    rows = x.reshape(-1, *in_shape).astype(self.dtype)
    bias = None
    if self.use_bias:
      bias = make_param(self, self.collection, "bias", nn.initializers.zeros, features,
                        self.param_dtype, self.out_axes)

    def project(k, b):
      y = jax.lax.dot_general(rows, k.astype(self.dtype), ((tuple(range(1, n_in + 1)), tuple(range(n_in))), ((), ())))
      y = y.reshape(*lead, *k.shape[n_in:])
      return y if b is None else y + b.astype(self.dtype)

    if not self.split_outputs:
      return project(kernel, bias)
    at = (slice(None),) * n_in
    return tuple(project(kernel[(*at, i)], None if bias is None else bias[i]) for i in range(features[0]))


class LayerNorm(nn.Module):
  """LayerNorm over the last dim, computed in fp32 (as torch does under autocast)."""
  eps: float = 1e-5
  use_bias: bool = True
  use_scale: bool = True
  axis_name: str = "norm"
  collection: str = TRAINABLE
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    dim = x.shape[-1]
    x32 = x.astype(jnp.float32)
    mean = x32.mean(-1, keepdims=True)
    var = jnp.square(x32 - mean).mean(-1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
    if self.use_scale:
      y = y * make_param(self, self.collection, "scale", nn.initializers.ones, (dim,),
                         self.param_dtype, (self.axis_name,)).astype(jnp.float32)
    if self.use_bias:
      y = y + make_param(self, self.collection, "bias", nn.initializers.zeros, (dim,),
                         self.param_dtype, (self.axis_name,)).astype(jnp.float32)
    return y.astype(self.dtype)


class Embed(nn.Module):
  """A token embedding table (vocab, embed); `attend` gives the tied output projection."""
  num_embeddings: int
  features: int
  init_std: float = 0.02
  collection: str = TRAINABLE
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def setup(self):
    self.embedding = make_param(self, self.collection, "embedding", nn.initializers.normal(self.init_std),
                                (self.num_embeddings, self.features), self.param_dtype,
                                ("vocab", "embed"))

  def __call__(self, ids: Array) -> Array:
    return jnp.take(self.embedding, ids, axis=0).astype(self.dtype)

  def attend(self, x: Array) -> Array:
    return jnp.einsum("...d,vd->...v", x.astype(self.dtype), self.embedding.astype(self.dtype))


def quick_gelu(x: Array) -> Array:
  """CLIP's QuickGELU: x * sigmoid(1.702 x)."""
  return x * jax.nn.sigmoid(1.702 * x)


ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),  # torch.nn.GELU() / HF "gelu"
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "quick_gelu": quick_gelu,
}


def activation(name: str) -> Callable[[Array], Array]:
  """Looks up an activation by its HF config name."""
  if name not in ACTIVATIONS:
    raise ValueError(f"Unknown activation {name!r}; known: {sorted(ACTIVATIONS)}")
  return ACTIVATIONS[name]


def masked_fill_min(scores: Array, allowed: Array) -> Array:
  """Replaces disallowed logits by the most negative finite value, as the reference does.

  A row with every key disallowed then softmaxes to uniform weights (the reference's behaviour).
  """
  return jnp.where(allowed, scores, jnp.finfo(scores.dtype).min)


def attention(q: Array, k: Array, v: Array, *, allowed: Array | None = None,
              bias: Array | None = None, scale: float | None = None) -> Array:
  """Multi-head attention weights and output; softmax in fp32.

  Shapes: q (B, Q, H, d), k and v (B, K, H, d), allowed broadcastable to (B, H, Q, K),
  bias broadcastable to (B, H, Q, K). Returns (B, Q, H, d).
  """
  if scale is None:
    scale = q.shape[-1] ** -0.5
  scores = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) * scale
  if bias is not None:
    scores = scores + bias.astype(jnp.float32)
  if allowed is not None:
    scores = masked_fill_min(scores, allowed)
  weights = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
  return jnp.einsum("bhqk,bkhd->bqhd", weights, v)


def remat(module_cls, policy: str, prevent_cse: bool = True):
  """Wraps a module class in nn.remat with a policy named in the config ('none' = no remat).

  Inside `nn.scan` pass prevent_cse=False: scan already keeps XLA from merging the recomputation.
  """
  if policy == "none":
    return module_cls
  if policy == "full":
    return nn.remat(module_cls, prevent_cse=prevent_cse)
  return nn.remat(module_cls, policy=getattr(jax.checkpoint_policies, policy), prevent_cse=prevent_cse)


def scan(target, collections: Sequence[str], length: int, **kw):
  """`nn.scan` over `length` layers whose variables in `collections` are stacked on a leading
  `layers` axis (each layer initialised with its own rng); `kw` adds in_axes/out_axes."""
  return nn.scan(target, variable_axes={c: 0 for c in collections}, split_rngs={"params": True},
                 length=length, metadata_params={nn.PARTITION_NAME: "layers"}, **kw)
