"""Batch prediction of a folder that survives interruption: manifest, skips, per-micrograph failures, kill -9."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from napari_metalseg.batch import Manifest, file_digest, predict_folder_job
from napari_metalseg.cli import main
from napari_metalseg.data.dataset import write_image
from napari_metalseg.predict import Predictor
from napari_metalseg.progress import run_job


def _folder(root: Path, count: int, size: int = 48) -> list[Path]:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        path = root / f"field_{i:03d}.png"
        write_image(path, rng.random((size, size + 8)).astype(np.float32))
        paths.append(path)
    return paths


def _predict_args(run: Path, folder: Path, out: Path) -> list[str]:
    """``-m napari_metalseg.cli predict ...`` of a folder, for a Python or torchrun command line."""
    return [
        "-m",
        "napari_metalseg.cli",
        "predict",
        "--model",
        str(run),
        "--input",
        str(folder),
        "--out",
        str(out),
        "--fp32",
    ]


@pytest.fixture(scope="module")
def predictor(trained_run):
    return Predictor.from_run(trained_run[0], device="cpu", bf16=False)


class Counting:
    def __init__(self, predictor) -> None:
        self.calls = 0
        self.original = predictor.predict
        predictor.predict = self

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.original(*args, **kwargs)


def test_a_rerun_skips_what_is_done_and_redoes_what_changed(predictor, tmp_path):
    files = _folder(tmp_path / "in", 6)
    out = tmp_path / "out"
    first = run_job(predict_folder_job(predictor, files, out))
    assert sorted(first.written) == sorted(f.stem for f in files) and not first.skipped and not first.failed
    masks = {p.name: p.read_bytes() for p in (out / "masks").iterdir()}
    counter = Counting(predictor)
    try:
        again = run_job(predict_folder_job(predictor, files, out))
        assert counter.calls == 0 and sorted(again.skipped) == sorted(first.written)
        assert again.fractions == first.fractions
        write_image(files[2], np.zeros((48, 56), np.float32) + 0.5)  # a changed input file is predicted again
        (out / "masks" / f"{files[4].stem}.png").unlink()  # so is a lost output
        third = run_job(predict_folder_job(predictor, files, out))
        assert sorted(third.written) == sorted([files[2].stem, files[4].stem]) and counter.calls == 2
        guided = run_job(predict_folder_job(predictor, files, out, ratios=[0.2, 0.3, 0.5]))  # other settings
        assert len(guided.written) == 6 and counter.calls == 8
    finally:
        predictor.predict = counter.original
    assert {p.name: p.read_bytes() for p in (out / "masks").iterdir()}.keys() == masks.keys()
    entries = Manifest(out).entries()
    assert set(entries) == {f.stem for f in files}
    assert entries[files[0].stem]["input_sha256"] == file_digest(files[0])


def test_a_broken_micrograph_is_reported_and_the_batch_goes_on(trained_run, tmp_path):
    files = _folder(tmp_path / "in", 4)
    files[1].write_bytes(b"not an image at all")
    out = tmp_path / "out"
    result = CliRunner().invoke(
        main, ["predict", "--model", str(trained_run[0]), "--input", str(tmp_path / "in"), "--out", str(out), "--fp32"]
    )
    assert result.exit_code == 1
    assert f"failed: {files[1].name}" in result.output and "1 of 4 micrographs failed" in result.output
    summary = json.loads(result.output[result.output.index("{") : result.output.rindex("}") + 1])
    assert summary["written"] == 3 and list(summary["failed"]) == [files[1].name]
    assert sorted(p.stem for p in (out / "masks").iterdir()) == sorted(f.stem for f in files if f != files[1])


def test_a_cut_manifest_line_is_ignored_and_does_not_spoil_the_next(tmp_path):
    manifest = Manifest(tmp_path)
    manifest.record({"name": "a", "input_sha256": "1"})
    with open(manifest.path, "a") as fh:
        fh.write('{"name": "b", "inpu')  # killed while appending
    manifest.record({"name": "c", "input_sha256": "3"})
    assert sorted(manifest.entries()) == ["a", "c"]


def test_shards_split_the_folder_and_each_writes_its_own_manifest(predictor, tmp_path):
    files = _folder(tmp_path / "in", 5)
    out = tmp_path / "out"
    parts = [run_job(predict_folder_job(predictor, files, out, shard=(r, 2))) for r in range(2)]
    assert sorted(parts[0].written + parts[1].written) == sorted(f.stem for f in files)
    assert not set(parts[0].written) & set(parts[1].written)
    assert sorted(p.name for p in out.glob("manifest*.jsonl")) == ["manifest-0-of-2.jsonl", "manifest-1-of-2.jsonl"]
    assert len(Manifest(out).entries()) == 5


def test_killed_three_times_the_rerun_completes_with_every_output_once(trained_run, tmp_path):
    files = _folder(tmp_path / "in", 60, size=32)
    out = tmp_path / "out"
    command = [sys.executable, *_predict_args(trained_run[0], tmp_path / "in", out)]
    rng = np.random.default_rng(7)

    def recorded() -> int:
        return sum(p.read_text().count("\n") for p in out.glob("manifest*.jsonl")) if out.exists() else 0

    for _ in range(3):
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        target = recorded() + int(rng.integers(2, 12))
        deadline = time.monotonic() + 120
        while recorded() < target and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(float(rng.uniform(0, 0.05)))  # anywhere in the next micrograph
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    assert recorded() < len(files)  # the kills landed before the end
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert sorted(p.stem for p in (out / "masks").iterdir()) == sorted(f.stem for f in files)
    assert not [p for p in out.rglob("*") if p.name.startswith(".")]  # no partial file left
    names = []
    for line in (out / "manifest.jsonl").read_text().splitlines():
        try:
            names.append(json.loads(line)["name"])
        except json.JSONDecodeError:  # a line cut by a kill
            pass
    assert sorted(names) == sorted(f.stem for f in files)  # every micrograph recorded exactly once


def test_torchrun_ranks_share_a_folder(trained_run, tmp_path):
    import shutil

    files = _folder(tmp_path / "in", 7, size=32)
    out = tmp_path / "out"
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    assert torchrun, "torchrun comes with torch"
    command = [torchrun, "--standalone", "--nproc_per_node=2", *_predict_args(trained_run[0], tmp_path / "in", out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.glob("manifest*.jsonl")) == ["manifest-0-of-2.jsonl", "manifest-1-of-2.jsonl"]
    assert sorted(p.stem for p in (out / "masks").iterdir()) == sorted(f.stem for f in files)


def test_workers_share_a_folder_with_one_merged_summary(trained_run, tmp_path):
    files = _folder(tmp_path / "in", 6, size=32)
    files[3].write_bytes(b"not an image")  # fails in whichever worker takes it; the others go on
    out = tmp_path / "out"
    command = [sys.executable, *_predict_args(trained_run[0], tmp_path / "in", out), "--workers", "2"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr
    summary = json.loads(done.stdout)
    assert summary["workers"] == 2 and summary["written"] == 5 and list(summary["failed"]) == [files[3].name]
    assert f"failed: {files[3].name}" in done.stderr and "1 of 6 micrographs failed" in done.stderr
    assert sorted(p.name for p in out.glob("manifest*.jsonl")) == ["manifest-0-of-2.jsonl", "manifest-1-of-2.jsonl"]
    assert sorted(p.stem for p in (out / "masks").iterdir()) == sorted(f.stem for f in files if f != files[3])
