"""Peak memory of predicting a huge micrograph (issue target: 16384 x 16384 with the compact model <= 3 GiB).

Usage::

    python -m benchmarks.memory [--size 16384] [--model tiny] [--img-size 256] [--cli]

Each size runs in a fresh process, so its peak resident memory (``ru_maxrss``) is its own. The micrograph is 8-bit
random noise (the time does not depend on the content), the model has random weights. Prints one JSON line per size:
seconds, the peak resident memory and the resident memory before predicting (Python, torch and the image).

With ``--cli`` the micrograph is an 8-bit TIFF file and the process is the whole command
``metalseg predict --model RUN --input FILE --out DIR``: reading the file (as float32), predicting, writing the mask.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = """
import json, resource, sys, time
import numpy as np
from napari_metalseg.models.spec import ModelSpec
from napari_metalseg.phases import PhaseSet
from napari_metalseg.predict import Predictor
kind, img_size, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
phases = PhaseSet.from_names(["ferrite", "martensite", "bainite"])
model = ModelSpec(kind=kind, img_size=img_size, phases=phases.to_json()).build("cpu")[0].eval()
image = np.random.default_rng(0).integers(0, 256, (n, n), dtype=np.uint8)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
t0 = time.perf_counter()
result = Predictor(model, phases).predict(image)
print(json.dumps({"size": n, "model": kind, "img_size": img_size, "seconds": round(time.perf_counter() - t0, 1),
                  "peak_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
                  "before_gib": round(before, 2), "labels_mib": result.labels.nbytes // 2**20}))
"""


SAVE_RUN = """
import sys
from napari_metalseg.models.lora import trainable_state_dict
from napari_metalseg.models.spec import ModelSpec
from napari_metalseg.phases import PhaseSet
from napari_metalseg.runs import save_run
kind, img_size, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
phases = PhaseSet.from_names(["ferrite", "martensite", "bainite"]).to_json()
spec = ModelSpec(kind=kind, img_size=img_size, phases=phases)
save_run(out, spec, trainable_state_dict(spec.build("cpu")[0]))
"""


def _cli(args) -> int:
    """Peak resident memory of the whole ``metalseg predict`` command on an 8-bit TIFF of each size."""
    import os
    import tempfile
    import time
    from pathlib import Path

    import numpy as np
    import tifffile

    root = Path(tempfile.mkdtemp(prefix="metalseg-memory-"))
    subprocess.run([sys.executable, "-c", SAVE_RUN, args.model, str(args.img_size), str(root / "run")], check=True)
    for n in args.size:
        image = root / f"mosaic_{n}.tif"
        tifffile.imwrite(image, np.random.default_rng(0).integers(0, 256, (n, n), dtype=np.uint8))
        command = [sys.executable, "-m", "napari_metalseg.cli", "predict", "--model", str(root / "run")]
        t0 = time.perf_counter()
        process = subprocess.Popen(
            [*command, "--input", str(image), "--out", str(root / f"out_{n}")], stdout=subprocess.DEVNULL
        )
        _, status, usage = os.wait4(process.pid, 0)
        image.unlink()
        if status:
            return 1
        print(
            {
                "size": n,
                "model": args.model,
                "command": "metalseg predict",
                "seconds": round(time.perf_counter() - t0, 1),
                "peak_gib": round(usage.ru_maxrss / 2**20, 2),
            }
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, nargs="+", default=[8192, 16384])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--img-size", type=int, default=256)
    parser.add_argument("--cli", action="store_true", help="measure the whole metalseg predict command on a TIFF")
    args = parser.parse_args(argv)
    if args.cli:
        return _cli(args)
    for n in args.size:
        done = subprocess.run(
            [sys.executable, "-c", CHILD, args.model, str(args.img_size), str(n)], capture_output=True, text=True
        )
        if done.returncode:
            print(done.stderr, file=sys.stderr)
            return done.returncode
        print(json.loads(done.stdout.strip().splitlines()[-1]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
