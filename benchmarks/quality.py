"""Held-out quality of the training recipes against the classical pixel classifier (docs/quality.md).

For each data source (the project's generator, and the independent generator :mod:`benchmarks.heldout`) a training
set and a *separate* test set are drawn (other seeds, other magnifications, other fractions); each recipe is trained on
the training set with full masks and with scribbles (a given fraction of pixels labelled), and scored on the test set
(mean Dice over phases, averaged over magnifications, as in the study's table). The real Zeiss SEM image is scored with
scribbles on 2 % of its pixels against a reference segmentation made by another method (Gaussian smoothing + Otsu
threshold + removal of specks), on the pixels that were not scribbled.

Usage::

    python -m benchmarks.quality --out quality_out [--recipes classical,unet3plus,elunet,tiny] [--budget-s 180]
        [--sources synth,heldout] [--labels full,scribble] [--zeiss]

Prints one table and writes ``quality.json`` and ``quality.md`` in ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from napari_metalseg.data.samples import Sample
from napari_metalseg.phases import PhaseSet

TRAIN_MAGS = (2700, 3000, 5000)
TEST_MAGS = (2000, 4000, 6000)
HELDOUT_TRAIN_MAGS = (2000, 3500, 6000)
HELDOUT_TEST_MAGS = (2500, 4500, 5500)


def synth_samples(n: int, size: int, seed: int, mags, prefix: str) -> list[Sample]:
    """The project's generator, random fractions per image (means as the generator's defaults, wide spread)."""
    from napari_metalseg.data.synth import pixel_size_for, synthesize_micrograph

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        f = rng.dirichlet((5, 3, 2))
        image, mask = synthesize_micrograph(
            size, fractions=f, magnification=mags[i % len(mags)], seed=int(rng.integers(2**31))
        )
        mag = float(mags[i % len(mags)])
        out.append(Sample(f"{prefix}{i}", image.astype(np.float32), mask, mag, pixel_size_for(mag, size)))
    return out


def heldout_samples(n: int, size: int, seed: int, mags, prefix: str, phases: int = 3) -> list[Sample]:
    from benchmarks.heldout import generate, pixel_size_um

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        image, mask = generate(
            size=size, seed=int(rng.integers(2**31)), magnification=mags[i % len(mags)], phases=phases
        )
        mag = float(mags[i % len(mags)])
        out.append(Sample(f"{prefix}{i}", image.astype(np.float32), mask, mag, pixel_size_um(mag)))
    return out


def scribbled(samples: list[Sample], fraction: float, seed: int) -> list[Sample]:
    from benchmarks.heldout import scribble_mask

    return [replace(s, mask=scribble_mask(s.mask, fraction=fraction, seed=seed + i)) for i, s in enumerate(samples)]


RECIPES = {
    "default": {},
    "default-native": {"physical_scale": False},
    "classical": {"model": "classical"},
    "unet3plus": {"model": "unet3plus"},
    "elunet": {"model": "elunet"},
    "unet3plus-256": {"model": "unet3plus", "img_size": 256, "batch_size": 4},
    "elunet-256": {"model": "elunet", "img_size": 256, "batch_size": 4},
    "tiny": {"model": "tiny", "img_size": 128, "steps": 600, "batch_size": 4, "lr": 2e-3},
    "unet3plus-128": {"model": "unet3plus", "img_size": 128, "batch_size": 8},
    "elunet-128": {"model": "elunet", "img_size": 128, "batch_size": 8},
    "elunet-w16": {"model": "elunet", "width": 16, "img_size": 256, "batch_size": 4},
    "elunet-alone": {"model": "elunet", "pool_classical": False},
    "elunet-alone-last": {"model": "elunet", "pool_classical": False, "ema": 0.0},
    "elunet-alone-pseudo": {"model": "elunet", "pool_classical": False, "pseudo": 1.0},
    "elunet-alone-b4": {"model": "elunet", "pool_classical": False, "batch_size": 4},
    "elunet-alone-192": {"model": "elunet", "pool_classical": False, "img_size": 192, "batch_size": 4},
    "elunet-alone-lr4e-3": {"model": "elunet", "pool_classical": False, "lr": 4e-3},
    "default-pseudo": {"pseudo": 1.0},
    "unet-w16": {"model": "unet", "width": 16},
    "unet-w24": {"model": "unet", "width": 24},
    "unet-w24-d3": {"model": "unet", "width": 24, "depth": 3},
    "unet-w16-192": {"model": "unet", "width": 16, "img_size": 192, "batch_size": 4},
}
"""Candidate recipes (``default``: ``metalseg train`` without options); the CNNs train for ``--budget-s`` seconds
(or ``--steps`` steps)."""


def run_recipe(
    name: str,
    train_samples: list[Sample],
    test: list[Sample],
    phases: PhaseSet,
    out: Path,
    budget_s: float,
    seed: int = 0,
    guidance: str = "none",
    extra: dict | None = None,
) -> dict:
    """Train recipe ``name`` and score it on ``test``: without phase fractions (``dice``), given each test image's
    true fractions (``dice_true_ratio``: the guidance encoder of a guided run reads them, and every run's labels are
    given them, :mod:`napari_metalseg.priors`) and given fractions off by about 2 points, as a point count gives
    them (``dice_noisy_ratio``); ``guidance`` (``ratio`` or ``spatial``) trains a guided run."""
    from napari_metalseg.phases import phase_fractions
    from napari_metalseg.training import TrainConfig, train, validate

    guided = guidance != "none"
    recipe = dict(RECIPES[name]) | (extra or {})
    if recipe.get("model") in (None, "unet", "unet3plus", "elunet") and "steps" not in recipe:
        recipe.setdefault("budget_s", budget_s)
    if guided:
        recipe["guidance"] = guidance
    config = TrainConfig(device="cpu", seed=seed, **recipe)
    t0 = time.perf_counter()
    last = None
    for event in train(train_samples, phases, out, config):
        last = event
    train_s = time.perf_counter() - t0
    from napari_metalseg.runs import load_run

    model, run_config = load_run(out)
    evaluation = validate(model, test, phases, "cpu", boundaries=True)
    frac_err = []
    from napari_metalseg.metrics import Evaluation
    from napari_metalseg.predict import Predictor

    predictor = Predictor(model, phases)
    true_ratio = validate(model, test, phases, "cpu", ratios=True)
    noisy = Evaluation(phases.names)
    rng = np.random.default_rng(11)
    for s in test:
        truth = phase_fractions(s.mask, len(phases))
        pred = predictor.predict(s.image, pixel_size_um=s.pixel_size_um).fractions()  # without the fractions
        frac_err.append(float(np.abs(pred - truth).max() * 100))
        off = np.clip(truth + rng.normal(0, 0.02, truth.size), 0, None)
        labels = predictor.predict(s.image, ratios=off / off.sum(), pixel_size_um=s.pixel_size_um).labels
        noisy.add(s.name, labels, s.mask, s.magnification)
    return {
        "recipe": name,
        "guided": guided,
        "guidance": guidance,
        "dice": evaluation.average,
        "dice_true_ratio": true_ratio.average,
        "dice_per_phase_true_ratio": true_ratio.dice_per_phase(),
        "dice_noisy_ratio": noisy.average,
        "by_magnification": evaluation.by_magnification(),
        "dice_per_phase": evaluation.dice_per_phase(),
        "errors_by_boundary": evaluation.errors_by_boundary(),
        "train_s": round(train_s, 1),
        "steps": last.step if last else 0,
        "max_fraction_error_pts": round(float(np.mean(frac_err)), 2),
        "val": (last.metrics or {}).get("mean_dice") if last else None,
        "pool_choice": run_config.training.get("pool_choice"),
        "working_pixel_size_um": run_config.spec.pixel_size_um,
    }


def zeiss_reference(image: np.ndarray) -> np.ndarray:
    """Reference two-phase segmentation (0 = gold ligament, 1 = pore) by another method than any trained model:
    Gaussian smoothing (sigma 2 px), Otsu threshold, specks under 40 px removed from both phases."""
    from skimage import filters, morphology

    smooth = filters.gaussian(image, 2.0)
    pore = smooth < filters.threshold_otsu(smooth)
    pore = morphology.remove_small_objects(pore, 40)
    pore = ~morphology.remove_small_objects(~pore, 40)
    return pore.astype(np.uint8)


def run_zeiss(recipes: list[str], out: Path, budget_s: float, fraction: float = 0.02) -> list[dict]:
    from benchmarks.heldout import scribble_mask
    from napari_metalseg.io import read_micrograph
    from napari_metalseg.metrics import Evaluation
    from napari_metalseg.phases import UNLABELED
    from napari_metalseg.predict import Predictor
    from napari_metalseg.runs import load_run
    from napari_metalseg.training import TrainConfig, train

    path = Path(__file__).resolve().parent.parent / "tests" / "data" / "sem" / "nanoporous_gold_zeiss.tif"
    micrograph = read_micrograph(path)
    image = micrograph.image
    reference = zeiss_reference(image)
    scribbles = scribble_mask(reference, fraction=fraction, seed=5, width=5)
    phases = PhaseSet.from_names(["gold", "pore"])
    results = []
    for name in recipes:
        recipe = dict(RECIPES[name])
        if recipe.get("model") in (None, "unet", "unet3plus", "elunet"):
            recipe.setdefault("budget_s", budget_s)
        config = TrainConfig(device="cpu", **recipe)
        run = out / f"zeiss-{name}"
        t0 = time.perf_counter()
        sample = Sample("zeiss", image, scribbles, micrograph.magnification, micrograph.pixel_size_um)
        for _ in train([sample], phases, run, config):
            pass
        train_s = time.perf_counter() - t0
        model, run_config = load_run(run)
        pred = Predictor(model, phases).predict(image, pixel_size_um=micrograph.pixel_size_um).labels
        scored = np.where(scribbles == UNLABELED, reference, UNLABELED).astype(np.uint8)
        evaluation = Evaluation(phases.names)
        evaluation.add("zeiss", pred, scored)
        true_pore = reference.mean() * 100
        results.append(
            {
                "recipe": name,
                "dice": evaluation.average,
                "train_s": round(train_s, 1),
                "pore_fraction_pred": round(float((pred == 1).mean() * 100), 2),
                "pore_fraction_ref": round(float(true_pore), 2),
                "scribbled_pct": round(float((scribbles != UNLABELED).mean() * 100), 2),
                "pool_choice": run_config.training.get("pool_choice"),
            }
        )
        print(json.dumps(results[-1]), flush=True)
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("quality_out"))
    parser.add_argument("--recipes", default="classical,default")
    parser.add_argument("--sources", default="synth,heldout")
    parser.add_argument("--labels", default="full,scribble")
    parser.add_argument("--scribble-fraction", type=float, default=0.1)
    parser.add_argument("--budget-s", type=float, default=180.0)
    parser.add_argument("--n-train", type=int, default=8)
    parser.add_argument("--n-test", type=int, default=9)
    parser.add_argument("--size", type=int, default=384)
    parser.add_argument(
        "--guided",
        action="store_true",
        help="Also train ratio- and spatially guided variants (scored with the true fractions) of each CNN recipe.",
    )
    parser.add_argument(
        "--variants",
        default="none,ratio,spatial",
        help="With --guided: which guidance variants to train (e.g. ratio,spatial to rerun only the guided ones).",
    )
    parser.add_argument(
        "--steps", type=int, default=None, help="Train the CNN recipes for this many steps instead of --budget-s."
    )
    parser.add_argument("--seed", type=int, default=0, help="Training seed of every run (repeat runs with others).")
    parser.add_argument("--zeiss", action="store_true", help="Also score the real Zeiss image (2 %% scribbles).")
    parser.add_argument("--no-grid", action="store_true", help="Only the Zeiss image.")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    recipes = [r for r in args.recipes.split(",") if r]
    results: list[dict] = []
    phases = PhaseSet.from_names(["ferrite", "martensite", "bainite"])
    record = args.out / "quality.json"
    if not args.no_grid:
        for source in args.sources.split(","):
            if source == "synth":
                train_full = synth_samples(args.n_train, args.size, 101, TRAIN_MAGS, "tr")
                test = synth_samples(args.n_test, args.size, 202, TEST_MAGS, "te")
            else:
                train_full = heldout_samples(args.n_train, args.size, 303, HELDOUT_TRAIN_MAGS, "tr")
                test = heldout_samples(args.n_test, args.size, 404, HELDOUT_TEST_MAGS, "te")
            for labels in args.labels.split(","):
                train_set = train_full if labels == "full" else scribbled(train_full, args.scribble_fraction, 7)
                for name in recipes:
                    guide = args.guided and name not in ("classical", "tiny") and labels == "full"
                    variants = args.variants.split(",") if guide else ["none"]
                    for guidance in variants:
                        tag = f"{source}-{labels}-{name}{'' if guidance == 'none' else '-' + guidance}"
                        run = args.out / tag
                        result = run_recipe(
                            name,
                            train_set,
                            test,
                            phases,
                            run,
                            args.budget_s,
                            seed=args.seed,
                            guidance=guidance,
                            extra={"steps": args.steps} if args.steps and name != "classical" else None,
                        )
                        result |= {"source": source, "labels": labels, "seed": args.seed}
                        results.append(result)
                        print(json.dumps(result), flush=True)
                        record.write_text(json.dumps(results, indent=1))
    if args.zeiss or args.no_grid:
        for r in run_zeiss(recipes, args.out, args.budget_s):
            results.append(r | {"source": "zeiss", "labels": "scribble 2%"})
            record.write_text(json.dumps(results, indent=1))
    lines = [
        "| source | labels | recipe | mean Dice (%) | given the true fractions | given fractions +-2 pts "
        "| train (s) | fraction error (pts) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        err = r.get("max_fraction_error_pts", abs(r.get("pore_fraction_pred", 0) - r.get("pore_fraction_ref", 0)))
        given = [f"{r[key]:.2f}" if key in r else "-" for key in ("dice_true_ratio", "dice_noisy_ratio")]
        guidance = r.get("guidance", "none")
        lines.append(
            f"| {r['source']} | {r['labels']} | {r['recipe']}{'' if guidance == 'none' else ' + ' + guidance} "
            f"| {r['dice']:.2f} | {' | '.join(given)} "
            f"| {r['train_s']:.0f} | {err:.2f} |"
        )
    (args.out / "quality.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
