"""The launch scripts hand the train CLI exactly the arguments the user typed: braces, spaces and
quotes survive the remote shell (a stand-in `gcloud` records its arguments and runs `--command`
through bash; a stand-in `python3` records what it was asked to run)."""
import json
import os
import stat
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

GCLOUD = r"""#!/usr/bin/env bash
printf '%s\n' "$*" >> "$FAKE_LOG/gcloud.txt"
while [ $# -gt 0 ]; do
  if [ "$1" = "--command" ]; then exec bash -c "$2"; fi
  shift
done
"""
PYTHON = f"#!{sys.executable}\n" + r"""
import json, os, sys
with open(os.path.join(os.environ["FAKE_LOG"], "python3.jsonl"), "a") as f:
  f.write(json.dumps(sys.argv[1:]) + "\n")
sys.exit(int(os.environ.get("FAKE_PLAN_RC", 0)) if sys.argv[1:3] == ["-m", "flamingo_jax.plan"] else 0)
"""
USER_ARGS = ["--config.data.laion.shards=gs://bucket/laion/{00000..09999}.tar",
             "--config.checkpoint.base=gs://bucket/a b", "--config.data.mmc4.shards=it's;$HOME"]


def _fakes(tmp_path):
  bin_dir, log, home = tmp_path / "bin", tmp_path / "log", tmp_path / "home"
  for d in (bin_dir, log, home / "flamingo_jax" / "launch"):
    d.mkdir(parents=True)
  for name, text in (("gcloud", GCLOUD), ("python3", PYTHON)):
    (bin_dir / name).write_text(text)
    (bin_dir / name).chmod(stat.S_IRWXU)
  (home / "flamingo_jax" / "launch" / "setup.sh").write_text("exit 0\n")  # the remote copy
  env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_LOG": str(log), "HOME": str(home),
         "CONFIG": "configs/of_3b.py:tpu", "WORKDIR": "gs://bucket/of3b", "TPU": "my-v5e", "ZONE": "z",
         "TOPOLOGY": "v5e:4x4"}
  return env, log


def _calls(log, module="flamingo_jax.train"):
  calls = [json.loads(line) for line in (log / "python3.jsonl").read_text().splitlines()]
  return [c for c in calls if c[:2] == ["-m", module]]


def test_tpu_vm_plans_then_passes_arguments_through_the_remote_shell(tmp_path):
  env, log = _fakes(tmp_path)
  subprocess.run(["bash", "launch/tpu_vm.sh", *USER_ARGS], cwd=REPO, env=env, check=True, timeout=60)
  assert _calls(log, "flamingo_jax.plan") == [["-m", "flamingo_jax.plan", "--config=configs/of_3b.py:tpu",
                                               "--topology=v5e:4x4", "--slices=1", *USER_ARGS]]
  assert _calls(log) == [["-m", "flamingo_jax.train", "--config=configs/of_3b.py:tpu",
                                "--workdir=gs://bucket/of3b", *USER_ARGS]]
  gcloud = (log / "gcloud.txt").read_text().splitlines()
  assert [g.split(" --zone")[0] for g in gcloud] == ["compute tpus tpu-vm scp --recurse", "compute tpus tpu-vm ssh my-v5e"]
  assert all("--worker=all" in g and "--node" not in g for g in gcloud)


def test_tpu_vm_launches_every_host_of_several_slices(tmp_path):
  """A queued resource of two slices: the plan is for two slices of the topology, and the copy
  and the command reach every worker of every node, the arguments intact."""
  env, log = _fakes(tmp_path)
  del env["TPU"]
  env.update(QR="my-qr", SLICES="2", TOPOLOGY="v5e:16x16")
  subprocess.run(["bash", "launch/tpu_vm.sh", *USER_ARGS], cwd=REPO, env=env, check=True, timeout=60)
  assert _calls(log, "flamingo_jax.plan") == [["-m", "flamingo_jax.plan", "--config=configs/of_3b.py:tpu",
                                               "--topology=v5e:16x16", "--slices=2", *USER_ARGS]]
  assert _calls(log) == [["-m", "flamingo_jax.train", "--config=configs/of_3b.py:tpu",
                          "--workdir=gs://bucket/of3b", *USER_ARGS]]
  scp, ssh = (log / "gcloud.txt").read_text().splitlines()
  assert scp.startswith("compute tpus queued-resources scp --recurse --zone z --node=all --worker=all "
                        "--batch-size=all . my-qr:")
  assert ssh.startswith("compute tpus queued-resources ssh my-qr --zone z --node=all --worker=all --batch-size=all "
                        "--command ")
  missing = subprocess.run(["bash", "launch/tpu_vm.sh"], cwd=REPO, env={**env, "SLICES": ""},
                           capture_output=True, text=True, timeout=60)
  assert missing.returncode != 0 and "set SLICES" in missing.stderr


def test_tpu_vm_does_not_launch_what_does_not_fit(tmp_path):
  env, log = _fakes(tmp_path)
  out = subprocess.run(["bash", "launch/tpu_vm.sh", *USER_ARGS], cwd=REPO, env={**env, "FAKE_PLAN_RC": "1"},
                       capture_output=True, text=True, timeout=60)
  assert out.returncode == 1 and "not launching" in out.stderr
  assert not (log / "gcloud.txt").exists() and not _calls(log)


def test_gpu_host_passes_arguments_through(tmp_path):
  env, log = _fakes(tmp_path)
  subprocess.run(["bash", "launch/gpu_host.sh", *USER_ARGS], cwd=REPO, env=env, check=True, timeout=60)
  assert _calls(log) == [["-m", "flamingo_jax.train", "--config=configs/of_3b.py:tpu",
                                "--workdir=gs://bucket/of3b", *USER_ARGS]]
