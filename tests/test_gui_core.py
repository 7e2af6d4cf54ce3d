"""GUI tests of the core widgets, reader, writer and sample data (napari needs a display: run under xvfb-run).

The trained model is the session's ``trained_run`` fixture (tiny, 128 px, ratio guidance); nothing is trained here.
"""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from napari.layers import Image, Labels
from napari.utils.colormaps import DirectLabelColormap
from scipy import ndimage

import napari_metalseg._widgets  # noqa: F401  (blocks triton before any viewer exists)
from napari_metalseg._widgets.boxes import MODE_OBJECT, BoxPromptWidget
from napari_metalseg._widgets.features import ADAPTED_LAYER, BASE_LAYER, FeaturesWidget
from napari_metalseg._widgets.layers import (
    IMAGE_KEY,
    phase_fractions_of_layer,
    phases_of_layer,
    session_of,
    show_phase_map,
)
from napari_metalseg._widgets.model import ModelWidget
from napari_metalseg._widgets.predict import RATIOS_KEY, PredictWidget
from napari_metalseg._widgets.ratios import RatioWidget, rebalance
from napari_metalseg._widgets.roles import PHASES, REFERENCE, find_layer, layer_name, role_metadata
from napari_metalseg.errors import MetalsegError
from napari_metalseg.phases import PhaseSet

pytestmark = pytest.mark.gui

PLUGIN = "napari-metalseg"
IMAGE = "synthetic steel 3000x"
ZEISS = Path(__file__).parent / "data" / "sem" / "nanoporous_gold_zeiss.tif"
WAIT_MS = 120_000
MY_WIDGETS = {
    "Model": ModelWidget,
    "Predict": PredictWidget,
    "Box prompts": BoxPromptWidget,
    "Phase ratios": RatioWidget,
    "Encoder features": FeaturesWidget,
}


# -- fixtures ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sample_layers():
    """The synthetic sample (image + ground truth), made once."""
    from napari_metalseg._widgets.sample_data import synthetic_micrograph

    return synthetic_micrograph()


@pytest.fixture
def viewer(make_napari_viewer_proxy, sample_layers):
    viewer = make_napari_viewer_proxy()
    for data, kwargs, kind in sample_layers:
        getattr(viewer, f"add_{kind}")(data, **copy.deepcopy(kwargs))
    return viewer


def dock(viewer, name: str):
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name)
    return widget


def wait(qtbot, widget) -> None:
    qtbot.waitUntil(lambda: not widget.busy, timeout=WAIT_MS)
    assert widget.last_error is None, widget.last_error


@pytest.fixture
def loaded(viewer, qtbot, trained_run):
    """A viewer with the sample micrograph and the trained run loaded through the Model widget."""
    model_widget = dock(viewer, "Model")
    assert model_widget.load_run(trained_run[0], device="cpu") is not None
    wait(qtbot, model_widget)
    return viewer


def raw(layer):
    """The napari object behind a plugin proxy (for private attributes in assertions)."""
    return getattr(layer, "__wrapped__", layer)


def predict(viewer, qtbot, probabilities: bool = False) -> Labels:
    widget = dock(viewer, "Predict")
    widget.image.set_layer(IMAGE)
    widget.probabilities.setChecked(probabilities)
    assert widget.predict() is not None
    wait(qtbot, widget)
    return viewer.layers[PHASE_LAYER]


PHASE_LAYER = f"{IMAGE} phases"


# -- start-up ------------------------------------------------------------------------------------------------------


@pytest.mark.slow  # wall-clock: import time under 1 s
def test_widget_modules_import_fast_without_torch():
    code = (
        "import time, sys\n"
        "import napari, napari.layers, qtpy.QtWidgets, magicgui, scipy.ndimage\n"
        "t = time.perf_counter()\n"
        "import napari_metalseg._widgets.model, napari_metalseg._widgets.predict, napari_metalseg._widgets.boxes\n"
        "import napari_metalseg._widgets.ratios, napari_metalseg._widgets.features\n"
        "import napari_metalseg._widgets.reader, napari_metalseg._widgets.writer\n"
        "import napari_metalseg._widgets.sample_data\n"
        "dt = time.perf_counter() - t\n"
        "heavy = [m for m in ('torch', 'segment_anything', 'peft') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "assert sys.modules['triton'] is None\n"
        "print(dt)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert float(out.stdout.strip().splitlines()[-1]) < 1.0


def test_gui_command_docks_every_widget_and_saves_a_screenshot(tmp_path):
    shot = tmp_path / "overview.png"
    out = subprocess.run(
        [sys.executable, "-m", "napari_metalseg.cli", "gui", "--screenshot", str(shot)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "could not be opened" not in out.stderr
    assert shot.is_file() and shot.stat().st_size > 10_000


@pytest.mark.parametrize("name", list(MY_WIDGETS))
def test_widget_opens_from_manifest(make_napari_viewer_proxy, name):
    viewer = make_napari_viewer_proxy()
    widget = dock(viewer, name)
    assert isinstance(widget, MY_WIDGETS[name])


def test_bad_input_is_a_notification_not_a_crash(viewer, tmp_path):
    model_widget = dock(viewer, "Model")
    assert model_widget.load_run(tmp_path / "nothing") is None
    assert isinstance(model_widget.last_error, MetalsegError)
    assert "config.json is missing" in str(model_widget.last_error)
    predict_widget = dock(viewer, "Predict")
    assert predict_widget.predict() is None
    assert "no model yet" in str(predict_widget.last_error)


# -- model, predict ------------------------------------------------------------------------------------------------


def test_model_widget_loads_trained_run(loaded, trained_run):
    session = session_of(loaded)
    assert session.model is not None and session.predictor is not None
    assert session.phases.names == ["ferrite", "martensite", "bainite"]
    assert session.run_dir == Path(trained_run[0])
    assert session.device == "cpu"
    widget = dock(loaded, "Model")  # a second Model widget shows the same session
    text = widget.info.text()
    assert "771,944 total" in text and "ratio" in text and str(trained_run[0]) in text
    from napari_metalseg.precision import prediction_bf16

    assert session.predictor.bf16 is prediction_bf16("cpu")  # the default precision, said in the summary
    assert f"<b>Device</b>: cpu, {'bf16 autocast' if session.predictor.bf16 else 'fp32'}" in text


def test_predict_creates_coloured_phase_layer(loaded, qtbot):
    layer = predict(loaded, qtbot, probabilities=True)
    session = session_of(loaded)
    image = loaded.layers[IMAGE]
    assert isinstance(layer, Labels) and layer.data.shape == image.data.shape
    assert isinstance(layer.colormap, DirectLabelColormap)
    for k, rgb in enumerate(session.phases.rgb()):
        assert np.allclose(layer.colormap.color_dict[k + 1][:3], rgb, atol=1e-6)
    assert list(layer.features["phase"]) == ["unlabeled", "ferrite", "martensite", "bainite"]
    assert list(layer.features["index"]) == [0, 1, 2, 3]
    assert np.allclose(layer.scale, image.scale) and np.allclose(layer.translate, image.translate)
    assert phases_of_layer(layer).names == session.phases.names
    assert layer.metadata[IMAGE_KEY] == IMAGE and layer.metadata[RATIOS_KEY] is None
    expected = session.predictor.predict(np.asarray(image.data)).labels + 1
    assert np.array_equal(layer.data, expected)
    probs = np.stack([loaded.layers[f"{IMAGE} P({n})"].data for n in session.phases.names])
    assert np.allclose(probs.sum(0), 1.0, atol=1e-4)


def test_a_huge_micrograph_is_shown_as_a_read_only_multiscale_layer(loaded, qtbot, monkeypatch):
    """A micrograph predicted as a stream (above STREAM_PIXELS, lowered here) is shown lazily: multiscale levels
    that are views of the labels, read-only, no probability layers; its fractions and mask read the full level."""
    import napari_metalseg._widgets.layers as layers_module
    import napari_metalseg.predict as predict_module
    from napari_metalseg._widgets.layers import mask_of_layer

    image = loaded.layers[IMAGE]
    monkeypatch.setattr(predict_module, "STREAM_PIXELS", image.data.size - 1)
    monkeypatch.setattr(layers_module, "PYRAMID_SIDE", max(image.data.shape) // 4)
    layer = predict(loaded, qtbot, probabilities=True)
    widget = dock(loaded, "Predict")
    assert layer.multiscale and len(layer.data) == 3 and not layer.editable
    expected = session_of(loaded).predictor.predict(np.asarray(image.data)).labels
    assert np.array_equal(np.asarray(layer.data[0]), expected + 1)
    assert np.shares_memory(layer.data[2], layer.data[0])  # the coarser levels are views, not copies
    assert np.array_equal(mask_of_layer(layer), expected)
    assert not [n for n in loaded.layers if " P(" in n.name]  # a stream keeps no probabilities
    assert "multiscale" in widget.result.text() and "no probability" in widget.result.text()
    assert widget.forget_corrections() == 0
    boxes = dock(loaded, "Box prompts")
    boxes.activate().add(np.array([[5, 5], [5, 40], [40, 40], [40, 5]], float), shape_type="rectangle")
    qtbot.waitUntil(lambda: boxes.last_error is not None, timeout=WAIT_MS)
    assert "read-only multiscale layer" in str(boxes.last_error)
    predict(loaded, qtbot)  # predicted again: the multiscale layer is replaced, not duplicated
    assert [n.name for n in loaded.layers].count(PHASE_LAYER) == 1


# -- box prompts ---------------------------------------------------------------------------------------------------


def _empty_target(viewer) -> Labels:
    session = session_of(viewer)
    image = viewer.layers[IMAGE]
    return show_phase_map(
        viewer,
        np.full(image.data.shape, 255, np.uint8),
        session.phases,
        layer_name(IMAGE, PHASES),
        scale=image.scale,
        translate=image.translate,
        metadata=role_metadata(IMAGE, PHASES),
    )


def _draw_box(viewer, qtbot, widget, corners) -> None:
    shapes = widget.activate()
    (y0, x0), (y1, x1) = corners
    shapes.add(np.array([[y0, x0], [y0, x1], [y1, x1], [y1, x0]], float), shape_type="rectangle")
    qtbot.waitUntil(lambda: widget.last_box is not None or widget.last_error is not None, timeout=WAIT_MS)
    wait(qtbot, widget)


def test_box_writes_inside_only_as_one_undo_step(loaded, qtbot):
    target = _empty_target(loaded)
    widget = dock(loaded, "Box prompts")
    widget.image.set_layer(IMAGE)
    history = len(raw(target)._undo_history)
    _draw_box(loaded, qtbot, widget, ((100, 120), (220, 260)))
    assert widget.last_box == (120, 100, 260, 220)
    inside = np.zeros(target.data.shape, bool)
    inside[100:220, 120:260] = True
    data = np.asarray(target.data)
    assert (data[inside] > 0).all() and (data[~inside] == 0).all()
    predictor = session_of(loaded).predictor
    expected = predictor.predict(np.asarray(loaded.layers[IMAGE].data), box=widget.last_box).labels
    assert np.array_equal(data[inside], expected[inside] + 1)
    assert len(raw(target)._undo_history) == history + 1
    target.undo()
    assert (np.asarray(target.data) == 0).all()


def _encoder_calls(monkeypatch, session) -> list:
    """A list that grows by one at each call of the session model's image encoder from now on."""
    calls = []
    embed = session.model.embed
    monkeypatch.setattr(session.model, "embed", lambda *a, **k: calls.append(1) or embed(*a, **k))
    return calls


def test_boxes_on_a_predicted_micrograph_run_no_encoder(loaded, qtbot, monkeypatch):
    """The Box prompts dock decodes from the micrograph's cached tile embeddings (issue 12)."""
    predict(loaded, qtbot)
    calls = _encoder_calls(monkeypatch, session_of(loaded))
    widget = dock(loaded, "Box prompts")
    widget.image.set_layer(IMAGE)
    for corners in (((10, 10), (60, 90)), ((150, 200), (300, 330)), ((5, 300), (40, 380))):
        _draw_box(loaded, qtbot, widget, corners)
        assert widget.last_error is None
    assert widget.last_box == (300, 5, 380, 40) and calls == []


def test_object_mode_assigns_one_phase_to_one_region(loaded, qtbot):
    target = _empty_target(loaded)
    widget = dock(loaded, "Box prompts")
    widget.image.set_layer(IMAGE)
    widget.set_mode(MODE_OBJECT, "bainite")
    _draw_box(loaded, qtbot, widget, ((200, 200), (330, 330)))
    data = np.asarray(target.data)
    changed = data != 0
    assert changed.any() and (data[changed] == 3).all()
    _, count = ndimage.label(changed, structure=np.ones((3, 3)))
    assert count == 1
    outside = np.ones(data.shape, bool)
    outside[200:330, 200:330] = False
    assert not changed[outside].any()


# -- ratios ----------------------------------------------------------------------------------------------------------


def test_rebalance_keeps_sum_one():
    r = rebalance([0.5, 0.3, 0.2], 0, 0.8)
    assert np.isclose(r.sum(), 1.0) and np.isclose(r[0], 0.8) and np.isclose(r[1] / r[2], 1.5)
    r = rebalance([1.0, 0.0, 0.0], 0, 0.4)
    assert np.allclose(r, [0.4, 0.3, 0.3])


def test_ratio_sliders_stay_normalised_and_rerun_only_the_decoder(loaded, qtbot, monkeypatch):
    session = session_of(loaded)
    predict(loaded, qtbot)
    calls = _encoder_calls(monkeypatch, session)
    widget = dock(loaded, "Phase ratios")
    assert len(widget.sliders) == 3
    for index, value in ((0, 700), (2, 1000), (1, 300), (0, 0), (2, 123)):
        widget.sliders[index].setValue(value)
        assert abs(widget.ratios.sum() - 1.0) < 1e-6
        assert abs(widget.ratios[index] - value / 1000) < 1e-9
        assert np.allclose(session.ratios, widget.ratios)
    before = np.asarray(loaded.layers[PHASE_LAYER].data).copy()
    widget.set_ratios([0.02, 0.03, 0.95])
    qtbot.waitUntil(lambda: not widget.busy, timeout=WAIT_MS)
    assert widget.last_error is None
    layer = loaded.layers[PHASE_LAYER]
    assert np.allclose(layer.metadata[RATIOS_KEY], [0.02, 0.03, 0.95])
    assert not np.array_equal(np.asarray(layer.data), before)
    assert calls == []  # the cached embedding was reused: decoder only
    widget.live.setChecked(False)
    widget.none.setChecked(True)
    assert session.ratios is None


def test_ratios_estimated_from_labels(loaded):
    widget = dock(loaded, "Phase ratios")
    widget.live.setChecked(False)
    widget.labels.set_layer(f"{IMAGE} ground truth")
    assert find_layer(loaded, IMAGE, REFERENCE).name == f"{IMAGE} ground truth"
    widget.estimate_from_labels()
    assert widget.last_error is None
    assert np.allclose(widget.ratios, [0.55, 0.30, 0.15], atol=0.01)
    assert np.allclose(session_of(loaded).ratios, widget.ratios)


# -- features --------------------------------------------------------------------------------------------------------


def test_feature_layers_have_block_axis_and_image_scale(loaded, qtbot):
    widget = dock(loaded, "Encoder features")
    widget.image.set_layer(IMAGE)
    assert widget.compute() is not None
    wait(qtbot, widget)
    layer = loaded.layers[ADAPTED_LAYER]
    image = loaded.layers[IMAGE]
    px = float(image.scale[-1])
    assert isinstance(layer, Image) and layer.rgb
    assert layer.data.shape == (4, 32, 32, 3)  # 4 tiny blocks; 512 px image tiled at native resolution -> 32 x 32
    assert np.allclose(layer.scale, (1.0, 16 * px, 16 * px))
    assert np.allclose(layer.translate, (0.0, 7.5 * px, 7.5 * px))
    assert BASE_LAYER not in loaded.layers  # no LoRA in this model: base == adapted
    assert loaded.dims.axis_labels[0] == "block"


# -- reader, writer, sample data ---------------------------------------------------------------------------------------


def test_writer_reader_round_trip(make_napari_viewer_proxy, tmp_path):
    viewer = make_napari_viewer_proxy()
    phases = PhaseSet.from_names(["alpha", "beta", "gamma"], ["#102030", "#a0b0c0", "#ff8800"])
    rng = np.random.default_rng(0)
    mask = rng.integers(0, 3, (40, 50)).astype(np.uint8)
    mask[:5] = 255
    layer = show_phase_map(viewer, mask, phases, name="corrected")
    path = tmp_path / "out" / "corrected.png"
    written = layer.save(str(path), plugin=PLUGIN)
    assert Path(written[0]) == path and (path.parent / "phases.json").is_file()
    back = viewer.open(str(path), plugin=PLUGIN)[0]
    assert isinstance(back, Labels) and np.array_equal(back.data, layer.data)
    assert phases_of_layer(back) == phases
    assert np.allclose(back.colormap.color_dict[2][:3], phases.rgb()[1])


def test_writer_rejects_labels_beyond_the_phases(tmp_path):
    from napari_metalseg._widgets.writer import write_labels

    data = np.array([[0, 1], [2, 5]] * 4)
    meta = {"name": "x", "metadata": {"metalseg_phases": [{"name": "a", "color": "#000000"}]}}
    with pytest.raises(MetalsegError, match="label 5"):
        write_labels(str(tmp_path / "x.png"), data, meta)
    assert not (tmp_path / "x.png").exists()


def test_reader_on_real_zeiss_tiff_gives_physical_scale():
    from napari_metalseg._widgets.reader import get_reader
    from napari_metalseg._widgets.sample_data import zeiss_sem

    reader = get_reader(str(ZEISS))
    assert reader is not None
    ((data, kwargs, kind),) = reader(str(ZEISS))
    assert kind == "image" and data.shape == (691, 1024)
    assert kwargs["scale"] == pytest.approx((0.000543, 0.000543))
    assert kwargs["metadata"]["metalseg_micrograph"]["info_band_rows"] == 77
    ((sample, sample_kwargs, _),) = zeiss_sem()
    assert np.array_equal(sample, data) and "MIT" in sample_kwargs["metadata"]["note"]


def test_reader_opens_a_dataset_and_declines_other_paths(synth_dataset, tmp_path):
    from napari_metalseg._widgets.reader import get_reader

    layers = get_reader(str(synth_dataset.root))(str(synth_dataset.root))
    images = [ly for ly in layers if ly[2] == "image"]
    masks = [ly for ly in layers if ly[2] == "labels"]
    assert len(images) == len(synth_dataset) == len(masks)
    assert masks[0][0].max() <= len(synth_dataset.phases)
    assert masks[0][1]["metadata"]["metalseg_phases"] == synth_dataset.phases.to_json()
    (tmp_path / "notes.txt").write_text("hello")
    assert get_reader(str(tmp_path / "notes.txt")) is None
    with pytest.raises(MetalsegError, match="neither micrographs nor a metalseg dataset"):
        get_reader(str(tmp_path))(str(tmp_path))  # a folder is taken, and refused with the reason


# -- triton guard ----------------------------------------------------------------------------------------------------


def test_lora_model_built_after_a_viewer_exists(make_napari_viewer_proxy, tmp_path, qtbot):
    viewer = make_napari_viewer_proxy()
    viewer.add_image(np.random.default_rng(0).random((64, 64), dtype=np.float32), name="noise")
    import torch

    from napari_metalseg.models.phase_sam import build_phase_sam
    from napari_metalseg.models.sam import build_sam

    checkpoint = tmp_path / "sam_tiny.pth"
    torch.save(build_sam("tiny", img_size=64, num_phases=3).state_dict(), checkpoint)
    model, report = build_phase_sam("tiny", img_size=64, num_phases=3, checkpoint=str(checkpoint), finetune="lora")
    assert report is not None and model.lora is not None
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    logits = model(model.preprocess(torch.rand(1, 64, 64)))
    logits.mean().backward()
    optimizer.step()
    assert sys.modules["triton"] is None
    session = session_of(viewer)
    session.set_model(model.eval(), PhaseSet.from_names(["a", "b", "c"]))
    widget = dock(viewer, "Encoder features")
    widget.image.set_layer("noise")
    assert widget.compute() is not None
    wait(qtbot, widget)
    base = viewer.layers[BASE_LAYER]
    assert np.isclose(base.translate[-1] - viewer.layers[ADAPTED_LAYER].translate[-1], 64.0)


# -- the other model families in the same docks -------------------------------------------------------------------


@pytest.fixture(scope="module")
def family_runs(tmp_path_factory, split_samples, synth_dataset):
    """A short run of each non-SAM family."""
    from napari_metalseg.training import TrainConfig, train

    runs = {}
    for kind, extra in (
        ("elunet", {"steps": 4, "img_size": 64, "batch_size": 2}),
        ("unet3plus", {"steps": 4, "img_size": 64, "batch_size": 2}),
        ("classical", {}),
    ):
        run = tmp_path_factory.mktemp("runs") / kind
        list(
            train(split_samples["train"][:2], synth_dataset.phases, run, TrainConfig(model=kind, device="cpu", **extra))
        )
        runs[kind] = run
    return runs


@pytest.mark.parametrize("kind", ["elunet", "unet3plus", "classical"])
def test_other_families_load_predict_and_refuse_boxes_and_feature_maps_clearly(viewer, qtbot, family_runs, kind):
    model_widget = dock(viewer, "Model")
    assert model_widget.load_run(family_runs[kind], device="cpu") is not None
    wait(qtbot, model_widget)
    assert session_of(viewer).model.kind == kind and kind in model_widget.info.text()
    layer = predict(viewer, qtbot)
    assert layer.data.shape == viewer.layers[IMAGE].data.shape and set(np.unique(layer.data)) <= {1, 2, 3}

    boxes = dock(viewer, "Box prompts")
    boxes.image.set_layer(IMAGE)
    shapes = boxes.activate()
    shapes.add(np.array([[40, 40], [40, 140], [120, 140], [120, 40]], float), shape_type="rectangle")
    qtbot.waitUntil(lambda: boxes.last_error is not None, timeout=WAIT_MS)
    assert "box prompts need a SAM model" in str(boxes.last_error)

    features = dock(viewer, "Encoder features")
    features.image.set_layer(IMAGE)
    features.compute()
    qtbot.waitUntil(lambda: features.last_error is not None, timeout=WAIT_MS)
    assert "SAM's image encoder" in str(features.last_error)

    # trained without guidance, the model still takes known phase fractions: the phases layer gets them
    ratios = dock(viewer, "Phase ratios")
    assert all(slider.isEnabled() for slider in ratios.sliders) and "without ratio guidance" in ratios.note.text()
    ratios.image.set_layer(IMAGE)
    ratios.set_ratios([0.2, 0.3, 0.5])
    qtbot.waitUntil(lambda: not ratios.busy, timeout=WAIT_MS)
    assert ratios.last_error is None, ratios.last_error
    np.testing.assert_allclose(phase_fractions_of_layer(viewer.layers[PHASE_LAYER], 3), [0.2, 0.3, 0.5], atol=0.01)
    assert "given the fractions" in dock(viewer, "Predict").guidance.text()


def test_the_predict_dock_shows_the_micrograph_at_the_models_working_scale(
    viewer, qtbot, split_samples, synth_dataset, tmp_path
):
    """A model trained at one physical scale sees a calibrated micrograph resampled to it, the dock says so, and the
    phases come back at the micrograph's own pixels."""
    from napari_metalseg._widgets.layers import MICROGRAPH_KEY
    from napari_metalseg.training import TrainConfig, train

    config = TrainConfig(model="classical", device="cpu", physical_scale=True)
    list(train(split_samples["train"][:2], synth_dataset.phases, tmp_path / "run", config))
    model_widget = dock(viewer, "Model")
    assert model_widget.load_run(tmp_path / "run", device="cpu") is not None
    wait(qtbot, model_widget)
    predictor = session_of(viewer).predictor
    working = predictor.working_pixel_size
    assert working is not None and "nm per pixel" in model_widget.info.text()
    image = viewer.layers[IMAGE]
    image.metadata[MICROGRAPH_KEY] = {**(image.metadata.get(MICROGRAPH_KEY) or {}), "pixel_size_um": 2 * working}
    widget = dock(viewer, "Predict")
    started = []
    start_job = widget.start_job
    widget.start_job = lambda job, desc, *a, **k: started.append(desc) or start_job(job, desc, *a, **k)
    layer = predict(viewer, qtbot)
    assert started and "resampled x2.00 to the model's" in started[-1]
    data = np.asarray(image.data)
    assert layer.data.shape == data.shape
    expected = predictor.predict(data, pixel_size_um=2 * working).labels + 1
    np.testing.assert_array_equal(layer.data, expected)
    assert not np.array_equal(layer.data, predictor.predict(data).labels + 1)  # not predicted as it is
