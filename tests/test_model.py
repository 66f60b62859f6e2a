"""Model-level properties: sharding, collections, parameter counts, dtypes, remat, video frames."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import common, of_3b, of_4b, of_9b, tiny
from flamingo_jax import info
from flamingo_jax.models import rules, shapes
from flamingo_jax.models.flamingo import Flamingo


def _tiny_inputs(cfg, batch=4, images=2, length=12, seed=0):
  rng = np.random.default_rng(seed)
  size = cfg.model.vision.image_size
  vision = rng.normal(size=(batch, images, 1, size, size, 3)).astype(np.float32)
  ids = rng.integers(0, 500, size=(batch, length)).astype(np.int32)
  ids[:, 0] = cfg.model.media_token_id
  ids[:, 6] = cfg.model.media_token_id
  mask = np.ones((batch, length), np.int32)
  mask[1, :3] = 0
  return vision, ids, mask


def _open_gates(variables):
  """Gates start at 0; open them so the cross-attention path matters."""
  params = nn.unbox(variables["params"])
  for name in params:
    if name.startswith("xattn_"):
      params[name] = dict(params[name], attn_gate=jnp.full((1,), 0.5), ff_gate=jnp.full((1,), 0.5))
  return {"params": params, "frozen": nn.unbox(variables["frozen"])}


def test_sharded_forward_equals_single_device():
  cfg = tiny.get_config().unlock()
  cfg.mesh.update(data=2, fsdp=2, tensor=2)
  model = Flamingo(cfg.model)
  variables = _open_gates(shapes.init_variables(cfg.model, jax.random.PRNGKey(0)))
  inputs = _tiny_inputs(cfg)
  single = model.apply(variables, *map(jnp.asarray, inputs))

  mesh = rules.make_mesh(cfg.mesh)
  assert mesh.devices.shape == (2, 2, 2)
  rule_set = rules.logical_rules(cfg)
  abstract = shapes.abstract_variables(cfg.model)
  shardings = rules.variable_shardings(abstract, mesh, rule_set)
  sharded_vars = jax.device_put(variables, nn.unbox(shardings))
  sharded_inputs = [jax.device_put(x, rules.batch_sharding(mesh, x.ndim)) for x in inputs]
  with rules.activate(mesh, rule_set):
    sharded = jax.jit(model.apply)(sharded_vars, *sharded_inputs)
    # The model's activation constraints (layers.constrain) reach the program: under `with mesh:`
    # alone flax drops them all without a word.
    lowered = jax.jit(model.apply).lower(sharded_vars, *sharded_inputs).as_text()
  assert lowered.count("sdy.sharding_constraint") >= 9, lowered.count("sdy.sharding_constraint")
  # Parameters really are split across devices (not silently replicated).
  qkv = sharded_vars["frozen"]["lm"]["blocks_0"]["attn"]["qkv"]["kernel"]
  assert len({str(s.index) for s in qkv.addressable_shards}) > 1
  # Same math, different reduction order; logits here are O(10) (the tiny table has unit scale).
  np.testing.assert_allclose(np.asarray(sharded), np.asarray(single), rtol=0, atol=1e-4)


def test_collections_follow_the_rules():
  variables = shapes.abstract_variables(tiny.get_config().model)
  assert set(variables) == {"params", "frozen"}
  assert set(variables["params"]) == {"perceiver", "special_embeddings", "xattn_0", "xattn_1"}
  assert set(variables["frozen"]) == {"vision", "lm"}
  rules.check_collections(variables)
  with pytest.raises(ValueError, match="outside their collection"):
    rules.check_collections({"params": {"lm": {"w": jnp.zeros(2)}}})


def test_every_parameter_has_logical_axes():
  variables = shapes.abstract_variables(tiny.get_config().model)
  leaves = jax.tree_util.tree_leaves(variables, is_leaf=lambda x: isinstance(x, nn.Partitioned))
  assert leaves and all(isinstance(x, nn.Partitioned) for x in leaves)
  for leaf in leaves:
    assert len(leaf.names) == leaf.value.ndim


@pytest.mark.parametrize("get_config,xattn_layers,checkpoint_params", [
    (of_3b.get_config, 24, 1_046_992_944),
    (of_4b.get_config, 16, 1_218_197_536),
    (of_9b.get_config, 8, 1_384_781_840),
])
def test_released_variant_parameter_counts(get_config, xattn_layers, checkpoint_params):
  """Counts from shapes alone equal the parameters in OpenFlamingo's released checkpoint.pt files."""
  counts = info.parameter_counts(get_config().model)
  assert counts["params/perceiver"] == 63_019_008
  assert sum(1 for k in counts if k.startswith("params/xattn_")) == xattn_layers
  assert counts["openflamingo_checkpoint_params"] == checkpoint_params
  assert counts["frozen/vision"] == 303_966_208  # ViT-L/14 visual, proj included


def test_4b_keeps_special_rows_frozen():
  assert "special_embeddings" not in shapes.abstract_variables(of_4b.get_config().model)["params"]


@pytest.mark.slow
def test_bf16_compute_and_remat_run_and_stay_close():
  cfg = tiny.get_config().unlock()
  variables = _open_gates(shapes.init_variables(cfg.model, jax.random.PRNGKey(1)))
  inputs = list(map(jnp.asarray, _tiny_inputs(cfg)))
  reference = Flamingo(cfg.model).apply(variables, *inputs)
  cfg.model.update(dtype="bfloat16", remat_policy="nothing_saveable")
  low = Flamingo(cfg.model).apply(variables, *inputs)
  assert low.dtype == jnp.bfloat16
  # bf16 keeps ~3 significant digits: compare to the logits' scale.
  assert float(jnp.abs(low.astype(jnp.float32) - reference).max()) < 0.02 * float(jnp.abs(reference).max())
  grads = jax.grad(lambda p: Flamingo(cfg.model).apply({"params": p, "frozen": variables["frozen"]},
                                                       *inputs).astype(jnp.float32).mean())(variables["params"])
  assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree_util.tree_leaves(grads))


@pytest.mark.slow
def test_video_frames_with_frame_and_media_time_embeddings():
  cfg = tiny.get_config().unlock()
  cfg.model.perceiver.update(max_num_frames=4, max_num_media=3)
  size = cfg.model.vision.image_size
  variables = Flamingo(cfg.model).init(jax.random.PRNGKey(0), jnp.zeros((1, 1, 4, size, size, 3)),
                                       jnp.zeros((1, 8), jnp.int32), jnp.ones((1, 8), jnp.int32))
  assert variables["params"]["perceiver"]["frame_embs"].value.shape == (4, cfg.model.vision.width)
  clips = jax.random.normal(jax.random.PRNGKey(1), (2, 3, 4, size, size, 3))
  media = Flamingo(cfg.model).apply(variables, clips, method=lambda m, v: m.encode_images(v))
  assert media.shape == (2, 3, cfg.model.perceiver.num_latents, cfg.model.vision.width)
  with pytest.raises(ValueError, match="max_num_frames"):
    Flamingo(cfg.model).apply(variables, jnp.zeros((1, 1, 5, size, size, 3)),
                              method=lambda m, v: m.encode_images(v))


def test_bad_image_shape_is_a_clear_error():
  cfg = tiny.get_config()
  variables = shapes.init_variables(cfg.model, jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match="vision_x must be"):
    Flamingo(cfg.model).apply(variables, jnp.zeros((1, 64, 64, 3)), jnp.zeros((1, 4), jnp.int32),
                              jnp.ones((1, 4), jnp.int32))


def test_config_argument_parsing():
  assert of_3b.get_config("gpu").model.dtype == "bfloat16"
  assert of_3b.get_config("cpu").model.dtype == "float32"
  with pytest.raises(ValueError, match="Unknown config argument"):
    common.parse_arg("nope=1", backend="cpu")
  with pytest.raises(AttributeError):
    of_3b.get_config().model.not_a_field = 1  # locked: typos are errors
