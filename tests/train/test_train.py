"""Training: sharded == single-device step, learning, exact resume (from a gs:// workdir),
frozen weights untouched, no optimizer state for frozen weights, non-finite stop and skip (a
SIGTERM'd run's checkpoint: tests/train/test_sweep.py)."""
import collections
import json
import os
import re
import shutil
import subprocess
import sys
import time

import flax.linen as nn
import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

from configs import tiny
from flamingo_jax.data import pipeline, synthetic
from flamingo_jax.models import rules, shapes
from flamingo_jax.train import checkpoint, loop, metrics, optimizer, step as step_lib
from flamingo_jax.train.state import TrainState
from flamingo_jax.weights import load

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _cfg(shards, **train):
  c = tiny.get_config().unlock()
  c.tokenizer_path = os.path.join(REPO, c.tokenizer_path)
  c.data.synthetic_dir = ""
  c.data.laion.update(shards=os.path.join(shards, "laion-*.tar"), batch_size=16,
                      validation_shards=os.path.join(shards, "held_out", "laion-*.tar"))
  c.data.mmc4.update(shards=os.path.join(shards, "mmc4-*.tar"), batch_size=8,
                     validation_shards=os.path.join(shards, "held_out", "mmc4-*.tar"))
  c.train.update({"log_every": 1, "final_captions": 0, **train})  # (captions: test_loss_falls_and_resume_is_exact)
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


def _one_step(cfg, non_finite=None):
  """One step from the seeded initialisation; with `non_finite`, then a step on a batch with a
  NaN image (also returned: the state before it, the state after it, its metrics)."""
  mesh, rule_set = rules.make_mesh(cfg.mesh), rules.logical_rules(cfg)
  variables = load.initial_variables(cfg, mesh, rule_set)
  tx = optimizer.make_optimizer(cfg.optim)
  step = jax.jit(step_lib.make_train_step(cfg, non_finite))
  with rules.activate(mesh, rule_set):
    state = jax.jit(lambda p: TrainState.create(p, tx))(variables["params"])
    batches = {k: rules.global_batch(v, mesh) for k, v in _batches(cfg).items()}
    frozen_before = jax.device_get(variables["frozen"])
    state, metrics = step(state, variables["frozen"], batches)
    out = jax.device_get(state.params), jax.device_get(metrics), frozen_before, jax.device_get(variables["frozen"])
    if non_finite is None:
      return out
    bad = _batches(cfg, seed=1)
    bad["laion"]["images"][0] = np.nan
    before = jax.device_get(state)
    skipped, m = step(state, variables["frozen"], {k: rules.global_batch(v, mesh) for k, v in bad.items()})
  return out, (before, jax.device_get(skipped), jax.device_get(m))


@pytest.mark.slow
def test_sharded_step_equals_single_device_step_and_skips_a_non_finite_update(shards):
  """(2, 2, 2) mesh vs one device: the same loss and update. With train.non_finite='skip', a
  batch with a NaN image leaves params and optimizer state as they were, the batch consumed."""
  single = _cfg(shards)
  single.mesh.update(data=1, fsdp=1, tensor=1)
  sharded = _cfg(shards)
  sharded.mesh.update(data=2, fsdp=2, tensor=2)
  sharded.train.non_finite = "skip"
  from unittest import mock  # only to pin the device list; the model and step are real
  with mock.patch.object(jax, "devices", lambda *a: jax.local_devices()[:1]):
    p1, m1, _, _ = _one_step(single)
  (p8, m8, frozen_before, frozen_after), (before, skipped, m) = _one_step(
      sharded, step_lib.NonFinitePolicy.from_config(sharded.train))
  np.testing.assert_allclose(m1["loss"], m8["loss"], rtol=1e-5)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), p1, p8)
  # The frozen tree is bitwise unchanged by a step.
  jax.tree_util.tree_map(np.testing.assert_array_equal, frozen_before, frozen_after)
  assert not bool(m["finite"]) and int(skipped.step) == 2
  jax.tree_util.tree_map(np.testing.assert_array_equal, skipped.params, before.params)
  jax.tree_util.tree_map(np.testing.assert_array_equal, skipped.opt_state, before.opt_state)


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


@pytest.mark.slow
def test_loss_falls_and_resume_is_exact(shards, tmp_path, gcs_bucket, capfd):
  straight = loop.train_and_evaluate(_cfg(shards, num_steps=30, final_captions=2, validate_every=10),
                                     str(tmp_path / "a"))
  out = capfd.readouterr().out
  assert "compiled again" not in out  # 30 steps, one program
  captions = out.split("held-out images, true caption -> the trained model's:\n")[1].splitlines()[:2]
  assert all(line.startswith(f"  {tmp_path / 'a' / 'samples'}") and " -> " in line for line in captions), out[-2000:]
  losses = [h["loss"] for h in straight.history]
  assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])
  # The validation loss, on held-out shards: every 10 steps, printed, falling.
  assert [v["step"] for v in straight.validated] == [10, 20, 30]
  assert straight.validated[-1]["val/loss"] < straight.validated[0]["val/loss"]
  last = straight.validated[-1]
  assert (f"step 30/30  validation loss (held-out) total {last['val/loss']:.4f}  laion {last['val/loss_laion']:.4f}"
          f"  mmc4 {last['val/loss_mmc4']:.4f}\n") in out
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
  cfg = _cfg(shards, num_steps=15, validate_every=10)
  cfg.checkpoint.every_steps = 5
  loop.train_and_evaluate(cfg, workdir)
  resumed = loop.train_and_evaluate(_cfg(shards, num_steps=30, validate_every=10), workdir)
  events = tf.io.gfile.glob(f"{workdir}/events.out.tfevents.*")
  tags = {v.tag for path in events for e in tf.compat.v1.train.summary_iterator(path)
          for v in e.summary.value}
  assert [h["step"] for h in resumed.history] == list(range(16, 31))
  np.testing.assert_array_equal([h["loss"] for h in resumed.history], losses[15:])
  assert resumed.validated == straight.validated[1:]  # the same held-out batches, the same weights
  # The skip counts are the run's totals: the checkpoint carries them with the data position.
  skipped = lambda h: {k: v for k, v in h.items() if k.startswith("skipped/")}
  assert skipped(resumed.history[-1]) == skipped(straight.history[-1]) and sum(skipped(straight.history[-1]).values()) > 0
  assert os.path.isdir(tmp_path / "gcs" / "bucket" / "run" / "checkpoints" / "15" / "state")
  assert len(events) == 2 and {"loss", "lr", "eval/loss_real_images", "val/loss", "val/loss_laion"} <= tags, tags
  assert not os.path.exists("gs:")  # nothing of the bucket's path was made locally
  earlier = load.load_model(workdir, step=15)  # a chosen step of a gs:// workdir
  assert earlier.source.startswith("step 15 of gs://bucket/run")
  assert not np.array_equal(jax.device_get(earlier.variables["params"]["xattn_0"]["ff_gate"]),
                            jax.device_get(resumed.state.params["xattn_0"]["ff_gate"]))


@pytest.mark.slow
def test_a_damaged_latest_checkpoint_is_set_aside_and_the_previous_resumes(shards, tmp_path, capfd):
  """Two checkpoint tiers (kept every 4 steps, frequent every 3) and a truncated file in the
  newest step of each: the restart names both, moves them aside (kept, not deleted) and resumes
  from the newest whole step of either tier with the uninterrupted run's losses, bitwise."""
  cfg = _cfg(shards, num_steps=8)
  cfg.checkpoint.update(every_steps=4, frequent_every=3)
  straight = loop.train_and_evaluate(cfg, str(tmp_path))
  frequent = tmp_path / "checkpoints" / "frequent"
  assert sorted(os.listdir(frequent)) == ["3", "6"] and checkpoint.Checkpointer(str(tmp_path), 3).manager.all_steps() == [4, 8]
  for step_dir in (tmp_path / "checkpoints" / "8", frequent / "6"):
    state_files = sorted((f for f in (step_dir / "state").rglob("*") if f.is_file()), key=lambda f: -f.stat().st_size)
    with open(state_files[0], "r+b") as f:  # the largest file of the state, cut in half
      f.truncate(state_files[0].stat().st_size // 2)
  capfd.readouterr()
  resumed = loop.train_and_evaluate(cfg, str(tmp_path))
  out = capfd.readouterr().out
  assert ("warning: checkpoint step 8 does not restore (" in out and "warning: checkpoint step 6 does not restore ("
          in out and f"Resumed from step 4 in {tmp_path / 'checkpoints'}\n" in out), out[-3000:]
  assert (tmp_path / "checkpoints" / "damaged" / "8" / "state").is_dir() and (frequent / "damaged" / "6" / "state").is_dir()
  assert [h["step"] for h in resumed.history] == [5, 6, 7, 8]
  np.testing.assert_array_equal([h["loss"] for h in resumed.history], [h["loss"] for h in straight.history[4:]])
  assert checkpoint.Checkpointer(str(tmp_path), 3).latest_step() == 8  # the resumed run saved step 8 anew
  # Resumed from the frequent tier when it holds the newest step (6, saved anew), then nothing to do.
  shutil.rmtree(tmp_path / "checkpoints" / "8")
  capfd.readouterr()
  again = loop.train_and_evaluate(cfg, str(tmp_path))
  assert f"Resumed from step 6 in {frequent}\n" in capfd.readouterr().out
  np.testing.assert_array_equal([h["loss"] for h in again.history], [h["loss"] for h in straight.history[6:]])


class _Recorder(grain.DatasetIterator):
  """Passes a dataset's batches on to the run and keeps their token ids (what was trained on)."""

  def __init__(self, inner: grain.DatasetIterator):
    super().__init__(inner)
    self._inner, self.ids = inner, []

  def __next__(self):
    batch = next(self._inner)
    self.ids.append(batch["input_ids"].copy())
    return batch

  def get_state(self):
    return self._inner.get_state()

  def set_state(self, state):
    self._inner.set_state(state)


@pytest.mark.slow
def test_faulty_shards_every_good_sample_once_an_epoch_every_bad_one_counted(tmp_path):
  """About 11% bad samples of every kind the pipeline skips, and every shard cut off mid-member:
  the run trains on the good samples in the seeded shuffled order, each once in the first epoch,
  and counts every bad one under its reason."""
  data = tmp_path / "faulty"
  manifests = {"laion": synthetic.write_faulty_shards(str(data), "laion", samples_per_shard=45),
               "mmc4": synthetic.write_faulty_shards(str(data), "mmc4", samples_per_shard=25)}
  cfg = _cfg(str(data), num_steps=12, validate_every=0)  # 10 (LAION) and 11 (MMC4) batches an epoch
  for name in manifests:
    cfg.data[name].validation_shards = ""
  run = loop.setup(cfg, str(tmp_path / "run"))
  run.iterators = {name: _Recorder(it) for name, it in run.iterators.items()}
  try:
    history = loop.run_steps(run)
  finally:
    run.preemption.restore()
    run.ckpt.close()
  for name, word in (("laion", "sample"), ("mmc4", "document")):
    manifest = manifests[name]
    key_of = {synthetic.tag(i): key for i, key in enumerate(manifest)}
    used = [key_of[re.search(rf"{word} ([a-z]+)", run.tokenizer.decode(row.tolist())).group(1)]
            for ids in run.iterators[name].ids[:cfg.train.num_steps] for row in ids]  # (read ahead: more)
    order, expected, skips = pipeline.training_order(name, cfg.data), [], collections.Counter()
    while len(expected) < len(used):  # the records the run read, in its order, good or bad
      key = order[len(expected) + sum(skips.values())]["__key__"]
      if manifest[key] is None:
        expected.append(key)
      else:
        skips[f"{name}/{manifest[key]}"] += 1
    good = [key for key, reason in manifest.items() if reason is None]
    planted = collections.Counter(f"{name}/{r}" for r in manifest.values() if r)
    assert used == expected and sorted(used[:len(good)]) == sorted(good), name
    assert 0.1 < sum(planted.values()) / len(manifest) < 0.13 and len(planted) == {"laion": 4, "mmc4": 6}[name]
    logged = {k.removeprefix("skipped/"): v for k, v in history[-1].items() if k.startswith(f"skipped/{name}/")}
    assert logged == skips and all(skips[k] >= n for k, n in planted.items()), (name, logged, planted)


@pytest.mark.slow
def test_a_non_finite_update_stops_before_checkpointing(shards, tmp_path):
  """Step 1's loss and gradient are finite, but a learning rate at float32's limit times a large
  weight decay overflows the update: the run stops at step 1 and no checkpoint holds the
  overflowed weights."""
  cfg = _cfg(shards, num_steps=5)
  cfg.optim.update(learning_rate=3.4e38, weight_decay=1e3, warmup_steps=0)
  cfg.checkpoint.every_steps = 1
  with pytest.raises(loop.NonFiniteError, match=r"updated state at step 1 \(loss \d"):
    loop.train_and_evaluate(cfg, str(tmp_path))
  assert checkpoint.Checkpointer(str(tmp_path), 3).latest_step() is None


@pytest.mark.slow
def test_too_many_skipped_updates_in_a_row_stop_the_run(shards, tmp_path):
  cfg = _cfg(shards, num_steps=20, non_finite="skip", max_skipped_in_a_row=2)
  cfg.optim.update(learning_rate=3.4e38, weight_decay=1e3, warmup_steps=0)  # every update overflows
  with pytest.raises(loop.NonFiniteError, match="3 updates in a row skipped"):
    loop.train_and_evaluate(cfg, str(tmp_path))


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


def test_mfu_rests_on_the_model_flop_count():
  cfg = tiny.get_config()
  flops = metrics.step_flops(cfg).total  # models/flops.py; tests/test_plan.py checks it
  # At least the LM's forward matmuls: 2 * LM params * text tokens.
  lm_params = rules.count_params(shapes.abstract_variables(cfg.model)["frozen"]["lm"])
  tokens = sum(cfg.data[n].batch_size * cfg.data[n].max_tokens for n in ("mmc4", "laion"))
  assert flops > 2 * lm_params * tokens
  t = metrics.Throughput(10, 100, flops, peak_flops=1e12)
  t.last_time -= 1.0
  out = t(1)
  assert 0 < out["perf/mfu"] < flops / 1e12 / jax.device_count() + 1e-9


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


@pytest.mark.slow
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
  # Generation reads the gs:// workdir too (its latest step, frozen weights from its base).
  synthetic.draw(np.random.default_rng(0), 64)[0].save(tmp_path / "image.png")
  gen = subprocess.run([sys.executable, "-m", "flamingo_jax.generate", "--checkpoint=gs://bucket/run",
                        f"--image={tmp_path / 'image.png'}", "--prompt=<image>", "--max_new_tokens=3",
                        "--num_beams=1"], cwd=REPO, capture_output=True, text=True,
                       env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert gen.returncode == 0 and "model: step 2 of gs://bucket/run" in gen.stderr, gen.stderr[-2000:]
  # The workdir alone: its recorded base checkpoint gives the frozen tables.
  alone = subprocess.run([sys.executable, "-m", "flamingo_jax.convert", "export", "--train_workdir=gs://bucket/run",
                          f"--out={tmp_path / 'checkpoint.pt'}"], cwd=REPO, capture_output=True, text=True,
                         env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert alone.returncode == 0, alone.stderr[-2000:]
  sd = torch.load(tmp_path / "checkpoint.pt")
  special = [cfg.model.eoc_token_id, cfg.model.media_token_id]  # rows the run trains
  np.testing.assert_array_equal(np.delete(sd["lang_encoder.transformer.wte.weight"].numpy(), special, axis=0),
                                np.delete(base["frozen"]["lm"]["embed"]["embedding"], special, axis=0))
  # Adam's moments live where their parameters do (left to XLA they would sit on one device).
  kernel = result.state.params["perceiver"]["layers"]["ff"]["fc1"]["kernel"]  # scanned: (depth, ...)
  assert kernel.sharding.spec != jax.sharding.PartitionSpec()
  assert result.state.opt_state[1][0].mu["perceiver"]["layers"]["ff"]["fc1"]["kernel"].sharding == kernel.sharding
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


def test_a_step_that_compiles_again_is_named():
  f = jax.jit(lambda state, batch: (state + batch["x"].sum(), batch["x"].mean()), donate_argnums=0)
  watch = step_lib.RecompileWatch(f)
  state = jnp.zeros(())
  for step, dtype in enumerate([jnp.float32, jnp.float32, jnp.bfloat16, jnp.bfloat16], 1):
    batch = {"x": jnp.ones((2, 3), dtype)}
    new, _ = f(state, batch)
    watch(step, {"state": state, "batches": batch})
    state = new.astype(jnp.float32)
  assert len(watch.warnings) == 1 and watch.warnings[0].startswith("step 3: the train step compiled again")
  assert "['batches']['x']: (2, 3) float32" in watch.warnings[0] and "-> (2, 3) bfloat16" in watch.warnings[0]


def test_a_workdir_lease_names_its_holder_and_lapses_on_gcs(gcs_bucket):
  """The lease of a gs:// workdir: another host's live lease refuses a job, naming it; a lapsed
  one (no renewal for the lease's seconds) is taken over; the holder's own exit releases it."""
  from etils import epath
  from flamingo_jax import workdir
  path = epath.Path("gs://bucket/leased") / workdir.LEASE
  path.parent.mkdir(parents=True, exist_ok=True)
  other = {"host": "tpu-vm-7", "pid": 4242, "token": "x"}
  path.write_text(json.dumps({**other, "renewed": time.time()}))
  with pytest.raises(workdir.WorkdirInUseError, match=r"^gs://bucket/leased is in use by another job "
                     r"\(host tpu-vm-7, pid 4242, renewed \d+ s ago\); it lapses 60 s after"):
    workdir.Lease("gs://bucket/leased").acquire()
  path.write_text(json.dumps({**other, "renewed": time.time() - 61}))
  with workdir.Lease("gs://bucket/leased") as lease:
    assert json.loads(path.read_text())["token"] == lease.me["token"]
  assert not path.exists()
