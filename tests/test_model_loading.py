"""Loading the model of the Model dock without a GUI: a run, a model from scratch, and the checks of a request."""

from __future__ import annotations

from pathlib import Path

import pytest

from napari_metalseg.errors import MetalsegError
from napari_metalseg.loading import ModelRequest, load_model, load_model_job, parse_phase_names
from napari_metalseg.phases import PhaseSet
from napari_metalseg.progress import run_job
from napari_metalseg.runs import read_run_config

PHASES = PhaseSet.from_names(["ferrite", "martensite"])


@pytest.fixture(scope="module")
def short_run(tmp_path_factory) -> Path:
    """A tiny model trained for two steps."""
    from napari_metalseg.data.samples import Sample
    from napari_metalseg.data.synth import synthesize_micrograph
    from napari_metalseg.training import TrainConfig, train

    image, mask = synthesize_micrograph(96, fractions=(0.6, 0.4), magnification=3000, seed=0)
    run = tmp_path_factory.mktemp("runs") / "tiny"
    config = TrainConfig(model="tiny", img_size=64, steps=2, batch_size=2, device="cpu")
    list(train([Sample("a", image, mask)], PHASES, run, config))
    return run


def test_a_run_loads_with_its_phases_and_notes(short_run):
    events = []
    result = run_job(load_model_job(ModelRequest(source="run", device="cpu", run_dir=short_run)), events.append)
    assert [(e.kind, e.message) for e in events] == [("info", "loading run")]
    assert result.phases.names == PHASES.names and result.run_dir == short_run and result.device == "cpu"
    assert result.model.kind == "tiny" and not result.model.training
    assert result.report == "" and result.spec == read_run_config(short_run).spec
    # how it was trained is the run's record of the steps done (shown by the Model dock), not the planned steps
    assert not any(note.startswith("trained:") for note in result.notes)
    assert read_run_config(short_run).training_summary().startswith("2 optimizer steps in ")


def test_a_model_from_scratch_is_tiny_and_untrained():
    request = ModelRequest(source="scratch", device="cpu", kind="vit_b", img_size=64, phases=PHASES)
    assert request.kind == "tiny" and request.description == "building tiny model"
    result = load_model(request)
    assert result.run_dir is None and result.phases is PHASES and result.model.img_size == 64
    assert "untrained decoder" in result.notes[0]


def test_bad_requests_say_what_is_wrong(tmp_path):
    with pytest.raises(MetalsegError, match=r"choose a trained run directory \(the folder with config.json\)"):
        ModelRequest(source="run")
    with pytest.raises(MetalsegError, match="not a trained run \\(config.json is missing\\)"):
        ModelRequest(source="run", run_dir=tmp_path / "nothing")
    with pytest.raises(MetalsegError, match="choose a SAM checkpoint file"):
        ModelRequest(source="checkpoint", kind="vit_b", img_size=512, phases=PHASES)
    with pytest.raises(MetalsegError, match="checkpoint file not found"):
        ModelRequest(source="checkpoint", checkpoint=tmp_path / "sam.pth", kind="vit_b", img_size=512, phases=PHASES)
    with pytest.raises(MetalsegError, match="phases"):
        ModelRequest(source="scratch", img_size=64)
    with pytest.raises(MetalsegError, match="'web' is not one of run, checkpoint, scratch"):
        ModelRequest(source="web")
    with pytest.raises(MetalsegError, match="enter the phase names"):
        parse_phase_names(" , ")
    assert parse_phase_names("ferrite, martensite,").names == ["ferrite", "martensite"]
