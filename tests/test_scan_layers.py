"""`model.scan_layers`: the scanned stack computes exactly what the unrolled one does."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flamingo_jax.models import layer_groups, rules, shapes
from flamingo_jax.models.flamingo import Flamingo
from flamingo_jax.models.vision import clip_embedding_fn
from flamingo_jax.weights import state_dict as sd_lib
from oracle import reference_models as ref


@pytest.fixture(scope="module", params=[1, 2])
def setup(request):
  every_n = request.param
  torch_model = ref.build_reference("mpt", every_n)
  cfg = ref.jax_config("mpt", every_n)
  unrolled = sd_lib.flamingo_to_flax(ref.state_dict_numpy(torch_model), cfg)
  scan_cfg = ref.jax_config("mpt", every_n)
  scan_cfg.scan_layers = True
  scanned = sd_lib.flamingo_to_flax(ref.state_dict_numpy(torch_model), scan_cfg)
  return cfg, unrolled, scan_cfg, scanned


def test_layout_round_trip_and_shapes(setup):
  cfg, unrolled, scan_cfg, scanned = setup
  groups = cfg.lm.num_layers // cfg.xattn.every_n_layers
  assert scanned["params"]["layers"]["xattn"]["attn_gate"].shape == (groups, 1)
  assert scanned["frozen"]["vision"]["resblocks"]["ln_1"]["scale"].shape == (cfg.vision.layers, cfg.vision.width)
  assert scanned["params"]["perceiver"]["layers"]["ff"]["norm"]["scale"].shape[0] == cfg.perceiver.depth
  back = layer_groups.to_unrolled(scanned, cfg)
  jax.tree_util.tree_map(np.testing.assert_array_equal, back, unrolled)
  # A workdir from before the ViT and the resampler were scanned: only the LM's layers stacked.
  lm_only = {"params": {**scanned["params"], "perceiver": unrolled["params"]["perceiver"]},
             "frozen": {**scanned["frozen"], "vision": unrolled["frozen"]["vision"]}}
  jax.tree_util.tree_map(np.testing.assert_array_equal, layer_groups.to_layout(lm_only, cfg, False), unrolled)
  jax.tree_util.tree_map(np.testing.assert_array_equal, layer_groups.to_layout(lm_only, cfg, True), scanned)
  assert layer_groups.to_layout(scanned, cfg, True) is scanned  # nothing to convert: not fetched
  abstract = nn.unbox(shapes.abstract_variables(scan_cfg))
  jax.tree_util.tree_map(lambda a, b: (a.shape == b.shape) or pytest.fail(f"{a.shape} != {b.shape}"),
                         abstract, scanned)
  rules.check_collections(abstract)


@pytest.mark.slow
def test_forward_and_gradients_match(setup):
  cfg, unrolled, scan_cfg, scanned = setup
  vision, ids, mask = ref.sample_batch(np.random.default_rng(0))
  args = tuple(map(jnp.asarray, (vision, ids, mask)))
  a = Flamingo(cfg).apply(unrolled, *args)
  b = Flamingo(scan_cfg).apply(scanned, *args)
  np.testing.assert_allclose(a, b, atol=1e-5)

  def grads(model_cfg, variables):
    loss = lambda p: Flamingo(model_cfg).apply({"params": p, "frozen": variables["frozen"]}, *args).mean()
    return jax.grad(loss)(variables["params"])
  g_scan = layer_groups.to_unrolled({"params": grads(scan_cfg, scanned), "frozen": scanned["frozen"]}, cfg)
  jax.tree_util.tree_map(lambda x, y: np.testing.assert_allclose(x, y, atol=1e-6),
                         grads(cfg, unrolled), g_scan["params"])


def test_cached_decoding_matches(setup):
  cfg, unrolled, scan_cfg, scanned = setup
  vision, ids, mask = ref.sample_batch(np.random.default_rng(1), batch=2)
  outs = []
  for c, v in ((cfg, unrolled), (scan_cfg, scanned)):
    model = Flamingo(c)
    logits, state = model.apply(v, jnp.asarray(vision), jnp.asarray(ids), jnp.asarray(mask), 20,
                                method=Flamingo.prefill)
    step, _ = model.apply(v, jnp.array([3, 4]), state, method=Flamingo.extend)
    outs.append((logits, step))
  np.testing.assert_allclose(outs[0][0], outs[1][0], atol=1e-5)
  np.testing.assert_allclose(outs[0][1], outs[1][1], atol=1e-5)
  # RICES's CLIP embedding reads the class token of either layout's tower.
  images = jnp.asarray(vision[:, 0, 0])
  embeds = [clip_embedding_fn(c)(nn.unbox(v)["frozen"]["vision"], images) for c, v in ((cfg, unrolled), (scan_cfg, scanned))]
  np.testing.assert_allclose(embeds[0], embeds[1], atol=1e-6)
