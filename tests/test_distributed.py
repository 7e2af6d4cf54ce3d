"""Distributed training under torchrun: 2 CPU processes with gloo learn what one process learns with the same global
batch; a stop request ends every rank; a crashed rank ends the others; --resume continues a distributed run.

torchrun's ``--standalone`` rendezvous picks a free port at run time. GPUs (nccl, one GPU per local rank) cannot be
tested here: the same code path runs with ``cuda:LOCAL_RANK`` where GPUs exist (docs/scaling.md).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from napari_metalseg.runs import read_history, read_run_config
from napari_metalseg.training import TrainConfig, train

STEPS = 6


def _torchrun(*args: str) -> list[str]:
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    assert torchrun, "torchrun comes with torch"
    return [torchrun, "--standalone", "--nproc_per_node=2", "-m", "napari_metalseg.cli", "train", *args]


def _train_args(data: Path, out: Path, *, steps: int, batch_size: int, val_every: int) -> list[str]:
    return [
        *("--data", str(data), "--out", str(out), "--model", "tiny", "--img-size", "64", "--device", "cpu", "--fp32"),
        *("--steps", str(steps), "--batch-size", str(batch_size), "--val-every", str(val_every), "--lr", "3e-3"),
    ]


def _losses(run: Path) -> np.ndarray:
    return np.array([entry["loss"] for entry in read_history(run) if "loss" in entry])


def _one_process(samples, phases, out: Path, batch_size: int) -> Path:
    config = TrainConfig(
        model="tiny", img_size=64, steps=STEPS, batch_size=batch_size, val_every=3, lr=3e-3, device="cpu", bf16=False
    )
    list(train(samples["train"], phases, out, config, val_samples=samples["val"]))
    return out


def test_two_gloo_processes_train_what_one_process_trains_with_the_same_global_batch(
    synth_dataset, split_samples, tmp_path
):
    from napari_metalseg.predict import Predictor

    two = tmp_path / "two"
    args = _train_args(synth_dataset.root, two, steps=STEPS, batch_size=2, val_every=3)
    done = subprocess.run(_torchrun(*args), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "on 2 processes (torchrun)" in done.stderr
    assert json.loads(done.stdout)["steps_done"] == STEPS  # rank 0 alone reports
    one = _one_process(split_samples, synth_dataset.phases, tmp_path / "one", batch_size=4)
    half = _one_process(split_samples, synth_dataset.phases, tmp_path / "half", batch_size=2)
    distributed, single, smaller = _losses(two), _losses(one), _losses(half)
    assert len(distributed) == len(single) == STEPS
    # the same crops, the loss and gradients of the global batch: the same steps, up to float summation order
    np.testing.assert_allclose(distributed, single, rtol=1e-4)
    # what the comparison tells apart: one rank's half of the batch alone learns something else
    assert np.abs(smaller - single).max() / single.mean() > 2e-2
    dice = [read_run_config(run).metrics["mean_dice"] for run in (two, one)]
    assert abs(dice[0] - dice[1]) < 0.05
    predictor = Predictor.from_run(two, device="cpu", bf16=False)
    image = split_samples["test"][0].image
    labels = predictor.predict(image).labels
    assert labels.shape == image.shape and set(np.unique(labels)) <= set(range(len(synth_dataset.phases)))


def _wait(condition, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.1)


def _workers(parent: int) -> list[int]:
    found = subprocess.run(["ps", "--ppid", str(parent), "-o", "pid="], capture_output=True, text=True)
    return [int(pid) for pid in found.stdout.split()]


def _steps_in_history(run: Path) -> int:
    return max((entry.get("step", 0) for entry in read_history(run)), default=0)


@pytest.mark.timeout(300)
def test_a_stop_request_ends_every_rank_and_a_crashed_rank_ends_the_others(synth_dataset, tmp_path):
    """SIGTERM (scancel, pre-emption) stops both ranks at the same step with the run and its resume state saved; the
    run resumes distributed; a rank killed mid-run ends the other at once, and the run on disk stays loadable."""
    from napari_metalseg.runs import load_run

    run = tmp_path / "run"
    args = _train_args(synth_dataset.root, run, steps=100_000, batch_size=2, val_every=5)
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    launcher = subprocess.Popen(_torchrun(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        _wait(lambda: (run / "resume.pt").is_file(), 120, "the first resume state")
        launcher.send_signal(signal.SIGTERM)
        out, err = launcher.communicate(timeout=120)
    finally:
        launcher.kill()
    assert "SIGTERM: stopping training after the current step" in err
    assert "continue it with the same command and --resume" in err
    stopped = read_run_config(run)
    assert stopped.training["ended"] == "stopped" and stopped.steps_done >= 5
    assert _steps_in_history(run) == stopped.steps_done  # every step of both ranks recorded, none after the stop

    launcher = subprocess.Popen(_torchrun(*args, "--resume"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait(lambda: _steps_in_history(run) > stopped.steps_done, 120, "the resumed run's next resume state")
        workers = _workers(launcher.pid)
        assert len(workers) == 2
        os.kill(workers[-1], signal.SIGKILL)
        start = time.monotonic()
        out, err = launcher.communicate(timeout=120)
        ended_in = time.monotonic() - start
    finally:
        launcher.kill()
    assert f"resumed at step {stopped.steps_done}" in err
    assert launcher.returncode != 0 and ended_in < 60
    assert "the distributed run ended" in err and "rerun the same command with --resume" in err
    model, _ = load_run(run, device="cpu")
    assert model is not None
    assert not [p.name for p in run.iterdir() if p.name.startswith(".")]  # no temporary file of an atomic write left


def _agree(rank: int, world: int, rendezvous: str, out: str) -> None:
    """One rank of the agreement test: its own stop request, clock, loss and budget, then the answers it got."""
    import torch.distributed as dist

    from napari_metalseg.distributed import Agreement

    dist.init_process_group("gloo", init_method=rendezvous, rank=rank, world_size=world)
    try:
        agree = Agreement(world=world, device="cpu")
        stop, clock = agree.before_step(rank == 1, 10.0 * rank)
        loss, late, due = agree.step(1.0 + rank, out_of_time=rank == 0, validate=False)
        Path(out, f"{rank}.json").write_text(json.dumps([stop, clock, loss, late, due]))
    finally:
        dist.destroy_process_group()


def test_the_ranks_take_every_decision_together(tmp_path):
    """A stop asked of one rank stops both; the clock a time-budget schedule follows is the same on both (else their
    learning rates, then their weights, drift apart); the loss is the mean; one rank's spent budget ends both."""
    import torch.multiprocessing as mp

    mp.spawn(_agree, args=(2, f"file://{tmp_path / 'rendezvous'}", str(tmp_path)), nprocs=2)
    answers = [json.loads((tmp_path / f"{rank}.json").read_text()) for rank in range(2)]
    assert answers[0] == answers[1] == [True, 5.0, 1.5, True, False]


def test_the_first_signal_asks_to_stop_the_second_aborts():
    """Ctrl-C or SIGTERM (scancel, pre-emption) stops a training run after its step, with the shell's status for that
    signal; a second signal aborts at once; the previous handlers come back afterwards."""
    from napari_metalseg.cli.signals import StopOnSignal

    before = signal.getsignal(signal.SIGTERM)
    with StopOnSignal("training", echo=False) as stop:
        assert not stop()
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)  # the handler runs between bytecodes of the main thread
        assert stop() and stop.exit_status == 128 + signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
    assert signal.getsignal(signal.SIGTERM) is before
