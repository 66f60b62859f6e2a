"""Planning a job: the analytic FLOP count against the programs XLA builds, the optimizer state's
sharding, plans for a TPU topology (the real TPU compiler, no TPU) and for the 8 simulated local
devices, the search, and the CLI's verdicts and one-line errors."""
import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import pytest

from configs import tiny
from flamingo_jax import overrides
from flamingo_jax.data import batch as batch_lib
from flamingo_jax.models import rules, shapes
from flamingo_jax.plan import core, search
from flamingo_jax.train import metrics, optimizer, step as step_lib
from flamingo_jax.train.state import TrainState, state_shardings
from flamingo_jax.weights import load

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
try:
  import libtpu  # noqa: F401
  HAS_LIBTPU = True
except ImportError:
  HAS_LIBTPU = False
needs_libtpu = pytest.mark.skipif(not HAS_LIBTPU, reason='the TPU compiler: pip install "jax[tpu]==<jax>"')


def _traced_step(cfg, packing=None):
  abstract = nn.unbox(shapes.abstract_variables(cfg.model))
  tx = optimizer.make_optimizer(cfg.optim)
  state = jax.eval_shape(lambda p: TrainState.create(p, tx), abstract["params"])
  batches = {n: {k: jax.ShapeDtypeStruct(s, d) for k, (s, d) in batch_lib.batch_shapes(n, cfg.data).items()}
             for n in batch_lib.mixture(cfg.data)}
  return jax.jit(step_lib.make_train_step(cfg, packing=packing)).trace(
      state, abstract["frozen"], batches)


@pytest.mark.parametrize("variant", ["special", "frozen_special_opt_projection", "packed_scanned"])
def test_model_flops_are_every_matmul_the_step_runs(variant):
  """models/flops.py's count equals the matrix products in the traced step: special embeddings
  trained (every layer has a backward) or frozen with the gated block every 2nd layer (the
  first layer has none), OPT's projected embedding, a packed image buffer, scanned layers."""
  cfg = tiny.get_config("family=opt" if "opt" in variant else None).unlock()
  packing = None
  if variant == "frozen_special_opt_projection":
    cfg.model.update(train_special_embeddings=False)
    cfg.model.lm.update(num_layers=4, word_embed_proj_dim=32)
    cfg.model.xattn.every_n_layers = 2
  if variant == "packed_scanned":
    packing = {"mmc4": (2, 5), "laion": None}
    cfg.model.scan_layers = True
  counted = metrics.jaxpr_matmul_flops(_traced_step(cfg, packing).jaxpr)
  assert metrics.step_flops(cfg, packing).total == pytest.approx(counted, rel=1e-9)
  if variant == "packed_scanned":  # the scanned program runs every group's products
    cfg.model.scan_layers = False
    assert metrics.jaxpr_matmul_flops(_traced_step(cfg, packing).jaxpr) == counted


@pytest.mark.slow
def test_remat_recomputation_is_executed_not_model_flops():
  """Full remat adds its recomputation to the executed count and none to the model's (XLA's count
  of the compiled unrolled step against the model's: tests/test_mfu.py)."""
  cfg = tiny.get_config().unlock()
  cfg.model.scan_layers = False
  model = metrics.step_flops(cfg).total
  assert metrics.jaxpr_matmul_flops(_traced_step(cfg).jaxpr) == pytest.approx(model, rel=1e-9)
  cfg.model.remat_policy = "full"
  executed = metrics.jaxpr_matmul_flops(_traced_step(cfg).jaxpr)
  assert metrics.step_flops(cfg).total == model and executed > 1.1 * model  # the forward again


def test_optimizer_moments_are_sharded_like_their_params():
  cfg = tiny.get_config().unlock()
  cfg.mesh.update(data=2, fsdp=4)
  mesh = rules.make_mesh(cfg.mesh)
  variables = load.abstract_variables(cfg.model, mesh, rules.logical_rules(cfg))
  tx = optimizer.make_optimizer(cfg.optim)
  shardings = state_shardings(variables["params"], tx, mesh)
  kernel = variables["params"]["perceiver"]["layers_0_ff"]["fc1"]["kernel"].sharding
  assert kernel.spec != jax.sharding.PartitionSpec()  # the embed dim is split over fsdp
  adam = shardings.opt_state[1][0]
  assert adam.mu["perceiver"]["layers_0_ff"]["fc1"]["kernel"] == kernel
  assert adam.nu["perceiver"]["layers_0_ff"]["fc1"]["kernel"] == kernel
  assert shardings.step.spec == jax.sharding.PartitionSpec()


@pytest.mark.slow
@needs_libtpu
def test_plan_for_a_tpu_topology(tmp_path):
  """The tiny config's train step compiled by the TPU compiler for 4 v5e chips: it fits, with
  memory, FLOPs and bounds that hang together; planned again, its numbers come from the plan
  cache, and a changed step misses it."""
  cfg = tiny.get_config()
  plan = core.make_plan(cfg, "v5e:2x2", cache_dir=str(tmp_path))
  again = core.make_plan(cfg, "v5e:2x2", cache_dir=str(tmp_path))
  assert not plan.cached and again.cached and again.cold_compile_s == plan.cold_compile_s == plan.compile_s
  timing = ("compile_s", "cold_compile_s", "cached")
  assert {k: v for k, v in again.to_json().items() if k not in timing} == {
      k: v for k, v in plan.to_json().items() if k not in timing}
  assert len(list((tmp_path / "plans").glob("*.json"))) == 1
  changed = core.make_plan(overrides.apply(cfg, {"data.laion.batch_size": 8}), "v5e:2x2", cache_dir=str(tmp_path))
  assert not changed.cached and changed.argument_bytes < plan.argument_bytes
  assert len(list((tmp_path / "plans").glob("*.json"))) == 2
  assert plan.chips == 4 and plan.chip.name == "TPU v5e" and plan.mesh == {"data": 4, "fsdp": 1, "tensor": 1}
  assert plan.fits and 0 < plan.total_bytes < plan.hbm_bytes
  assert plan.argument_bytes > 0 and plan.temp_bytes > 0 and plan.alias_bytes > 0  # the donated state
  assert plan.executed_flops == plan.model_flops == metrics.step_flops(cfg).total
  assert 0 < plan.xla_flops_per_chip and plan.xla_bytes_per_chip > 0
  assert plan.step_time_s == max(plan.compute_s, plan.memory_s)
  assert plan.compute_s == pytest.approx(plan.model_flops / 4 / 197e12)
  assert 0 < plan.mfu_ceiling <= 1
  data = json.loads(json.dumps(plan.to_json(), default=str))
  assert data["samples_per_s"] == pytest.approx(24 / plan.step_time_s)


@pytest.mark.slow
def test_plan_and_search_on_local_devices():
  """The 8 simulated CPU devices: memory is planned without a chip table entry (fit unknown
  unless --hbm_gib); the search stops a column at its first batch that does not fit and ranks
  the rest, with the overrides that launch the best."""
  cfg = overrides.apply(tiny.get_config(), {"model.lm.num_layers": 1, "model.vision.layers": 1,
                                             "model.perceiver.depth": 1})  # quick to compile
  assert search.point_overrides(cfg, 8, 1, search.Split(data=1, tensor=2), "full", False) == {
      "data.mmc4.batch_size": 4, "data.laion.batch_size": 8, "mesh.data": 1, "mesh.fsdp": 4,
      "mesh.tensor": 2, "mesh.dcn_data": 1, "mesh.dcn_fsdp": 1, "model.remat_policy": "full", "model.scan_layers": False}
  assert search.point_overrides(cfg, 8, 1, search.Split(data=2, tensor=1, dcn="fsdp"), "none", True, slices=2) == {
      "data.mmc4.batch_size": 16, "data.laion.batch_size": 32, "mesh.data": 2, "mesh.fsdp": 4,
      "mesh.tensor": 1, "mesh.dcn_data": 1, "mesh.dcn_fsdp": 2, "model.remat_policy": "none", "model.scan_layers": True}
  devices = jax.devices()[:1]  # (one device compiles fastest; the search is the same)
  small = search.point_overrides(cfg, 1, 2, search.Split(1, 1), "none", True)
  one = core.make_plan(overrides.apply(cfg, small), "local", devices, None)
  assert one.fits is None and one.total_bytes > 0 and one.step_time_s is None
  assert one.mesh == {"data": 1, "fsdp": 1, "tensor": 1} and one.batches["mmc4"]["rows"] == 2
  grid = search.Grid(batches=(2, 8, 16), remat=("none",), tensor=(1, 3), scan=(True,))
  lines = []
  plans = search.search(cfg, "local", devices, None, grid, hbm_bytes=one.total_bytes * 1.5, log=lines.append)
  assert [p.overrides["data.mmc4.batch_size"] for p in plans] == [2, 8]  # 8 over: 16 not tried
  assert [p.fits for p in plans] == [True, False] and len(lines) == 2 and "ETA" in lines[0]
  assert search.ranked(plans) == plans[:1]
  with pytest.raises(core.PlanError, match="none divides 1 chips"):
    search.search(cfg, "local", devices, None, search.Grid(tensor=(3,)), log=lines.append)


def _plan_cli(*args):
  return subprocess.run([sys.executable, "-m", "flamingo_jax.plan", "--config=configs/tiny.py", *args],
                        cwd=REPO, capture_output=True, text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})


def test_cli_one_line_errors():
  bad = _plan_cli("--topology=v5x:2x2")
  assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("error: --topology='v5x:2x2'")
  mesh = _plan_cli("--topology=local", "--config.mesh.data=3")
  assert mesh.returncode == 2
  assert mesh.stderr.strip().splitlines()[-1] == (
      "error: local (8 chips): mesh.data=3, mesh.fsdp=1, mesh.tensor=1 needs 3 devices; this job has 8")


@pytest.mark.slow
@needs_libtpu
def test_cli_says_when_a_step_does_not_fit():
  """A 2M-token vocabulary at width 4096 (a 30 GiB table on every chip) on 16 GiB v5e chips."""
  out = _plan_cli("--topology=v5e:2x2", "--config.model.lm.vocab_size=2000000",
                  "--config.model.lm.hidden_size=4096", "--compilation_cache=")
  assert out.returncode == 1, out.stderr[-2000:]
  assert "DOES NOT FIT" in out.stdout and "frozen/lm/embed/embedding 30.52 GiB" in out.stdout
