"""GUI tests of the Training and Quantify dock widgets (run under a virtual X display: ``xvfb-run -a pytest``).

Each test drives a real napari viewer; training runs the real trainer (tiny model, 64 px) in napari's worker.
"""

from __future__ import annotations

import csv
import json
import threading
import time

import numpy as np
import pytest

from napari_metalseg._widgets.layers import session_of
from napari_metalseg.errors import MetalsegError
from napari_metalseg.phases import PhaseSet, labels_to_mask, mask_to_labels

pytestmark = pytest.mark.gui

PHASES = PhaseSet.from_names(["ferrite", "martensite"])
PLUGIN = "napari-metalseg"


@pytest.fixture(autouse=True)
def _runs_dir(tmp_path, monkeypatch):
    """New run folders go to the test's temporary folder, never into the home directory."""
    monkeypatch.setenv("METALSEG_RUNS_DIR", str(tmp_path / "metalseg-runs"))


@pytest.fixture
def viewer(make_napari_viewer_proxy):
    return make_napari_viewer_proxy()


def _micrograph(size: int = 96, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    from napari_metalseg.data.synth import synthesize_micrograph

    return synthesize_micrograph(size, fractions=(0.6, 0.4), magnification=3000, seed=seed)


def _add_annotated(viewer, name: str = "steel", size: int = 96, seed: int = 0, uint8: bool = False):
    """A micrograph layer and its ``"<name> annotations"`` layer, partially annotated (the right third unlabeled)."""
    from napari_metalseg._widgets.layers import MICROGRAPH_KEY
    from napari_metalseg._widgets.roles import annotations_layer

    image, mask = _micrograph(size, seed)
    data = (image * 255 + 0.5).astype(np.uint8) if uint8 else image
    image_layer = viewer.add_image(
        data, name=name, metadata={MICROGRAPH_KEY: {"magnification": 3000.0, "pixel_size_um": 0.05}}
    )
    labels = mask_to_labels(mask)
    labels[:, 2 * size // 3 :] = 0
    labels_layer = annotations_layer(viewer, image_layer, PHASES, create=True)
    labels_layer.data = labels
    return image_layer, labels_layer


def _training_widget(viewer):
    from napari_metalseg._widgets.training import TrainingWidget

    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Training")
    assert isinstance(widget, TrainingWidget)
    return widget


def _quick_settings(widget, out, steps: int = 30) -> None:
    widget.model_combo.setCurrentText("tiny")
    widget.img_size.setValue(64)
    widget.steps.setValue(steps)
    widget.batch_size.setValue(2)
    widget.device_combo.setCurrentText("cpu")
    widget.out_edit.setText(str(out))
    widget.phases_edit.setText("ferrite, martensite")


def test_widgets_open_from_the_manifest(viewer):
    from napari_metalseg._widgets.quantify import QuantifyWidget
    from napari_metalseg._widgets.training import TrainingWidget

    _, training = viewer.window.add_plugin_dock_widget(PLUGIN, "Training")
    _, quantify = viewer.window.add_plugin_dock_widget(PLUGIN, "Quantify")
    assert isinstance(training, TrainingWidget)
    assert isinstance(quantify, QuantifyWidget)
    assert training.session is session_of(viewer) is quantify.session


def test_training_data_is_the_annotations_layer_of_each_micrograph(viewer):
    """Finding 1: a hidden ground-truth layer or a Labels layer the user made is never used silently; the dock says
    what it will train on and refuses with one line when nothing is painted."""
    from napari_metalseg._widgets.layers import labels_layer_kwargs
    from napari_metalseg._widgets.roles import REFERENCE, role_metadata
    from napari_metalseg._widgets.training import ALL_IMAGES

    image, truth = _micrograph()
    viewer.add_image(image, name="steel")
    reference = labels_layer_kwargs(PHASES, "ground truth", metadata=role_metadata("steel", REFERENCE))
    viewer.add_labels(mask_to_labels(truth), visible=False, **reference)  # a sample's hidden reference
    user_made = viewer.add_labels(np.zeros((96, 96), np.uint8), name="steel - Labels")  # napari's new-layer button
    widget = _training_widget(viewer)
    widget.phases_edit.setText("ferrite, martensite")
    widget.select_image("steel")
    assert widget.data.adopt_combo.findText("steel - Labels") >= 0  # offered for adoption, not used
    assert widget.data.inputs() == []
    widget.start_training()
    assert isinstance(widget.last_error, MetalsegError) and "nothing to train on" in str(widget.last_error)
    assert "\n" not in str(widget.last_error) and not widget.running

    adopted = widget.data.adopt("steel - Labels")
    assert adopted.name == "steel annotations" and adopted.metadata["metalseg_role"] == "annotations"
    assert list(adopted.features["phase"]) == ["unlabeled", "ferrite", "martensite"]
    strokes = np.zeros((96, 96), np.uint8)
    strokes[10:20, 10:30] = 1
    strokes[60:70, 50:55] = 2
    user_made.data_setitem(np.nonzero(strokes), strokes[strokes > 0])
    summary = widget.data.update_summary()
    assert "200 px" not in summary and "250 labelled px (ferrite 200, martensite 50)" in summary
    assert "'steel annotations'" in summary
    (item,) = widget.data.inputs()
    np.testing.assert_array_equal(item.mask(PHASES), labels_to_mask(strokes, 2))
    widget.select_image(ALL_IMAGES)
    assert [(i.name, lab.name) for i, lab in widget.pairs()] == [("steel", "steel annotations")]


def _train_from_layers(viewer, qtbot, tmp_path):
    """Train 30 steps from an annotated layer pair while a 20 ms Qt timer ticks; return what the tests check."""
    from qtpy.QtCore import QTimer

    _, labels_layer = _add_annotated(viewer)
    drawn = np.array(labels_layer.data)
    widget = _training_widget(viewer)
    widget.select_image("steel")
    out = tmp_path / "run"
    _quick_settings(widget, out, steps=30)

    ticks: list[float] = []
    timer = QTimer()
    timer.setInterval(20)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start()
    t0 = time.perf_counter()
    widget.start_training()
    assert widget.running
    qtbot.waitUntil(lambda: not widget.running, timeout=120_000)
    duration = time.perf_counter() - t0
    qtbot.wait(50)
    timer.stop()
    assert widget.last_error is None, widget.last_error
    return widget, labels_layer, drawn, out, ticks, duration


def test_training_from_layers_installs_the_model_and_keeps_the_annotations(viewer, qtbot, tmp_path):
    widget, labels_layer, drawn, out, ticks, duration = _train_from_layers(viewer, qtbot, tmp_path)
    assert len(ticks) > 0, "the Qt event loop never ran during training"

    # the live plot received every step and the validations, redrawn at most ~5 times a second
    assert widget.plot.steps == list(range(1, 31))
    assert len(widget.plot.dice) >= 1
    assert 1 < widget.plot.draw_count <= duration * 5 + 5

    # the finished model is in the session and the current image is predicted into "phases"
    session = session_of(viewer)
    assert session.model is not None and session.predictor is not None
    assert session.run_dir == out and session.phases.names == PHASES.names
    assert (out / "adapter.safetensors").is_file() and (out / "config.json").is_file()
    phases_layer = viewer.layers["steel phases"]
    assert phases_layer.data.shape == (96, 96)
    assert set(np.unique(phases_layer.data)) <= {1, 2}
    # the annotations were autosaved and never touched
    saved = labels_to_mask(drawn)
    from napari_metalseg.data.dataset import read_mask

    np.testing.assert_array_equal(read_mask(out / "autosave" / "steel annotations.png"), saved)
    np.testing.assert_array_equal(labels_layer.data, drawn)


@pytest.mark.slow  # wall-clock: timer gaps during training
def test_training_from_layers_keeps_the_viewer_responsive(viewer, qtbot, tmp_path, capsys):
    widget, _, _, _, ticks, duration = _train_from_layers(viewer, qtbot, tmp_path)
    gaps = np.diff(ticks)
    p95 = float(np.percentile(gaps, 95))
    with capsys.disabled():
        print(
            f"\n[responsiveness] run {duration:.1f} s, {len(ticks)} ticks of a 20 ms timer, gap p50 "
            f"{1000 * np.median(gaps):.0f} ms, p95 {1000 * p95:.0f} ms, max {1000 * gaps.max():.0f} ms"
        )
    assert p95 < 0.25, f"event loop blocked: p95 timer gap {p95 * 1000:.0f} ms"
    assert len(ticks) >= 0.3 * duration / 0.020, "the 20 ms timer hardly ticked during training"


def _stop_a_long_run(viewer, qtbot, tmp_path) -> tuple:
    _add_annotated(viewer)
    widget = _training_widget(viewer)
    out = tmp_path / "long"
    _quick_settings(widget, out, steps=10_000)
    widget.start_training()
    qtbot.waitUntil(lambda: len(widget.plot.steps) >= 3, timeout=60_000)
    t0 = time.perf_counter()
    widget.request_stop()
    qtbot.waitUntil(lambda: not widget.running, timeout=60_000)
    return widget, out, time.perf_counter() - t0


def test_stop_ends_a_long_run_early_and_keeps_the_partial_model(viewer, qtbot, tmp_path):
    widget, out, _ = _stop_a_long_run(viewer, qtbot, tmp_path)
    kinds = [e.kind for e in widget.events]
    assert "stopped" in kinds and "done" not in kinds
    assert len(widget.plot.steps) < 10_000
    assert (out / "adapter.safetensors").is_file() and (out / "resume.pt").is_file()
    assert session_of(viewer).run_dir == out  # the partial model is loaded
    assert widget.train_button.isEnabled() and not widget.stop_button.isEnabled()


@pytest.mark.slow  # wall-clock: stop within 10 s
def test_stop_takes_effect_within_seconds(viewer, qtbot, tmp_path):
    _, _, elapsed = _stop_a_long_run(viewer, qtbot, tmp_path)
    assert elapsed < 10, f"stop took {elapsed:.1f} s"


def test_closing_the_viewer_stops_a_running_training(viewer, qtbot, tmp_path):
    _add_annotated(viewer)
    widget = _training_widget(viewer)
    _quick_settings(widget, tmp_path / "closed", steps=10_000)
    widget.start_training()
    worker = widget._worker
    qtbot.waitUntil(lambda: len(widget.plot.steps) >= 2, timeout=60_000)
    viewer.close()  # napari cancels running workers (the generator is not advanced again)
    qtbot.waitUntil(lambda: not worker.is_running, timeout=30_000)
    qtbot.wait(100)


def test_add_to_training_set_writes_image_mask_and_metadata(viewer, tmp_path):
    from napari_metalseg.data.dataset import load_dataset, read_metadata

    root = tmp_path / "dataset"
    session_of(viewer).dataset_dir = root
    image_a, labels_a = _add_annotated(viewer, "field A", uint8=True)
    widget = _training_widget(viewer)
    widget.phases_edit.setText("ferrite, martensite")
    widget.select_image("field A")
    (line,) = widget.add_to_training_set()
    assert line == "'field A' from 'field A annotations' (6,144 labelled px)"

    _, labels_b = _add_annotated(viewer, "field B", seed=3)
    widget.select_image("field B")
    assert widget.add_to_training_set()[0].startswith("'field B' from 'field B annotations'")

    dataset = load_dataset(root, require_masks=True)
    assert dataset.phases.names == PHASES.names
    assert sorted(i.name for i in dataset.items) == ["field A", "field B"]
    for name, layer in (("field A", labels_a), ("field B", labels_b)):
        item = dataset.item(name)
        np.testing.assert_array_equal(item.read_mask(), labels_to_mask(np.asarray(layer.data), 2))
        assert item.split == "train" and item.magnification == 3000 and item.pixel_size_um == 0.05
    np.testing.assert_array_equal(
        dataset.item("field A").read_image().image, np.asarray(image_a.data, np.float32) / 255
    )
    assert set(read_metadata(root)) == {"field A", "field B"}

    # a correction re-added replaces only that mask
    labels_a.data[:5, :5] = 2
    labels_a.refresh()
    widget.select_image("field A")
    widget.add_to_training_set()
    dataset = load_dataset(root, require_masks=True)
    assert (dataset.item("field A").read_mask()[:5, :5] == 1).all()
    np.testing.assert_array_equal(dataset.item("field B").read_mask(), labels_to_mask(labels_b.data, 2))


def test_retrain_from_the_dataset_closes_the_loop(viewer, qtbot, tmp_path):
    """annotate -> add to training set -> train on the dataset folder -> the new model is loaded."""
    root = tmp_path / "dataset"
    session_of(viewer).dataset_dir = root
    _add_annotated(viewer, "field A")
    widget = _training_widget(viewer)
    widget.phases_edit.setText("ferrite, martensite")
    widget.select_image("field A")
    widget.add_to_training_set()
    widget.source.setCurrentIndex(1)  # dataset folder
    _quick_settings(widget, tmp_path / "retrained", steps=6)
    widget.start_training()
    qtbot.waitUntil(lambda: not widget.running, timeout=60_000)
    assert widget.last_error is None, widget.last_error
    config = json.loads((tmp_path / "retrained" / "config.json").read_text())
    assert config["training"]["train_images"] == ["field A"]
    assert session_of(viewer).run_dir == tmp_path / "retrained"


def test_training_leaves_a_core_for_the_gui(monkeypatch):
    from napari_metalseg._widgets.training_job import THREADS_ENV, training_threads

    monkeypatch.setenv(THREADS_ENV, "3")
    assert training_threads() == 3
    monkeypatch.delenv(THREADS_ENV)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1})
    assert training_threads() == 1
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0})
    assert training_threads() == 1


def test_failed_training_keeps_what_was_drawn(viewer, qtbot, tmp_path, monkeypatch):
    import napari_metalseg.training as training
    from napari_metalseg.data.dataset import read_mask
    from napari_metalseg.progress import ProgressEvent

    release = threading.Event()

    def failing_train(*args, **kwargs):
        yield ProgressEvent("info", message="starting")
        release.wait(30)
        raise MetalsegError("disk full (simulated)")

    monkeypatch.setattr(training, "train", failing_train)
    _, labels_layer = _add_annotated(viewer)
    widget = _training_widget(viewer)
    out = tmp_path / "failing"
    _quick_settings(widget, out, steps=123)
    widget.start_training()
    assert (out / "autosave" / "steel annotations.png").is_file()  # saved before the run starts
    # the user keeps annotating while the worker runs, then training fails
    labels_layer.data[10:30, 10:30] = 2
    labels_layer.refresh()
    drawn = np.array(labels_layer.data)
    release.set()
    qtbot.waitUntil(lambda: not widget.running, timeout=30_000)

    assert isinstance(widget.last_error, MetalsegError)
    assert "disk full" in widget.status.text()
    np.testing.assert_array_equal(read_mask(out / "autosave" / "steel annotations.png"), labels_to_mask(drawn))
    assert PhaseSet.load(out / "autosave" / "phases.json").names == PHASES.names
    assert widget.autosaved_to == out / "autosave"
    np.testing.assert_array_equal(labels_layer.data, drawn)  # the layer itself is untouched
    assert widget.steps.value() == 123 and widget.train_button.isEnabled()  # the training state is kept


def _quantify_widget(viewer):
    from napari_metalseg._widgets.quantify import QuantifyWidget

    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Quantify")
    assert isinstance(widget, QuantifyWidget)
    return widget


def _known_layer(viewer, image: str = "steel"):
    """The ``<image> phases`` layer of a 40 x 40 micrograph: left half label 1 (ferrite), top-right quarter label 2
    (martensite), bottom-right quarter unlabeled."""
    from napari_metalseg._widgets.layers import UNITS, show_phase_map
    from napari_metalseg._widgets.roles import PHASES as ROLE
    from napari_metalseg._widgets.roles import layer_name, role_metadata

    labels = np.zeros((40, 40), np.uint8)
    labels[:, :20] = 1
    labels[:20, 20:] = 2
    if image not in viewer.layers:
        viewer.add_image(np.zeros((40, 40), np.float32), name=image, scale=(0.5, 0.5), units=UNITS)
    return show_phase_map(
        viewer,
        labels,
        PHASES,
        layer_name(image, ROLE),
        labels=True,
        scale=(0.5, 0.5),
        metadata=role_metadata(image, ROLE),
    )


def test_quantify_shows_exact_fractions_and_follows_corrections(viewer, qtbot):
    layer = _known_layer(viewer)
    widget = _quantify_widget(viewer)
    widget.select_layer("steel")
    qtbot.waitUntil(lambda: widget.report is not None, timeout=10_000)
    field = widget.report.fields[0]
    assert field.fractions == {"ferrite": 800 / 1200, "martensite": 400 / 1200}
    assert widget.cell(0, "phase") == "ferrite" and widget.cell(0, "area fraction") == "66.67"
    assert widget.cell(1, "area fraction") == "33.33"
    assert widget.cell(0, "95 % CI") == "—"  # one field: no CI
    assert widget.cell(0, "islands") == "1" and widget.cell(1, "islands") == "1"
    assert widget.cell(0, "mean island area") == "200"  # 800 px of 0.5 x 0.5 um
    assert widget.table.horizontalHeaderItem(4).text() == "mean area\nµm²"
    assert widget.bars.values == pytest.approx([100 * 2 / 3, 100 / 3])

    # painting the unlabeled quarter as martensite updates the table (debounced)
    layer.data[20:, 20:] = 2
    layer.refresh()
    qtbot.waitUntil(lambda: widget.report.fields[0].fractions["martensite"] == 0.5, timeout=10_000)
    assert widget.cell(1, "area fraction") == "50.00"
    # so does a brush stroke
    layer.brush_size = 1
    layer.paint((0, 39), 1)
    qtbot.waitUntil(lambda: widget.report.fields[0].pixels["ferrite"] == 801, timeout=10_000)

    # two micrographs: the CI and its error bars appear
    second = _known_layer(viewer, "steel 2")
    second.data[:, :] = 1
    second.refresh()
    widget.select_layer("all micrographs")
    qtbot.waitUntil(lambda: widget.report is not None and len(widget.report.fields) == 2, timeout=10_000)
    assert [f.image for f in widget.report.fields] == ["steel", "steel 2"]
    assert widget.cell(0, "95 % CI").startswith("± ")
    assert all(e is not None for e in widget.bars.errors)


def test_quantify_exports_csv_and_json(viewer, qtbot, tmp_path):
    _known_layer(viewer)
    widget = _quantify_widget(viewer)
    widget.select_layer("steel")
    qtbot.waitUntil(lambda: widget.report is not None, timeout=10_000)
    path = widget.export_csv(tmp_path / "fractions.csv")
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    per_phase = (
        "fraction",
        "point_fraction",
        "pixels",
        "islands",
        "mean_island_area",
        "median_island_area",
        "mean_diameter",
        "median_diameter",
    )
    expected = [
        "image",
        "magnification",
        "pixel_size_um",
        "sample",
        *[f"{p}_{c}" for p in PHASES.names for c in per_phase],
        "length_unit",
        "labelled_pixels",
        "points",
        "grid_spacing_px",
    ]
    assert list(rows[0]) == expected
    assert rows[0]["image"] == "steel" and float(rows[0]["ferrite_fraction"]) == pytest.approx(2 / 3)
    assert rows[0]["length_unit"] == "um" and rows[0]["pixel_size_um"] == "0.5"
    with open(tmp_path / "fractions_samples.csv", newline="") as fh:
        summary = list(csv.DictReader(fh))
    assert summary[0]["n_fields"] == "1" and summary[0]["ferrite_ci95"] == ""  # one field: no CI
    data = json.loads(widget.export_json(tmp_path / "fractions.json").read_text())
    assert data["fields"][0]["fractions"]["martensite"] == pytest.approx(1 / 3)


def test_the_pool_with_the_classical_classifier_is_a_field_for_the_cnns_only(viewer):
    widget = _training_widget(viewer)
    assert widget.model_combo.currentText() == "elunet"
    assert widget.pool_check.isEnabled() and widget.pool_check.isChecked()
    assert widget.config().pool_classical is True
    widget.pool_check.setChecked(False)
    assert widget.config().pool_classical is False
    widget.model_combo.setCurrentText("unet3plus")  # another CNN: pooled again by default
    assert widget.pool_check.isChecked() and widget.config().pool_classical is True
    for kind in ("classical", "tiny"):
        widget.model_combo.setCurrentText(kind)
        assert not widget.pool_check.isEnabled() and not widget.pool_check.isChecked()
        assert widget.config().pool_classical is False


def test_one_physical_scale_is_a_field_with_the_familys_default(viewer, split_samples, synth_dataset, tmp_path):
    """The Training dock says whether micrographs are resampled to one pixel size: ticked for the CNNs, unticked for
    SAM and the classical classifier (the trainer's defaults), and the user's choice reaches the run's config. A
    model trained further from its run shows that run's scale, locked, and the config keeps it (also where it is
    not the family's default); a model never trained gets the default and can change it."""
    from napari_metalseg.models.elunet import build_elunet
    from napari_metalseg.runs import load_run
    from napari_metalseg.training import TrainConfig, train
    from napari_metalseg.training.config import model_spec

    widget = _training_widget(viewer)
    box = widget.hyper.scale_check
    for kind in ("elunet", "unet3plus", "classical", "tiny"):
        widget.model_combo.setCurrentText(kind)
        assert box.isChecked() == TrainConfig(model=kind).physical_scale, kind
        assert box.isEnabled() and widget.config().physical_scale == box.isChecked()
    widget.model_combo.setCurrentText("classical")
    box.setChecked(True)
    assert widget.config().physical_scale is True
    widget.model_combo.setCurrentText("elunet")
    box.setChecked(False)
    assert widget.config().physical_scale is False

    phases, session = synth_dataset.phases, session_of(viewer)
    for scaled in (False, True):  # ELU-Net's default is True: the run trained without it must keep its own
        run = tmp_path / f"scaled-{scaled}"
        settings = {"model": "elunet", "img_size": 64, "steps": 2, "batch_size": 2, "device": "cpu"}
        config = TrainConfig(**settings, pool_classical=False, physical_scale=scaled)
        list(train(split_samples["train"][:1], phases, run, config))
        model, run_config = load_run(run)
        assert (run_config.spec.pixel_size_um is not None) == scaled
        session.set_model(model, phases, run_dir=run)
        assert not box.isEnabled() and box.isChecked() == scaled
        continued = widget.config()
        assert continued.init_from == str(run) and continued.physical_scale == scaled

    never_trained = build_elunet(num_phases=len(phases), img_size=64, width=4, depth=3)
    session.set_model(never_trained.eval(), phases, spec=model_spec(TrainConfig(model="elunet", img_size=64), phases))
    assert box.isEnabled() and box.isChecked() and widget.config().physical_scale is True
    box.setChecked(False)
    assert widget.config().physical_scale is False
