"""The rows of a study: :class:`StudyRow`, the seed's table (:data:`SEED_GRID`), grid files and :class:`RowResult`."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from napari_metalseg.errors import MetalsegError

STATUSES = ("measured", "skipped", "failed")


@dataclass
class StudyRow:
    """One row of the study table.

    Parameters
    ----------
    name : str
        As shown in the table.
    model : str
        A model name (``unet3plus``, ``elunet``, ``classical``, ``tiny``) or ``sam`` for "the kind of the SAM
        checkpoint" (``vit_b`` for ``sam_vit_b_01ec64.pth``).
    img_size : int, optional
        Model input size (default: the model's).
    guidance : str
        Training guidance (``none``, ``ratio``, ``spatial``, ``box``, ``ratio+box``, ``spatial+box``). Guided rows
        are scored with each test image's true phase fractions, as in the seed.
    zero_shot : bool
        No training at all: the pretrained model as loaded (SAM (0 shot)).
    baseline : str, optional
        Name of the unguided row this row's gain is reported against (``↑ 2.18%``).
    group : str
        Section of the table (``Task-Specific``, ``VFM (0 Shot)``, ``Adapted VFM``, ``This product``).
    steps, budget_s, width, depth, batch_size, lr, finetune :
        Training settings (``None``: the trainer's / study's defaults).
    """

    name: str
    model: str
    img_size: int | None = None
    guidance: str = "none"
    zero_shot: bool = False
    baseline: str | None = None
    group: str = ""
    steps: int | None = None
    budget_s: float | None = None
    width: int | None = None
    depth: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    finetune: str | None = None

    @property
    def needs_checkpoint(self) -> bool:
        return self.model in ("sam", "vit_b", "vit_l", "vit_h")

    @property
    def slug(self) -> str:
        return re.sub(r"[^a-z0-9]+", "-", self.name.lower()).strip("-")


SEED_GRID: tuple[StudyRow, ...] = (
    StudyRow("Enhanced U-Net3+", "unet3plus", group="Task-Specific"),
    StudyRow("Enhanced ELU-Net", "elunet", group="Task-Specific"),
    StudyRow("SAM (0 shot)", "sam", img_size=1024, zero_shot=True, group="VFM (0 Shot)"),
    StudyRow("LoRA-SAM (256)", "sam", img_size=256, group="Adapted VFM"),
    StudyRow("LoRA-SAM (512)", "sam", img_size=512, group="Adapted VFM"),
    StudyRow("LoRA-SAM (1024)", "sam", img_size=1024, group="Adapted VFM"),
    StudyRow("LoRA-SAM (2048)", "sam", img_size=2048, group="Adapted VFM"),
    StudyRow(
        "LoRA-SAM + Ratio + BB (512)",
        "sam",
        img_size=512,
        guidance="ratio+box",
        baseline="LoRA-SAM (512)",
        group="Adapted VFM",
    ),
    StudyRow(
        "LoRA-SAM + Ratio (512)", "sam", img_size=512, guidance="ratio", baseline="LoRA-SAM (512)", group="Adapted VFM"
    ),
    StudyRow(
        "LoRA-SAM + Ratio (Spatial-v1) (512)",
        "sam",
        img_size=512,
        guidance="spatial",
        baseline="LoRA-SAM (512)",
        group="Adapted VFM",
    ),
    StudyRow("Classical pixel classifier", "classical", group="This product"),
    StudyRow("Compact SAM (tiny)", "tiny", img_size=128, group="This product"),
    StudyRow(
        "Compact SAM (tiny) + Ratio",
        "tiny",
        img_size=128,
        guidance="ratio",
        baseline="Compact SAM (tiny)",
        group="This product",
    ),
)
"""The seed's table in its order, then the rows this product adds."""


@dataclass
class RowResult:
    """What a row produced (the entries of ``study.json``'s ``rows``)."""

    name: str
    status: str
    reason: str | None = None
    dice: dict | None = None
    train_s: float = 0.0
    infer_ms_per_image: float = 0.0
    trainable_params: int = 0
    model: str = ""
    img_size: int | None = None
    guidance: str = "none"
    group: str = ""
    baseline: str | None = None
    gain: float | None = None
    run: str | None = None


def load_grid(path: str | Path) -> list[StudyRow]:
    """Read a grid YAML: a list of rows (or ``{"rows": [...]}``), each with the fields of :class:`StudyRow`.

    Example::

        - name: U-Net3+ wide
          model: unet3plus
          width: 32
          budget_s: 300
        - {name: ELU-Net + ratio, model: elunet, guidance: ratio, baseline: ELU-Net}
    """
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise MetalsegError(f"{path}: unreadable grid file ({exc})") from None
    if isinstance(data, dict):
        data = data.get("rows")
    if not isinstance(data, list) or not data:
        raise MetalsegError(f"{path}: expected a list of rows (each with at least name and model)")
    allowed = {f for f in StudyRow.__dataclass_fields__}
    rows = []
    for i, entry in enumerate(data, 1):
        if not isinstance(entry, dict) or "name" not in entry or "model" not in entry:
            raise MetalsegError(f"{path}: row {i} needs at least 'name' and 'model'")
        unknown = sorted(set(entry) - allowed)
        if unknown:
            raise MetalsegError(
                f"{path}: row {i} ({entry['name']}): unknown field(s) {', '.join(unknown)}; "
                f"allowed: {', '.join(sorted(allowed))}"
            )
        rows.append(StudyRow(**entry))
    names = [r.name for r in rows]
    if len(set(names)) != len(names):
        raise MetalsegError(f"{path}: row names must be unique")
    return rows
