"""The one triton guard and its one switch, without a GUI: each case runs in a fresh interpreter (the guard acts on
``sys.modules`` for the whole process). The guard's effect with a napari viewer is tested in test_models.py and
test_gui_core.py."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import napari_metalseg

REPO = Path(__file__).resolve().parents[1]
PACKAGE = Path(napari_metalseg.__file__).resolve().parent
ENV = "METALSEG_ALLOW_TRITON"


def _run(code: str, switch: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != ENV}
    if switch is not None:
        env[ENV] = switch
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize("switch", [None, "", "0"])
def test_switch_off_blocks_triton_without_importing_torch(switch):
    proc = _run(
        """
        import importlib.util, sys
        from napari_metalseg.models.triton_guard import guard_triton, triton_allowed
        assert "triton" not in sys.modules  # importing the guard (and the models package) changes nothing
        assert triton_allowed() is False
        assert guard_triton() is True and sys.modules["triton"] is None
        assert guard_triton() is True  # idempotent
        assert importlib.util.find_spec("triton") is None
        try:
            import triton  # noqa: F401
        except ImportError:
            pass
        else:
            raise AssertionError("import triton did not fail")
        assert "torch" not in sys.modules, "the guard imported torch"
        print("blocked")
        """,
        switch,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "blocked" in proc.stdout


@pytest.mark.parametrize("switch", ["1", "yes"])
def test_switch_on_leaves_triton_alone(switch):
    proc = _run(
        """
        import sys
        from napari_metalseg.models.triton_guard import guard_triton, triton_allowed
        assert triton_allowed() is True
        assert guard_triton() is False
        assert "triton" not in sys.modules
        import napari_metalseg._widgets  # the GUI entry point obeys the same switch
        assert "triton" not in sys.modules
        print("allowed")
        """,
        switch,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "allowed" in proc.stdout


def test_guard_reports_triton_imported_before_it():
    proc = _run(
        """
        import sys, types
        sys.modules["triton"] = types.ModuleType("triton")  # as if triton was imported before the guard
        from napari_metalseg.models.triton_guard import guard_triton
        assert guard_triton() is False and sys.modules["triton"] is not None
        print("ok")
        """,
        None,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_widgets_entry_point_blocks_triton_without_torch():
    proc = _run(
        """
        import sys
        import napari_metalseg._widgets
        assert sys.modules["triton"] is None
        assert "torch" not in sys.modules
        print("ok")
        """,
        None,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_models_entry_point_blocks_triton_before_its_torch_modules():
    proc = _run(
        """
        import sys
        import napari_metalseg.models as models
        assert "triton" not in sys.modules and "torch" not in sys.modules  # the package import is cheap
        models.build_phase_sam  # the lazy loader guards, then imports the torch module
        assert sys.modules["triton"] is None
        print("ok")
        """,
        None,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_guard_is_called_from_the_two_entry_points_only():
    callers = sorted(
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if path.name != "triton_guard.py" and "guard_triton()" in path.read_text(encoding="utf-8")
    )
    assert callers == ["_widgets/__init__.py", "models/__init__.py"]
