"""Meshes from the hardware: one function (`rules.make_mesh`) lays the config's (data, fsdp,
tensor) mesh on two slices of TPU v5e:4x4 (abstract devices from the TPU compiler, each with its
slice and torus coordinates), on the 8 simulated CPU devices, and on a job's processes; sizes the
job cannot have are one line naming the fields, from the config check and the planner alike."""
import jax
import pytest

from configs import tiny
from flamingo_jax import config_check, overrides
from flamingo_jax.models import rules
from flamingo_jax.plan import core
from tests.test_plan import _plan_cli, needs_libtpu


@pytest.fixture(scope="module")
def two_v5e_slices():
  """32 abstract v5e chips: two 4x4 slices joined over DCN."""
  return core.target_devices("v5e:4x4", slices=2)[0]


def _neighbours(a, b) -> bool:
  return sum(abs(x - y) for x, y in zip(a.coords, b.coords)) == 1


def _ring_of_neighbours(devices) -> bool:
  """Whether consecutive devices, last back to first, are physical neighbours on the torus."""
  return all(_neighbours(devices[i], devices[(i + 1) % len(devices)]) for i in range(len(devices)))


@needs_libtpu
def test_two_slices_keep_fsdp_inside_a_slice_in_torus_order(two_v5e_slices):
  devices = two_v5e_slices
  assert len(devices) == 32 and len(rules.slices_of(devices)) == 2
  mesh = rules.make_mesh({"data": 1, "fsdp": 16, "tensor": 1}, devices)  # default: slices on data
  assert dict(mesh.shape) == {"data": 2, "fsdp": 16, "tensor": 1}
  assert rules.describe(mesh) == "data=2 (2 slices x 1) fsdp=16 tensor=1 over 2 slices"
  for d in range(2):
    ring = list(mesh.devices[d, :, 0])
    assert {x.slice_index for x in ring} == {d}  # an fsdp group never crosses DCN
    assert _ring_of_neighbours(ring)  # each gather hop is one ICI link, around the 4x4
  # The list order (host-major: chips 0, 1, 4, 5, 2, ...) is not a ring of neighbours: reshaping
  # it, as meshes were built before, sends fsdp hops across the slice.
  assert not _ring_of_neighbours(rules.slices_of(devices)[0])

  # A host is a 2x2 block of v5e chips: tensor=2 stays on one host, tensor=4 spans two, which a
  # multi-host run refuses (each host reads its own rows for its chips).
  assert rules.hosts_per_batch_shard(rules.make_mesh({"data": 1, "fsdp": 8, "tensor": 2}, devices)) == 1
  assert rules.hosts_per_batch_shard(rules.make_mesh({"data": 1, "fsdp": 4, "tensor": 4}, devices)) == 2

  split = rules.make_mesh({"data": 1, "fsdp": 8, "tensor": 2}, devices)
  assert all(_neighbours(*split.devices[d, f, :]) for d in range(2) for f in range(8))  # tensor pairs

  across = rules.make_mesh({"data": 2, "fsdp": 8, "tensor": 1, "dcn_data": 1, "dcn_fsdp": 2}, devices)
  assert dict(across.shape) == {"data": 2, "fsdp": 16, "tensor": 1}
  assert rules.describe(across) == "data=2 fsdp=16 (2 slices x 8) tensor=1 over 2 slices"
  for d in range(2):
    row = across.devices[d, :, 0]
    assert [x.slice_index for x in row] == [0] * 8 + [1] * 8
    for group in (row[:8], row[8:]):  # each slice's part is a 4x2 block of its torus, not scattered chips
      xs, ys = {x.coords[0] for x in group}, {x.coords[1] for x in group}
      assert len(xs) * len(ys) == 8 and max(ys) - min(ys) == len(ys) - 1 and max(xs) - min(xs) == len(xs) - 1


@needs_libtpu
def test_sizes_the_slices_cannot_have_are_one_line(two_v5e_slices):
  cfg = tiny.get_config()
  bad = {"mesh.dcn_data": 3}, {"mesh.fsdp": 32, "mesh.data": 1}, {"mesh.dcn_data": -1, "mesh.dcn_fsdp": -1}
  expected = [
      "mesh.dcn_data=3, mesh.dcn_fsdp=1 needs 3 slices; this job has 2",
      "mesh.data=1, mesh.fsdp=32, mesh.tensor=1 needs 32 devices per slice; each of this job's 2 slices has "
      "16 (mesh.dcn_data and mesh.dcn_fsdp split an axis across slices)",
      "mesh.dcn_data=-1, mesh.dcn_fsdp=-1: each is a positive size, at most one -1 (all that remains)"]
  for fields, message in zip(bad, expected):
    with pytest.raises(rules.MeshError) as e:
      rules.make_mesh(overrides.apply(cfg, fields).mesh, two_v5e_slices)
    assert str(e.value) == message
    assert config_check.problems(overrides.apply(cfg, fields), devices=32, slices=2) == [message]
  # The same sizes on one slice of 32 chips are fine; batches must divide over both slices' chips.
  ok = overrides.apply(cfg, {"mesh.fsdp": 16, "mesh.data": 1})
  assert config_check.problems(ok, devices=32, slices=2) == [
      f"data.{n}.batch_size={b} does not divide over the 32 data x fsdp devices and 1 processes of mesh "
      "{'data': 2, 'fsdp': 16, 'tensor': 1}" for n, b in (("laion", 16), ("mmc4", 8))]


@needs_libtpu
def test_plan_cli_plans_several_slices():
  """Two v5e:2x2 slices, fsdp in each, data across: the plan names the slices and the layout."""
  out = _plan_cli("--topology=v5e:2x2", "--slices=2", "--config.mesh.fsdp=4", "--config.mesh.data=1",
                  "--compilation_cache=")
  assert out.returncode == 0, out.stderr[-2000:]
  first = out.stdout.splitlines()[0]
  assert first.endswith("on 2 x v5e:2x2: 8 x TPU v5e, 16.0 GiB each; mesh data=2 (2 slices x 1) fsdp=4 "
                        "tensor=1 over 2 slices"), first
  bad = _plan_cli("--topology=v5e:2x2", "--slices=2", "--config.mesh.dcn_fsdp=3")
  assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1] == (
      "error: 2 x v5e:2x2 (8 chips): mesh.dcn_data=-1, mesh.dcn_fsdp=3 needs 3 slices or a multiple; "
      "this job has 2")


def test_cpu_devices_use_the_same_function():
  """On the 8 simulated CPU devices of one process: one slice, mesh_utils' fallback order (the
  device list's), and DCN sizes beyond one slice refused."""
  devices = jax.devices()
  assert rules.slices_of(devices) == [devices]
  mesh = rules.make_mesh({"data": 1, "fsdp": 4, "tensor": 2})
  assert dict(mesh.shape) == {"data": 1, "fsdp": 4, "tensor": 2} and list(mesh.devices.flat) == devices
  assert rules.describe(mesh) == "data=1 fsdp=4 tensor=2"
  assert dict(rules.make_mesh(tiny.get_config().mesh).shape) == {"data": 8, "fsdp": 1, "tensor": 1}
  with pytest.raises(rules.MeshError, match=r"^mesh.dcn_data=2, mesh.dcn_fsdp=1 needs 2 slices; this job has 1$"):
    rules.make_mesh({"dcn_data": 2})
  # A run recorded before the DCN fields existed builds the mesh it had.
  assert dict(rules.make_mesh({"data": -1, "fsdp": 2, "tensor": 1}).shape) == {"data": 4, "fsdp": 2, "tensor": 1}
  assert rules.mesh_shapes({"data": 1, "fsdp": -1, "tensor": 1, "dcn_data": -1, "dcn_fsdp": 1}, 16, 2) == (
      (1, 16, 1), (2, 1, 1))
