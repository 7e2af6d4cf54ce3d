"""Time the live preview (issue target: first preview <= 2 s after a stroke on a 1024 x 1024 micrograph).

Usage::

    python -m benchmarks.preview [--size 1024] [--fraction 0.03] [--repeats 3]

For each repeat a fresh :class:`~napari_metalseg.preview.LivePreview` previews a synthetic micrograph with
``--fraction`` of its pixels scribbled twice: the first preview of the micrograph (filter features computed) and a
later one (features cached). Prints the seconds of each stage and the share of the unlabelled pixels previewed right.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def main(argv: list[str] | None = None) -> int:
    from benchmarks.heldout import scribble_mask
    from napari_metalseg.data.synth import synthesize_micrograph
    from napari_metalseg.phases import UNLABELED
    from napari_metalseg.preview import LivePreview

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--fraction", type=float, default=0.03)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    image, truth = synthesize_micrograph(args.size, seed=3)
    image = image.astype(np.float32)
    strokes = scribble_mask(truth, fraction=args.fraction, seed=1)
    unlabelled = strokes == UNLABELED
    for repeat in range(args.repeats):
        preview = LivePreview(int(truth.max()) + 1)
        for when in ("first", "later"):
            t0 = time.perf_counter()
            result = preview.update(image, strokes)
            total = time.perf_counter() - t0
            right = float((result.labels[unlabelled] == truth[unlabelled]).mean() * 100)
            stages = {k: round(v, 3) for k, v in result.seconds.items()}
            print(
                json.dumps(
                    {
                        "repeat": repeat,
                        "preview": when,
                        "seconds": round(total, 3),
                        "stages": stages,
                        "unlabelled_right_pct": round(right, 2),
                    }
                ),
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
