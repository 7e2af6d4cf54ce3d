"""The `metalseg` command as a user runs it (subprocess for the real entry point, CliRunner for speed)."""

import json
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from napari_metalseg.cli import main

SEM = Path(__file__).parent / "data" / "sem" / "nanoporous_gold_zeiss.tif"


def test_info_on_real_zeiss_file_via_console_script():
    exe = Path(sys.executable).parent / "metalseg"
    result = subprocess.run([str(exe), "info", str(SEM)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["magnification"] == 500000
    assert abs(info["pixel_size_um"] - 0.000543) < 1e-9
    assert info["info_band_rows"] == 77
    assert info["shape"] == [691, 1024]
    assert info["detector"] == "InLens"
    assert info["dtype"] == "uint8"


def test_info_bad_file_is_one_error_line(tmp_path):
    bad = tmp_path / "broken.tif"
    bad.write_bytes(b"II*\x00garbage")
    result = CliRunner().invoke(main, ["info", str(bad)])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "broken.tif" in lines[0]
    assert "Traceback" not in result.output


def test_every_subcommand_has_help():
    runner = CliRunner()
    for name in main.commands:
        result = runner.invoke(main, [name, "--help"])
        assert result.exit_code == 0, name
        assert "Usage:" in result.output


def test_synth_writes_a_valid_dataset_and_is_deterministic(tmp_path):
    from napari_metalseg.data.dataset import load_dataset

    runner = CliRunner()
    args = ["synth", "--n", "3", "--size", "96", "--seed", "5", "--fractions", "0.6,0.3,0.1"]
    first = runner.invoke(main, [*args, "--out", str(tmp_path / "a")])
    assert first.exit_code == 0, first.output
    second = runner.invoke(main, [*args, "--out", str(tmp_path / "b")])
    assert second.exit_code == 0, second.output
    ds = load_dataset(tmp_path / "a", require_masks=True)
    assert len(ds) == 3 and ds.phases.names == ["ferrite", "martensite", "bainite"]
    for item in ds:
        assert (tmp_path / "a" / "masks" / f"{item.name}.png").read_bytes() == (
            tmp_path / "b" / "masks" / f"{item.name}.png"
        ).read_bytes()
        fractions = [float(item.extra[f"true_fraction_{p}"]) for p in ds.phases.names]
        assert abs(fractions[0] - 0.6) < 0.04 and abs(fractions[2] - 0.1) < 0.04
    refused = runner.invoke(main, [*args, "--out", str(tmp_path / "a")])
    assert refused.exit_code == 2 and "error:" in refused.output
    assert runner.invoke(main, [*args, "--out", str(tmp_path / "a"), "--overwrite"]).exit_code == 0


def test_synth_bad_fractions_is_one_error_line(tmp_path):
    result = CliRunner().invoke(main, ["synth", "--out", str(tmp_path / "x"), "--fractions", "0.5,abc"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "error: --fractions '0.5,abc': expected comma-separated numbers, e.g. 0.5,0.3,0.2"
    ]


def test_engine_errors_name_the_cli_option():
    import click

    from napari_metalseg.cli.errors import name_option, user_errors
    from napari_metalseg.errors import MetalsegError

    options = {"img_size": "--img-size", "phases": "--phases"}
    assert name_option(MetalsegError("img_size 100: must be a multiple of 16"), options) == (
        "--img-size 100: must be a multiple of 16"
    )
    missing = MetalsegError("scans/phases.json: phases.json is missing", value="phases")
    assert name_option(missing, options) == "--phases: scans/phases.json: phases.json is missing"
    assert name_option(MetalsegError("sizes differ"), {"size": "--size"}) == "sizes differ"

    @click.command()
    @click.option("--img-size", type=int)
    @click.option("--model", "kind", default="x")
    @user_errors(model="--model")
    def command(img_size, kind):
        raise MetalsegError(f"img_size {img_size}: must be a multiple of 16" if img_size else "model 'x': unknown")

    assert (
        CliRunner().invoke(command, ["--img-size", "100"]).output == "error: --img-size 100: must be a multiple of 16\n"
    )
    result = CliRunner().invoke(command, [])
    assert result.exit_code == 2 and result.output == "error: --model 'x': unknown\n"


def test_run_with_bar_drives_a_job_and_returns_its_result(capsys):
    from napari_metalseg.cli.progress import TerminalProgress, run_with_bar
    from napari_metalseg.progress import ProgressEvent

    def job():
        yield ProgressEvent("info", message="starting")
        for i in range(3):
            yield ProgressEvent("synth", i + 1, 3, message=f"image {i}")
        yield ProgressEvent("validate", 3, 3, message="dice 90")
        return "result"

    assert run_with_bar(job(), "working") == "result"
    err = capsys.readouterr().err
    assert "starting" in err and "working" in err and "step 3: dice 90" in err
    progress = TerminalProgress("quiet", echo=False)
    assert progress.run(job()) == "result" and progress.last.kind == "validate"
    assert "starting" not in capsys.readouterr().err


def test_module_entry_point_runs_the_cli():
    result = subprocess.run(
        [sys.executable, "-m", "napari_metalseg.cli", "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and "synth" in result.stdout and "quantify" in result.stdout


NO_QT = """
import sys


class NoQt:
    # a server without Qt: no binding, nor anything of napari's GUI stack
    BLOCKED = ("qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "napari", "superqt", "magicgui", "vispy", "pytestqt")

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.BLOCKED:
            raise ImportError(f"No module named {name!r} (no Qt on this server)")
        return None


sys.meta_path.insert(0, NoQt())
from napari_metalseg.cli import main

main(prog_name="metalseg")
"""


def test_the_cli_works_on_a_server_without_qt(tmp_path, trained_run):
    """The package forces no Qt binding: every command but `gui` runs where neither Qt nor napari can be imported."""

    def metalseg(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-c", NO_QT, *args], capture_output=True, text=True, timeout=240, cwd=Path.cwd()
        )

    assert metalseg("--help").returncode == 0
    data, out = tmp_path / "ds", tmp_path / "predicted"
    synth = metalseg("synth", "--out", str(data), "--n", "2", "--size", "64")
    assert synth.returncode == 0, synth.stderr
    image = sorted((data / "images").iterdir())[0]
    info = metalseg("info", str(image))
    assert info.returncode == 0 and json.loads(info.stdout)["shape"] == [64, 64], info.stderr
    predicted = metalseg("predict", "--model", str(trained_run[0]), "--input", str(image), "--out", str(out))
    assert predicted.returncode == 0, predicted.stderr
    assert (out / "masks" / f"{image.stem}.png").is_file()
    quantified = metalseg("quantify", "--masks", str(out), "--plot", str(tmp_path / "fractions.png"))
    assert quantified.returncode == 0, quantified.stderr
    assert (tmp_path / "fractions.png").stat().st_size > 1000
    gui = metalseg("gui")
    assert gui.returncode == 2 and "Traceback" not in gui.stderr, gui.stderr
    (line,) = gui.stderr.strip().splitlines()
    assert line.startswith("error: no Qt binding for napari") and "napari-metalseg[gui]" in line


def test_gui_refuses_a_file_the_reader_does_not_take_in_one_line(tmp_path):
    scan = tmp_path / "scan.czi"
    scan.write_bytes(b"x")
    for path, reason in ((scan, "unsupported file type '.czi'"), (tmp_path / "gone.tif", "no such file or folder")):
        result = CliRunner().invoke(main, ["gui", "--image", str(path)])
        assert result.exit_code == 2
        (line,) = result.output.strip().splitlines()
        assert line.startswith(f"error: {path}: {reason}"), line
