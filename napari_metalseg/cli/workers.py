"""``--workers N``: several processes of one command sharing a folder on this machine, the way ``torchrun`` ranks
share it (each process takes every N-th micrograph and keeps its own manifest), with one progress bar."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import click


@dataclass
class WorkerResult:
    """How one worker ended: its exit status, standard output and standard error."""

    rank: int
    returncode: int
    stdout: str
    stderr: str


def run_workers(count: int, args: list[str], *, done: Callable[[], int], total: int) -> list[WorkerResult]:
    """Run ``count`` copies of ``metalseg <args>`` as ranks ``0..count-1`` of ``count`` (``RANK``/``WORLD_SIZE``);
    show one progress bar of ``done()`` out of ``total`` until they all end.

    Each worker gets ``OMP_NUM_THREADS`` = the CPU cores divided among the workers (unless it is set already). Ctrl-C
    ends every worker (what they finished is kept) and raises ``KeyboardInterrupt``.

    Returns
    -------
    list of WorkerResult
        One per rank, in rank order.
    """
    threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // count))
    logs = Path(tempfile.mkdtemp(prefix="metalseg-workers-"))
    processes = []
    for rank in range(count):
        env = os.environ | {"RANK": str(rank), "WORLD_SIZE": str(count), "OMP_NUM_THREADS": threads}
        stdout = open(logs / f"{rank}.out", "w+", encoding="utf-8")  # noqa: SIM115 (closed below)
        stderr = open(logs / f"{rank}.err", "w+", encoding="utf-8")  # noqa: SIM115
        command = [sys.executable, "-m", "napari_metalseg.cli", *args]
        processes.append((subprocess.Popen(command, env=env, stdout=stdout, stderr=stderr), stdout, stderr))
    try:
        with click.progressbar(length=total, label=f"predicting ({count} workers)", file=sys.stderr) as bar:
            while any(p.poll() is None for p, _, _ in processes):
                bar.update(max(0, min(total, done()) - bar.pos))
                time.sleep(0.5)
            bar.update(max(0, min(total, done()) - bar.pos))
    except KeyboardInterrupt:
        for process, _, _ in processes:
            process.terminate()
        raise
    results = []
    for rank, (process, stdout, stderr) in enumerate(processes):
        process.wait()
        stdout.seek(0)
        stderr.seek(0)
        results.append(WorkerResult(rank, process.returncode, stdout.read(), stderr.read()))
        stdout.close()
        stderr.close()
    shutil.rmtree(logs, ignore_errors=True)
    return results
