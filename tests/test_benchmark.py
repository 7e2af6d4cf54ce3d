"""`metalseg benchmark` and :mod:`napari_metalseg.benchmark`: every field is there, finite or None with a reason.

Sizes are shrunk (a 64 px compact SAM, 128 / 192 x 128 px micrographs, one run after the warm-up); nothing here
asserts a time.
"""

import json
import math

import numpy as np
import pytest
from click.testing import CliRunner

from napari_metalseg import benchmark as bench
from napari_metalseg.cli import main
from napari_metalseg.errors import MetalsegError

SMALL = {"img_size": 64, "image_size": 128, "large_shape": (128, 192), "repeat": 1, "boxes": 4, "device": "cpu"}
REFERENCE_FIELDS = ("sam_predictor_set_image_ms", "encoder_ratio_vs_sam", "sam_predictor_box_ms")
BOX_FIELDS = ("box_first_ms", "box_ms", "encoder_calls_during_boxes")
MACHINE = ("cpu", "logical_cores", "torch_threads", "torch", "device", "gpu", "native_bf16", "date")


def _check_fields(results: dict) -> None:
    """Every timing is a positive finite number or None with a note; the machine block is complete."""
    for field in bench.TIMINGS:
        assert field in results, field
        value = results[field]
        if value is None:
            assert results["notes"].get(field), f"{field} is None without a note"
        elif field == "encoder_calls_during_boxes":
            assert type(value) is int and value >= 0
        else:
            assert isinstance(value, float) and math.isfinite(value) and value > 0, (field, value)
    assert set(MACHINE) <= set(results["machine"])
    assert results["machine"]["device"] == "cpu" and results["machine"]["gpu"] is None
    assert isinstance(results["machine"]["native_bf16"], bool)
    assert results["machine"]["logical_cores"] >= 1 and results["machine"]["torch_threads"] >= 1
    assert results["precision"] == ("bf16" if results["bf16"] else "fp32")
    json.dumps(results, allow_nan=False)  # plain JSON


def test_compact_sam_has_every_field_on_the_same_weights(monkeypatch):
    monkeypatch.setattr(bench, "SAM_REFERENCE_SIZE", 64)  # SamPredictor at the model's own size: model.sam
    results = bench.run_benchmark("tiny", **SMALL)
    _check_fields(results)
    for field in bench.TIMINGS:
        assert results[field] is not None, (field, results["notes"].get(field))
    assert results["sam_reference"].startswith("model.sam (the same weights")
    assert "sam_reference" not in results["notes"]
    assert results["sam_reference_img_size"] == 64 and results["sam_predictor_precision"] == "fp32"
    assert results["encoder_ratio_vs_sam"] == pytest.approx(
        results["encoder_ms"] / results["sam_predictor_set_image_ms"], rel=1e-2
    )
    assert results["boxes"] == 4 and results["tile_size"] == 64 and results["large_shape"] == [128, 192]
    assert 1 <= results["boxes_across_tile_borders"] <= 4
    assert {"box_first_ms", "box_ms"} <= set(results["notes"])  # how to read them
    assert "encoder_ms" not in results["notes"]  # the encoder ran in every cold prediction
    assert "cache_hit_ms" not in results["notes"] and "ratio_update_ms" not in results["notes"]  # and not on hits
    table = bench.format_table(results)
    assert table.startswith("machine: ")
    for field in bench.TIMINGS:
        assert f"\n{field} " in table


def test_fp32_and_no_guidance_and_a_separate_reference(monkeypatch):
    monkeypatch.setattr(bench, "SAM_REFERENCE_SIZE", 128)  # the model is 64 px: a second model for SamPredictor
    results = bench.run_benchmark("tiny", **SMALL, bf16=False, guidance="none")
    _check_fields(results)
    assert results["precision"] == "fp32" and results["bf16"] is False
    assert results["ratio_update_ms"] is None and "guidance" in results["notes"]["ratio_update_ms"]
    assert results["sam_reference"].startswith("a separate tiny built at 128 px")
    assert "different input sizes" in results["notes"]["sam_reference"]
    assert results["sam_predictor_set_image_ms"] > 0 and results["box_ms"] > 0


def test_cnn_has_no_box_or_sam_fields():
    results = bench.run_benchmark("elunet", **SMALL, reference=True)
    _check_fields(results)
    assert results["family"] == "cnn" and results["tile_size"] == 512  # a CNN predicts in tiles of >= 512 px
    for field in BOX_FIELDS:
        assert results[field] is None and "no box prompts" in results["notes"][field]
    for field in REFERENCE_FIELDS:
        assert results[field] is None and "SAM models only" in results["notes"][field]
    for field in ("encoder_ms", "cache_hit_ms", "large_first_predict_ms", "ratio_update_ms"):
        assert results[field] > 0
    assert "whole network" in results["notes"]["encoder_ms"]
    table = bench.format_table(results)
    assert "box_ms" in table and "no box prompts" in table


def test_bad_arguments_are_refused_before_any_work():
    with pytest.raises(MetalsegError, match="fitted, not built"):
        bench.run_benchmark("classical", **SMALL)
    with pytest.raises(MetalsegError, match="repeat"):
        bench.run_benchmark("tiny", **{**SMALL, "repeat": 0})
    with pytest.raises(MetalsegError, match="guidance"):
        bench.run_benchmark("tiny", **SMALL, guidance="spatial")


def test_random_boxes_are_distinct_inside_and_some_span_tile_borders():
    boxes = bench._random_boxes(np.random.default_rng(0), (1536, 2048), 1024, 31)
    assert len(set(boxes)) == 31
    for x0, y0, x1, y1 in boxes:
        assert 0 <= x0 < x1 <= 2048 and 0 <= y0 < y1 <= 1536
        assert 64 <= x1 - x0 <= 512 and 64 <= y1 - y0 <= 512
    across = [bench._across_border(b, 1024) for b in boxes]
    assert sum(across) >= 20 and not all(across)  # every third is random, the others straddle an edge
    assert boxes == bench._random_boxes(np.random.default_rng(0), (1536, 2048), 1024, 31)  # seeded


def test_counting_calls_counts_and_restores_the_method():
    import torch

    model = torch.nn.Linear(2, 2)
    with bench._counting_calls(model, "forward") as calls:
        model(torch.zeros(1, 2))
        model.forward(torch.zeros(1, 2))
    assert calls == [2] and "forward" not in vars(model)
    model(torch.zeros(1, 2))
    assert calls == [2]


def _invoke(*args):
    return CliRunner().invoke(main, ["benchmark", *(str(a) for a in args)])


CLI_SMALL = ("--model", "tiny", "--img-size", 64, "--image-size", 128, "--large-size", "192x128", "--repeat", 1)


def test_cli_prints_the_table_and_writes_json(monkeypatch, tmp_path):
    monkeypatch.setattr(bench, "SAM_REFERENCE_SIZE", 64)
    out = tmp_path / "bench" / "b.json"
    out.parent.mkdir()
    result = _invoke(*CLI_SMALL, "--device", "cpu", "--fp32", "--json", out)
    assert result.exit_code == 0, result.output
    written = json.loads(out.read_text())
    assert written["precision"] == "fp32" and written["large_shape"] == [128, 192]
    for field in bench.TIMINGS:
        assert written[field] is not None, field
        assert f"\n{field} " in result.stdout
    assert "machine: " in result.stdout and "encoder_ms" in result.stdout
    assert list(out.parent.iterdir()) == [out]  # atomic write: no temporary file left


def test_cli_json_to_stdout_without_reference_or_guidance():
    result = _invoke(*CLI_SMALL, "--device", "cpu", "--no-reference", "--guidance", "none", "--json", "-")
    assert result.exit_code == 0, result.output
    results = json.loads(result.stdout)
    assert results["guidance"] == "none" and results["ratio_update_ms"] is None
    for field in REFERENCE_FIELDS:
        assert results[field] is None and "not run" in results["notes"][field]
    assert results["box_ms"] > 0 and results["boxes"] == 10
    assert "machine: " in result.stderr and "sam_predictor_box_ms" in result.stderr  # the table goes to stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--large-size", "2048by1536"), "--large-size '2048by1536': expected WIDTHxHEIGHT"),
        (("--boxes", 5), "--boxes"),
        (("--model", "classical"), "'classical' is not one of"),
    ],
)
def test_cli_refuses_bad_options(args, message):
    result = _invoke(*CLI_SMALL, *args)
    assert result.exit_code == 2
    assert message in result.output
