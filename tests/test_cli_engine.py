"""`metalseg train / predict / evaluate / features` end to end, and their one-line errors."""

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from napari_metalseg.cli import main
from napari_metalseg.data.dataset import load_dataset


def _invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_train_predict_evaluate_features(synth_dataset, tmp_path):
    run = tmp_path / "run"
    result = _invoke(
        "train",
        "--data",
        synth_dataset.root,
        "--out",
        run,
        "--model",
        "tiny",
        "--steps",
        4,
        "--img-size",
        64,
        "--guidance",
        "spatial+box",
        "--device",
        "cpu",
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output[result.output.index("{") :])["run"] == str(run)
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["guidance"] == "spatial" and config["training"]["guidance"] == "spatial+box"

    out = tmp_path / "pred"
    result = _invoke("predict", "--model", run, "--input", synth_dataset.root, "--out", out, "--ratio", "0.5,0.3,0.2")
    assert result.exit_code == 0, result.output
    predicted = load_dataset(out, require_masks=True)
    assert len(predicted) == len(synth_dataset) and predicted.phases == synth_dataset.phases
    assert np.asarray(predicted.items[0].read_mask()).max() < 3

    one = synth_dataset.items[0].image_path
    result = _invoke("predict", "--model", run, "--input", one, "--out", tmp_path / "box", "--box", "10,20,60,90")
    assert result.exit_code == 0, result.output
    mask = load_dataset(tmp_path / "box").items[0].read_mask()
    assert (mask[:20] == 255).all() and (mask[20:90, 10:60] < 3).all()

    result = _invoke(
        "evaluate", "--model", run, "--data", synth_dataset.root, "--split", "test", "--json", tmp_path / "scores.json"
    )
    assert result.exit_code == 0, result.output
    *_, header, _row, where = result.output.strip().splitlines()
    assert header.split()[0] == "Model" and header.split()[-1] == "Avg."
    assert where.startswith("wrong pixels by distance to the reference's phase boundaries: 0-2 px ")
    scores = json.loads((tmp_path / "scores.json").read_text())
    assert len(scores["images"]) == len(synth_dataset.split("test"))
    shares = [band["share"] for band in scores["errors_by_boundary"].values()]
    assert len(shares) == 4 and sum(shares) == pytest.approx(100)  # this short run gets some pixels wrong

    result = _invoke("features", "--model", run, "--input", one, "--out", tmp_path / "feat")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "feat" / "features.png").is_file()
    assert (tmp_path / "feat" / "block04_adapted.png").is_file() and (tmp_path / "feat" / "block01_base.png").is_file()


def _one_error_line(result, *fragments):
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.output
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_bad_inputs_give_one_error_line(trained_run, synth_dataset, tmp_path):
    run, _ = trained_run
    image = synth_dataset.items[0].image_path
    _one_error_line(
        _invoke("predict", "--model", run, "--input", image, "--out", tmp_path / "o", "--ratio", "1,2"),
        "has 2 values but the model has 3 phases",
    )
    _one_error_line(
        _invoke("predict", "--model", run, "--input", image, "--out", tmp_path / "o", "--ratio", "0.5,nan,0.5"), "NaN"
    )
    _one_error_line(
        _invoke("predict", "--model", run, "--input", image, "--out", tmp_path / "o", "--ratio", "0.5,-1,0.5"),
        "negative",
    )
    _one_error_line(
        _invoke("predict", "--model", run, "--input", image, "--out", tmp_path / "o", "--box", "0,0,9999,10"),
        "outside the image",
    )
    _one_error_line(
        _invoke("predict", "--model", tmp_path / "nope", "--input", image, "--out", tmp_path / "o"),
        "run directory does not exist",
    )
    broken = tmp_path / "broken_run"
    shutil.copytree(run, broken)
    (broken / "adapter.safetensors").unlink()
    _one_error_line(
        _invoke("predict", "--model", broken, "--input", image, "--out", tmp_path / "o"),
        "adapter.safetensors is missing",
    )
    (broken / "adapter.safetensors").write_bytes(b"garbage")
    _one_error_line(
        _invoke("predict", "--model", broken, "--input", image, "--out", tmp_path / "o"), "corrupt adapter file"
    )
    empty = tmp_path / "empty"
    (empty / "images").mkdir(parents=True)
    (empty / "phases.json").write_text('[{"name": "ferrite", "color": "#4477aa"}]')
    _one_error_line(_invoke("train", "--data", empty, "--out", tmp_path / "r"), "no images")
    other = tmp_path / "other"
    shutil.copytree(synth_dataset.root, other)
    (other / "phases.json").write_text(
        '[{"name": "a", "color": "#000000"}, {"name": "b", "color": "#ffffff"}, {"name": "c", "color": "#ff0000"}]'
    )
    _one_error_line(_invoke("evaluate", "--model", run, "--data", other), "differ from the model's")


@pytest.mark.parametrize(
    "flag, value, fragment",
    [
        ("--img-size", "100", "multiple of 16"),
        ("--steps", "0", "at least 1"),
        ("--finetune", "lora", "needs a pretrained checkpoint"),
        ("--pseudo", "-1", "pseudo -1"),
    ],
)
def test_bad_training_arguments(synth_dataset, tmp_path, flag, value, fragment):
    _one_error_line(_invoke("train", "--data", synth_dataset.root, "--out", tmp_path / "r", flag, value), fragment)


def test_wrong_checkpoint_is_one_error_line(synth_dataset, tmp_path):
    bad = tmp_path / "sam_vit_b.pth"
    bad.write_bytes(b"not a checkpoint")
    _one_error_line(
        _invoke(
            "train",
            "--data",
            synth_dataset.root,
            "--out",
            tmp_path / "r",
            "--model",
            "vit_b",
            "--checkpoint",
            bad,
            "--steps",
            "1",
        ),
        "sam_vit_b.pth",
    )


def test_demo_runs_end_to_end_with_the_default_model(tmp_path):
    from napari_metalseg.models.registry import DEFAULT_MODEL

    out = tmp_path / "demo"
    result = _invoke("demo", "--out", out, "--budget-s", 2, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "classical pixel classifier" in result.output
    config = json.loads((out / "run" / "config.json").read_text())
    assert config["model"]["kind"] == DEFAULT_MODEL and config["model"]["guidance"] == "ratio"
    assert (out / "run" / "classifier.txt").is_file()  # the default CNN's companion, kept whatever the run decided
    pooled = config["training"]["pool_choice"]["weight"] > 0
    assert config["model"]["pooled"] == config["training"]["pool_choice"]["weight"]
    name = f"{DEFAULT_MODEL} + classical" if pooled else DEFAULT_MODEL  # the table names the run's model
    assert f"{name} + true ratio " in result.output
    assert (out / "fractions.csv").is_file() and (out / "classical" / "classifier.txt").is_file()
