"""Retraining continues from a run (``TrainConfig.init_from``, ``metalseg train --init-from``) and a run records the
optimizer steps it actually did (stopped, out of time, resumed)."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from napari_metalseg.errors import MetalsegError
from napari_metalseg.runs import ADAPTER, CONFIG, read_run_config, sha256_file
from napari_metalseg.training import TrainConfig, train

TINY = {"model": "tiny", "img_size": 64, "batch_size": 1, "device": "cpu", "bf16": False}
UNET = {"model": "unet", "width": 4, "depth": 2, "img_size": 64, "batch_size": 1, "device": "cpu", "bf16": False}


def _weights(run) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run / ADAPTER))


def _max_difference(a: dict, b: dict, keys=None) -> float:
    keys = sorted(a) if keys is None else keys
    assert sorted(a) == sorted(b)
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in keys)


@pytest.fixture(scope="module")
def source_run(tmp_path_factory, split_samples, synth_dataset):
    """A ratio-guided tiny model trained for 6 steps."""
    run = tmp_path_factory.mktemp("init") / "source"
    config = TrainConfig(**TINY, guidance="ratio", steps=6, lr=5e-3)
    list(train(split_samples["train"][:2], synth_dataset.phases, run, config))
    return run


def test_a_run_initialised_from_a_run_starts_from_its_weights(source_run, split_samples, synth_dataset, tmp_path):
    samples, phases = split_samples["train"][:2], synth_dataset.phases
    spec = read_run_config(source_run).spec
    config = TrainConfig.from_spec(spec, init_from=source_run, steps=1, lr=1e-12, batch_size=1, device="cpu")
    assert (config.model, config.img_size, config.guidance) == ("tiny", 64, "ratio")
    events = list(train(samples, phases, tmp_path / "continued", config))
    assert any(e.kind == "info" and f"continuing from the model of {source_run.resolve()}" in e.message for e in events)
    source, continued = _weights(source_run), _weights(tmp_path / "continued")
    assert _max_difference(source, continued) < 1e-6  # one step at lr 1e-12: still the source's weights
    run = read_run_config(tmp_path / "continued")
    assert run.spec == spec
    assert run.training["init_from"] == {
        "run": str(source_run.resolve()),
        "weights_sha256": sha256_file(source_run / ADAPTER),
    }
    assert "continued from" in run.training_summary()

    # the same run without init_from starts from a fresh model: far from the source's weights
    fresh = TrainConfig.from_spec(spec, steps=1, lr=1e-12, batch_size=1, device="cpu")
    list(train(samples, phases, tmp_path / "fresh", fresh))
    assert _max_difference(source, _weights(tmp_path / "fresh")) > 1e-3
    assert read_run_config(tmp_path / "fresh").training["init_from"] is None


def test_a_pooled_cnn_starts_from_the_network_and_refits_the_companion(split_samples, synth_dataset, tmp_path):
    samples, phases = split_samples["train"][:1], synth_dataset.phases
    list(train(samples, phases, tmp_path / "a", TrainConfig(**UNET, steps=3, lr=5e-3)))
    spec = read_run_config(tmp_path / "a").spec
    assert spec.pooled > 0
    config = TrainConfig.from_spec(spec, init_from=str(tmp_path / "a"), steps=1, lr=1e-12, device="cpu")
    assert config.pool_classical is True and (config.width, config.depth) == (4, 2)
    events = list(train(samples, phases, tmp_path / "b", config))
    messages = [e.message for e in events if e.kind == "info"]
    assert any("continuing from" in m and "refitted" in m for m in messages)
    assert any("fitting the classical pixel classifier" in m for m in messages)
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    learnt = [k for k in a if "running_" not in k and "num_batches" not in k]  # BN statistics follow the batch
    assert _max_difference(a, b, learnt) < 1e-6
    assert (tmp_path / "b" / "classifier.txt").is_file()


def test_the_classical_classifier_has_nothing_to_initialise(split_samples, synth_dataset, tmp_path):
    samples, phases = split_samples["train"][:1], synth_dataset.phases
    base = {"model": "classical", "img_size": 256, "device": "cpu"}
    list(train(samples, phases, tmp_path / "a", TrainConfig(**base)))
    config = TrainConfig.from_spec(read_run_config(tmp_path / "a").spec, init_from=str(tmp_path / "a"), device="cpu")
    events = list(train(samples, phases, tmp_path / "b", config))
    assert any(e.kind == "info" and "nothing to initialise" in e.message for e in events)
    run = read_run_config(tmp_path / "b")
    assert run.training["init_from"]["weights_sha256"] == sha256_file(tmp_path / "a" / "classifier.txt")
    assert run.steps_done == 1 and run.training_summary().startswith("fitted on the labelled pixels in ")


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"guidance": "none"}, "guidance 'ratio' vs 'none'"),
        ({"img_size": 128}, "img_size 64 vs 128"),
        ({"model": "unet", "img_size": 64}, "kind 'tiny' vs 'unet'"),
    ],
)
def test_init_from_another_model_is_one_error(source_run, split_samples, synth_dataset, tmp_path, change, fragment):
    spec = read_run_config(source_run).spec
    config = TrainConfig.from_spec(spec, init_from=source_run, steps=1, device="cpu", **change)
    with pytest.raises(MetalsegError, match=f"init_from {source_run}: its model differs .*{fragment}"):
        list(train(split_samples["train"][:1], synth_dataset.phases, tmp_path / "r", config))
    assert not (tmp_path / "r").exists()


def test_init_from_checks_phases_run_resume_and_output(source_run, split_samples, synth_dataset, tmp_path):
    from napari_metalseg.phases import PhaseSet

    samples = split_samples["train"][:1]
    config = TrainConfig.from_spec(read_run_config(source_run).spec, init_from=source_run, steps=1, device="cpu")
    other = PhaseSet.from_names(["ferrite", "pearlite", "bainite"])
    with pytest.raises(
        MetalsegError, match=r"phases \['ferrite', 'martensite', 'bainite'\] vs \['ferrite', 'pearlite'"
    ):
        list(train(samples, other, tmp_path / "r", config))
    with pytest.raises(MetalsegError, match="does not go with resume"):
        list(train(samples, synth_dataset.phases, tmp_path / "r", config, resume=True))
    with pytest.raises(MetalsegError, match="is the run directory to write"):
        list(train(samples, synth_dataset.phases, source_run, config))
    with pytest.raises(MetalsegError, match=f"init_from {tmp_path}: not a trained run"):
        TrainConfig(**TINY, init_from=str(tmp_path))
    # the colours of the phases are for display: a run of the same phase names in other colours continues
    recoloured = PhaseSet.from_json([{"name": n, "color": "#123456"} for n in synth_dataset.phases.names])
    assert list(train(samples, recoloured, tmp_path / "ok", config))[-1].kind == "done"


def test_a_stopped_run_records_the_steps_it_did(split_samples, synth_dataset, tmp_path):
    samples, phases = split_samples["train"][:1], synth_dataset.phases
    calls = iter(range(1000))
    config = TrainConfig(**TINY, steps=500, val_every=2)
    events = list(train(samples, phases, tmp_path / "run", config, stop=lambda: next(calls) >= 5))
    assert events[-1].kind == "stopped" and events[-1].step == 5
    run = read_run_config(tmp_path / "run")
    assert run.training["steps"] == 500  # what was planned stays recorded as such
    assert run.steps_done == 5 and run.training["ended"] == "stopped" and run.training["train_seconds"] > 0
    summary = run.training_summary()
    assert summary.startswith("5 optimizer steps in ") and "(stopped)" in summary
    kept = run.training["kept_step"]  # the best of the validations after steps 2 and 4 (held-out pixels)
    assert kept in (2, 4) and f"; the kept model is from step {kept} (best validation)" in summary
    assert "500" not in summary

    # resumed to its end: the steps done include the resumed part
    list(train(samples, phases, tmp_path / "run", TrainConfig(**TINY, steps=7, val_every=2), resume=True))
    run = read_run_config(tmp_path / "run")
    assert run.steps_done == 7 and run.training["ended"] == "steps"


def test_a_run_on_a_time_budget_records_the_steps_it_did(split_samples, synth_dataset, tmp_path):
    config = TrainConfig(**{**UNET, "model": "elunet"}, budget_s=1.5)
    events = list(train(split_samples["train"][:1], synth_dataset.phases, tmp_path / "run", config))
    steps = [e.step for e in events if e.kind == "train"]
    run = read_run_config(tmp_path / "run")
    assert run.training["steps"] is None and run.training["ended"] == "budget"
    assert run.steps_done == steps[-1] == len(steps) and run.training["train_seconds"] >= 1.5


def test_cli_init_from_takes_the_runs_model(source_run, synth_dataset, tmp_path):
    from napari_metalseg.cli import main

    out = tmp_path / "retrained"
    args = ["train", "--data", str(synth_dataset.root), "--out", str(out), "--steps", "1", "--device", "cpu"]
    result = CliRunner().invoke(main, [*args, "--init-from", str(source_run)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output[result.output.index("{") :])["steps_done"] == 1
    config = json.loads((out / CONFIG).read_text())
    assert config["model"] == json.loads((source_run / CONFIG).read_text())["model"]
    assert config["training"]["init_from"]["run"] == str(source_run.resolve())

    refused = CliRunner().invoke(main, [*args, "--init-from", str(source_run), "--guidance", "none"])
    assert refused.exit_code == 2
    error = [line for line in refused.output.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and error[0].startswith(f"error: --init-from {source_run}: its model differs")
    assert "guidance 'ratio' vs 'none'" in error[0]
    missing = CliRunner().invoke(main, [*args, "--init-from", str(tmp_path / "nothing")])
    assert missing.exit_code == 2 and missing.output.startswith(f"error: --init-from {tmp_path / 'nothing'}: ")
    both = CliRunner().invoke(main, [*args, "--init-from", str(source_run), "--resume"])
    assert both.exit_code == 2 and "does not go with resume" in both.output


def test_spec_differences_compare_every_field():
    from dataclasses import fields

    from napari_metalseg.models.spec import ModelSpec

    phases = [{"name": "a", "color": "#000000"}, {"name": "b", "color": "#ffffff"}]
    spec = ModelSpec(kind="tiny", img_size=64, phases=phases, guidance="ratio")
    assert spec.differences(spec) == []
    recoloured = ModelSpec(
        kind="tiny", img_size=64, phases=[{**p, "color": "#123456"} for p in phases], guidance="ratio"
    )
    assert spec.differences(recoloured) == []
    changed = {"lora_rank": 4, "finetune": "decoder", "pooled": 0.5, "options": {"x": 1}, "lora_mlp": True}
    for name, value in changed.items():
        other = ModelSpec(**{f.name: getattr(spec, f.name) for f in fields(spec)} | {name: value})
        assert [d.split(" ")[0] for d in spec.differences(other)] == [name]
    moved = ModelSpec(kind="vit_b", checkpoint="/a/sam.pth", checkpoint_sha256="x", phases=phases)
    assert (
        moved.differences(ModelSpec(kind="vit_b", checkpoint="/b/sam.pth", checkpoint_sha256="x", phases=phases)) == []
    )
    assert moved.differences(ModelSpec(kind="vit_b", checkpoint="/a/sam.pth", checkpoint_sha256="y", phases=phases))
    fewer = ModelSpec(kind="tiny", img_size=64, phases=phases[:1], guidance="ratio")
    assert spec.differences(fewer) == ["phases ['a', 'b'] vs ['a']"]
    pooled = ModelSpec(kind="elunet", img_size=64, phases=phases, pooled=0.5)  # the weight is each run's decision
    assert pooled.differences(ModelSpec(kind="elunet", img_size=64, phases=phases, pooled=0.75)) == []
    assert pooled.differences(ModelSpec(kind="elunet", img_size=64, phases=phases, pooled=0.0)) == [
        "pooled True vs False"
    ]
