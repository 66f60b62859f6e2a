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
  def __call__(self, x: Array, fold: tuple[Array | None, Array | None] | None = None) -> Array:
    """`fold` = (scale, bias) of a LayerNorm (`LayerNormAffine`) whose normalised input x is:
    the result is this layer applied to `xhat * scale + bias`, computed as
    `xhat @ (scale * kernel) + bias @ kernel`. The same numbers, but when x is a constant (frozen
    features) the backward needs no gradient with respect to x, only the kernel's."""
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

    if fold is not None and n_in != 1:
      raise ValueError(f"fold needs one input dim, this Dense has in_axes={self.in_axes}")

    def project(k, b):
      if fold is not None:
        scale, shift = fold
        along_in = lambda v: v.astype(jnp.float32).reshape(-1, *([1] * (k.ndim - 1)))
        if shift is not None:
          # One vector through the kernel: a multiply and a sum (no matrix product to count).
          shifted = (along_in(shift) * k).sum(0)
          b = shifted if b is None else b + shifted
        if scale is not None:
          k = along_in(scale) * k
      y = jax.lax.dot_general(rows, k.astype(self.dtype), ((tuple(range(1, n_in + 1)), tuple(range(n_in))), ((), ())))
      y = y.reshape(*lead, *k.shape[n_in:])
      return y if b is None else y + b.astype(self.dtype)

    if not self.split_outputs:
      return project(kernel, bias)
    at = (slice(None),) * n_in
    return tuple(project(kernel[(*at, i)], None if bias is None else bias[i]) for i in range(features[0]))


NORM_EPS = 1e-5  # torch.nn.LayerNorm's default


def normalize(x: Array, eps: float = NORM_EPS) -> Array:
  """(x - mean) / sqrt(var + eps) over the last dim, in fp32: a LayerNorm before its scale and
  bias."""
  x32 = x.astype(jnp.float32)
  mean = x32.mean(-1, keepdims=True)
  var = jnp.square(x32 - mean).mean(-1, keepdims=True)
  return (x32 - mean) * jax.lax.rsqrt(var + eps)


class LayerNorm(nn.Module):
  """LayerNorm over the last dim, computed in fp32 (as torch does under autocast)."""
  eps: float = NORM_EPS
  use_bias: bool = True
  use_scale: bool = True
  axis_name: str = "norm"
  collection: str = TRAINABLE
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def affine(self, dim: int) -> tuple[Array | None, Array | None]:
    """Declares (from a compact method) and returns the (scale, bias) parameters, fp32."""
    get = lambda name, init: make_param(self, self.collection, name, init, (dim,), self.param_dtype,
                                        (self.axis_name,)).astype(jnp.float32)
    return (get("scale", nn.initializers.ones) if self.use_scale else None,
            get("bias", nn.initializers.zeros) if self.use_bias else None)

  @nn.compact
  def __call__(self, x: Array) -> Array:
    y = normalize(x, self.eps)
    scale, bias = self.affine(x.shape[-1])
    if scale is not None:
      y = y * scale
    if bias is not None:
      y = y + bias
    return y.astype(self.dtype)


class LayerNormAffine(LayerNorm):
  """A LayerNorm's (scale, bias), under the same names, for input that `normalize` has already
  normalised: `Dense(...)(normalize(x), fold=LayerNormAffine(...)(dim))` equals
  `Dense(...)(LayerNorm(...)(x))` (see `Dense`'s `fold`)."""

  @nn.compact
  def __call__(self, dim: int) -> tuple[Array | None, Array | None]:
    return self.affine(dim)


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
              bias: Array | None = None, scale: float | None = None,
              silent: Array | None = None) -> Array:
  """Multi-head attention weights and output; softmax in fp32.

  Shapes: q (B, Q, H, d), k and v (B, K, H, d), allowed broadcastable to (B, H, Q, K),
  bias broadcastable to (B, H, Q, K), silent (B, Q): query rows whose weights are zeroed after
  the softmax (their output is 0, not renormalised). Returns (B, Q, H, d).
  """
  if scale is None:
    scale = q.shape[-1] ** -0.5
  scores = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) * scale
  if bias is not None:
    scores = scores + bias.astype(jnp.float32)
  if allowed is not None:
    scores = masked_fill_min(scores, allowed)
  weights = jax.nn.softmax(scores, axis=-1)
  if silent is not None:
    weights = jnp.where(silent[:, None, :, None], 0.0, weights)
  return jnp.einsum("bhqk,bkhd->bqhd", weights.astype(v.dtype), v)


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
