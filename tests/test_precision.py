"""bf16 by default where it is native: the decision (napari_metalseg.precision), fp32 vs bf16 agreement of trained
models, and the `--fp32` opt-out of the CLI."""

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from napari_metalseg import precision
from napari_metalseg.cli import main
from napari_metalseg.data.synth import synthesize_micrograph
from napari_metalseg.phases import PhaseSet, phase_fractions
from napari_metalseg.precision import FP32_ENV, native_bf16, precision_label, prediction_bf16
from napari_metalseg.predict import Predictor
from napari_metalseg.training import TrainConfig, train, use_bf16


def _heldout(num_phases: int) -> tuple[np.ndarray, np.ndarray]:
    """A micrograph none of the fixtures trained on (their datasets use seed 1), and its true fractions."""
    fractions = (0.5, 0.3, 0.2)[:num_phases]
    image, mask = synthesize_micrograph(320, fractions=fractions, magnification=3000, seed=2024)
    return image, phase_fractions(mask, num_phases)


def _agreement(a, b) -> float:
    return float((a.labels == b.labels).mean())


def test_trained_sam_gives_the_same_phases_in_bf16_and_fp32(trained_run):
    """The tiny SAM of the session fixture (ratio guidance), tiled, with and without ratios: >= 99 % of the pixels."""
    run, _ = trained_run
    fp32 = Predictor.from_run(run, device="cpu", bf16=False)
    bf16 = Predictor.from_run(run, device="cpu", bf16=True)
    image, ratios = _heldout(len(fp32.phases))
    assert image.shape[0] > fp32.size  # several tiles, blended
    for r in (None, ratios):
        a, b = fp32.predict(image, ratios=r), bf16.predict(image, ratios=r)
        assert not np.array_equal(a.probs, b.probs)  # autocast did run: the comparison is not vacuous
        agreement = _agreement(a, b)
        print(f"tiny SAM, ratios {r}: bf16 vs fp32 label agreement {agreement:.4f}")
        assert agreement >= 0.99
    # with a box prompt too (decoded from the cached tile embeddings)
    box = (40, 40, 200, 180)
    assert _agreement(fp32.predict(image, box=box), bf16.predict(image, box=box)) >= 0.99


@pytest.fixture(scope="module")
def trained_cnn(tmp_path_factory, synth_dataset, split_samples):
    """A short ratio-guided run of the default family (elunet pooled with the classical classifier, the default)."""
    run = tmp_path_factory.mktemp("cnn") / "elunet"
    config = TrainConfig(
        model="elunet", guidance="ratio", width=4, depth=3, steps=30, batch_size=4, img_size=64, device="cpu", seed=0
    )
    assert config.pool_classical
    list(train(split_samples["train"], synth_dataset.phases, run, config, val_samples=split_samples["val"]))
    return run


def test_trained_cnn_gives_the_same_phases_in_bf16_and_fp32(trained_cnn):
    """The CNN runs in ``decode``, under autocast with bf16 (1.5x faster here); the classical features are numpy."""
    fp32 = Predictor.from_run(trained_cnn, device="cpu", bf16=False)
    bf16 = Predictor.from_run(trained_cnn, device="cpu", bf16=True)
    image, ratios = _heldout(len(fp32.phases))
    for r in (None, ratios):
        a, b = fp32.predict(image, ratios=r), bf16.predict(image, ratios=r)
        assert _agreement(a, b) >= 0.99
        assert not np.array_equal(a.probs, b.probs)  # autocast really ran
    assert precision_label(fp32.model.kind, True) == "bf16 autocast"


# -- the decision --------------------------------------------------------------------------------------------------


@pytest.fixture
def cpu_bf16(monkeypatch):
    """Set what oneDNN says about the CPU: ``cpu_bf16(True)`` / ``cpu_bf16(False)`` / ``cpu_bf16(RuntimeError)``."""
    monkeypatch.delenv(FP32_ENV, raising=False)

    def set_support(answer) -> None:
        def check():
            if isinstance(answer, type) and issubclass(answer, Exception):
                raise answer("no oneDNN")
            return answer

        monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", check)

    return set_support


def test_bf16_by_default_on_cuda_and_on_cpus_with_native_bf16(cpu_bf16):
    cpu_bf16(True)
    assert native_bf16("cpu") and prediction_bf16("cpu")
    assert native_bf16("cuda") and native_bf16("cuda:1") and prediction_bf16("cuda")
    assert not native_bf16("mps")
    cpu_bf16(False)
    assert not native_bf16("cpu") and not prediction_bf16("cpu")  # emulated bf16 would be slower: fp32
    assert prediction_bf16("cuda")
    cpu_bf16(RuntimeError)
    assert not native_bf16("cpu")  # a failing check means no


def test_fp32_and_the_environment_variable_opt_out(cpu_bf16, monkeypatch):
    cpu_bf16(True)
    assert not prediction_bf16("cpu", fp32=True) and not prediction_bf16("cuda", fp32=True)
    monkeypatch.setenv(FP32_ENV, "1")
    assert not prediction_bf16("cpu") and not prediction_bf16("cuda")
    assert native_bf16("cpu")  # the hardware did not change; training does not read the variable
    monkeypatch.setenv(FP32_ENV, "0")
    assert prediction_bf16("cpu")
    monkeypatch.setenv(FP32_ENV, "")
    assert prediction_bf16("cpu")


def test_the_predictor_and_training_ask_the_same_check(cpu_bf16, monkeypatch):
    model = torch.nn.Conv2d(1, 3, 1)
    model.img_size = 64
    phases = PhaseSet.from_names(["a", "b", "c"])
    for native in (True, False):
        cpu_bf16(native)
        assert Predictor(model, phases, device="cpu").bf16 is native
        assert Predictor(model, phases, device="cpu", bf16=not native).bf16 is (not native)  # explicit wins
        assert use_bf16(TrainConfig(model="elunet"), "cpu") is native
        assert use_bf16(TrainConfig(model="tiny"), "cpu") is False  # SAM trains in fp32 on a CPU
        assert use_bf16(TrainConfig(model="elunet", bf16=True), "cpu") is True
    monkeypatch.setenv(FP32_ENV, "1")
    assert Predictor(model, phases, device="cuda").bf16 is False
    assert Predictor(model, phases, device="cpu", bf16=True).bf16 is True


def test_what_the_model_dock_says():
    assert precision_label("tiny", True) == precision_label("elunet", True) == "bf16 autocast"
    assert precision_label("vit_b", False) == precision_label("classical", True) == "fp32"
    assert precision.__doc__ and FP32_ENV in precision.__doc__


# -- the CLI -------------------------------------------------------------------------------------------------------


@pytest.fixture
def made(monkeypatch):
    """The predictors the CLI builds (through ``Predictor.from_run``)."""
    predictors = []
    original = Predictor.from_run.__func__

    def spy(cls, *args, **kwargs):
        predictors.append(original(cls, *args, **kwargs))
        return predictors[-1]

    monkeypatch.setattr(Predictor, "from_run", classmethod(spy))
    monkeypatch.delenv(FP32_ENV, raising=False)
    return predictors


def _invoke(*args, env=None):
    return CliRunner().invoke(main, [str(a) for a in args], env=env)


def test_cli_fp32_reaches_the_predictor(trained_run, synth_dataset, made, tmp_path):
    run, _ = trained_run
    image = synth_dataset.split("test")[0].image_path
    common = ["predict", "--model", run, "--input", image, "--device", "cpu"]
    assert _invoke(*common, "--out", tmp_path / "a").exit_code == 0
    assert made[-1].bf16 is native_bf16("cpu")  # the default
    assert _invoke(*common, "--out", tmp_path / "b", "--fp32").exit_code == 0
    assert made[-1].bf16 is False
    assert _invoke(*common, "--out", tmp_path / "c", env={FP32_ENV: "1"}).exit_code == 0
    assert made[-1].bf16 is False
    old = _invoke(*common, "--out", tmp_path / "d", "--bf16")  # the old flag: accepted, does nothing
    assert old.exit_code == 0 and "--bf16 is deprecated" in old.output
    assert made[-1].bf16 is native_bf16("cpu")
    evaluated = _invoke("evaluate", "--model", run, "--data", synth_dataset.root, "--device", "cpu", "--fp32")
    assert evaluated.exit_code == 0, evaluated.output
    assert made[-1].bf16 is False and len(made) == 5


def test_cli_help_says_the_default_and_the_opt_out():
    for command in ("predict", "evaluate", "demo"):
        result = _invoke(command, "--help")
        text = " ".join(result.output.split())  # click wraps the help text
        assert result.exit_code == 0 and "--fp32" in text and "native bf16" in text
        assert "--bf16" not in text
