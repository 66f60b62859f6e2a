"""Counting a compiled step's communication (flamingo_jax/plan/comm.py): the counter against a
hand count on a small scanned program with every kind of collective, and the tiny Flamingo step
on two slices of v5e:2x2, where only the trainable gradients' reduction may cross slices."""
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from configs import tiny
from flamingo_jax import overrides
from flamingo_jax.models import rules
from flamingo_jax.plan import comm, core, search
from flamingo_jax.weights import load
from tests.test_plan import needs_libtpu


def _explicit_collectives(mesh):
  """A scan of 3 steps whose body runs one of each collective on (data=2, fsdp=4): all-gather of
  a (4, 8) f32 shard over fsdp, reduce-scatter of (16, 8) over fsdp, all-reduce of (8,) over data,
  all-to-all of (4, 8) over fsdp, and a ring permute of (4, 8) over fsdp; after the loop one
  all-reduce of (2, 8) over both axes."""
  @functools.partial(jax.shard_map, mesh=mesh, in_specs=P(("data", "fsdp")), out_specs=P(("data", "fsdp")))
  def body_fn(x):  # x: (4, 8) per device
    def body(c, _):
      g = jax.lax.all_gather(c, "fsdp", tiled=True)                      # (16, 8)
      s = jax.lax.psum_scatter(g * 2.0, "fsdp", tiled=True)              # (4, 8)
      r = jax.lax.psum(s[0], "data")                                     # (8,)
      a = jax.lax.all_to_all(s, "fsdp", 0, 0, tiled=True)                # (4, 8)
      p = jax.lax.ppermute(a, "fsdp", [(i, (i + 1) % 4) for i in range(4)])
      return p + r, None
    out, _ = jax.lax.scan(body, x, None, length=3)
    return out + jax.lax.psum(out[:2], ("data", "fsdp")).sum()
  return body_fn


def test_counter_equals_a_hand_count_on_a_scanned_program():
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()).reshape(2, 4), ("data", "fsdp"))
  fn = jax.jit(_explicit_collectives(mesh))
  x = jax.ShapeDtypeStruct((32, 8), jnp.float32, sharding=NamedSharding(mesh, P(("data", "fsdp"))))
  _, text = comm.partitioned_hlo(fn.lower(x))
  slices = [p // 4 for p in range(8)]  # as if each data row were a slice: data crosses DCN
  counted = comm.count(text, slices)
  f32 = 4
  trips = 3
  gather = 3 / 4 * 16 * 8 * f32            # ICI: (k-1)/k of the gathered buffer
  scatter = 3 / 4 * 16 * 8 * f32           # ICI: (k-1)/k of the full operand
  reduce_data = 2 * 1 / 2 * 8 * f32        # DCN: 2 (s-1)/s of (8,)
  to_all = 3 / 4 * 4 * 8 * f32
  permute = 4 * 8 * f32
  final = (2 * 3 / 4 * 2 * 8 * f32, 2 * 1 / 2 * 2 * 8 * f32 / 4)  # over 2 slices x 4 chips: ICI, DCN
  assert counted.by_kind == pytest.approx({
      "all-gather": trips * gather, "reduce-scatter": trips * scatter, "all-to-all": trips * to_all,
      "collective-permute": trips * permute, "all-reduce": trips * reduce_data + sum(final)})
  assert counted.dcn_bytes == pytest.approx(trips * reduce_data + final[1])
  assert counted.ici_bytes == pytest.approx(trips * (gather + scatter + to_all + permute) + final[0])
  assert counted.collectives == 6 and counted.uncounted_loops == 0
  # One slice: all over ICI; the data reduction is a pair of chips, the final one all 8.
  one = comm.count(text, [0] * 8)
  assert one.dcn_bytes == 0 and one.ici_bytes == pytest.approx(
      trips * (gather + scatter + reduce_data + to_all + permute) + 2 * 7 / 8 * 2 * 8 * f32)


def test_replica_group_notations():
  assert comm.replica_groups("replica_groups={{0,2},{1,3}}, dimensions={0}", 4) == [[0, 2], [1, 3]]
  assert comm.replica_groups("replica_groups=[2,4]<=[8], x", 8) == [[0, 1, 2, 3], [4, 5, 6, 7]]
  assert comm.replica_groups("replica_groups=[4,2]<=[2,4]T(1,0), x", 8) == [[0, 4], [1, 5], [2, 6], [3, 7]]
  named = "replica_groups=mesh['axis_0'=4,'axis_1'=2], device_ids=([2,4]T(1,0)) {'axis_0'}, dimensions={0}"
  assert comm.replica_groups(named, 8) == [[0, 1, 2, 3], [4, 5, 6, 7]]
  assert comm.replica_groups("replica_groups=mesh['a'=2,'b'=4] {'a'}, x", 8) == [[0, 4], [1, 5], [2, 6], [3, 7]]
  assert comm.replica_groups("replica_groups={}, to_apply=%add", 4) == [[0, 1, 2, 3]]


@pytest.mark.slow
@needs_libtpu
def test_only_the_gradient_reduction_crosses_slices():
  """The tiny step on 2 x v5e:2x2, fsdp in each slice, data across: every byte over DCN is an
  all-reduce of the backward pass. The gated blocks are used once per dataset, so their share
  is two reductions of their trainable gradients: 2 x (s-1)/s x 2 x bytes / 4 chips."""
  cfg = overrides.apply(tiny.get_config(), {"mesh.data": 1, "mesh.fsdp": 4, "model.scan_layers": True})
  devices, _ = core.target_devices("v5e:2x2", slices=2)
  plan = core.make_plan(cfg, "v5e:2x2", devices, core.chips_lib.CHIPS["v5e"])
  c = comm.Communication.from_json(plan.communication)
  assert set(k for k, v in c.dcn_by_kind.items() if v) == {"all-reduce"}
  assert c.ici_bytes > c.dcn_bytes > 0
  mesh = rules.make_mesh(cfg.mesh, devices)
  params = load.abstract_variables(cfg.model, mesh, rules.logical_rules(cfg))["params"]
  xattn = sum(int(np.prod(x.shape)) * 4 for k, x in jax.tree_util.tree_leaves_with_path(params)
              if "xattn" in rules.path_str(k))
  assert c.dcn_by_part["xattn"] == pytest.approx(2 * 2 * (1 / 2) * xattn / 4, rel=0.02)
  assert plan.step_time_estimate_s >= max(plan.compute_s, plan.memory_s, plan.communication_s)


@pytest.mark.slow
@needs_libtpu
def test_search_ranks_by_the_estimate_with_communication():
  """Slices splitting fsdp gather every weight over DCN each layer: communication binds, the same
  bytes whatever the batch, so the larger per-chip batch ranks first; the JSON carries the terms."""
  cfg = tiny.get_config()
  devices, chip = core.target_devices("v5e:2x2", slices=2)
  grid = search.Grid(batches=(1, 2), remat=("none",), tensor=(1,), scan=(True,), data=(1,), dcn=("fsdp",))
  plans = search.search(cfg, "v5e:2x2", devices, chip, grid, log=lambda _: None)
  assert [p.bound_by for p in plans] == ["communication", "communication"]
  assert [p.overrides["data.mmc4.batch_size"] for p in search.ranked(plans)] == [16, 8]
  data = json.loads(json.dumps(plans[0].to_json(), default=str))
  assert data["bound_by"] == "communication" and data["step_time_estimate_s"] == pytest.approx(
      data["communication_s"]) and data["dcn_s"] > data["ici_s"] > 0  # fewer bytes over DCN, yet slower
  assert set(data["communication"]["by_kind"]) <= set(comm.KINDS)
