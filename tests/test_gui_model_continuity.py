"""One model per viewer (issue 11, findings 6 and 7): the model built in the Model dock is the one the Training dock
trains, retraining continues from the current model ("start fresh" as an option), and a stopped run reports the steps
it did. Each test drives a real napari viewer and the real trainer (tiny model, 64 px, a few steps)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_metalseg._widgets.layers import session_of
from napari_metalseg.phases import PhaseSet, mask_to_labels
from napari_metalseg.runs import ADAPTER, read_run_config

pytestmark = pytest.mark.gui

PLUGIN = "napari-metalseg"
PHASES = PhaseSet.from_names(["ferrite", "martensite"])
IMAGE = "steel"
WAIT_MS = 120_000


@pytest.fixture(autouse=True)
def _runs_dir(tmp_path, monkeypatch):
    """New run folders go to the test's temporary folder, never into the home directory."""
    monkeypatch.setenv("METALSEG_RUNS_DIR", str(tmp_path / "metalseg-runs"))


@pytest.fixture
def viewer(make_napari_viewer_proxy):
    return make_napari_viewer_proxy()


def _dock(viewer, name: str):
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name)
    return widget


def _annotated_micrograph(viewer, phases: PhaseSet = PHASES, size: int = 96):
    """A micrograph and its ``<image> annotations`` layer, painted (``data_setitem``, as a brush does) with the true
    phases on its left two thirds."""
    from napari_metalseg._widgets import roles
    from napari_metalseg._widgets.layers import MICROGRAPH_KEY
    from napari_metalseg.data.synth import synthesize_micrograph

    image, mask = synthesize_micrograph(size, fractions=(0.6, 0.4), magnification=3000, seed=0)
    layer = viewer.add_image(image, name=IMAGE, metadata={MICROGRAPH_KEY: {"magnification": 3000.0}})
    annotations = roles.annotations_layer(viewer, layer, phases, create=True)
    labels = mask_to_labels(mask)
    rows, cols = np.nonzero(np.ones((size, 2 * size // 3), bool))
    annotations.data_setitem((rows, cols), labels[rows, cols])
    assert (annotations.data > 0).sum() == size * (2 * size // 3)
    return annotations


def _build_model(viewer, qtbot, guidance: str = "ratio"):
    """Build a compact model from scratch in the Model dock (64 px, the two phases, ``guidance``)."""
    from napari_metalseg._widgets.model import SOURCE_TINY

    model_dock = _dock(viewer, "Model")
    model_dock.source.setCurrentText(SOURCE_TINY)
    model_dock.img_size.setValue(64)
    model_dock.phases.setText(",".join(PHASES.names))
    model_dock.guidance.setCurrentText(guidance)
    model_dock.device.setCurrentText("cpu")
    assert model_dock.start() is not None
    qtbot.waitUntil(lambda: not model_dock.busy, timeout=WAIT_MS)
    assert model_dock.last_error is None, model_dock.last_error
    return model_dock


def _train(training, qtbot, out, *, steps: int, lr: float | None = None) -> None:
    """Press Train with the run's length, batch, device and folder (the model fields are left as they are)."""
    training.select_image(IMAGE)
    training.steps.setValue(steps)
    training.batch_size.setValue(2)
    if lr is not None:
        training.lr.setValue(lr)
    training.device_combo.setCurrentText("cpu")
    training.out_edit.setText(str(out))
    training.start_training()
    assert training.last_error is None, training.last_error
    qtbot.waitUntil(lambda: not training.running, timeout=WAIT_MS)
    assert training.last_error is None, training.last_error


def _weights(run) -> dict:
    from safetensors.torch import load_file

    return load_file(str(run / ADAPTER))


def _max_difference(a: dict, b: dict) -> float:
    assert sorted(a) == sorted(b)
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def test_the_model_built_in_the_model_dock_is_the_one_trained(viewer, qtbot, tmp_path):
    """Finding 6: a "ratio" model built in the Model dock, then Train: the run is that model, and afterwards the
    Model dock's summary and form both say ratio."""
    _annotated_micrograph(viewer)
    model_dock = _build_model(viewer, qtbot, "ratio")
    built = session_of(viewer).model.spec_fields()
    training = _dock(viewer, "Training")
    _train(training, qtbot, tmp_path / "run", steps=3)

    run = read_run_config(tmp_path / "run")
    assert (run.spec.kind, run.spec.img_size, run.spec.guidance) == ("tiny", 64, "ratio")
    assert "<b>Guidance</b>: ratio" in model_dock.info.text()
    assert model_dock.guidance.currentText() == "ratio" and model_dock.img_size.value() == 64
    assert model_dock.run_dir.text() == str(tmp_path / "run")
    # the very model of the Model dock: kind, size, guidance, fine-tuning, LoRA and phases
    assert {k: getattr(run.spec, k) for k in built} == built and run.spec.phase_set.names == PHASES.names
    assert not run.training.get("init_from")  # it was built, never trained: nothing to start from but itself
    session = session_of(viewer)
    assert session.run_dir == tmp_path / "run" and session.spec == run.spec and session.model.guidance == "ratio"

    # the Training dock shows the model it continues from, read-only, with a note
    assert not training.model_combo.isEnabled() and training.model_combo.currentText() == "tiny"
    assert not training.img_size.isEnabled() and training.img_size.value() == 64
    assert training.guidance_combo.currentText() == "ratio"
    assert {training.guidance_combo.itemText(i) for i in range(training.guidance_combo.count())} <= {
        "ratio",
        "ratio+box",
    }
    note = training.hyper.continue_note.text()
    assert note.startswith("training continues from the model in the Model dock: tiny at 64 px")
    assert "guidance ratio" in note and str(tmp_path / "run") in note
    assert not training.hyper.fresh_check.isHidden() and not training.hyper.fresh_check.isChecked()


def test_retraining_continues_from_the_current_model_unless_start_fresh(viewer, qtbot, tmp_path):
    """Finding 6, second half: the second run starts from the first one's weights; with "start fresh" it does
    not."""
    _annotated_micrograph(viewer)
    training = _dock(viewer, "Training")
    training.model_combo.setCurrentText("tiny")  # no model yet: the fields choose it
    training.img_size.setValue(64)
    training.guidance_combo.setCurrentText("ratio")
    _train(training, qtbot, tmp_path / "first", steps=6, lr=5e-3)
    first = read_run_config(tmp_path / "first")

    _train(training, qtbot, tmp_path / "second", steps=2, lr=1e-6)
    second = read_run_config(tmp_path / "second")
    assert (second.training.get("init_from") or {}).get("run") == str((tmp_path / "first").resolve())
    assert second.spec.differences(first.spec) == []
    # two steps at lr 1e-6 from the first run's weights: still those weights, and the same validation score
    assert _max_difference(_weights(tmp_path / "first"), _weights(tmp_path / "second")) < 1e-4
    dice = [e.metrics["mean_dice"] for e in training.events if e.kind == "validate"]
    assert abs(dice[0] - first.metrics["mean_dice"]) < 1.0
    assert session_of(viewer).run_dir == tmp_path / "second"

    training.hyper.fresh_check.setChecked(True)
    assert training.model_combo.isEnabled() and training.img_size.isEnabled()
    assert training.hyper.continue_note.isHidden()
    _train(training, qtbot, tmp_path / "fresh", steps=2, lr=1e-6)
    fresh = read_run_config(tmp_path / "fresh")
    assert not fresh.training.get("init_from") and fresh.spec.differences(first.spec) == []
    assert _max_difference(_weights(tmp_path / "second"), _weights(tmp_path / "fresh")) > 1e-3
    # the freshly trained model is now the current one: the next run continues from it
    assert not training.hyper.fresh_check.isChecked()
    assert training.config().init_from == str(tmp_path / "fresh")


def test_a_stopped_run_reports_the_steps_it_did(viewer, qtbot, tmp_path):
    """Finding 7: a run of 10,000 planned steps stopped at step k is shown as k steps, in the Training dock's
    message and in the Model dock (after the Training dock installed it, and after loading its run)."""
    _annotated_micrograph(viewer)
    training = _dock(viewer, "Training")
    training.model_combo.setCurrentText("tiny")
    training.img_size.setValue(64)
    training.select_image(IMAGE)
    training.steps.setValue(10_000)
    training.batch_size.setValue(2)
    training.device_combo.setCurrentText("cpu")
    out = tmp_path / "stopped"
    training.out_edit.setText(str(out))
    training.start_training()
    qtbot.waitUntil(lambda: len(training.plot.steps) >= 3, timeout=WAIT_MS)
    training.request_stop()
    qtbot.waitUntil(lambda: not training.running, timeout=WAIT_MS)
    assert training.last_error is None, training.last_error
    # as the Training dock installed it: the Model dock says the steps done
    installed = _dock(viewer, "Model").info.text()
    stopped = [e for e in training.events if e.kind == "stopped"]
    assert len(stopped) == 1
    k = stopped[0].step
    assert k == max(e.step for e in training.events if e.kind == "train") and 3 <= k < 10_000

    assert f"training stopped at step {k}" in training.status.text()
    model_dock = _dock(viewer, "Model")
    assert model_dock.load_run(out, device="cpu") is not None  # the run, as the Model dock loads it
    qtbot.waitUntil(lambda: not model_dock.busy, timeout=WAIT_MS)
    assert model_dock.last_error is None, model_dock.last_error
    text = model_dock.info.text()
    assert "10000" not in text and "10,000" not in text  # the planned steps are not what was trained
    assert f"<b>Trained</b>: {k} optimizer steps in " in text and "(stopped)" in text
    assert read_run_config(out).steps_done == k
    assert f"({k} optimizer steps in " in training.status.text()
    assert f"<b>Trained</b>: {k} optimizer steps in " in installed and "10000" not in installed


def test_annotations_of_other_phases_than_the_model_are_one_clear_error(viewer, qtbot, tmp_path):
    _annotated_micrograph(viewer, PhaseSet.from_names(["ferrite", "pearlite"]))
    _build_model(viewer, qtbot, "none")
    training = _dock(viewer, "Training")
    training.phases_edit.setText("ferrite, pearlite")
    training.select_image(IMAGE)
    training.out_edit.setText(str(tmp_path / "refused"))
    training.start_training()
    assert not training.running
    assert str(training.last_error) == (
        "the annotations name the phases ferrite, pearlite but the model in the Model dock has ferrite, "
        "martensite: name the same phases, or tick 'start fresh' to train a new model"
    )
    training.hyper.fresh_check.setChecked(True)
    _train(training, qtbot, tmp_path / "fresh", steps=2)
    assert read_run_config(tmp_path / "fresh").spec.phase_set.names == ["ferrite", "pearlite"]
