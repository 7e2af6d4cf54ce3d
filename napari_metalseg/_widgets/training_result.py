"""What the Training dock shows when a run ends: the trained model's prediction, the message, and the comparison with
the live preview.

The trained model replaces the live preview of the image when it scores at least as well on the same held-out
strokes; else the preview stays in front. Without a like-for-like comparison (several micrographs, validation images,
strokes changed since the preview) nothing is compared or hidden.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from .roles import PREVIEW, find_layer

if TYPE_CHECKING:  # pragma: no cover
    from napari_metalseg.preview import Preview

    from .training_job import TrainingResult


def show_trained_prediction(viewer, result: TrainingResult, image: Any) -> None:
    """Show the trained model's prediction of ``image`` in its ``<image> phases`` layer (the user's corrections there
    are kept: :mod:`.edits`; the annotations are another layer and never written)."""
    from .predict import show_prediction

    if result.phase_map is None or image is None or image not in viewer.layers:
        return
    show_prediction(viewer, image, result.phase_map, result.phases)


def result_message(result: TrainingResult) -> str:
    """``training finished at step N, mean Dice D % (N optimizer steps in S s); model loaded from RUN`` (or
    ``stopped``): N is the optimizer steps the run did, as its configuration records them."""
    what = "stopped" if result.last.kind == "stopped" else "finished"
    dice = result.last.metrics.get("mean_dice") if result.last.metrics else None
    score = f", mean Dice {dice:.1f} %" if isinstance(dice, float) and math.isfinite(dice) else ""
    step = result.steps_done if result.steps_done is not None else result.last.step
    summary = f" ({result.summary})" if result.summary else ""
    return f"training {what} at step {step}{score}{summary}; model loaded from {result.run_dir}"


def compare_with_preview(
    viewer, result: TrainingResult, image: Any, preview: Preview | None, strokes: str | None
) -> str:
    """Compare the trained model with the live preview of ``image`` (see the module docstring); hide the preview when
    the model is at least as good. Returns the sentence to append to the result message (empty: nothing to compare).

    Parameters
    ----------
    viewer : napari.Viewer
    result : TrainingResult
    image : napari.layers.Image or None
        The image the preview belongs to.
    preview : Preview or None
        The last live preview.
    strokes : str or None
        Content key of the strokes the run was trained and validated on when the comparison is like for like (one
        micrograph, the trainer's default held-out split, no validation images), else None.
    """
    layer = None if image is None else find_layer(viewer, image, PREVIEW)
    if preview is None or layer is None:
        return ""
    from napari_metalseg.data.samples import HELD_OUT

    metrics = result.metrics or {}
    best = metrics.get("mean_dice")
    comparable = (
        strokes is not None
        and preview.strokes == strokes
        and metrics.get("source") == HELD_OUT
        and preview.score is not None
    )
    if not comparable or not isinstance(best, float) or not math.isfinite(best):
        return "; not compared with the live preview (other strokes or other validation data)"
    if best >= preview.score:
        layer.visible = False
        return f"; it replaces the live preview ({best:.1f} % vs {preview.score:.1f} % on held-out strokes)"
    return (
        f"; the live preview is still better on held-out strokes ({preview.score:.1f} % vs {best:.1f} %): "
        "paint more or train longer"
    )
