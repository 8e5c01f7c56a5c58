"""torchrun: two gloo processes on the CPU train one run, written by rank 0 alone; resume works there too."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from animevae.training.distributed import DistContext, init_distributed
from helpers import environ_without_debug, read_jsonl, write_blobs


def _torchrun(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "animevae", "train", str(tmp_path / "faces"), "--image-size", "16", "--latent-dim", "8",
               "--batch-size", "16", "--precision", "fp32", "--device", "cpu", "--quiet",
               "--runs-dir", str(tmp_path / "runs"), "--name", "ddp", *args]
    # Loopback for gloo: no dependence on how this machine's host name resolves.
    env = {**environ_without_debug(), "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=240)


@pytest.mark.slow
def test_two_process_gloo_run_writes_one_run_and_resumes(tmp_path: Path) -> None:
    write_blobs(tmp_path / "faces", count=48)
    first = _torchrun(tmp_path, "--epochs", "1")
    assert first.returncode == 0, f"stdout:\n{first.stdout[-2000:]}\nstderr:\n{first.stderr[-6000:]}"
    assert first.stdout.count("finished: run ddp") == 1  # rank 0 alone reports
    assert sorted(p.name for p in (tmp_path / "runs").iterdir() if not p.name.startswith(".")) == ["ddp"]
    run = tmp_path / "runs" / "ddp"
    assert json.loads((run / "config.json").read_text())["train"]["world_size"] == 2
    assert [line["epoch"] for line in read_jsonl(run / "metrics.jsonl")] == [1]

    resumed = _torchrun(tmp_path, "--epochs", "2", "--resume")
    assert resumed.returncode == 0, f"stdout:\n{resumed.stdout[-2000:]}\nstderr:\n{resumed.stderr[-6000:]}"
    assert [line["epoch"] for line in read_jsonl(run / "metrics.jsonl")] == [1, 2]
    assert sorted(p.name for p in (run / "samples").iterdir()) == ["epoch_0001.png", "epoch_0002.png"]


@pytest.mark.slow
def test_ranks_average_their_gradients_and_stay_one_model(tmp_path: Path) -> None:
    """Protects DDP training: the ranks' gradients are averaged (each rank's equals the mean of what each
    computed alone), so after a step every rank holds the same weights, not separate replicas."""
    import torch
    from safetensors.torch import load_file

    write_blobs(tmp_path / "faces", count=40)
    probe = Path(__file__).with_name("ddp_probe.py")
    env = {**environ_without_debug(), "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           str(probe), str(tmp_path), str(tmp_path / "faces")],
                          capture_output=True, text=True, env=env, timeout=240)
    assert done.returncode == 0, f"stdout:\n{done.stdout[-2000:]}\nstderr:\n{done.stderr[-6000:]}"
    ranks = [load_file(str(tmp_path / f"rank{r}.safetensors")) for r in range(2)]

    grads = [k for k in ranks[0] if k.startswith("ddp_grad.")]
    assert grads
    for key in grads:
        local = [rank["local_grad." + key.split(".", 1)[1]] for rank in ranks]
        assert not torch.allclose(local[0], local[1]), f"{key}: the ranks saw the same images"
        mean = (local[0] + local[1]) / 2
        for rank in ranks:
            torch.testing.assert_close(rank[key], mean, rtol=1e-4, atol=1e-6, msg=lambda m: f"{key}: {m}")

    after = [k for k in ranks[0] if k.startswith("after.")]
    assert any(".denoiser." in k for k in after) and any(".vae." in k for k in after)
    different = [k for k in after if not torch.equal(ranks[0][k], ranks[1][k]) and "running_" not in k
                 and "num_batches" not in k]
    assert different == [], f"the ranks' weights differ after a step: {different[:5]}"


def test_a_plain_process_is_world_size_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    context = init_distributed("cpu")
    assert context == DistContext() and context.is_main and not context.enabled
    assert context.mean({"loss": 2.0}) == {"loss": 2.0}
    assert context.max([1.0, 0.0]) == [1.0, 0.0]
    assert context.share_text("run-7") == "run-7"


@pytest.mark.slow
def test_two_process_runs_under_load_always_exit_0(tmp_path: Path) -> None:
    faces = tmp_path / "faces"
    write_blobs(faces, count=24)
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        for attempt in range(3):
            command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                       "-m", "animevae", "train", str(faces), "--image-size", "16", "--latent-dim", "8",
                       "--batch-size", "8", "--precision", "fp32", "--device", "cpu", "--quiet", "--epochs", "1",
                       "--runs-dir", str(tmp_path / "runs"), "--name", f"load-{attempt}"]
            env = {**environ_without_debug(), "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
            done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=240)
            assert done.returncode == 0, f"attempt {attempt}:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    finally:
        hog.kill()
        hog.wait()
