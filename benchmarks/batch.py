"""A batch of small micrographs predicted through `metalseg predict --input FOLDER`, killed at random moments and
rerun (issue target: 500 micrographs, 3 kills; every output present, no partial file, none recorded twice).

Usage::

    python -m benchmarks.batch [--n 500] [--size 256] [--kills 3] [--seed 0]

Trains the default model for a few steps on a small synthetic dataset (the prediction cost does not depend on how
well it is trained), writes ``n`` random 8-bit micrographs, then:

1. predicts the folder once without interruption (the reference time);
2. predicts it into a new folder, killing the command (SIGKILL) at a random moment ``kills`` times, each time after
   a random number of further micrographs, then reruns it to the end;
3. reruns the finished folder (everything skipped).

Prints one JSON object: the times, the micrographs done at each kill, and the checks.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _metalseg(*args: str) -> list[str]:
    return [sys.executable, "-m", "napari_metalseg.cli", *args]


def _recorded(out: Path) -> list[str]:
    names = []
    for path in out.glob("manifest*.jsonl"):
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                names.append(json.loads(line)["name"])
            except (json.JSONDecodeError, KeyError):
                pass  # a line cut by a kill
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    from napari_metalseg.data.dataset import write_image

    root = Path(tempfile.mkdtemp(prefix="metalseg-batch-"))
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    subprocess.run(_metalseg("synth", "--out", str(root / "data"), "--n", "6", "--size", "128"), check=True, **quiet)
    run = root / "run"
    train = ("train", "--data", str(root / "data"), "--out", str(run), "--steps", "5", "--no-pool-classical")
    subprocess.run(_metalseg(*train), check=True, **quiet)
    rng = np.random.default_rng(args.seed)
    folder = root / "in"
    folder.mkdir()
    for i in range(args.n):
        write_image(folder / f"field_{i:04d}.png", rng.integers(0, 256, (args.size, args.size), dtype=np.uint8))

    def predict(out: Path) -> list[str]:
        return _metalseg("predict", "--model", str(run), "--input", str(folder), "--out", str(out))

    t0 = time.perf_counter()
    subprocess.run(predict(root / "reference"), check=True, **quiet)
    reference_s = time.perf_counter() - t0

    out = root / "out"
    kills = []
    t0 = time.perf_counter()
    for _ in range(args.kills):
        process = subprocess.Popen(predict(out), **quiet)
        target = len(_recorded(out)) + int(rng.integers(1, max(2, args.n // (args.kills + 1))))
        while len(_recorded(out)) < target and process.poll() is None:
            time.sleep(0.005)
        time.sleep(float(rng.uniform(0, 0.05)))  # anywhere in the next micrograph
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        kills.append(len(_recorded(out)))
    done = subprocess.run(predict(out), capture_output=True, text=True)
    interrupted_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    subprocess.run(predict(out), check=True, **quiet)
    skip_s = time.perf_counter() - t0

    names = _recorded(out)
    expected = sorted(p.stem for p in folder.iterdir())
    report = {
        "micrographs": args.n,
        "size": args.size,
        "model": "elunet (default network, 5 steps)",
        "uninterrupted_s": round(reference_s, 1),
        "micrographs_per_s": round(args.n / reference_s, 1),
        "recorded_at_each_kill": kills,
        "killed_and_rerun_s": round(interrupted_s, 1),
        "rerun_of_finished_folder_s": round(skip_s, 1),
        "rerun_exit_status": done.returncode,
        "every_mask_present": sorted(p.stem for p in (out / "masks").iterdir()) == expected,
        "no_partial_file": not [p for p in out.rglob("*") if p.name.startswith(".")],
        "each_recorded_once": sorted(names) == expected,
        "same_masks_as_uninterrupted": all(
            (out / "masks" / p.name).read_bytes() == p.read_bytes() for p in (root / "reference" / "masks").iterdir()
        ),
        "cpu": os.cpu_count(),
    }
    print(json.dumps(report, indent=1))
    ok = report["every_mask_present"] and report["no_partial_file"] and report["each_recorded_once"]
    return 0 if ok and done.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
