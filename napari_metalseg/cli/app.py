"""Commands that show the product: ``gui`` (napari with the docks), ``demo`` (headless end to end) and ``benchmark``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from napari_metalseg.cli.errors import user_errors
from napari_metalseg.cli.progress import run_with_bar
from napari_metalseg.cli.values import width_by_height
from napari_metalseg.errors import MetalsegError
from napari_metalseg.models.registry import MODEL_KINDS, family_of

BENCHMARK_KINDS: tuple[str, ...] = tuple(kind for kind in MODEL_KINDS if family_of(kind).name != "classical")
"""The models ``benchmark`` builds with random weights (the classical classifier is fitted, not built)."""


@click.command()
@click.option(
    "--model",
    "kind",
    type=click.Choice(BENCHMARK_KINDS),
    default="vit_b",
    show_default=True,
    help="SAM kind or task-specific CNN, random weights.",
)
@click.option(
    "--img-size", type=int, default=1024, show_default=True, help="Model input size (a CNN's training crop size)."
)
@click.option(
    "--image-size",
    type=int,
    default=1024,
    show_default=True,
    help="Side of the square micrograph of encoder_ms, cache_hit_ms and the SamPredictor reference.",
)
@click.option(
    "--large-size",
    default="2048x1536",
    show_default=True,
    help="WIDTHxHEIGHT of the micrograph of large_first_predict_ms, the boxes and the ratio updates.",
)
@click.option("--device", default="auto", show_default=True)
@click.option(
    "--repeat",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    help="Timed runs of each step after one warm-up run; the medians are reported.",
)
@click.option(
    "--boxes",
    type=click.IntRange(min=10),
    default=10,
    show_default=True,
    help="Distinct boxes of box_ms and sam_predictor_box_ms.",
)
@click.option("--fp32", is_flag=True, help="Predict in float32 (default: the Predictor's precision for the device).")
@click.option(
    "--guidance",
    type=click.Choice(["ratio", "none"]),
    default="ratio",
    show_default=True,
    help="Build the model with ratio guidance (measures ratio_update_ms) or without.",
)
@click.option("--no-reference", is_flag=True, help="Skip segment-anything's SamPredictor reference.")
@click.option(
    "--json",
    "json_out",
    default=None,
    help="Also write the results as JSON to this file; '-': the JSON to stdout and the table to stderr.",
)
@user_errors(model="--model", large_shape="--large-size")
def benchmark(
    kind: str,
    img_size: int,
    image_size: int,
    large_size: str,
    device: str,
    repeat: int,
    boxes: int,
    fp32: bool,
    guidance: str,
    no_reference: bool,
    json_out: str | None,
) -> None:
    """Time what a user waits for (cold prediction, cache hit, boxes, ratio updates) against segment-anything's
    SamPredictor on the same weights, in one process: medians in ms after a warm-up, a table (and JSON)."""
    from napari_metalseg.benchmark import benchmark_job, format_table
    from napari_metalseg.io.atomic import atomic_write_text
    from napari_metalseg.predict import resolve_device

    job = benchmark_job(
        kind,
        img_size=img_size,
        image_size=image_size,
        large_shape=width_by_height(large_size, "--large-size"),
        device=resolve_device(device),
        repeat=repeat,
        boxes=boxes,
        bf16=False if fp32 else None,
        guidance=guidance,
        reference=not no_reference,
    )
    results = run_with_bar(job, "benchmark")
    text = json.dumps(results, indent=2) + "\n"
    if json_out == "-":
        click.echo(format_table(results), err=True)
        click.echo(text, nl=False)
        return
    click.echo(format_table(results))
    if json_out:
        atomic_write_text(Path(json_out), text)
        click.echo(f"results: {json_out}", err=True)


@click.command()
@click.option(
    "--image",
    type=click.Path(path_type=Path),
    default=None,
    help="Micrograph or dataset folder to open (default: the synthetic sample micrograph).",
)
@click.option(
    "--run",
    type=click.Path(path_type=Path),
    default=None,
    help="Trained run directory to load; the opened micrograph is then predicted.",
)
@click.option(
    "--screenshot",
    type=click.Path(path_type=Path),
    default=None,
    help="Save a PNG of the whole window once loading and prediction are done, then exit.",
)
@user_errors
def gui(image: Path | None, run: Path | None, screenshot: Path | None) -> None:
    """Open napari with the MetalSeg dock, every metalseg widget as a tab (needs a display; see `make run`)."""
    import os
    import time

    import napari_metalseg._widgets  # noqa: F401  (blocks triton before napari creates a GL context)

    _require_qt()
    if image is not None:
        from napari_metalseg._widgets.reader import name_refusal

        if (refusal := name_refusal(image)) is not None:
            raise MetalsegError(refusal)
    if run is not None:
        from napari_metalseg.runs import require_run

        require_run(run)
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        raise MetalsegError(
            "no display: run `metalseg gui` on a desktop, or under xvfb-run; `metalseg demo` runs without one"
        )
    import napari
    from qtpy.QtCore import QTimer

    from napari_metalseg._widgets.main import MAIN_WIDGET

    viewer = napari.Viewer(title="napari-metalseg")
    viewer.window.set_geometry(0, 0, 1600, 1000)
    _, main = viewer.window.add_plugin_dock_widget("napari-metalseg", MAIN_WIDGET)
    for name, error in main.failed.items():
        click.echo(f"warning: the {name!r} widget could not be opened ({error})", err=True)
    widgets = main.sections
    if "Predict" in widgets:
        main.show_section("Predict")
    if image is not None:
        viewer.open(str(image), plugin="napari-metalseg")
    else:
        viewer.open_sample("napari-metalseg", "synthetic_steel")
    viewer.scale_bar.visible = True
    if run is not None and "Model" in widgets:
        if "Predict" in widgets:
            widgets["Model"].session.model_changed.connect(widgets["Predict"].predict)
        widgets["Model"].load_run(run)
    if screenshot is not None:
        started = time.monotonic()

        def ready() -> bool:
            done = run is None or any(
                getattr(widgets.get(name), attr, None) is not None
                for name, attr in (("Predict", "last_result"), ("Predict", "last_error"), ("Model", "last_error"))
            )
            idle = not any(getattr(w, "busy", False) for w in widgets.values())
            return done and idle and time.monotonic() - started > 2.0

        def shoot() -> None:
            if not ready() and time.monotonic() - started < 600:
                QTimer.singleShot(250, shoot)
                return
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            viewer.screenshot(str(screenshot), canvas_only=False)
            click.echo(str(screenshot))
            viewer.close()

        QTimer.singleShot(500, shoot)
    napari.run()


def _require_qt() -> None:
    """Raise one clear line when no Qt binding is installed (the package forces none; the CLI needs none)."""
    try:
        import qtpy  # noqa: F401  (raises when it finds no binding)
    except ImportError as exc:
        raise MetalsegError(
            f"no Qt binding for napari ({exc}): install one, e.g. pip install 'napari-metalseg[gui]' (PyQt6)"
        ) from None


@click.command()
@click.option(
    "--out",
    default=Path("demo_out"),
    show_default=True,
    type=click.Path(path_type=Path),
    help="Folder for the demo's dataset, model and results.",
)
@click.option(
    "--budget-s", default=120.0, show_default=True, help="Training time of the default model in seconds (more: better)."
)
@click.option("--seed", default=0, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option(
    "--fp32",
    is_flag=True,
    help="No bfloat16 autocast in training or prediction (default: bf16 on CUDA and, where the model gains from it, "
    "on CPUs with native bf16, AVX512-BF16 / AMX).",
)
@user_errors
def demo(out: Path, budget_s: float, seed: int, device: str, fp32: bool) -> None:
    """Headless end-to-end demo: synthesise steel micrographs, train, evaluate, predict and quantify."""
    from napari_metalseg.data.dataset import load_dataset, new_dataset, write_item
    from napari_metalseg.data.samples import load_samples
    from napari_metalseg.data.synth import write_synthetic_dataset
    from napari_metalseg.metrics import format_seed_table
    from napari_metalseg.predict import Predictor
    from napari_metalseg.quantify import quantify_masks
    from napari_metalseg.runs import read_run_config
    from napari_metalseg.training import TrainConfig, validate
    from napari_metalseg.training import train as run_training

    data, run, predicted = out / "dataset", out / "run", out / "predicted"
    click.echo(f"[1/4] synthesising 15 steel micrographs (384 px, x2700/x3000/x5000) into {data}", err=True)
    write_synthetic_dataset(data, n=15, size=384, seed=seed, overwrite=True)
    dataset = load_dataset(data, require_masks=True)
    click.echo(json.dumps(dataset.summary()["splits"]), err=True)
    train_samples = load_samples(dataset.labelled_split("train"))
    val_samples = load_samples(dataset.labelled_split("val"))
    test_samples = load_samples(dataset.labelled_split("test"))
    config = TrainConfig(guidance="ratio", budget_s=budget_s, device=device, seed=seed, bf16=False if fp32 else None)
    pooling = ", pooled with the classical classifier if it validates close to it" if config.pool_classical else ""
    click.echo(
        f"[2/4] training the default model ({config.model}{pooling}, ratio guidance) for {budget_s:g} s into {run}, "
        "and the classical pixel classifier for comparison",
        err=True,
    )
    run_with_bar(run_training(train_samples, dataset.phases, run, config, val_samples=val_samples), "training")
    classical = out / "classical"
    run_with_bar(
        run_training(
            train_samples, dataset.phases, classical, TrainConfig(model="classical", seed=seed), val_samples=val_samples
        ),
        "classical",
    )

    click.echo("[3/4] evaluating on the held-out test images", err=True)
    predictor = Predictor.from_run(run, device=device, bf16=False if fp32 else None)
    name = f"{config.model} + classical" if read_run_config(run).spec.pooled else config.model  # the run's choice
    rows = {
        "classical pixel classifier": validate(
            Predictor.from_run(classical).model, test_samples, dataset.phases, "cpu"
        ).by_magnification(),
        f"{name} (no guidance)": validate(
            predictor.model, test_samples, dataset.phases, predictor.device, bf16=predictor.bf16
        ).by_magnification(),
        f"{name} + true ratio": validate(
            predictor.model, test_samples, dataset.phases, predictor.device, ratios=True, bf16=predictor.bf16
        ).by_magnification(),
    }
    click.echo(format_seed_table(rows))

    click.echo(f"[4/4] predicting the test images into {predicted} and quantifying phase fractions", err=True)
    new_dataset(predicted, dataset.phases)
    for s in test_samples:
        write_item(predicted, s.name, s.image, predictor.predict(s.image, pixel_size_um=s.pixel_size_um).labels)
    report = quantify_masks(predicted, by="all", truth=data / "masks")
    click.echo(report.table())
    report.to_csv(out / "fractions.csv")
    report.plot(out / "fractions.png")
    click.echo(
        f"results: {run} (model), {predicted} (masks), {out / 'fractions.csv'}, {out / 'fractions.png'}", err=True
    )
