"""Phase-fraction quantification: exact fractions, E562 statistics against hand calculations, the 1/2 rule, units,
undefined CIs, bad input, and the `metalseg quantify` command end to end."""

import csv
import json
import math
import re

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from napari_metalseg.cli import main
from napari_metalseg.data.dataset import write_mask
from napari_metalseg.errors import MetalsegError
from napari_metalseg.phases import PhaseSet
from napari_metalseg.quantify import (
    fraction_statistics,
    make_report,
    point_count,
    quantify_mask,
    quantify_masks,
    quantify_masks_job,
    summarize,
)

PHASES = PhaseSet.from_names(["ferrite", "martensite", "bainite"])
NAN = re.compile(r"\bnan\b", re.IGNORECASE)


def _stripes() -> np.ndarray:
    """40 x 40: columns 0-19 ferrite, 20-29 martensite, 30-39 bainite; the top 8 rows unlabeled."""
    mask = np.zeros((40, 40), dtype=np.uint8)
    mask[:, 20:30] = 1
    mask[:, 30:] = 2
    mask[:8] = 255
    return mask


def _two_phase(n_martensite: int) -> np.ndarray:
    """10 x 10 field with exactly ``n_martensite`` martensite pixels (area fraction n / 100)."""
    mask = np.zeros(100, dtype=np.uint8)
    mask[:n_martensite] = 1
    return mask.reshape(10, 10)


def _hand_fields(sample="A"):
    return [
        quantify_mask(_two_phase(n), ["ferrite", "martensite"], name=f"f{i}", sample=sample)
        for i, n in enumerate([30, 34, 32, 28])
    ]


# ---------------------------------------------------------------------------------------------------- one field


def test_area_fractions_exact_with_unlabeled_rows_excluded():
    r = quantify_mask(_stripes(), PHASES, name="stripes")
    assert r.fractions == {"ferrite": 0.5, "martensite": 0.25, "bainite": 0.25}
    assert r.pixels == {"ferrite": 640, "martensite": 320, "bainite": 320}
    assert r.labelled_pixels == 1280
    assert r.islands == {"ferrite": 1, "martensite": 1, "bainite": 1}
    assert r.length_unit == "px" and r.area_unit == "px^2"
    assert r.mean_island_area["martensite"] == 320.0


def test_point_count_grid_skips_unlabeled_and_matches_hand_count():
    # spacing 10, offset (4, 5): rows 4, 14, 24, 34 x columns 5, 15, 25, 35. Row 4 is unlabeled -> 3 x 4 = 12 points.
    # Columns 5, 15 ferrite (interior), 25 martensite (interior), 35 bainite (interior): 6 / 3 / 3 of 12.
    pp, n = point_count(_stripes(), 3, spacing=10, offset=(4, 5))
    assert n == 12
    np.testing.assert_allclose(pp, [0.5, 0.25, 0.25])


def test_half_rule_on_a_constructed_boundary():
    mask = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 1, 1]], dtype=np.uint8)
    # (1, 1) is ferrite with martensite to its right: on the boundary -> 1/2 + 1/2
    pp, n = point_count(mask, 2, spacing=10, offset=(1, 1))
    assert n == 1 and pp.tolist() == [0.5, 0.5]
    # (1, 0) has only ferrite neighbours -> 1 for ferrite
    pp, n = point_count(mask, 2, spacing=10, offset=(1, 0))
    assert n == 1 and pp.tolist() == [1.0, 0.0]
    # every pixel of rows 1-2: per row 1 (ferrite), 1/2 + 1/2, 1/2 + 1/2, 1 (martensite) -> 2 + 2 of 4 per row
    pp, n = point_count(mask, 2, spacing=1, offset=(1, 0))
    assert n == 8
    np.testing.assert_allclose(pp, [0.5, 0.5])


def test_half_rule_triple_point_and_unlabeled_neighbour():
    mask = np.array([[255, 1, 255], [255, 0, 2], [255, 0, 255]], dtype=np.uint8)
    # centre ferrite touches martensite (up) and bainite (right): 1/2 ferrite, 1/4 each other; 255 on the left ignored
    pp, n = point_count(mask, 3, spacing=10, offset=(1, 1))
    assert n == 1 and pp.tolist() == [0.5, 0.25, 0.25]
    # (2, 1) ferrite next to unlabeled pixels and ferrite only: not a boundary -> 1 for ferrite
    pp, n = point_count(mask, 3, spacing=10, offset=(2, 1))
    assert n == 1 and pp.tolist() == [1.0, 0.0, 0.0]
    # a point on an unlabeled pixel is not counted
    pp, n = point_count(mask, 3, spacing=10, offset=(0, 0))
    assert n == 0 and pp.tolist() == [0.0, 0.0, 0.0]


def test_point_count_converges_to_area_fraction_on_a_synthetic_micrograph():
    from napari_metalseg.data.synth import synthesize_micrograph

    _, mask = synthesize_micrograph(256, (0.6, 0.3, 0.1), seed=1)
    area = np.bincount(mask.ravel(), minlength=3) / mask.size

    def mean_error(spacing):
        offsets = [(0, 0), (spacing // 3, spacing // 2), (spacing // 2, spacing // 4), (spacing - 1, spacing - 1)]
        return np.mean([np.abs(point_count(mask, 3, spacing, o)[0] - area).max() for o in offsets])

    errors = [mean_error(s) for s in (32, 8, 2)]
    assert errors[0] > errors[1] > errors[2], errors
    assert errors[2] < 0.002
    assert errors[0] > 0.01  # a coarse 8 x 8 grid really is a coarse estimate


def test_units_from_pixel_size():
    mask = np.zeros((30, 30), dtype=np.uint8)
    mask[5:15, 5:15] = 1  # a 10 x 10 px square
    r = quantify_mask(mask, ["ferrite", "martensite"], pixel_size_um=0.5)
    assert r.length_unit == "um" and r.area_unit == "um^2"
    assert r.islands["martensite"] == 1
    assert r.mean_island_area["martensite"] == pytest.approx(25.0)
    assert r.median_island_area["martensite"] == pytest.approx(25.0)
    assert r.mean_diameter["martensite"] == pytest.approx(math.sqrt(4 * 25.0 / math.pi))
    assert r.mean_island_area["ferrite"] == pytest.approx((900 - 100) * 0.25)
    px = quantify_mask(mask, ["ferrite", "martensite"])
    assert px.length_unit == "px" and px.mean_island_area["martensite"] == 100.0
    assert px.mean_diameter["martensite"] == pytest.approx(math.sqrt(400 / math.pi))


def test_islands_are_8_connected():
    mask = np.zeros((10, 10), dtype=np.uint8)
    mask[2, 2] = mask[3, 3] = 1  # diagonal neighbours: one island
    mask[7, 7] = 1
    r = quantify_mask(mask, ["ferrite", "martensite"])
    assert r.islands["martensite"] == 2
    assert r.mean_island_area["martensite"] == 1.5 and r.median_island_area["martensite"] == 1.5


def test_value_outside_phase_set_names_the_field():
    mask = _stripes()
    mask[20, 20] = 3
    with pytest.raises(MetalsegError, match=r"field_7.*label values 3"):
        quantify_mask(mask, PHASES, name="field_7")


def test_empty_mask_is_an_error_for_a_single_field():
    with pytest.raises(MetalsegError, match="empty_one: no labelled pixels"):
        quantify_mask(np.full((8, 8), 255, np.uint8), PHASES, name="empty_one")


# ---------------------------------------------------------------------------------------------------- statistics


def test_e562_statistics_against_hand_calculation():
    # Hand calculation for martensite fractions 0.30, 0.34, 0.32, 0.28 (n = 4):
    # mean 0.31; deviations -.01 .03 .01 -.03 -> sum of squares 0.002; s = sqrt(0.002 / 3) = 0.025819889
    # t(0.975, 3) = 3.182446; 95 % CI = 3.182446 * 0.025819889 / 2 = 0.0410852; %RA = 0.0410852 / 0.31 * 100 = 13.253
    # fields for 10 % RA: n = 5: 2.776445 * 0.025819889 / sqrt(5) / 0.31 = 0.1034 > 0.1;
    #                     n = 6: 2.570582 * 0.025819889 / sqrt(6) / 0.31 = 0.0874 <= 0.1  -> 6 fields
    s = summarize(_hand_fields())[0]
    assert s.n_fields == 4
    assert s.mean["martensite"] == pytest.approx(0.31, abs=1e-12)
    assert s.std["martensite"] == pytest.approx(0.025819889, abs=1e-9)
    assert s.t == pytest.approx(3.182446, abs=1e-6)
    assert s.ci95["martensite"] == pytest.approx(3.182446 * 0.025819889 / 2, abs=1e-7)
    assert s.ci95["martensite"] == pytest.approx(0.041085, abs=1e-6)
    assert s.relative_accuracy["martensite"] == pytest.approx(13.25, abs=0.01)
    assert s.fields_needed["martensite"] == 6
    # ferrite: 0.70, 0.66, 0.68, 0.72 -> same s and CI, %RA = 0.041085 / 0.69 * 100 = 5.95 -> no warning
    assert s.relative_accuracy["ferrite"] == pytest.approx(5.954, abs=0.01)
    assert len(s.warnings) == 1
    assert "martensite" in s.warnings[0] and "13.3 %" in s.warnings[0] and "about 6 fields are needed" in s.warnings[0]


def test_fraction_statistics_zero_mean_and_zero_spread():
    absent = fraction_statistics([0.0, 0.0, 0.0])
    assert absent["mean"] == 0.0 and absent["ci95"] == 0.0
    assert absent["relative_accuracy"] is None and absent["fields_needed"] is None
    constant = fraction_statistics([0.2, 0.2])
    assert constant["ci95"] == 0.0 and constant["relative_accuracy"] == 0.0 and constant["fields_needed"] == 2


def test_one_field_sample_says_ci_undefined_and_never_nan(tmp_path):
    fields = [*_hand_fields("A"), quantify_mask(_two_phase(40), ["ferrite", "martensite"], name="lonely", sample="B")]
    report = make_report(fields, ["ferrite", "martensite"])
    b = next(s for s in report.samples if s.sample == "B")
    assert b.n_fields == 1 and b.ci95 == {"ferrite": None, "martensite": None}
    assert b.relative_accuracy["martensite"] is None and b.std["martensite"] is None
    text = report.table()
    assert "40.00 (CI needs >= 2 fields)" in text
    assert "B: 1 field only, CI needs >= 2 fields" in text
    report.to_csv(tmp_path / "f.csv")
    report.summary_csv(tmp_path / "s.csv")
    report.to_json(tmp_path / "r.json")
    for name in ("f.csv", "s.csv", "r.json"):
        assert not NAN.search((tmp_path / name).read_text()), name
    assert not NAN.search(text)
    data = json.loads((tmp_path / "r.json").read_text())
    b_json = next(s for s in data["samples"] if s["sample"] == "B")
    assert b_json["area_fraction"]["ci95"] == {"ferrite": None, "martensite": None}
    rows = list(csv.DictReader(open(tmp_path / "s.csv")))
    b_row = next(r for r in rows if r["sample"] == "B")
    assert b_row["martensite_ci95"] == "" and float(b_row["martensite_mean"]) == pytest.approx(0.4)


def test_grouping_by_magnification_and_bad_grouping():
    fields = [
        quantify_mask(_two_phase(n), ["a", "b"], name=f"f{n}", magnification=m)
        for n, m in [(10, 5000), (20, 3000), (30, 5000)]
    ]
    report = make_report(fields, ["a", "b"], by="magnification")
    assert [s.sample for s in report.samples] == ["x3000", "x5000"]
    assert report.samples[1].mean["b"] == pytest.approx(0.2)
    with pytest.raises(MetalsegError, match="grouping 'specimen' is not one of sample, magnification, all"):
        make_report(fields, ["a", "b"], by="specimen")


# ---------------------------------------------------------------------------------------------------- folders


def _mask_folder(tmp_path, masks, phases=("ferrite", "martensite")):
    folder = tmp_path / "masks_in"
    folder.mkdir()
    PhaseSet.from_names(list(phases)).save(folder / "phases.json")
    for name, mask in masks.items():
        write_mask(folder / f"{name}.png", mask)
    return folder


def test_plain_folder_is_one_sample_named_after_it(tmp_path):
    folder = _mask_folder(tmp_path, {f"f{i}": _two_phase(n) for i, n in enumerate([30, 34, 32, 28])})
    report = quantify_masks(folder)
    assert [s.sample for s in report.samples] == ["masks_in"]
    assert report.samples[0].relative_accuracy["martensite"] == pytest.approx(13.25, abs=0.01)


def test_subfolders_are_samples_and_pixel_size_fallback(tmp_path):
    root = tmp_path / "specimens"
    PhaseSet.from_names(["ferrite", "martensite"]).save(root / "phases.json")
    for sample, counts in (("A", [30, 34, 32, 28]), ("B", [10, 12])):
        for i, n in enumerate(counts):
            write_mask(root / sample / f"x{i}.png", _two_phase(n))
    report = quantify_masks(root, pixel_size_um=0.5)
    assert [(s.sample, s.n_fields) for s in report.samples] == [("A", 4), ("B", 2)]
    assert report.samples[1].mean["martensite"] == pytest.approx(0.11)
    assert report.fields[0].image == "A/x0" and report.fields[0].length_unit == "um"


def test_loaded_dataset_object_uses_its_metadata(synth_dataset):
    from napari_metalseg.data.dataset import load_dataset

    report = quantify_masks(load_dataset(synth_dataset), by="all")
    assert report.samples[0].n_fields == 4 and report.has_truth
    assert all(f.pixel_size_um and f.magnification for f in report.fields)


def test_mask_of_another_phase_set_names_the_file(tmp_path):
    bad = _two_phase(30)
    bad[9, 9] = 2  # a third phase in a two-phase run
    folder = _mask_folder(tmp_path, {"good": _two_phase(20), "other_set": bad})
    with pytest.raises(MetalsegError, match=r"other_set\.png: label values 2 are not phases 0\.\.1"):
        quantify_masks(folder)


def test_empty_masks_are_skipped_and_all_empty_is_an_error(tmp_path):
    empty = np.full((10, 10), 255, np.uint8)
    folder = _mask_folder(tmp_path, {"blank": empty, "f1": _two_phase(30), "f2": _two_phase(40)})
    report = quantify_masks(folder)
    assert [f.image for f in report.fields] == ["f1", "f2"]
    assert any("blank: no labelled pixels" in w for w in report.warnings)
    assert "blank: no labelled pixels" in report.table()
    (folder / "f1.png").unlink()
    (folder / "f2.png").unlink()
    with pytest.raises(MetalsegError, match="every mask is empty"):
        quantify_masks(folder)


def test_quantify_masks_job_reports_every_field_and_returns_the_report(tmp_path):
    from napari_metalseg.progress import run_job

    folder = _mask_folder(tmp_path, {f"f{i}": _two_phase(n) for i, n in enumerate([30, 34, 32])})
    events = []
    report = run_job(quantify_masks_job(folder), events.append)
    assert [(e.kind, e.step, e.total, e.message) for e in events] == [("quantify", i + 1, 3, f"f{i}") for i in range(3)]
    assert report.table() == quantify_masks(folder).table()


def test_folder_problems_are_one_line_errors(tmp_path):
    (tmp_path / "nothing").mkdir()
    with pytest.raises(MetalsegError, match="no mask PNGs"):
        quantify_masks(tmp_path / "nothing")
    folder = _mask_folder(tmp_path, {"f1": _two_phase(30)})
    (folder / "phases.json").unlink()
    with pytest.raises(MetalsegError, match="phases.json is missing"):
        quantify_masks(folder)
    with pytest.raises(MetalsegError, match="no such mask file or folder"):
        quantify_masks(tmp_path / "missing")


# ---------------------------------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def synth_dataset(tmp_path_factory):
    from napari_metalseg.data.synth import write_synthetic_dataset

    return write_synthetic_dataset(tmp_path_factory.mktemp("q") / "ds", n=4, size=96, seed=3)


def test_cli_end_to_end_writes_documented_outputs(synth_dataset, tmp_path):
    out = tmp_path / "out"
    args = [
        "quantify",
        "--masks",
        str(synth_dataset),
        "--by",
        "magnification",
        "--grid",
        "8",
        "--csv",
        str(out / "fields.csv"),
        "--json",
        str(out / "report.json"),
        "--plot",
        str(out / "chart.png"),
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "area %" in result.output and "x2700" in result.output and "Predicted vs true" in result.output
    rows = list(csv.DictReader(open(out / "fields.csv")))
    assert len(rows) == 4
    columns = list(rows[0])
    assert columns[:4] == ["image", "magnification", "pixel_size_um", "sample"]
    for p in ("ferrite", "martensite", "bainite"):
        for suffix in (
            "fraction",
            "point_fraction",
            "islands",
            "mean_island_area",
            "mean_diameter",
            "true_fraction",
            "abs_error",
        ):
            assert f"{p}_{suffix}" in columns
    assert {r["length_unit"] for r in rows} == {"um"}
    for r in rows:
        total = sum(float(r[f"{p}_fraction"]) for p in ("ferrite", "martensite", "bainite"))
        assert total == pytest.approx(1.0)
        # the dataset's own masks as "prediction": metadata true fractions (rounded to 6 digits) match
        assert max(float(r[f"{p}_abs_error"]) for p in ("ferrite", "martensite", "bainite")) < 1e-6
        assert r["grid_spacing_px"] == "8" and int(r["points"]) == 144
    samples = list(csv.DictReader(open(out / "fields_samples.csv")))
    assert [s["sample"] for s in samples] == ["x2700", "x3000", "x5000"]
    data = json.loads((out / "report.json").read_text())
    assert data["grouped_by"] == "magnification" and len(data["fields"]) == 4
    assert {"area_fraction", "point_fraction", "morphology"} <= set(data["samples"][0])
    with Image.open(out / "chart.png") as im:
        assert im.format == "PNG" and im.size[0] > 400
    for name in ("fields.csv", "fields_samples.csv", "report.json"):
        assert not NAN.search((out / name).read_text())


def test_cli_truth_folder_of_identical_masks_gives_zero_error(synth_dataset, tmp_path):
    result = CliRunner().invoke(
        main,
        ["quantify", "--masks", str(synth_dataset), "--truth", str(synth_dataset), "--json", str(tmp_path / "r.json")],
    )
    assert result.exit_code == 0, result.output
    fields = json.loads((tmp_path / "r.json").read_text())["fields"]
    assert all(err == 0.0 for f in fields for err in f["abs_errors"].values())
    # every synthetic field is its own sample: one field each -> the CI is undefined, said in words
    assert "CI needs >= 2 fields" in result.output and not NAN.search(result.output)


def test_cli_bad_input_is_one_error_line(synth_dataset, tmp_path):
    runner = CliRunner()
    for args, expected in [
        (["--by", "colour"], "grouping 'colour'"),
        (["--grid", "0"], "--grid '0'"),
        (["--truth", str(tmp_path / "nope")], "truth folder does not exist"),
        (["--truth", str(tmp_path)], "--truth: "),
    ]:
        result = runner.invoke(main, ["quantify", "--masks", str(synth_dataset), *args])
        assert result.exit_code == 2, result.output
        lines = result.output.strip().splitlines()
        assert lines[-1].startswith("error: ") and expected in lines[-1], result.output
        assert "Traceback" not in result.output


def test_cli_names_the_option_for_a_missing_phase_set(tmp_path):
    folder = _mask_folder(tmp_path, {"f1": _two_phase(30)})
    (folder / "phases.json").unlink()
    result = CliRunner().invoke(main, ["quantify", "--masks", str(folder)])
    assert result.exit_code == 2, result.output
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("error: --phases: ") and "phases.json is missing" in last, result.output
    with pytest.raises(MetalsegError, match="phases.json is missing") as info:
        quantify_masks(folder)
    assert "--" not in str(info.value) and info.value.value == "phases"


def test_docstring_examples_of_every_quantify_module():
    import doctest
    import importlib

    attempted = 0
    for name in ("", ".fields", ".statistics", ".report", ".sources"):
        result = doctest.testmod(importlib.import_module("napari_metalseg.quantify" + name))
        assert result.failed == 0, name
        attempted += result.attempted
    assert attempted >= 20


class _CountingMeasure:
    """Counts the fields actually measured (not taken from the record)."""

    def __init__(self, monkeypatch) -> None:
        from napari_metalseg.quantify import sources

        self.calls = 0
        original = sources.quantify_mask

        def counting(*args, **kwargs):
            self.calls += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(sources, "quantify_mask", counting)


def test_a_rerun_takes_the_recorded_fields_and_measures_only_what_changed(tmp_path, monkeypatch):
    from napari_metalseg.progress import run_job

    folder = _mask_folder(tmp_path, {f"f{i}": _two_phase(n) for i, n in enumerate([30, 34, 32, 28, 26])})
    plain = quantify_masks(folder).table()  # no record kept
    assert not (folder / "quantify.jsonl").exists()
    measured = _CountingMeasure(monkeypatch)
    job = quantify_masks_job(folder, record=True)
    for _ in range(2):  # interrupted after two fields
        next(job)
    job.close()
    assert measured.calls == 2
    with open(folder / "quantify.jsonl", "a", encoding="utf-8") as fh:
        fh.write('{"name": "f2", "sha')  # a line cut by a kill
    first = run_job(quantify_masks_job(folder, record=True))
    assert measured.calls == 5 and first.reused == 2  # the two recorded ones are not measured again
    again = quantify_masks(folder, record=True)
    assert measured.calls == 5 and again.reused == 5
    assert again.table() == first.table() == plain
    write_mask(folder / "f3.png", _two_phase(10))  # a mask predicted again
    changed = quantify_masks(folder, record=True)
    assert measured.calls == 6 and changed.reused == 4
    assert changed.fields[3].fractions["martensite"] == pytest.approx(0.1)
    quantify_masks(folder, record=True, grid_spacing=3)  # other settings: every field measured again
    assert measured.calls == 11


def test_a_folder_goes_on_past_a_bad_mask_and_the_cli_lists_it(tmp_path):
    bad = _two_phase(30)
    bad[9, 9] = 7
    folder = _mask_folder(tmp_path, {"a": _two_phase(20), "bad": bad, "c": _two_phase(40)})
    report = quantify_masks(folder, keep_going=True)
    assert [f.image for f in report.fields] == ["a", "c"]
    assert list(report.failed) == ["bad"] and "label values 7" in report.failed["bad"]
    assert any(w.startswith("bad: ") for w in report.warnings) and report.to_dict()["failed"] == report.failed
    out = tmp_path / "fields.csv"
    result = CliRunner().invoke(main, ["quantify", "--masks", str(folder), "--csv", str(out)])
    assert result.exit_code == 1, result.output
    assert "failed: bad: " in result.output and "1 mask(s) failed" in result.output
    assert [row["image"] for row in csv.DictReader(out.open())] == ["a", "c"]  # the others are written
    rerun = CliRunner().invoke(main, ["quantify", "--masks", str(folder)])
    assert "2 field(s) taken from the record" in rerun.output
