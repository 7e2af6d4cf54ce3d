"""The study: rows measured, skipped with their reason, failed with their error; output files; ratio effect."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from napari_metalseg.errors import MetalsegError
from napari_metalseg.study import SEED_GRID, StudyRow, load_grid, ratio_effect, run_study, study_markdown

SEED_NAMES = [
    "Enhanced U-Net3+",
    "Enhanced ELU-Net",
    "SAM (0 shot)",
    "LoRA-SAM (256)",
    "LoRA-SAM (512)",
    "LoRA-SAM (1024)",
    "LoRA-SAM (2048)",
    "LoRA-SAM + Ratio + BB (512)",
    "LoRA-SAM + Ratio (512)",
    "LoRA-SAM + Ratio (Spatial-v1) (512)",
]


def test_default_grid_is_the_seed_table_in_order_then_the_product_rows():
    names = [r.name for r in SEED_GRID]
    assert names[: len(SEED_NAMES)] == SEED_NAMES
    assert {"Classical pixel classifier", "Compact SAM (tiny)", "Compact SAM (tiny) + Ratio"} <= set(names)
    by_name = {r.name: r for r in SEED_GRID}
    assert by_name["LoRA-SAM + Ratio (512)"].baseline == "LoRA-SAM (512)"
    assert all(by_name[n].needs_checkpoint for n in SEED_NAMES[2:])
    assert not by_name["Enhanced ELU-Net"].needs_checkpoint


def test_grid_yaml(tmp_path):
    path = tmp_path / "grid.yaml"
    path.write_text("- {name: A, model: unet3plus, width: 8, budget_s: 5}\n- name: B\n  model: classical\n")
    rows = load_grid(path)
    assert [(r.name, r.model, r.width, r.budget_s) for r in rows] == [
        ("A", "unet3plus", 8, 5),
        ("B", "classical", None, None),
    ]
    path.write_text("- {name: A, model: tiny, colour: red}\n")
    with pytest.raises(MetalsegError, match="unknown field.*colour"):
        load_grid(path)
    path.write_text("- {model: tiny}\n")
    with pytest.raises(MetalsegError, match="row 1 needs at least 'name' and 'model'"):
        load_grid(path)
    path.write_text("- {name: A, model: tiny}\n- {name: A, model: elunet}\n")
    with pytest.raises(MetalsegError, match="unique"):
        load_grid(path)


def _small(samples, n):
    return samples[:n]


def test_study_measures_skips_and_fails_rows(split_samples, synth_dataset, tmp_path):
    rows = [
        StudyRow("U-Net3+", "unet3plus", img_size=64, width=4, depth=3, steps=4, batch_size=2, group="Task"),
        StudyRow("LoRA-SAM (512)", "sam", img_size=512, group="Adapted VFM"),
        StudyRow("broken", "tiny", img_size=64, width=8, steps=2),
        StudyRow("tiny", "tiny", img_size=64, steps=4, batch_size=2),
        StudyRow("tiny + Ratio", "tiny", img_size=64, guidance="ratio", steps=4, batch_size=2, baseline="tiny"),
        StudyRow("classical", "classical", img_size=256),
    ]
    out = tmp_path / "study"
    events = list(
        run_study(
            _small(split_samples["train"], 3),
            split_samples["val"][:1],
            split_samples["test"][:2],
            synth_dataset.phases,
            out,
            rows,
            budget_s=None,
            device="cpu",
        )
    )
    assert events[-1].kind == "done"
    data = json.loads((out / "study.json").read_text())
    got = {r["name"]: r for r in data["rows"]}
    assert [r["name"] for r in data["rows"]] == [r.name for r in rows]
    assert got["LoRA-SAM (512)"]["status"] == "skipped" and "checkpoint" in got["LoRA-SAM (512)"]["reason"]
    assert got["LoRA-SAM (512)"]["dice"] is None
    assert got["broken"]["status"] == "failed" and "width 8" in got["broken"]["reason"]
    for name in ("U-Net3+", "tiny", "tiny + Ratio", "classical"):
        row = got[name]
        assert row["status"] == "measured", row
        assert set(row["dice"]) >= {"avg"} and len(row["dice"]) >= 2
        assert 0 <= row["dice"]["avg"] <= 100
        assert row["train_s"] > 0 and row["infer_ms_per_image"] > 0 and row["trainable_params"] > 0
        assert (out / "runs").is_dir() and row["run"]
    assert got["tiny + Ratio"]["gain"] == pytest.approx(
        got["tiny + Ratio"]["dice"]["avg"] - got["tiny"]["dice"]["avg"], abs=0.01
    )
    assert got["U-Net3+"]["trainable_params"] != got["tiny"]["trainable_params"]
    md = (out / "study.md").read_text()
    assert "skipped: needs a SAM checkpoint" in md and "failed: " in md and "**" in md
    best = max(r["dice"]["avg"] for r in data["rows"] if r["dice"])
    assert f"**{best:.2f}**" in md
    with open(out / "study.csv") as fh:
        table = list(csv.DictReader(fh))
    assert [r["status"] for r in table] == [got[r.name]["status"] for r in rows]
    assert (out / "study.png").stat().st_size > 1000
    assert data["machine"] and "cores" in data["machine"]


def test_study_with_a_checkpoint_runs_zero_shot_and_lora_rows(split_samples, synth_dataset, tmp_path):
    from napari_metalseg.models.phase_sam import build_phase_sam

    base, _ = build_phase_sam("tiny", img_size=64, num_phases=3, seed=3)
    ckpt = tmp_path / "tiny_base.pth"
    torch.save(base.sam.state_dict(), ckpt)
    rows = [
        StudyRow("SAM (0 shot)", "sam", img_size=64, zero_shot=True),
        StudyRow("LoRA-SAM (64)", "sam", img_size=64, steps=3, batch_size=1),
    ]
    out = tmp_path / "study"
    list(
        run_study(
            split_samples["train"][:1],
            [],
            split_samples["test"][:1],
            synth_dataset.phases,
            out,
            rows,
            checkpoint=str(ckpt),
            budget_s=None,
            device="cpu",
        )
    )
    got = {r["name"]: r for r in json.loads((out / "study.json").read_text())["rows"]}
    assert got["SAM (0 shot)"]["status"] == "measured" and got["SAM (0 shot)"]["trainable_params"] == 0
    assert got["LoRA-SAM (64)"]["status"] == "measured" and got["LoRA-SAM (64)"]["trainable_params"] > 0
    zero = json.loads((out / "runs" / "sam-0-shot" / "config.json").read_text())
    assert zero["training"] == {"zero_shot": True} and zero["model"]["finetune"] == "lora"


def test_interrupted_study_keeps_finished_rows(split_samples, synth_dataset, tmp_path):
    rows = [StudyRow("first", "classical", img_size=256), StudyRow("second", "classical", img_size=256)]
    out = tmp_path / "study"

    def interrupt(result):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        list(
            run_study(
                split_samples["train"][:2],
                [],
                split_samples["test"][:1],
                synth_dataset.phases,
                out,
                rows,
                device="cpu",
                on_result=interrupt,
            )
        )
    data = json.loads((out / "study.json").read_text())
    assert [r["name"] for r in data["rows"]] == ["first"] and data["rows"][0]["status"] == "measured"


def test_run_study_is_a_job_returning_its_rows(split_samples, synth_dataset, tmp_path):
    from napari_metalseg.progress import run_job

    rows = [StudyRow("classical", "classical", img_size=256)]
    kinds = set()
    results = run_job(
        run_study(split_samples["train"][:1], [], split_samples["test"][:1], synth_dataset.phases, tmp_path, rows),
        lambda event: kinds.add(event.kind),
    )
    assert [(r.name, r.status) for r in results] == [("classical", "measured")]
    assert {"row", "done"} <= kinds


def test_markdown_marks_gains_and_losses():
    from napari_metalseg.study import RowResult

    rows = [
        RowResult("A", "measured", dice={"x3000": 80.0, "avg": 80.0}),
        RowResult("B", "measured", dice={"x3000": 82.5, "avg": 82.5}, baseline="A", gain=2.5),
        RowResult("C", "measured", dice={"x3000": 79.0, "avg": 79.0}, baseline="A", gain=-1.0),
    ]
    md = study_markdown(rows, {"phases": ["a", "b"]})
    assert "↑ 2.50%" in md and "↓ 1.00%" in md and "**82.50**" in md and "× 3000" in md


def test_ratio_effect_writes_table_and_figure(trained_run, split_samples, tmp_path):
    run, _ = trained_run
    effects = ratio_effect(run, split_samples["test"][:2], tmp_path / "ratio", device="cpu")
    assert [e.label for e in effects][:2] == ["none", "true"] and len(effects) == 5
    assert effects[2].ratio == pytest.approx([0.1, 0.7, 0.2])
    for e in effects:
        assert 0 <= e.dice <= 100 and sum(e.fractions) == pytest.approx(1, abs=1e-3)
    assert (tmp_path / "ratio" / "ratio_effect.png").stat().st_size > 1000
    table = json.loads((tmp_path / "ratio" / "ratio_effect.json").read_text())
    assert [t["label"] for t in table] == [e.label for e in effects]


def test_ratio_effect_refuses_an_unguided_run(split_samples, synth_dataset, tmp_path):
    from napari_metalseg.training import TrainConfig, train

    config = TrainConfig(model="tiny", img_size=64, steps=1, batch_size=1, device="cpu")
    list(train(split_samples["train"][:1], synth_dataset.phases, tmp_path / "run", config))
    with pytest.raises(MetalsegError, match="without ratio guidance"):
        ratio_effect(tmp_path / "run", split_samples["test"][:1], tmp_path / "ratio", device="cpu")


def test_study_command_reports_every_sam_row_skipped_without_a_checkpoint(synth_dataset, tmp_path):
    from click.testing import CliRunner

    from napari_metalseg.cli import main

    out = tmp_path / "study"
    result = CliRunner().invoke(
        main,
        ["study", "--data", str(synth_dataset.root), "--out", str(out), "--only", "SAM (0,LoRA-SAM", "--device", "cpu"],
    )
    assert result.exit_code == 0, result.output
    rows = json.loads((out / "study.json").read_text())["rows"]
    assert [r["name"] for r in rows] == SEED_NAMES[2:]
    assert all(r["status"] == "skipped" and "checkpoint" in r["reason"] for r in rows)
    assert "LoRA-SAM + Ratio (Spatial-v1) (512)" in result.output and "skipped" in result.output
    bad = CliRunner().invoke(main, ["study", "--data", str(synth_dataset.root), "--out", str(out), "--only", "zzz"])
    assert bad.exit_code == 2 and "matches no row" in bad.output
