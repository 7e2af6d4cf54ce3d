"""The text format of a classical pixel classifier: header line, checksum and structural checks of the trees.

One header line ``# napari-metalseg classical v1 {json}`` followed by LightGBM's own text model. Nothing here
unpickles: anything but that text (binary bytes, a pickle payload, another header or version, truncated or modified
text, trees LightGBM's parser would follow out of bounds) is refused with one
:class:`~napari_metalseg.errors.MetalsegError` naming the source.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from typing import Any

from napari_metalseg.errors import MetalsegError
from napari_metalseg.models.classical.features import FEATURE_SET, MAX_TILE, check_sigmas, feature_names, n_features
from napari_metalseg.phases import MAX_PHASES

HEADER_PREFIX = "# napari-metalseg classical "
FORMAT_VERSION = "v1"

_HEADER_KEYS = {
    "num_phases",
    "feature_set",
    "sigmas",
    "tile_size",
    "labeled_phases",
    "unlabeled_phases",
    "objective",
    "n_features",
    "lightgbm",
    "model_sha256",
}


def compose_text(header: dict[str, Any], body: str) -> str:
    """The stored text of a classifier: our header line (``header`` plus the body's SHA-256), then ``body``."""
    header = {**header, "model_sha256": hashlib.sha256(body.encode("utf-8")).hexdigest()}
    return f"{HEADER_PREFIX}{FORMAT_VERSION} {json.dumps(header, sort_keys=True, separators=(',', ':'))}\n{body}"


def parse_classifier_text(text: str, source: str) -> tuple[dict[str, Any], Any, str]:
    """Check and parse the stored form of a classifier (see :meth:`~.classifier.PixelClassifier.to_text`).

    Parameters
    ----------
    text
        Our header line followed by LightGBM's text model.
    source
        A file name (or a description) named in every error.

    Returns
    -------
    header : dict
        The validated JSON header.
    booster : lightgbm.Booster
        The parsed model.
    body : str
        LightGBM's text model, exactly as stored.

    Raises
    ------
    MetalsegError
        When ``text`` is not our header followed by the matching LightGBM text model.
    """
    if not isinstance(text, str):
        raise MetalsegError(f"{source}: expected text, got {type(text).__name__}")
    if not text:
        raise MetalsegError(f"{source}: the file is empty, not a classical pixel classifier")
    if "\x00" in text:
        raise MetalsegError(f"{source}: contains NUL characters; not a classical pixel classifier text file")
    first, _, body = text.partition("\n")
    if not first.startswith(HEADER_PREFIX):
        raise MetalsegError(
            f"{source}: not a napari-metalseg classical pixel classifier (the first line must "
            f"start with {HEADER_PREFIX.strip()!r})"
        )
    version, _, raw_header = first[len(HEADER_PREFIX) :].partition(" ")
    if version != FORMAT_VERSION:
        raise MetalsegError(
            f"{source}: classical model format {version[:20]!r} is not supported (this "
            f"napari-metalseg reads {FORMAT_VERSION})"
        )
    header = _parse_header(raw_header, source)
    if hashlib.sha256(body.encode("utf-8")).hexdigest() != header["model_sha256"]:
        raise MetalsegError(
            f"{source}: the LightGBM model text does not match its header checksum (truncated or modified file)"
        )
    booster = _parse_booster(body, header, source)
    expected_trees = 1 if header["objective"] == "binary" else len(header["labeled_phases"])
    if booster.num_feature() != header["n_features"] or booster.num_model_per_iteration() != expected_trees:
        raise MetalsegError(
            f"{source}: the LightGBM model has {booster.num_feature()} features and "
            f"{booster.num_model_per_iteration()} tree(s) per round; the header expects {header['n_features']} "
            f"and {expected_trees}"
        )
    return header, booster, body


def _parse_header(raw: str, source: str) -> dict[str, Any]:
    try:
        header = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise MetalsegError(f"{source}: the header line is not valid JSON ({exc.msg})") from None
    if not isinstance(header, dict):
        raise MetalsegError(f"{source}: the header must be a JSON object")
    missing = sorted(_HEADER_KEYS - set(header))
    if missing:
        raise MetalsegError(f"{source}: the header lacks {', '.join(missing)}")

    def bad(what: str) -> MetalsegError:
        return MetalsegError(f"{source}: header {what}")

    k = header["num_phases"]
    if isinstance(k, bool) or not isinstance(k, int) or not 2 <= k <= MAX_PHASES:
        raise bad(f"num_phases {k!r} is not an integer in 2..{MAX_PHASES}")
    if header["feature_set"] != FEATURE_SET:
        raise bad(
            f"feature_set {header['feature_set']!r} is not supported (this napari-metalseg computes {FEATURE_SET!r})"
        )
    sigmas = header["sigmas"]
    if not isinstance(sigmas, list) or not all(isinstance(s, int | float) and not isinstance(s, bool) for s in sigmas):
        raise bad(f"sigmas {sigmas!r} is not a list of numbers")
    try:
        header["sigmas"] = list(check_sigmas(sigmas))
    except MetalsegError as exc:
        raise bad(str(exc)) from None
    tile = header["tile_size"]
    if isinstance(tile, bool) or not isinstance(tile, int) or not 16 <= tile <= MAX_TILE:
        raise bad(f"tile_size {tile!r} is not an integer in 16..{MAX_TILE}")
    phases = []
    for key in ("labeled_phases", "unlabeled_phases"):
        value = header[key]
        if not isinstance(value, list) or not all(isinstance(p, int) and not isinstance(p, bool) for p in value):
            raise bad(f"{key} {value!r} is not a list of phase indices")
        phases.append(value)
    labeled, unlabeled = phases
    if sorted(labeled + unlabeled) != list(range(k)) or labeled != sorted(labeled) or len(labeled) < 2:
        raise bad(
            f"labeled_phases {labeled} and unlabeled_phases {unlabeled} do not split phases 0..{k - 1} "
            "(at least two labelled)"
        )
    objective = "binary" if len(labeled) == 2 else "multiclass"
    if header["objective"] != objective:
        raise bad(f"objective {header['objective']!r} does not fit {len(labeled)} labelled phases ({objective!r})")
    if header["n_features"] != n_features(header["sigmas"]):
        raise bad(
            f"n_features {header['n_features']!r} does not fit {len(sigmas)} sigmas ({n_features(header['sigmas'])})"
        )
    digest = header["model_sha256"]
    if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise bad("model_sha256 is not a SHA-256 hex digest")
    return header


def _parse_booster(body: str, header: dict[str, Any], source: str) -> Any:
    import lightgbm as lgb

    try:
        _check_model_text(body, header)
    except _Malformed as exc:
        raise MetalsegError(f"{source}: not a valid LightGBM text model of this classifier ({exc})") from None
    try:
        booster = lgb.Booster(model_str=body)
    except Exception as exc:  # LightGBMError, or a failure in lightgbm's Python part
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MetalsegError(f"{source}: the LightGBM model text cannot be read ({reason[:200]})") from None
    return booster


class _Malformed(Exception):
    """The LightGBM text breaks a rule of :func:`_check_model_text` (the message says which)."""


_MODEL_KEYS = (
    "version",
    "num_class",
    "num_tree_per_iteration",
    "label_index",
    "max_feature_idx",
    "objective",
    "feature_names",
    "feature_infos",
    "tree_sizes",
)
_TREE_KEYS = (
    "num_leaves",
    "num_cat",
    "split_feature",
    "split_gain",
    "threshold",
    "decision_type",
    "left_child",
    "right_child",
    "leaf_value",
    "leaf_weight",
    "leaf_count",
    "internal_value",
    "internal_weight",
    "internal_count",
    "is_linear",
    "shrinkage",
)
_INT = re.compile(r"-?[0-9]{1,10}")
_FLOAT = re.compile(r"-?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]{1,3})?")
_TAIL = re.compile(
    r"|end of trees|feature_importances:|[A-Za-z0-9_@.]+=[0-9]+|parameters:|\[[a-z0-9_]+: [^\n]*\]"
    r"|end of parameters|pandas_categorical:null"
)
_MAX_LEAVES = 1 << 17


def _check_model_text(body: str, header: dict[str, Any]) -> None:
    """Check that ``body`` is a complete LightGBM text model of the shape the header describes.

    LightGBM's own parser trusts its input (it reads trees at the offsets of ``tree_sizes`` and follows child
    indices unchecked, and some errors abort the process), so every tree is checked here first: the fields
    LightGBM writes, in its order, with the right number of finite values, split features below ``F``, no
    categorical or linear trees, and child links that form one tree from the root.
    """
    if not body.isascii() or "\r" in body:
        raise _Malformed("it must be plain ASCII with LF line ends")
    start = body.find("\nTree=")
    if not body.startswith("tree\n") or start < 0:
        raise _Malformed("it must start with 'tree' and hold trees")
    fields: dict[str, str] = {}
    for line in body[5:start].split("\n"):
        key, sep, value = line.partition("=")
        if not line:
            continue
        if not sep or key not in _MODEL_KEYS or key in fields:
            raise _Malformed(f"unexpected line {line[:60]!r}")
        fields[key] = value
    missing = [key for key in _MODEL_KEYS if key not in fields]
    if missing:
        raise _Malformed(f"{', '.join(missing)} missing")
    n_feat, n_labeled = header["n_features"], len(header["labeled_phases"])
    per_round = 1 if header["objective"] == "binary" else n_labeled
    expected = {
        "version": "v4",
        "num_class": str(per_round),
        "num_tree_per_iteration": str(per_round),
        "label_index": "0",
        "max_feature_idx": str(n_feat - 1),
        "objective": "binary sigmoid:1" if per_round == 1 else f"multiclass num_class:{n_labeled}",
        "feature_names": " ".join(feature_names(header["sigmas"])),
    }
    for key, value in expected.items():
        if fields[key] != value:
            raise _Malformed(f"{key}={fields[key][:60]!r}, expected {value[:60]!r}")
    if len(fields["feature_infos"].split(" ")) != n_feat:
        raise _Malformed(f"feature_infos must describe {n_feat} features")
    sizes = fields["tree_sizes"].split(" ")
    if not all(re.fullmatch(r"[1-9][0-9]{0,8}", size) for size in sizes) or len(sizes) % per_round:
        raise _Malformed(f"tree_sizes must be a multiple of {per_round} positive sizes")
    pos = start + 1
    for i, size in enumerate(sizes):
        segment = body[pos : pos + int(size)]
        if len(segment) != int(size):
            raise _Malformed(f"the text ends inside tree {i} (truncated)")
        _check_tree(segment, i, n_feat)
        pos += int(size)
    tail = body[pos:].split("\n")
    if tail[0] != "end of trees" or not all(_TAIL.fullmatch(line) for line in tail):
        raise _Malformed("the trees must be followed by 'end of trees', feature importances and parameters only")


def _check_tree(segment: str, index: int, n_feat: int) -> None:
    title = f"Tree={index}\n"
    lines = segment[len(title) :].rstrip("\n").split("\n")
    if (
        not segment.startswith(title)
        or not segment.endswith("\n\n")
        or len(lines) != len(_TREE_KEYS)
        or not all(line.startswith(f"{key}=") for line, key in zip(lines, _TREE_KEYS, strict=True))
    ):
        raise _Malformed(f"tree {index} does not hold the fields {', '.join(_TREE_KEYS)} in this order")
    values = {key: line[len(key) + 1 :] for line, key in zip(lines, _TREE_KEYS, strict=True)}

    def numbers(key: str, count: int | tuple[int, ...], kind: type) -> list:
        tokens = values[key].split(" ") if values[key] else []
        if len(tokens) not in (count if isinstance(count, tuple) else (count,)):
            raise _Malformed(f"tree {index}: {key} must have {count} values")
        pattern = _FLOAT if kind is float else _INT
        out = [kind(t) if pattern.fullmatch(t) else None for t in tokens]
        if any(v is None or (kind is float and not math.isfinite(v)) for v in out):
            raise _Malformed(f"tree {index}: {key} holds a value that is not a finite {kind.__name__}")
        return out

    leaves = numbers("num_leaves", 1, int)[0]
    if not 1 <= leaves <= _MAX_LEAVES:
        raise _Malformed(f"tree {index}: num_leaves {leaves} out of range")
    if values["num_cat"] != "0" or values["is_linear"] != "0":
        raise _Malformed(f"tree {index}: categorical and linear trees are not used by this classifier")
    numbers("leaf_value", leaves, float)
    numbers("shrinkage", 1, float)
    nodes = leaves - 1
    numbers("leaf_weight", (0, 1) if leaves == 1 else leaves, float)
    numbers("leaf_count", leaves, int)
    for key in ("split_gain", "threshold", "internal_value", "internal_weight"):
        numbers(key, nodes, float)
    numbers("internal_count", nodes, int)
    if any(not 0 <= f < n_feat for f in numbers("split_feature", nodes, int)):
        raise _Malformed(f"tree {index}: a split feature is not below {n_feat}")
    if any(d not in (0, 2, 4, 6, 8, 10) for d in numbers("decision_type", nodes, int)):
        raise _Malformed(f"tree {index}: unsupported decision_type")
    left, right = numbers("left_child", nodes, int), numbers("right_child", nodes, int)
    if nodes:  # every internal node and every leaf reached exactly once from the root
        seen_nodes, seen_leaves, stack = {0}, set(), [0]
        while stack:
            node = stack.pop()
            for child in (left[node], right[node]):
                if child >= 0:
                    if child >= nodes or child in seen_nodes:
                        raise _Malformed(f"tree {index}: child links do not form a tree")
                    seen_nodes.add(child)
                    stack.append(child)
                else:
                    if ~child >= leaves or ~child in seen_leaves:
                        raise _Malformed(f"tree {index}: child links do not form a tree")
                    seen_leaves.add(~child)
        if len(seen_nodes) != nodes or len(seen_leaves) != leaves:
            raise _Malformed(f"tree {index}: child links do not form a tree")
