"""A training run whose workdir is a gs:// bucket (served by the local GCS emulator through the
real TensorFlow, TensorStore and google-cloud-storage clients): Orbax checkpoints and TensorBoard
logs land in the bucket, and a restarted run resumes from there by itself."""
import os

import tensorflow as tf

from flamingo_jax.train import checkpoint, loop
from tests.fake_gcs import FakeGcs
from tests.train.test_train import _cfg


def test_run_on_a_gcs_workdir_checkpoints_logs_and_resumes(shards, tmp_path, monkeypatch):
  os.makedirs(tmp_path / "gcs" / "bucket")
  with FakeGcs(str(tmp_path / "gcs"), str(tmp_path)) as gcs:
    for key, value in gcs.env().items():
      monkeypatch.setenv(key, value)
    workdir = "gs://bucket/run"
    cfg = _cfg(shards, num_steps=2)
    cfg.checkpoint.every_steps = 2
    first = loop.train_and_evaluate(cfg, workdir)
    assert checkpoint.Checkpointer(workdir, 3, data_names=("laion", "mmc4")).latest_step() == 2
    resumed = loop.train_and_evaluate(_cfg(shards, num_steps=3), workdir)
    assert [h["step"] for h in first.history] == [1, 2]
    assert [h["step"] for h in resumed.history] == [3]
    events = tf.io.gfile.glob(f"{workdir}/events.out.tfevents.*")
    assert len(events) == 2
    tags = {v.tag for path in events for e in tf.compat.v1.train.summary_iterator(path)
            for v in e.summary.value}
    assert {"loss", "lr", "eval/loss_real_images"} <= tags, tags
    # Everything went to the bucket: Orbax's arrays through TensorStore, the rest through TF.
    assert {method for method, _, _ in gcs.requests} >= {"POST", "PUT", "GET"}
    assert os.path.isdir(tmp_path / "gcs" / "bucket" / "run" / "checkpoints" / "2" / "state")
