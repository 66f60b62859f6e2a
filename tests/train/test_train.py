"""Training: sharded == single-device step, learning, exact resume (from a gs:// workdir),
frozen weights untouched, no optimizer state for frozen weights, SIGTERM checkpoint, non-finite
stop."""
import os
import signal
import subprocess
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

from configs import tiny
from flamingo_jax.data import pipeline, synthetic, tokenizer
from flamingo_jax.models import rules, shapes
from flamingo_jax.train import checkpoint, loop, metrics, optimizer, step as step_lib
from flamingo_jax.train.state import TrainState
from flamingo_jax.weights import load

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _cfg(shards, **train):
  c = tiny.get_config().unlock()
  c.tokenizer_path = os.path.join(REPO, c.tokenizer_path)
  c.data.synthetic_dir = ""
  c.data.laion.update(shards=os.path.join(shards, "laion-*.tar"), batch_size=16)
  c.data.mmc4.update(shards=os.path.join(shards, "mmc4-*.tar"), batch_size=8)
  c.train.update(log_every=1, **train)
  c.optim.update(warmup_steps=2, learning_rate=3e-3)
  return c


def _batches(cfg, seed=0):
  rng = np.random.default_rng(seed)
  size = cfg.model.vision.image_size
  out = {}
  for name, b, t, length in (("mmc4", 4, 3, 24), ("laion", 8, 1, 12)):
    ids = rng.integers(1, 500, size=(b, length)).astype(np.int32)
    ids[:, 0] = cfg.model.media_token_id
    out[name] = {"images": rng.normal(size=(b, t, 1, size, size, 3)).astype(np.float32),
                 "image_mask": np.ones((b, t), bool), "input_ids": ids, "attention_mask": np.ones_like(ids),
                 "labels": np.where(ids == cfg.model.media_token_id, -100, ids)}
  return out


def _one_step(cfg):
  mesh, rule_set = rules.make_mesh(cfg.mesh), rules.logical_rules(cfg)
  variables = load.initial_variables(cfg, mesh, rule_set)
  tx = optimizer.make_optimizer(cfg.optim)
  with mesh, nn.logical_axis_rules(rule_set):
    state = jax.jit(lambda p: TrainState.create(p, tx))(variables["params"])
    batches = {k: loop.global_batch(v, mesh) for k, v in _batches(cfg).items()}
    frozen_before = jax.device_get(variables["frozen"])
    state, metrics = jax.jit(step_lib.make_train_step(cfg.model, cfg.optim))(state, variables["frozen"], batches)
  return jax.device_get(state.params), jax.device_get(metrics), frozen_before, jax.device_get(variables["frozen"])


def test_sharded_step_equals_single_device_step(shards):
  single = _cfg(shards)
  single.mesh.update(data=1, fsdp=1, tensor=1)
  sharded = _cfg(shards)
  sharded.mesh.update(data=2, fsdp=2, tensor=2)
  from unittest import mock  # only to pin the device list; the model and step are real
  with mock.patch.object(jax, "devices", lambda *a: jax.local_devices()[:1]):
    p1, m1, _, _ = _one_step(single)
  p8, m8, frozen_before, frozen_after = _one_step(sharded)
  np.testing.assert_allclose(m1["loss"], m8["loss"], rtol=1e-5)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), p1, p8)
  # The frozen tree is bitwise unchanged by a step.
  jax.tree_util.tree_map(np.testing.assert_array_equal, frozen_before, frozen_after)


def test_optimizer_state_has_no_frozen_leaves():
  cfg = tiny.get_config()
  abstract = nn.unbox(shapes.abstract_variables(cfg.model))
  tx = optimizer.make_optimizer(cfg.optim)
  opt_state = jax.eval_shape(tx.init, abstract["params"])
  n_params = len(jax.tree_util.tree_leaves(abstract["params"]))
  shapes_in_opt = [x.shape for x in jax.tree_util.tree_leaves(opt_state) if x.ndim > 0]
  assert len(shapes_in_opt) == 2 * n_params  # Adam's mu and nu, for trainable leaves only
  frozen_size = rules.count_params(abstract["frozen"])
  assert sum(int(np.prod(s)) for s in shapes_in_opt) == 2 * rules.count_params(abstract["params"])
  assert frozen_size > 0
  mask = optimizer.decay_mask(abstract["params"])
  assert all(mask["xattn_0"]["attn"]["to_q"].values()) and not any(
      jax.tree_util.tree_leaves(mask["perceiver"])) and not mask["special_embeddings"]


def test_loss_falls_and_resume_is_exact(shards, tmp_path, gcs_bucket):
  straight = loop.train_and_evaluate(_cfg(shards, num_steps=30), str(tmp_path / "a"))
  losses = [h["loss"] for h in straight.history]
  assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])
  # The workdir is a model: its latest step's trainable weights, and the frozen weights of the
  # seeded initialisation it recorded (made here on one device, there on the run's mesh).
  loaded = load.load_model(str(tmp_path / "a"))
  cfg = _cfg(shards, num_steps=30)
  initial = load.initial_variables(cfg, rules.make_mesh(cfg.mesh), rules.logical_rules(cfg))
  for ours, theirs in ((loaded.variables["params"], straight.state.params),
                       (loaded.variables["frozen"], initial["frozen"])):
    jax.tree_util.tree_map(np.testing.assert_array_equal, jax.device_get(ours), jax.device_get(theirs))
  # The interrupted run keeps its workdir in a gs:// bucket, as TPU jobs do: Orbax's checkpoints
  # (TensorStore, google-cloud-storage) and the TensorBoard logs (TensorFlow) go through the real
  # clients to the local GCS emulator.
  workdir = "gs://bucket/run"
  cfg = _cfg(shards, num_steps=15)
  cfg.checkpoint.every_steps = 5
  loop.train_and_evaluate(cfg, workdir)
  resumed = loop.train_and_evaluate(_cfg(shards, num_steps=30), workdir)
  events = tf.io.gfile.glob(f"{workdir}/events.out.tfevents.*")
  tags = {v.tag for path in events for e in tf.compat.v1.train.summary_iterator(path)
          for v in e.summary.value}
  assert [h["step"] for h in resumed.history] == list(range(16, 31))
  np.testing.assert_array_equal([h["loss"] for h in resumed.history], losses[15:])
  assert os.path.isdir(tmp_path / "gcs" / "bucket" / "run" / "checkpoints" / "15" / "state")
  assert len(events) == 2 and {"loss", "lr", "eval/loss_real_images"} <= tags, tags
  assert not os.path.exists("gs:")  # nothing of the bucket's path was made locally
  earlier = load.load_model(workdir, step=15)  # a chosen step of a gs:// workdir
  assert earlier.source.startswith("step 15 of gs://bucket/run")
  assert not np.array_equal(jax.device_get(earlier.variables["params"]["xattn_0"]["ff_gate"]),
                            jax.device_get(resumed.state.params["xattn_0"]["ff_gate"]))


def test_non_finite_loss_stops_before_checkpointing(shards, tmp_path):
  cfg = _cfg(shards, num_steps=5)
  cfg.optim.learning_rate = float("nan")
  cfg.checkpoint.every_steps = 1
  with pytest.raises(loop.NonFiniteError, match="step 2"):
    loop.train_and_evaluate(cfg, str(tmp_path))
  assert checkpoint.Checkpointer(str(tmp_path), 3).latest_step() == 1


def test_non_finite_update_is_skipped_when_the_config_says_so(shards):
  cfg = _cfg(shards)
  cfg.train.non_finite = "skip"
  cfg.mesh.update(data=2, fsdp=2, tensor=2)
  mesh, rule_set = rules.make_mesh(cfg.mesh), rules.logical_rules(cfg)
  variables = load.initial_variables(cfg, mesh, rule_set)
  tx = optimizer.make_optimizer(cfg.optim)
  step = jax.jit(step_lib.make_train_step(cfg.model, cfg.optim, step_lib.NonFinitePolicy.from_config(cfg.train)))
  good = _batches(cfg)
  bad = _batches(cfg)
  bad["laion"]["images"][0] = np.nan
  with mesh, nn.logical_axis_rules(rule_set):
    state = TrainState.create(variables["params"], tx)
    before = jax.device_get(state)
    skipped, m = step(state, variables["frozen"], {k: loop.global_batch(v, mesh) for k, v in bad.items()})
    assert not bool(m["finite"]) and int(skipped.step) == 1
    jax.tree_util.tree_map(np.testing.assert_array_equal, jax.device_get(skipped.params), before.params)
    jax.tree_util.tree_map(np.testing.assert_array_equal, jax.device_get(skipped.opt_state), before.opt_state)
    applied = skipped
    for _ in range(2):  # (The warmup's first learning rate is 0, as in the reference.)
      applied, m = step(applied, variables["frozen"], {k: loop.global_batch(v, mesh) for k, v in good.items()})
      assert bool(m["finite"])
  changed = jax.tree_util.tree_map(lambda a, b: not np.array_equal(a, b), jax.device_get(applied.params),
                                   before.params)
  assert any(jax.tree_util.tree_leaves(changed))


def test_too_many_skipped_updates_in_a_row_stop_the_run(shards, tmp_path):
  cfg = _cfg(shards, num_steps=20, non_finite="skip", max_skipped_in_a_row=2)
  cfg.optim.learning_rate = float("nan")  # Step 1's update makes every later loss NaN.
  with pytest.raises(loop.NonFiniteError, match="3 updates in a row skipped"):
    loop.train_and_evaluate(cfg, str(tmp_path))


def test_sigterm_writes_a_restorable_checkpoint(shards, tmp_path):
  workdir = str(tmp_path / "run")
  args = [sys.executable, "-m", "flamingo_jax.train", "--config=configs/tiny.py", f"--workdir={workdir}",
          f"--config.data.laion.shards={shards}/laion-*.tar", f"--config.data.mmc4.shards={shards}/mmc4-*.tar",
          "--config.data.synthetic_dir=", "--config.train.num_steps=100000", "--config.train.log_every=1"]
  proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env={**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""})
  for line in proc.stdout:
    if line.startswith("step 3/"):
      proc.send_signal(signal.SIGTERM)
      break
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode == 0, out
  assert "Preempted: checkpoint for step" in out
  ckpt = checkpoint.Checkpointer(workdir, 3, data_names=("laion", "mmc4"))
  step = ckpt.latest_step()
  assert step is not None and step >= 3
  cfg = _cfg(shards)
  mesh, rule_set = rules.make_mesh(cfg.mesh), rules.logical_rules(cfg)
  variables = load.initial_variables(cfg, mesh, rule_set)
  tx = optimizer.make_optimizer(cfg.optim)
  state = TrainState.create(variables["params"], tx)
  iters, _ = pipeline.make_train_iterators(cfg.data, tokenizer.load_tokenizer(cfg.tokenizer_path))
  restored = ckpt.restore(step, checkpoint.abstract_like(state), iters)
  assert int(restored.step) == step
  # The iterators continue after the `step` batches the run consumed.
  fresh, _ = pipeline.make_train_iterators(cfg.data, tokenizer.load_tokenizer(cfg.tokenizer_path))
  for name in iters:
    for _ in range(step):
      next(fresh[name])
    np.testing.assert_array_equal(next(iters[name])["input_ids"], next(fresh[name])["input_ids"])


def test_training_starts_from_a_base_checkpoint(shards, tmp_path, gcs_bucket):
  """The converted base checkpoint lives in a bucket, as on a TPU VM."""
  from flamingo_jax.weights import orbax_io
  cfg = _cfg(shards, num_steps=2)
  base = nn.unbox(shapes.init_variables(cfg.model, jax.random.PRNGKey(7)))
  orbax_io.save_base_checkpoint("gs://bucket/base", cfg, base)
  cfg.checkpoint.base = "gs://bucket/base"
  mesh, rule_set = rules.make_mesh(cfg.mesh), rules.logical_rules(cfg)
  variables = load.initial_variables(cfg, mesh, rule_set)
  jax.tree_util.tree_map(np.testing.assert_array_equal, jax.device_get(variables), jax.device_get(base))
  result = loop.train_and_evaluate(cfg, str(tmp_path / "run"))
  assert [h["step"] for h in result.history] == [1, 2]


def test_step_flops_count_every_layer_even_when_scanned():
  cfg = tiny.get_config().unlock()
  tx = optimizer.make_optimizer(cfg.optim)
  batches = _batches(cfg)
  unrolled = metrics.step_flops(cfg, batches)
  cfg.model.scan_layers = True
  assert metrics.step_flops(cfg, batches) == unrolled
  # At least the LM's forward matmuls: 2 * LM params * text tokens.
  lm_params = rules.count_params(shapes.abstract_variables(cfg.model)["frozen"]["lm"])
  tokens = sum(b["input_ids"].size for b in batches.values())
  assert unrolled > 2 * lm_params * tokens
  t = metrics.Throughput(10, 100, unrolled, peak_flops=1e12)
  t.last_time -= 1.0
  out = t(1)
  assert 0 < out["perf/mfu"] < unrolled / 1e12 / jax.device_count() + 1e-9


def test_profiler_writes_a_trace(tmp_path):
  cfg = tiny.get_config().unlock()
  cfg.train.update(profile_start=2, profile_steps=2, num_steps=5)
  hooks = metrics.progress_hooks(cfg, str(tmp_path), writer=None)
  f = jax.jit(lambda x: (x @ x).sum())
  for step in range(1, 6):
    f(jnp.ones((64, 64))).block_until_ready()
    for hook in hooks[1:]:
      hook(step)
  assert list(tmp_path.glob("plugins/profile/*/*.xplane.pb"))


def test_export_from_a_sharded_training_run(shards, tmp_path, gcs_bucket):
  """A run sharded over 8 devices, with scanned layers and its workdir in a bucket, exported by
  the CLI onto one host as a checkpoint.pt."""
  import torch
  from flamingo_jax.weights import orbax_io
  cfg = _cfg(shards, num_steps=2)
  cfg.mesh.update(data=2, fsdp=2, tensor=2)
  cfg.model.scan_layers = True
  cfg.checkpoint.every_steps = 2
  base = nn.unbox(shapes.init_variables(cfg.model, jax.random.PRNGKey(cfg.seed)))
  orbax_io.save_base_checkpoint(str(tmp_path / "base"), cfg, base)
  cfg.checkpoint.base = str(tmp_path / "base")
  result = loop.train_and_evaluate(cfg, "gs://bucket/run")
  out = subprocess.run([sys.executable, "-m", "flamingo_jax.convert", "export", f"--base={tmp_path / 'base'}",
                        "--train_workdir=gs://bucket/run", f"--out={tmp_path / 'checkpoint.pt'}"],
                       cwd=REPO, capture_output=True, text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert out.returncode == 0, out.stderr[-2000:]
  sd = torch.load(tmp_path / "checkpoint.pt")
  # Generation reads the gs:// workdir too (its latest step, frozen weights from its base).
  synthetic.draw(np.random.default_rng(0), 64)[0].save(tmp_path / "image.png")
  gen = subprocess.run([sys.executable, "-m", "flamingo_jax.generate", "--checkpoint=gs://bucket/run",
                        f"--image={tmp_path / 'image.png'}", "--prompt=<image>", "--max_new_tokens=3",
                        "--num_beams=1"], cwd=REPO, capture_output=True, text=True,
                       env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert gen.returncode == 0 and "model: step 2 of gs://bucket/run" in gen.stderr, gen.stderr[-2000:]
  # The workdir alone: its recorded base checkpoint gives the tables; the same file results.
  alone = subprocess.run([sys.executable, "-m", "flamingo_jax.convert", "export", "--train_workdir=gs://bucket/run",
                          f"--out={tmp_path / 'alone.pt'}"], cwd=REPO, capture_output=True, text=True,
                         env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert alone.returncode == 0, alone.stderr[-2000:]
  jax.tree_util.tree_map(np.testing.assert_array_equal, {k: v.numpy() for k, v in torch.load(tmp_path / "alone.pt").items()},
                         {k: v.numpy() for k, v in sd.items()})
  # (The perceiver gets no gradient while the gates are still closed; the gates do.)
  trained = np.asarray(jax.device_get(result.state.params["layers"]["xattn"]["ff_gate"][0]))
  np.testing.assert_array_equal(
      sd["lang_encoder.transformer.blocks.0.gated_cross_attn_layer.ff_gate"].numpy(), trained)
  assert not np.array_equal(trained, np.asarray(base["params"]["layers"]["xattn"]["ff_gate"][0]))


def test_jaxpr_matmul_flops_match_hand_counts():
  w, x = jnp.ones((3, 8, 8)), jnp.ones((4, 8))

  def loss(w, x):
    y, _ = jax.lax.scan(lambda c, wi: (jnp.tanh(c @ wi), None), x, w)
    return jax.checkpoint(lambda y: (y @ w[0]).sum())(y)

  # forward scan 3·(2·4·8·8), head 2·4·8·8, remat'd head backward 2·(2·4·8·8), scan backward 3·2·(2·4·8·8)
  assert metrics.jaxpr_matmul_flops(jax.jit(jax.grad(loss)).trace(w, x).jaxpr) == 12 * 512
  image, kernel = jnp.ones((2, 3, 32, 32)), jnp.ones((16, 3, 4, 4))
  conv = jax.make_jaxpr(lambda i, k: jax.lax.conv_general_dilated(i, k, (4, 4), "VALID"))(image, kernel)
  assert metrics.jaxpr_matmul_flops(conv) == 2 * (2 * 16 * 8 * 8) * (3 * 4 * 4)
  a, b = jnp.ones((5, 4, 6)), jnp.ones((5, 6, 7))
  batched = jax.make_jaxpr(lambda a, b: jnp.einsum("bij,bjk->bik", a, b))(a, b)
  assert metrics.jaxpr_matmul_flops(batched) == 2 * 5 * 4 * 6 * 7
  branches = lambda p, a, b: jax.lax.cond(p, lambda: (a @ b[0]).sum(), lambda: (a[0] @ b[0]).sum())
  assert metrics.jaxpr_matmul_flops(jax.make_jaxpr(branches)(True, a, b)) == 5 * 2 * 4 * 6 * 7


def test_matmul_flops_are_most_of_xla_count_for_the_train_step():
  """The jaxpr count (what a GPU's MFU rests on) agrees with XLA's CPU count on the same step."""
  cfg = tiny.get_config().unlock()
  tx = optimizer.make_optimizer(cfg.optim)
  batches = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), _batches(cfg))
  abstract = nn.unbox(shapes.abstract_variables(cfg.model))
  state = jax.eval_shape(lambda p: TrainState.create(p, tx), abstract["params"])
  traced = jax.jit(step_lib.make_train_step(cfg.model, cfg.optim)).trace(state, abstract["frozen"], batches)
  xla = traced.lower().cost_analysis()
  xla = (xla[0] if isinstance(xla, list) else xla)["flops"]
  dots = metrics.jaxpr_matmul_flops(traced.jaxpr)
  assert 0.5 * xla < dots <= xla
