"""Image packing: the vision tower on real images only gives the padded path's loss and gradients
(0, some and all slots real; one device, 8 devices, scanned layers); the buffer plan and its
overflow error."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tiny
from flamingo_jax.models import packing as packing_lib, rules, shapes, xattn
from flamingo_jax.models.flamingo import Flamingo
from flamingo_jax.train import image_buffers
from flamingo_jax.train.loss import causal_lm_loss
from flamingo_jax.weights import load

MASKS = {  # 8 rows x 3 slots
    "none": np.zeros((8, 3), bool),
    "some": np.array([[1, 1, 0], [1, 0, 0], [0, 0, 0], [1, 1, 1], [1, 0, 0], [1, 1, 0], [0, 0, 0], [1, 0, 0]], bool),
    "all": np.ones((8, 3), bool),
}


def _batch(cfg, mask, seed=0):
  rng = np.random.default_rng(seed)
  b, t = mask.shape
  s = cfg.model.vision.image_size
  images = rng.normal(size=(b, t, 1, s, s, 3)).astype(np.float32) * mask[:, :, None, None, None, None]
  ids = rng.integers(1, 500, size=(b, 24)).astype(np.int32)
  for row in range(b):  # one <image> per real image, text after each
    ids[row, [1 + 7 * j for j in range(int(mask[row].sum()))]] = cfg.model.media_token_id
  labels = np.where(ids == cfg.model.media_token_id, -100, ids)
  return dict(images=images, image_mask=mask, input_ids=ids, attention_mask=np.ones_like(ids), labels=labels)


def _loss_and_grads(model_cfg, variables, batch, packing, with_mask=True):
  model = Flamingo(model_cfg)

  def loss(params, frozen, batch):  # (frozen weights as arguments: XLA would fold constants)
    logits = model.apply({"params": params, "frozen": frozen}, batch["images"],
                         batch["input_ids"], batch["attention_mask"],
                         image_mask=batch["image_mask"] if with_mask else None, packing=packing)
    return causal_lm_loss(logits, batch["labels"])
  return jax.device_get(jax.jit(jax.value_and_grad(loss))(variables["params"], variables["frozen"], batch))


def _text_time_and_mask(cfg, batch):
  return xattn.media_text_time(batch["input_ids"], cfg.model.media_token_id), batch["image_mask"]


def _assert_same(a, b):
  """fp32: the same loss and gradients up to the rounding of other batch sizes in the tower."""
  np.testing.assert_allclose(a[0], b[0], rtol=1e-6)
  jax.tree_util.tree_map(lambda x, y: np.testing.assert_allclose(
      x, y, rtol=1e-5, atol=1e-5 * float(np.abs(y).max())), a[1], b[1])


@pytest.mark.slow
@pytest.mark.parametrize("scan", [False, True])
def test_packed_equals_padded(scan):
  """Unrolled: every mask, buffers exactly full, with room to spare and in two groups. Scanned
  (the same packing code under another layer layout): the mixed mask in two groups."""
  cfg = tiny.get_config().unlock()
  cfg.model.scan_layers = scan
  cfg.model.xattn.update(every_n_layers=1)
  variables = jax.jit(lambda r: nn.unbox(shapes.init_variables(cfg.model, r)))(jax.random.PRNGKey(0))
  # Open the gates, so that the images reach the loss and the resampler gets gradients.
  variables = jax.tree_util.tree_map_with_path(
      lambda p, x: jnp.full_like(x, 0.7) if "gate" in jax.tree_util.keystr(p) else x, variables)
  for name, mask in MASKS.items():
    if scan and name != "some":
      continue
    batch = _batch(cfg, mask)
    padded = _loss_and_grads(cfg.model, variables, batch, None)
    most = max(1, int(mask.sum()))
    two_groups = (2, max(1, int(mask.reshape(2, -1).sum(1).max())))
    packings = [two_groups] if scan else [(1, most)]
    if name == "some" and not scan:
      _assert_same(_loss_and_grads(cfg.model, variables, batch, None, with_mask=False), padded)  # as before masks
      packings += [(1, most + 2), two_groups]
      # A row with more <image> tokens than images attends an empty slot: the blank image's latents.
      extra = dict(batch, input_ids=batch["input_ids"].copy())
      extra["input_ids"][1, 20] = cfg.model.media_token_id
      assert xattn.attends_empty_slot(*_text_time_and_mask(cfg, extra))
      assert not xattn.attends_empty_slot(*_text_time_and_mask(cfg, batch))
      _assert_same(_loss_and_grads(cfg.model, variables, extra, (1, most)),
                   _loss_and_grads(cfg.model, variables, extra, None))
    for packing in packings:
      _assert_same(_loss_and_grads(cfg.model, variables, batch, packing), padded)
    if name == "some":
      assert np.abs(padded[1]["perceiver"]["latents"]).sum() > 0  # the images mattered


@pytest.mark.slow
def test_packed_equals_padded_on_8_devices():
  cfg = tiny.get_config().unlock()
  cfg.mesh.update(data=4, fsdp=2, tensor=1)
  mesh, rule_set = rules.make_mesh(cfg.mesh), rules.logical_rules(cfg)
  variables = load.init_variables(cfg, mesh, rule_set)
  variables = jax.tree_util.tree_map_with_path(
      lambda p, x: jnp.full_like(x, 0.7) if "gate" in jax.tree_util.keystr(p) else x, variables)
  batch = _batch(cfg, MASKS["some"])
  padded = _loss_and_grads(cfg.model, jax.device_get(variables), batch, None)
  with rules.activate(mesh, rule_set):
    sharded = {k: jax.device_put(v, rules.batch_sharding(mesh, v.ndim)) for k, v in batch.items()}
    groups = 8
    per_group = int(image_buffers.per_group_counts(MASKS["some"], groups).max())
    _assert_same(_loss_and_grads(cfg.model, variables, sharded, (groups, per_group)), padded)


def test_attends_empty_slot_worked_example():
  mask = jnp.asarray([[1, 0, 0]], bool)
  assert not xattn.attends_empty_slot(jnp.asarray([[0, 1, 1, 1]]), mask)
  assert xattn.attends_empty_slot(jnp.asarray([[1, 1, 2, 2]]), mask)
  assert not xattn.attends_empty_slot(jnp.asarray([[0, 0, 0, 0]]), jnp.zeros((1, 3), bool))
  assert xattn.attends_empty_slot(jnp.asarray([[0, 1, 1, 1]]), mask, only_immediate=False)
  assert not xattn.attends_empty_slot(jnp.asarray([[1, 1, 1, 1]]), mask, only_immediate=False)


def test_pack_order_worked_example():
  mask = jnp.asarray([[1, 1, 0], [1, 0, 0]], bool)
  order, valid = packing_lib.pack_order(mask, 1, 3)
  assert order.tolist() == [[0, 1, 3]] and valid.tolist() == [[True, True, True]]
  order, valid = packing_lib.pack_order(mask, 1, 4)
  assert order.tolist() == [[0, 1, 3, 2]] and valid.tolist() == [[True, True, True, False]]
  sources = packing_lib.slot_sources(order, valid, mask.shape)
  assert sources.tolist() == [[0, 1, 4], [2, 4, 4]]  # the blank fourth place is not read: the fill
  order, valid = packing_lib.pack_order(mask, 2, 2)
  assert order.tolist() == [[0, 1], [0, 1]] and valid.tolist() == [[True, True], [True, False]]
  sources = packing_lib.slot_sources(order, valid, mask.shape)
  assert sources.tolist() == [[0, 1, 2], [0, 2, 2]]  # places within each group; 2 = the fill
  values = jnp.asarray([[10., 11.], [12., 13.]])
  assert packing_lib.unpack(values, jnp.asarray(-1.), sources).tolist() == [[10, 11, -1], [12, -1, -1]]
  order, valid = packing_lib.pack_order(mask, 1, 3)
  sources = packing_lib.slot_sources(order, valid, mask.shape)
  assert sources.tolist() == [[0, 1, 3], [2, 3, 3]]  # the module's worked example
  values, fill = jnp.asarray([[10., 11., 12.]]), jnp.asarray(-1.)
  assert packing_lib.unpack(values, fill, sources).tolist() == [[10, 11, -1], [12, -1, -1]]


def test_buffer_plan_and_overflow():
  cfg = tiny.get_config().unlock()
  cfg.data.mmc4.update(batch_size=8, max_images=3)

  class Batches:  # a Grain-like iterator over fixed masks, with get_state/set_state
    def __init__(self, masks):
      self.masks, self.i = masks, 0

    def __next__(self):
      self.i += 1
      return {"image_mask": self.masks[(self.i - 1) % len(self.masks)]}

    def get_state(self):
      return self.i

    def set_state(self, i):
      self.i = i

  it = Batches([MASKS["some"], MASKS["none"]])
  plan = image_buffers.plan(cfg.data, {"laion": None, "mmc4": it}, groups=2)
  most = int(image_buffers.per_group_counts(MASKS["some"], 2).max())  # 6 of 12 slots in one half
  assert plan == {"laion": None, "mmc4": (2, int(np.ceil(1.25 * most)))} and it.i == 0
  cfg.data.mmc4.image_buffer = 4
  assert image_buffers.plan(cfg.data, {"mmc4": it}, groups=2)["mmc4"] == (2, 2)
  with pytest.raises(ValueError, match=r"holds 6 real images.*data\.mmc4\.image_buffer=4"):
    image_buffers.check("mmc4", MASKS["some"], (2, 2))
  cfg.data.mmc4.image_buffer = 3
  with pytest.raises(ValueError, match=r"data\.mmc4\.image_buffer=3 is not a multiple of the 2"):
    image_buffers.plan(cfg.data, {"mmc4": it}, groups=2)
  cfg.data.mmc4.image_buffer = -1
  assert image_buffers.plan(cfg.data, {"mmc4": it}, groups=2)["mmc4"] is None
