"""Statistics over the fields of a sample (ASTM E562 section 10): mean, s, 95 % CI, % relative accuracy."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from napari_metalseg.errors import MetalsegError
from napari_metalseg.quantify.fields import _MEASURES, _NO_CI, GROUPINGS, TARGET_RA, FieldResult


@dataclass
class SampleSummary:
    """Field statistics of one sample (group of fields) for one measure (``"area"`` or ``"points"``).

    ``std``, ``ci95``, ``relative_accuracy`` (percent) and ``fields_needed`` are None where they are undefined: with
    one field (the CI needs >= 2 fields) or, for ``relative_accuracy`` / ``fields_needed``, a phase whose mean is 0.
    Morphology (``islands_per_field``, ``mean_island_area``, ``mean_diameter``) pools the islands of all fields:
    mean area = total island area / number of islands, mean ECD = island-weighted mean of the field means.
    """

    sample: str
    n_fields: int
    fields: list[str]
    mean: dict[str, float]
    std: dict[str, float | None]
    ci95: dict[str, float | None]
    relative_accuracy: dict[str, float | None]
    fields_needed: dict[str, int | None]
    warnings: list[str]
    measure: str = "area"
    t: float | None = None
    true_mean: dict[str, float] | None = None
    islands_per_field: dict[str, float] = field(default_factory=dict)
    mean_island_area: dict[str, float | None] = field(default_factory=dict)
    mean_diameter: dict[str, float | None] = field(default_factory=dict)
    length_unit: str | None = None

    def stats_dict(self) -> dict[str, Any]:
        return {
            "n_fields": self.n_fields,
            "t": self.t,
            "mean": self.mean,
            "std": self.std,
            "ci95": self.ci95,
            "relative_accuracy_pct": self.relative_accuracy,
            "fields_needed_for_10pct_ra": self.fields_needed,
        }


# ----------------------------------------------------------------------------------------------------
# one field
# ----------------------------------------------------------------------------------------------------


def _t975(dof: int) -> float:
    from scipy import stats

    return float(stats.t.ppf(0.975, dof))


def fields_needed(mean: float, std: float, target_ra: float = TARGET_RA) -> int | None:
    """Fields needed for ``target_ra`` % relative accuracy, assuming the field-to-field ``std`` stays as measured.

    The smallest ``n >= 2`` with ``t(0.975, n - 1) * std / sqrt(n) <= target_ra / 100 * mean``: E562's
    ``n = (t * s / (%RA / 100 * mean))^2`` solved with ``t`` taken at that same ``n``. None when ``mean <= 0``.

    >>> fields_needed(0.31, 0.025819889)
    6
    """
    if mean <= 0 or not math.isfinite(mean) or not math.isfinite(std):
        return None
    limit = target_ra / 100.0 * mean
    estimate = math.ceil((1.959964 * std / limit) ** 2)  # normal approximation: a lower bound (t > z)
    if estimate > 100_000:  # t is z to 5 digits here; skip the search
        return estimate
    from scipy import stats

    ns = np.arange(2, max(64, 2 * estimate + 8))
    ok = stats.t.ppf(0.975, ns - 1) * std / np.sqrt(ns) <= limit
    return int(ns[np.argmax(ok)])


def fraction_statistics(values: Sequence[float], target_ra: float = TARGET_RA) -> dict[str, Any]:
    """E562 field statistics of one phase: mean, s, t, 95 % CI, % RA and fields needed for ``target_ra``.

    With one value only the mean is defined; the others are None (the CI needs >= 2 fields).

    >>> s = fraction_statistics([0.30, 0.34, 0.32, 0.28])
    >>> round(s["mean"], 4), round(s["std"], 6), round(s["ci95"], 5), round(s["relative_accuracy"], 2)
    (0.31, 0.02582, 0.04109, 13.25)
    """
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise MetalsegError("no field values to summarise")
    mean = float(x.mean())
    out: dict[str, Any] = {
        "mean": mean,
        "std": None,
        "t": None,
        "ci95": None,
        "relative_accuracy": None,
        "fields_needed": None,
    }
    if x.size < 2:
        return out
    std = float(x.std(ddof=1))
    t = _t975(x.size - 1)
    ci = t * std / math.sqrt(x.size)
    out.update(std=std, t=t, ci95=ci)
    if mean > 0:
        out.update(relative_accuracy=ci / mean * 100.0, fields_needed=fields_needed(mean, std, target_ra))
    return out


def _group_key(f: FieldResult, by: str) -> str:
    if by == "magnification":
        return f"x{f.magnification:g}" if f.magnification else "unknown magnification"
    if by == "all":
        return "all"
    return f.sample or "(no sample)"


def _check_by(by: object) -> str:
    if by not in GROUPINGS:
        raise MetalsegError(f"grouping {by!r} is not one of {', '.join(GROUPINGS)}")
    return str(by)


def group_fields(fields: Iterable[FieldResult], by: str = "sample") -> dict[str, list[FieldResult]]:
    """Fields per sample in order of first appearance (numeric order of magnification for ``by="magnification"``)."""
    by = _check_by(by)
    groups: dict[str, list[FieldResult]] = {}
    for f in fields:
        groups.setdefault(_group_key(f, by), []).append(f)
    if by == "magnification":
        return dict(sorted(groups.items(), key=lambda kv: (kv[1][0].magnification or math.inf, kv[0])))
    return groups


def summarize(
    fields: Sequence[FieldResult], by: str = "sample", measure: str = "area", target_ra: float = TARGET_RA
) -> list[SampleSummary]:
    """Per-sample statistics over fields (see the module docstring for the formulas).

    Parameters
    ----------
    fields : sequence of FieldResult
        Fields of one phase set.
    by : {"sample", "magnification", "all"}
        Grouping: the fields' ``sample``, their magnification (``x3000``), or one group of all fields.
    measure : {"area", "points"}
        Summarise area fractions or E562 point fractions (fields without counted points are left out).
    target_ra : float
        % RA above which a warning is added (default 10).

    Returns
    -------
    list of SampleSummary

    Examples
    --------
    >>> import numpy as np
    >>> from napari_metalseg.quantify import quantify_mask
    >>> fields = []
    >>> for i, k in enumerate([30, 34, 32, 28]):
    ...     m = np.zeros(100, dtype=np.uint8); m[:k] = 1
    ...     fields.append(quantify_mask(m.reshape(10, 10), ["ferrite", "martensite"], name=f"f{i}", sample="A"))
    >>> s = summarize(fields)[0]
    >>> round(s.mean["martensite"], 4), round(s.relative_accuracy["martensite"], 2), s.fields_needed["martensite"]
    (0.31, 13.25, 6)
    """
    if measure not in _MEASURES:
        raise MetalsegError(f"measure {measure!r} is not one of {', '.join(_MEASURES)}")
    if not fields:
        raise MetalsegError("no fields to summarise")
    names = fields[0].phase_names
    for f in fields:
        if f.phase_names != names:
            raise MetalsegError(f"{f.image}: phases {f.phase_names} differ from {names} of {fields[0].image}")
    out = []
    for key, members in group_fields(fields, by).items():
        if measure == "points":
            members = [f for f in members if f.points > 0]
            if not members:
                continue
        out.append(_summarize_group(key, members, names, measure, target_ra))
    return out


def _summarize_group(
    key: str, members: list[FieldResult], names: list[str], measure: str, target_ra: float
) -> SampleSummary:
    stats = {}
    for p in names:
        values = [(f.fractions[p] if measure == "area" else f.point_fractions[p]) for f in members]
        stats[p] = fraction_statistics(values, target_ra)  # type: ignore[arg-type]
    summary = SampleSummary(
        sample=key,
        n_fields=len(members),
        fields=[f.image for f in members],
        measure=measure,
        mean={p: s["mean"] for p, s in stats.items()},
        std={p: s["std"] for p, s in stats.items()},
        ci95={p: s["ci95"] for p, s in stats.items()},
        relative_accuracy={p: s["relative_accuracy"] for p, s in stats.items()},
        fields_needed={p: s["fields_needed"] for p, s in stats.items()},
        t=next(iter(stats.values()))["t"],
        warnings=[],
    )
    summary.warnings = _warnings(summary, names, target_ra)
    truths = [f.true_fractions for f in members if f.true_fractions is not None]
    if truths:
        summary.true_mean = {p: float(np.mean([t[p] for t in truths])) for p in names}
    _add_morphology(summary, members, names)
    return summary


def _warnings(s: SampleSummary, names: list[str], target_ra: float) -> list[str]:
    what = "area fraction" if s.measure == "area" else "point count"
    if s.n_fields < 2:
        return [f"{s.sample}: 1 field only, {_NO_CI} ({what})"]
    out = []
    for p in names:
        ra = s.relative_accuracy[p]
        if ra is not None and ra > target_ra:
            out.append(
                f"{s.sample}, {p} ({what}): %RA {ra:.1f} % > {target_ra:g} % with {s.n_fields} fields; "
                f"about {s.fields_needed[p]} fields are needed for {target_ra:g} % RA"
            )
    return out


def _add_morphology(s: SampleSummary, members: list[FieldResult], names: list[str]) -> None:
    units = {f.length_unit for f in members}
    s.length_unit = units.pop() if len(units) == 1 else None
    for p in names:
        n = sum(f.islands[p] for f in members)
        s.islands_per_field[p] = n / len(members)
        if n == 0 or s.length_unit is None:
            s.mean_island_area[p] = s.mean_diameter[p] = None
            continue
        s.mean_island_area[p] = sum(f.mean_island_area[p] * f.islands[p] for f in members if f.islands[p]) / n
        s.mean_diameter[p] = sum(f.mean_diameter[p] * f.islands[p] for f in members if f.islands[p]) / n


# ----------------------------------------------------------------------------------------------------
# report
# ----------------------------------------------------------------------------------------------------
