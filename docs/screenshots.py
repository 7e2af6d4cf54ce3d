"""Regenerate the documentation screenshots: the real GUI, driven through the loop a metallurgist follows.

Run from the repository root (napari needs a display; a virtual one does)::

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python docs/screenshots.py [--out docs/images]

One napari viewer of 1366 x 768 (a laptop screen) with the MetalSeg dock (what ``metalseg gui`` opens) goes through:
open a micrograph, annotate it (brush strokes painted with napari's brush, placed with the synthetic sample's hidden
ground truth), train the default model for a short time budget, predict, correct the prediction with the brush,
quantify; then a compact SAM model (trained here for a few steps, then LoRA-adapted) for the Model, Phase ratios, Box
prompts and Encoder features docks; last, the seven docks opened one by one from the Plugins menu. Each step saves a
PNG of the whole window (:data:`SHOTS` lists them). It takes about 2 minutes on 2 CPU cores (up to 5 when they are
busy); its runs and autosaves go into a scratch folder (``--work``) that it removes at the end.

The MetalSeg dock is widened until the Train tab needs no horizontal scroll bar (its form is wider than the dock's
default width).

Documentation tooling, not a test: it waits for every background job (each dock's ``busy``) by processing Qt events
with a timeout, and fails with the step it was at when something takes too long or the GUI reports an error.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PLUGIN = "napari-metalseg"
WIDTH, HEIGHT = 1366, 768
"""The window: a laptop screen."""
ELUNET_BUDGET_S = 30
"""Training time budget of the default model (elunet) in the Training dock."""
ELUNET_IMG_SIZE = 128
SAM_STEPS = 40
"""Optimizer steps of the compact SAM model (tiny, ratio guidance) trained for the SAM docks, and of its LoRA
adaptation; at 128 px a 512 px micrograph is encoded in 16 tiles, unshrunk (feature maps of 32 x 32)."""
SAM_IMG_SIZE = 128
BRUSH = 8
CORRECTION_WINDOW = 160
"""Side (pixels) of the window of the micrograph where the prediction is corrected with the brush."""
TIMEOUT_S = 240
"""The longest a single background job may take before the script gives up."""

SHOTS = {
    "gui_open_sem.png": "a real Zeiss SEM micrograph opened with the plugin (information band cropped, nm scale bar)",
    "loop_1_annotate.png": "Train tab: new annotations layer, brush strokes of three phases, live preview, summary",
    "gui_training_progress.png": "Train tab while training: the loss falls, the first validations appear",
    "loop_2_train.png": "Train tab when training has finished: the curve, the message, the trained prediction",
    "gui_training.png": "Train tab: the strokes over the finished model's prediction (zoomed), the curve",
    "gui_overview.png": "the MetalSeg dock (Predict tab) and the predicted micrograph",
    "gui_predict.png": "P(martensite) with the phases layer hidden",
    "loop_3_correct.png": "Predict tab: brush corrections in phases, their outline in edits, the uncertainty layer",
    "loop_4_quantify.png": "Quantify tab on the corrected micrograph",
    "gui_quantify_single.png": "Quantify on one field: no confidence interval",
    "gui_quantify.png": "Quantify on three micrographs: fractions with 95 % CI, islands, bar chart",
    "gui_model.png": "Model tab with a trained run loaded (tiny SAM LoRA-adapted, ratio guidance)",
    "gui_ratios.png": "Ratios tab: the sliders and the prediction they steer",
    "gui_boxes.png": "Boxes tab: one box predicted again, one island assigned to bainite",
    "gui_features.png": "Features tab: the encoder's block maps over the micrograph",
    "loop_5_laptop_docks.png": "the seven docks opened from the Plugins menu in a 1366 x 768 window",
}


# -- waiting without qtbot ------------------------------------------------------------------------------------------
def pump(seconds: float = 0.3) -> None:
    """Process Qt events for ``seconds`` (redraws, debounce timers, worker signals)."""
    from qtpy.QtWidgets import QApplication

    end = time.monotonic() + seconds
    while True:
        QApplication.processEvents()
        if time.monotonic() >= end:
            return
        time.sleep(0.02)


def wait_until(condition: Callable[[], bool], what: str, timeout: float = TIMEOUT_S) -> float:
    """Process Qt events until ``condition()`` holds; returns the seconds waited.

    Raises
    ------
    TimeoutError
        It did not hold within ``timeout`` seconds.
    """
    from qtpy.QtWidgets import QApplication

    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"waited {timeout:.0f} s for {what}")
        QApplication.processEvents()
        time.sleep(0.02)
    return time.monotonic() - start


def idle(*docks) -> Callable[[], bool]:
    """A condition: none of ``docks`` runs a job."""
    return lambda: not any(getattr(dock, "busy", False) for dock in docks)


# -- brush strokes --------------------------------------------------------------------------------------------------
def strokes_inside(region: np.ndarray, count: int, rng: np.random.Generator, longest: float = 30) -> list[np.ndarray]:
    """Up to ``count`` straight strokes (points ``(y, x)``, 1 px apart) lying inside ``region`` with the brush's
    margin: centred on the deepest points of the region (far apart), each within the disk that fits there."""
    from scipy import ndimage

    depth = ndimage.distance_transform_edt(region)
    yy, xx = np.indices(region.shape)
    strokes = []
    for _ in range(count):
        y, x = np.unravel_index(int(np.argmax(depth)), depth.shape)
        radius = float(depth[y, x])
        half = min(longest / 2, radius - BRUSH / 2 - 1)
        if half < 2:
            break
        angle = rng.uniform(0, np.pi)
        t = np.arange(-half, half + 1e-9, 1.0)
        strokes.append(np.stack([y + t * np.sin(angle), x + t * np.cos(angle)], axis=1))
        depth[(yy - y) ** 2 + (xx - x) ** 2 < (2 * radius + 20) ** 2] = 0  # the next stroke goes elsewhere
    return strokes


def strokes_over(region: np.ndarray, count: int, least: int = 40) -> list[np.ndarray]:
    """One scribble over each of the ``count`` largest islands of ``region`` (at least ``least`` pixels): points on
    its core (2 px inside), a brush's width apart, as a user paints over a mistake."""
    from scipy import ndimage

    islands, n = ndimage.label(region)
    if n == 0:
        return []
    areas = ndimage.sum_labels(region, islands, index=np.arange(1, n + 1))
    depth = ndimage.distance_transform_edt(region)
    strokes = []
    for index in np.argsort(areas)[::-1][:count]:
        if areas[index] < least:
            break
        island = islands == index + 1
        core = island & (depth >= 2)
        points = np.argwhere(core if core.any() else island).astype(float)
        strokes.append(points[:: max(1, BRUSH // 2)])
    return strokes


def strokes_along_edge(region: np.ndarray, count: int, rng: np.random.Generator, reach: float = 14) -> list[np.ndarray]:
    """Up to ``count`` curved strokes inside ``region`` that follow its boundary at the brush's margin: the points of
    the band just inside the boundary within ``reach`` of a random seed (seeds far apart)."""
    from scipy import ndimage

    depth = ndimage.distance_transform_edt(region)
    band = (depth >= BRUSH / 2 + 1) & (depth < BRUSH / 2 + 2.5)
    ys, xs = np.nonzero(band)
    free = np.ones(ys.size, bool)
    strokes = []
    for _ in range(count):
        if not free.any():
            break
        seed = rng.choice(np.flatnonzero(free))
        near = (ys - ys[seed]) ** 2 + (xs - xs[seed]) ** 2
        strokes.append(np.stack([ys[near < reach**2], xs[near < reach**2]], axis=1)[::3].astype(float))
        free &= near > (6 * reach) ** 2
    return strokes


def paint_strokes(layer, strokes: list[np.ndarray], label: int) -> None:
    """Paint each stroke into a Labels layer as the brush does: one undo step and one ``paint`` event per stroke."""
    layer.brush_size = BRUSH
    layer.selected_label = label
    for points in strokes:
        with layer.block_history():
            for point in points:
                layer.paint(point, label, refresh=False)
        layer.refresh()
        pump(0.05)


def worst_window(wrong: np.ndarray, size: int) -> tuple[int, int]:
    """Centre ``(y, x)`` of the ``size`` x ``size`` window with the most wrong pixels, half a window from the edges
    (the scale bar covers a corner)."""
    from scipy import ndimage

    counts = ndimage.uniform_filter(wrong.astype(np.float32), size, mode="constant")
    edge = size
    inner = counts[edge:-edge, edge:-edge]
    y, x = np.unravel_index(int(np.argmax(inner)), inner.shape)
    return int(y) + edge, int(x) + edge


def camera(viewer):
    """The viewer's camera (``viewer.scene.camera`` since napari 0.9, ``viewer.camera`` before)."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None else viewer.camera


def zoom_to(viewer, image, y: float, x: float, extent: float) -> None:
    """Zoom so that about ``extent`` pixels of ``image`` show across the canvas, centred on pixel ``(y, x)`` as far
    as the view stays inside the image."""
    viewer.reset_view()
    cam = camera(viewer)
    shape = np.asarray(np.shape(image.data)[-2:], float)
    scale = np.asarray(image.scale, float)[-2:]
    canvas = viewer.window._qt_viewer.canvas.native
    zoom = min(canvas.width(), canvas.height()) / (extent * scale.min())
    seen = np.array([canvas.height(), canvas.width()], float) / zoom / scale  # pixels visible along y and x
    centre = []
    for c, n, s in zip((y, x), shape, seen):
        low, high = s / 2 - 0.5, n - s / 2 - 0.5
        centre.append((n - 1) / 2 if low >= high else float(np.clip(c, low, high)))
    cam.center = (centre[0] * scale[0], centre[1] * scale[1])
    cam.zoom = zoom


# -- the script -----------------------------------------------------------------------------------------------------
class Shots:
    """The viewer, the MetalSeg dock and the folder the PNGs go to."""

    def __init__(self, out: Path, work: Path) -> None:
        import napari

        from napari_metalseg._widgets.main import MAIN_WIDGET

        self.out = out
        self.work = work
        self.started = time.monotonic()
        self.written: list[Path] = []
        self.viewer = napari.Viewer(title="napari-metalseg")
        self.window = self.viewer.window._qt_window
        self.dock, self.main = self.viewer.window.add_plugin_dock_widget(PLUGIN, MAIN_WIDGET)
        overlays = getattr(getattr(self.viewer, "canvas", None), "overlays", None)
        (overlays.scale_bar if overlays is not None else self.viewer.scale_bar).visible = True
        self.fit_window()
        self.docks = self.main.sections
        self.fit_dock()

    def fit_dock(self, widest: int = 720) -> None:
        """Widen the MetalSeg dock until the Train tab needs no horizontal scroll bar (its form is wider than the
        dock's default width, which the other tabs set)."""
        from qtpy.QtCore import Qt

        train = self.main.show_section("Training")
        pump(0.2)
        bar = train.scroll.horizontalScrollBar()
        width = self.dock.width()
        while bar.maximum() > 0 and width < widest:
            width += 8
            self.window.resizeDocks([self.dock], [width], Qt.Orientation.Horizontal)
            pump(0.05)
        self.log(f"MetalSeg dock {self.dock.width()} px wide (Train tab form: {train.scroll.widget().width()} px)")

    def fit_window(self) -> None:
        """The window at the top left, 1366 x 768."""
        self.window.show()
        self.window.move(0, 0)
        for _ in range(3):
            self.window.resize(WIDTH, HEIGHT)
            pump(0.1)

    def log(self, message: str) -> None:
        print(f"[{time.monotonic() - self.started:6.1f} s] {message}", flush=True)

    def tab(self, name: str):
        """Bring a section of the MetalSeg dock to the front; returns its dock."""
        dock = self.main.show_section(name)
        pump(0.2)
        return dock

    def only_visible(self, *names: str) -> None:
        """Show the layers ``names`` and hide every other one."""
        for layer in self.viewer.layers:
            layer.visible = layer.name in names

    def shoot(self, name: str) -> Path:
        """Save the whole window as ``name`` (after the pending redraws)."""
        self.check_errors(name)
        self.close_toasts()
        self.viewer.help = ""  # the active layer's key bindings, cut off in the status bar
        self.viewer.status = "Ready"  # not the last autosave's folder (a hash)
        pump(0.5)
        path = self.out / name
        self.viewer.screenshot(str(path), canvas_only=False, flash=False)
        self.written.append(path)
        self.log(f"wrote {path}")
        return path

    def close_toasts(self) -> None:
        """Close napari's notification pop-ups (their text is in the docks' status lines)."""
        from napari._qt.dialogs.qt_notification import NapariQtNotification

        for toast in self.window.findChildren(NapariQtNotification):
            toast.close()

    def report_warnings(self) -> None:
        """Print the warnings the GUI showed (they may be in a picture)."""
        from napari.utils.notifications import NotificationSeverity, notification_manager

        for n in notification_manager.records:
            if n.severity == NotificationSeverity.WARNING:
                print(f"warning shown in the GUI: {n.message}", file=sys.stderr)

    def check_errors(self, step: str) -> None:
        """Stop when the GUI reported an error (a screenshot of a failure is no documentation)."""
        from napari.utils.notifications import NotificationSeverity, notification_manager

        errors = [n for n in notification_manager.records if n.severity >= NotificationSeverity.ERROR]
        if errors:
            lines = "\n".join(f"  {n.message}" for n in errors)
            raise RuntimeError(f"the GUI reported an error before {step}:\n{lines}")


def open_sem(shots: Shots) -> None:
    """gui_open_sem: the real Zeiss SEM sample, nothing loaded yet (Model tab)."""
    viewer = shots.viewer
    viewer.open_sample(PLUGIN, "zeiss_sem")
    shots.tab("Model")
    viewer.reset_view()
    shots.shoot("gui_open_sem.png")
    viewer.layers.clear()


def annotate(shots: Shots) -> tuple:
    """loop_1_annotate: the synthetic sample, a new annotations layer and strokes of each phase, the live preview."""
    from napari_metalseg._widgets import roles

    viewer = shots.viewer
    viewer.open_sample(PLUGIN, "synthetic_steel")
    image = next(layer for layer in viewer.layers if roles.is_2d_image(layer))
    truth = viewer.layers[f"{image.name} ground truth"]
    viewer.reset_view()
    train = shots.tab("Training")
    train.select_image(image.name)
    train.out_edit.setText(str(shots.work / "runs" / "steel-elunet"))
    annotations = train.data.new_annotations()
    rng = np.random.default_rng(0)
    for label in (1, 2, 3):
        region = np.asarray(truth.data) == label
        paint_strokes(annotations, strokes_inside(region, 3, rng) + strokes_along_edge(region, 3, rng), label)
    wait_until(lambda: train.preview.updates > 0 and not train.preview.busy, "the live preview")
    pump(0.8)  # the summary's debounce
    wait_until(idle(train.preview), "the last live preview")
    train.data.update_summary()
    shots.only_visible(image.name, annotations.name, roles.layer_name(image.name, roles.PREVIEW))
    viewer.layers.move(viewer.layers.index(annotations), len(viewer.layers))  # the strokes over the preview
    viewer.layers[roles.layer_name(image.name, roles.PREVIEW)].opacity = 0.45  # the strokes stand out
    viewer.layers.selection.active = annotations
    annotations.mode = "paint"
    train.scroll.verticalScrollBar().setValue(0)
    shots.shoot("loop_1_annotate.png")
    return image, annotations, truth


def train_elunet(shots: Shots, image, annotations) -> None:
    """gui_training_progress (during the run), loop_2_train and gui_training (when it has finished)."""
    from napari_metalseg._widgets import roles

    train = shots.docks["Training"]
    train.budget.setValue(ELUNET_BUDGET_S)
    train.img_size.setValue(ELUNET_IMG_SIZE)
    train.start_training()
    if not train.busy:
        raise RuntimeError(f"training did not start: {train.status.text()}")
    shots.log("training elunet")

    def validated() -> bool:
        return sum(event.kind == "validate" for event in train.events) >= 2 or not train.busy

    wait_until(validated, "two validations")
    train.scroll.ensureWidgetVisible(train.plot)
    if train.busy:
        shots.shoot("gui_training_progress.png")
    else:
        print("warning: training ended before two validations: no gui_training_progress.png", file=sys.stderr)
    wait_until(idle(train), "the end of training")
    pump(1.0)
    if train.last_error is not None:
        raise RuntimeError(f"training failed: {train.last_error}")
    train.plot.flush()
    phases = roles.layer_name(image.name, roles.PHASES)
    shots.only_visible(image.name, phases)
    train.scroll.ensureWidgetVisible(train.plot)
    shots.shoot("loop_2_train.png")
    shots.only_visible(image.name, phases, annotations.name)
    viewer = shots.viewer
    viewer.layers.move(viewer.layers.index(annotations), len(viewer.layers))
    viewer.layers.selection.active = annotations
    train.scroll.ensureWidgetVisible(train.status)
    cy, cx = worst_window(np.asarray(annotations.data) > 0, CORRECTION_WINDOW)  # where the strokes are densest
    zoom_to(viewer, image, cy, cx, 1.6 * CORRECTION_WINDOW)
    shots.shoot("gui_training.png")
    viewer.reset_view()


def predict_and_correct(shots: Shots, image, truth) -> None:
    """gui_overview, gui_predict and loop_3_correct: predict, then correct the phases layer with the brush."""
    from napari_metalseg._widgets import roles

    viewer = shots.viewer
    predict = shots.tab("Predict")
    predict.image.set_layer(image.name)
    predict.probabilities.setChecked(True)
    predict.uncertainty.setChecked(True)
    predict.predict()
    wait_until(idle(predict), "the prediction")
    pump(0.5)
    phases = roles.find_layer(viewer, image, roles.PHASES)
    if phases is None:
        raise RuntimeError(f"no phases layer after predicting: {predict.last_error}")
    shots.only_visible(image.name, phases.name)
    viewer.layers.selection.active = phases
    shots.shoot("gui_overview.png")

    martensite = roles.find_layer(viewer, image, roles.PROBABILITY, "martensite")
    shots.only_visible(martensite.name)
    viewer.layers.selection.active = martensite
    shots.shoot("gui_predict.png")
    for layer in [layer for layer in viewer.layers if roles.role_of(layer) == roles.PROBABILITY]:
        viewer.layers.remove(layer)  # done with them
    predict.probabilities.setChecked(False)

    # corrections: strokes of the true phase where the prediction is wrong, in the window with most mistakes
    truth_data = np.asarray(truth.data)
    cy, cx = worst_window((truth_data != np.asarray(phases.data)) & (truth_data > 0), CORRECTION_WINDOW)
    window = np.zeros(truth_data.shape, bool)
    half = CORRECTION_WINDOW // 2
    window[cy - half : cy + half, cx - half : cx + half] = True
    viewer.layers.selection.active = phases
    phases.mode = "paint"
    for label in (1, 2, 3):
        wrong = window & (truth_data == label) & (np.asarray(phases.data) != label)
        paint_strokes(phases, strokes_over(wrong, 3), label)
    pump(0.5)
    uncertainty = roles.find_layer(viewer, image, roles.UNCERTAINTY)
    edits = roles.find_layer(viewer, image, roles.EDITS)
    if edits is None:
        raise RuntimeError("no edits layer after the corrections")
    shots.only_visible(image.name, phases.name, edits.name, uncertainty.name)
    uncertainty.opacity = 0.35  # the phases stay readable under it
    viewer.layers.move(viewer.layers.index(uncertainty), len(viewer.layers))
    viewer.layers.move(viewer.layers.index(edits), len(viewer.layers))
    viewer.layers.selection.active = phases
    predict._show_fractions()
    zoom_to(viewer, image, cy, cx, 1.6 * CORRECTION_WINDOW)
    shots.shoot("loop_3_correct.png")
    viewer.reset_view()


def quantify(shots: Shots, image) -> None:
    """loop_4_quantify and gui_quantify_single (one micrograph), gui_quantify (three micrographs)."""
    from napari_metalseg._widgets import roles
    from napari_metalseg._widgets.quantify import ALL_LAYERS
    from napari_metalseg.data.synth import synthesize_micrograph

    viewer = shots.viewer
    phases = roles.find_layer(viewer, image, roles.PHASES)
    shots.only_visible(image.name, phases.name)
    viewer.layers.selection.active = phases
    dock = shots.tab("Quantify")
    dock.select_layer(image.name)
    wait_until(lambda: dock.report is not None and idle(dock)(), "quantifying one micrograph")
    pump(0.5)
    shots.shoot("loop_4_quantify.png")
    shots.shoot("gui_quantify_single.png")

    predict = shots.docks["Predict"]
    predict.probabilities.setChecked(False)
    predict.uncertainty.setChecked(False)
    added = []
    for n, seed in ((2, 11), (3, 12)):
        data, _ = synthesize_micrograph(image.data.shape[0], (0.55, 0.30, 0.15), 3000.0, seed=seed)
        layer = viewer.add_image(
            data,
            name=f"field {n}",
            colormap="gray",
            contrast_limits=(0.0, 1.0),
            scale=image.scale,
            units=image.units,
            metadata={"metalseg_micrograph": dict(image.metadata["metalseg_micrograph"], seed=seed)},
            visible=False,
        )
        added.append(layer)
        predict.image.set_layer(layer.name)
        predict.predict()
        wait_until(idle(predict), f"the prediction of {layer.name}")
    pump(0.3)
    for layer in added:
        roles.find_layer(viewer, layer, roles.PHASES).visible = False
    shots.only_visible(image.name, phases.name)
    dock = shots.tab("Quantify")
    dock.select_layer(ALL_LAYERS)
    wait_until(lambda: dock.report is not None and len(dock.report.fields) == 3 and idle(dock)(), "three fields")
    shots.shoot("gui_quantify.png")
    for layer in added:
        for derived in roles.layers_of(viewer, layer):
            viewer.layers.remove(derived)
        viewer.layers.remove(layer)
    predict.image.set_layer(image.name)


def train_sam(shots: Shots) -> Path:
    """A compact SAM model adapted with LoRA, as a SAM checkpoint would be: a ``tiny`` SAM (ratio guidance) trained
    from scratch by the engine for a few steps and exported whole, then LoRA-adapted from that export. Returns the
    LoRA run (the Encoder features dock shows its maps beside the base model's)."""
    from napari_metalseg.data.samples import Sample
    from napari_metalseg.data.synth import DEFAULT_PHASES, pixel_size_for, synthesize_micrograph
    from napari_metalseg.progress import run_job
    from napari_metalseg.runs import FULL_MODEL
    from napari_metalseg.training import TrainConfig, train

    samples = []
    for seed in range(4):
        image, mask = synthesize_micrograph(192, (0.55, 0.30, 0.15), 3000.0, seed=100 + seed)
        samples.append(Sample(f"synth {seed}", image, mask, 3000.0, pixel_size_for(3000.0, 192)))
    common = {
        "model": "tiny",
        "img_size": SAM_IMG_SIZE,
        "guidance": "ratio",
        "steps": SAM_STEPS,
        "batch_size": 4,
        "lr": 2e-3,
        "val_every": SAM_STEPS,
        "device": "cpu",
        "bf16": False,
        "seed": 0,
    }
    base = shots.work / "runs" / "tiny-base"
    shots.log(f"training a compact SAM model for {SAM_STEPS} steps")
    run_job(train(samples[:3], DEFAULT_PHASES, base, TrainConfig(**common), samples[3:], export_full=True))
    run = shots.work / "runs" / "steel-tiny-lora"
    config = TrainConfig(**common, checkpoint=str(base / FULL_MODEL), finetune="lora")
    shots.log(f"adapting it with LoRA for {SAM_STEPS} steps")
    run_job(train(samples[:3], DEFAULT_PHASES, run, config, samples[3:]))
    return run


def rectangle(y0: float, x0: float, y1: float, x1: float) -> np.ndarray:
    """The four corners of a rectangle, as napari's Shapes layer takes them."""
    return np.array([[y0, x0], [y0, x1], [y1, x1], [y1, x0]], float)


def island_box(region: np.ndarray, margin: int = 8) -> tuple[int, int, int, int]:
    """``y0, x0, y1, x1`` of a box around a mid-sized island of ``region`` in the upper right quarter, with a margin
    of the surrounding phase."""
    from scipy import ndimage

    islands, _ = ndimage.label(region)
    h, w = region.shape
    best, best_score = None, None
    for found in ndimage.find_objects(islands):
        y, x = found
        size = max(y.stop - y.start, x.stop - x.start)
        if not 20 <= size <= 60 or y.start < margin or x.stop > w - margin:
            continue
        score = abs(y.start - 0.25 * h) + abs(x.start - 0.7 * w)
        if best_score is None or score < best_score:
            best, best_score = found, score
    if best is None:
        raise RuntimeError("no island of a sensible size in the ground truth")
    y, x = best
    return y.start - margin, x.start - margin, y.stop + margin, x.stop + margin


def sam_docks(shots: Shots, image, truth, run: Path) -> None:
    """gui_model, gui_ratios, gui_boxes, gui_features with the compact SAM model."""
    from napari_metalseg._widgets import roles
    from napari_metalseg._widgets.boxes import MODE_OBJECT, MODE_PREDICT

    viewer = shots.viewer
    model = shots.tab("Model")
    model.load_run(run, device="cpu")
    wait_until(idle(model), "loading the run")
    if model.last_error is not None:
        raise RuntimeError(f"the run did not load: {model.last_error}")
    phases = roles.find_layer(viewer, image, roles.PHASES)
    shots.only_visible(image.name)
    viewer.layers.selection.active = image
    shots.shoot("gui_model.png")

    predict = shots.docks["Predict"]
    predict.forget_corrections()
    predict.image.set_layer(image.name)
    predict.predict()
    wait_until(idle(predict), "the prediction of the SAM model")
    shots.only_visible(image.name, phases.name)
    viewer.layers.selection.active = phases
    ratios = shots.tab("Phase ratios")
    ratios.image.set_layer(image.name)
    ratios.set_ratios([0.55, 0.30, 0.15])
    wait_until(idle(ratios), "the ratio-guided prediction")
    pump(0.3)
    shots.shoot("gui_ratios.png")

    boxes = shots.tab("Box prompts")
    boxes.image.set_layer(image.name)
    shapes = boxes.activate()
    h, w = np.shape(image.data)
    boxes.set_mode(MODE_PREDICT)
    shapes.add(rectangle(0.55 * h, 0.1 * w, 0.8 * h, 0.4 * w), shape_type="rectangle")
    wait_until(idle(boxes), "the first box")
    boxes.set_mode(MODE_OBJECT, "bainite")
    shapes.add(rectangle(*island_box(np.asarray(truth.data) == 3)), shape_type="rectangle")
    wait_until(idle(boxes), "the second box")
    pump(0.3)
    edits = roles.find_layer(viewer, image, roles.EDITS)
    shots.only_visible(image.name, phases.name, shapes.name, *([edits.name] if edits is not None else []))
    shapes.mode = "pan_zoom"
    shots.shoot("gui_boxes.png")

    features = shots.tab("Encoder features")
    features.image.set_layer(image.name)
    features.compute()
    wait_until(idle(features), "the feature maps")
    pump(0.5)
    maps = [layer for layer in viewer.layers if layer.name.startswith("features")]
    shots.only_visible(image.name, *(layer.name for layer in maps))
    if maps:
        viewer.layers.selection.active = maps[-1]
    viewer.reset_view()
    shots.shoot("gui_features.png")
    for layer in maps:
        viewer.layers.remove(layer)


def laptop_docks(shots: Shots, image) -> None:
    """loop_5_laptop_docks: the seven docks opened one by one from the Plugins menu."""
    from napari_metalseg._widgets import roles
    from napari_metalseg._widgets.main import SECTIONS

    viewer = shots.viewer
    viewer.window.remove_dock_widget(shots.dock)
    pump(0.3)
    for name, _, _ in SECTIONS:
        viewer.window.add_plugin_dock_widget(PLUGIN, name)
        pump(0.1)
    shots.fit_window()
    phases = roles.find_layer(viewer, image, roles.PHASES)
    shots.only_visible(image.name, phases.name)
    viewer.layers.selection.active = phases
    viewer.reset_view()
    shots.shoot("loop_5_laptop_docks.png")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "images", help="folder of the PNGs")
    parser.add_argument(
        "--work",
        type=Path,
        default=Path(tempfile.gettempdir()) / "metalseg-docs",
        help="scratch folder (runs, autosaves; its path shows in the pictures): made here, removed at the end",
    )
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.work
    try:
        work.mkdir(parents=True)
    except FileExistsError:
        parser.error(f"--work {work} exists: remove it, or name another scratch folder")
    os.environ["METALSEG_RUNS_DIR"] = str(work / "runs")  # the runs, and the annotations' autosaves: not in ~
    os.environ["METALSEG_AUTOSAVE_DIR"] = str(work / "autosave")
    sys.path.insert(0, str(REPO))  # this checkout's plugin, whatever the environment installed
    import napari_metalseg._widgets  # noqa: F401  (blocks triton before napari creates an OpenGL context)

    if Path(napari_metalseg._widgets.__file__).resolve().parents[2] != REPO:
        raise RuntimeError(f"napari_metalseg was imported from {napari_metalseg._widgets.__file__}, not from {REPO}")
    shots = Shots(args.out, work)
    try:
        open_sem(shots)
        image, annotations, truth = annotate(shots)
        train_elunet(shots, image, annotations)
        predict_and_correct(shots, image, truth)
        quantify(shots, image)
        run = train_sam(shots)
        sam_docks(shots, image, truth, run)
        laptop_docks(shots, image)
    finally:
        shots.log(f"{len(shots.written)} of {len(SHOTS)} screenshots in {args.out}")
        shots.report_warnings()
        shots.viewer.close()
        shutil.rmtree(work, ignore_errors=True)
    missing = sorted(set(SHOTS) - {path.name for path in shots.written})
    if missing:
        print(f"missing: {', '.join(missing)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
