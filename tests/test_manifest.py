"""The npe2 manifest: valid, registered through the entry point, every command importable without torch."""

import importlib
import subprocess
import sys
from pathlib import Path


def test_manifest_is_valid_and_registered():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_distribution("napari-metalseg")
    assert manifest.name == "napari-metalseg"
    contributions = manifest.contributions
    assert contributions.readers and contributions.writers and len(contributions.sample_data) == 2
    assert {w.display_name for w in contributions.widgets} == {
        "MetalSeg",
        "Model",
        "Predict",
        "Box prompts",
        "Phase ratios",
        "Encoder features",
        "Training",
        "Quantify",
    }
    for command in contributions.commands:
        module, name = command.python_name.split(":")
        assert hasattr(importlib.import_module(module), name), command.python_name


def test_npe2_validate_command():
    exe = Path(sys.executable).parent / "npe2"
    result = subprocess.run([str(exe), "validate", "napari-metalseg"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "valid" in result.stdout


def test_widget_modules_import_without_torch():
    code = (
        "import sys, importlib; [importlib.import_module('napari_metalseg._widgets.' + m) for m in "
        "('main', 'model', 'predict', 'boxes', 'ratios', 'features', 'training', 'quantify', 'reader', 'writer')]; "
        "heavy = [m for m in ('torch', 'segment_anything', 'peft') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
