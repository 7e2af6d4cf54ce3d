"""The classical pixel classifier: features, learning from scribbles, the model contract, storage and refusals."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
from scipy import ndimage

from napari_metalseg.data.samples import Sample
from napari_metalseg.errors import MetalsegError
from napari_metalseg.models.classical import (
    DEFAULT_SIGMAS,
    FEATURE_SET,
    HEADER_PREFIX,
    LOG_ZERO,
    PixelClassifier,
    draw_pixels,
    feature_names,
    fit_classifier,
    load_classifier,
    n_features,
    pixel_features,
    save_classifier,
)
from napari_metalseg.phases import UNLABELED, PhaseSet

SIZE = 192


def micrograph(seed: int, rare: bool = False, size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic micrograph: textured matrix (0), bright smooth blobs (1) and, with ``rare``, a few small
    striped islands (2) as bright on average as the matrix (told apart by texture only); noise and blur."""
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.standard_normal((size, size)), 6)
    mask = np.where(field > np.quantile(field, 0.7), 1, 0).astype(np.uint8)
    grain = ndimage.gaussian_filter(rng.standard_normal((size, size)), 1.0)
    image = 0.35 + 0.6 * grain / grain.std() * 0.15
    image[mask == 1] = 0.72 + 0.02 * grain[mask == 1] / grain.std()
    if rare:
        yy, xx = np.mgrid[:size, :size]
        for _ in range(3):
            cy, cx = rng.integers(20, size - 20, 2)
            island = ((yy - cy) ** 2 + (xx - cx) ** 2 <= rng.integers(11, 15) ** 2) & (mask == 0)
            mask[island] = 2
        stripes = 0.35 + 0.2 * np.sin(2 * np.pi * (xx + yy) / 6.0)
        image[mask == 2] = stripes[mask == 2]
    image = ndimage.gaussian_filter(image, 0.7) + rng.normal(0, 0.03, image.shape)
    return np.clip(image, 0, 1).astype(np.float32), mask


def scribbles(
    mask: np.ndarray, seed: int, strokes: tuple[int, ...] = (10, 6, 3), length: int = 40, width: int = 2
) -> np.ndarray:
    """Partial labels as a user draws them: ``strokes[k]`` thick strokes inside phase ``k``, the rest unlabeled."""
    rng = np.random.default_rng(seed)
    labels = np.full(mask.shape, UNLABELED, np.uint8)
    for phase in np.unique(mask):
        inside = ndimage.binary_erosion(mask == phase, iterations=width + 1)
        ys, xs = np.nonzero(inside)
        stroke = np.zeros(mask.shape, bool)
        for i in rng.choice(ys.size, min(strokes[phase], ys.size), replace=False):
            angle = rng.uniform(0, np.pi)
            t = np.arange(-length // 2, length // 2)
            py = np.clip(np.round(ys[i] + t * np.sin(angle)).astype(int), 0, mask.shape[0] - 1)
            px = np.clip(np.round(xs[i] + t * np.cos(angle)).astype(int), 0, mask.shape[1] - 1)
            stroke[py, px] = True
        stroke = ndimage.binary_dilation(stroke, iterations=width) & inside
        labels[stroke] = phase
    return labels


@pytest.fixture(scope="module")
def two_phase():
    image, mask = micrograph(1)
    labels = scribbles(mask, 1)
    model = fit_classifier([Sample("train.tif", image, labels)], 2, tile_size=SIZE, seed=0)
    return model, image, mask, labels


@pytest.fixture(scope="module")
def three_phase():
    image, mask = micrograph(2, rare=True)
    labels = scribbles(mask, 2)
    model = fit_classifier([Sample("train.tif", image, labels)], 3, tile_size=SIZE, seed=0)
    return model, image, mask, labels


def test_the_module_imports_without_torch_or_lightgbm():
    code = (
        "import sys; import napari_metalseg.models.classical; "
        "print(sorted(m for m in ('torch', 'lightgbm') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


# -- features ----------------------------------------------------------------------------------------------------
def test_features_have_the_documented_shape_and_are_finite():
    image = np.random.default_rng(0).random((50, 70), dtype=np.float32)
    feats = pixel_features(image)
    assert feats.shape == (n_features(DEFAULT_SIGMAS), 50, 70) == (len(feature_names()), 50, 70)
    assert feats.dtype == np.float32 and np.isfinite(feats).all()
    assert np.array_equal(feats[0], image)  # channel 0 is the raw intensity, not normalised
    assert pixel_features(image, sigmas=(1.0, 2.0)).shape == (n_features((1.0, 2.0)), 50, 70) == (17, 50, 70)
    assert not np.array_equal(feats[1], feats[9])  # different scales differ
    with pytest.raises(MetalsegError, match="increasing"):
        pixel_features(image, sigmas=(2.0, 1.0))


def test_a_bright_disc_on_a_dark_background_is_separable():
    yy, xx = np.mgrid[:96, :96]
    disc = (yy - 48) ** 2 + (xx - 40) ** 2 <= 20**2
    image = np.where(disc, 0.8, 0.2).astype(np.float32) + np.random.default_rng(0).normal(0, 0.05, disc.shape)
    feats = pixel_features(image.astype(np.float32))
    smooth = feats[feature_names().index("gaussian@1.6")]
    inside, outside = ndimage.binary_erosion(disc, iterations=4), ~ndimage.binary_dilation(disc, iterations=4)
    assert smooth[inside].min() > smooth[outside].max()
    labels = np.full(disc.shape, UNLABELED, np.uint8)
    labels[44:52, 30:50] = 1
    labels[5:10, 5:90] = 0
    model = fit_classifier([Sample("disc", image.astype(np.float32), labels)], 2, tile_size=96)
    predicted = model.predict_proba_features(feats).argmax(0)
    assert (predicted == disc)[inside | outside].mean() > 0.99


def test_tiled_feature_extraction_equals_the_whole_image(two_phase):
    """Images larger than the tile are filtered in halo-padded tiles: the training features, hence the trees, are
    the same as when the image is filtered whole."""
    _, image, _, labels = two_phase
    whole = fit_classifier([Sample("a", image, labels)], 2, tile_size=SIZE)
    tiled = fit_classifier([Sample("a", image, labels)], 2, tile_size=96)
    cached = fit_classifier([Sample("a", image, labels)], 2, tile_size=SIZE, features=[pixel_features(image)])
    assert tiled.to_text().split("\n", 1)[1] == whole.to_text().split("\n", 1)[1]
    assert cached.to_text() == whole.to_text()
    assert tiled.img_size == tiled.predict_size == 96


# -- learning from partial labels --------------------------------------------------------------------------------
def test_learns_two_phases_from_scribbles_and_generalises(two_phase):
    model, _, _, labels = two_phase
    assert 0.02 < (labels != UNLABELED).mean() < 0.08
    image, mask = micrograph(11)  # another micrograph from the same distribution
    probs = model.predict_proba_features(pixel_features(image))
    assert probs.shape == (2, SIZE, SIZE) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(0), 1, atol=1e-5)
    assert (probs.argmax(0) == mask).mean() > 0.9
    assert model.unlabeled_phases == () and model.labeled_phases == (0, 1)


def test_a_rare_phase_is_still_predicted(three_phase):
    model, _, _, labels = three_phase
    counts = np.bincount(labels[labels != UNLABELED], minlength=3)
    assert counts[2] * 5 < counts[0]  # the rare phase has far fewer scribbled pixels
    image, mask = micrograph(12, rare=True)
    predicted = model.predict_proba_features(pixel_features(image)).argmax(0)
    assert (predicted == mask).mean() > 0.85
    interior = ndimage.binary_erosion(mask == 2, iterations=3)
    recall, precision = (predicted[mask == 2] == 2).mean(), (mask[predicted == 2] == 2).mean()
    assert (predicted[interior] == 2).mean() > 0.9 and recall > 0.6 and precision > 0.4, (recall, precision)


def test_training_pixels_are_drawn_balanced_per_phase():
    masks = [np.zeros((100, 100), np.uint8), np.full((50, 60), UNLABELED, np.uint8)]
    masks[0][:30] = 1
    masks[0][0, :40] = 2  # scarce: 40 pixels
    masks[1][:10] = 1
    masks[1][10:20] = UNLABELED
    masks[1][20:] = 0
    draws = draw_pixels(masks, 4, 3000, seed=3)
    phases = np.concatenate([phase for _, phase in draws])
    assert np.bincount(phases, minlength=4).tolist() == [1480, 1480, 40, 0]  # 40 + the rest shared evenly
    for mask, (flat, phase) in zip(masks, draws, strict=True):
        assert np.array_equal(mask.ravel()[flat], phase)  # only labelled pixels, with their own phase
        assert len(np.unique(flat)) == flat.size
    assert (draws[1][1] == 1).any() and (draws[1][1] == 0).any()  # drawn over all masks
    again = draw_pixels(masks, 4, 3000, seed=3)
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(draws, again, strict=True))
    everything = draw_pixels(masks, 4, 10**6)
    assert sum(flat.size for flat, _ in everything) == sum(int((m != UNLABELED).sum()) for m in masks)


def test_balanced_draw_lets_a_rare_phase_be_learnt_from_a_full_mask():
    """A fully labelled ground truth where the rare phase covers ~4 %: with a small budget the draw still gives it
    a third of the training pixels, so it is predicted."""
    image, mask = micrograph(4, rare=True)
    model = fit_classifier([Sample("full.tif", image, mask)], 3, tile_size=SIZE, max_pixels=1500)
    other, truth = micrograph(14, rare=True)
    predicted = model.predict_proba_features(pixel_features(other)).argmax(0)
    interior = ndimage.binary_erosion(truth == 2, iterations=3)
    assert (predicted[interior] == 2).mean() > 0.9 and (predicted == truth).mean() > 0.85


def test_fitting_is_deterministic_for_a_seed(two_phase):
    model, image, _, labels = two_phase
    again = fit_classifier([Sample("train.tif", image, labels)], 2, tile_size=SIZE, seed=0)
    other = fit_classifier([Sample("train.tif", image, labels)], 2, tile_size=SIZE, seed=1)
    assert again.to_text() == model.to_text() and again.signature() == model.signature()
    assert other.to_text() != model.to_text()


def test_a_phase_without_labels_gets_probability_zero(two_phase):
    _, image, _, labels = two_phase
    model = fit_classifier([Sample("a", image, labels)], 4, tile_size=SIZE, max_pixels=500, n_estimators=5)
    assert model.unlabeled_phases == (2, 3) and model.labeled_phases == (0, 1)
    probs = model.predict_proba_features(pixel_features(image))
    assert probs.shape == (4, SIZE, SIZE)
    assert (probs[2:] == 0).all() and (probs[:2] > 0).any()
    header = json.loads(model.to_text().split("\n", 1)[0][len(HEADER_PREFIX) + 3 :])
    assert header["unlabeled_phases"] == [2, 3] and header["num_phases"] == 4
    assert model.config["unlabeled_phases"] == [2, 3]


def test_training_pixels_are_balanced_and_capped(three_phase):
    _, image, mask, labels = three_phase
    small = fit_classifier([Sample("a", image, labels)], 3, tile_size=SIZE, max_pixels=300, n_estimators=3)
    assert small.n_trees == 3 * 3 and small.n_parameters > 0
    # a second image holding only matrix scribbles: the draw spans all images and still works
    extra = np.where(mask == 0, labels, UNLABELED).astype(np.uint8)
    both = fit_classifier([Sample("a", image, labels), Sample("b", image, extra)], 3, tile_size=SIZE, n_estimators=3)
    assert both.labeled_phases == (0, 1, 2)


# -- errors ------------------------------------------------------------------------------------------------------
def test_no_labelled_pixel_is_refused():
    image, mask = micrograph(3, size=64)
    with pytest.raises(MetalsegError, match="no labelled pixels.*at least two phases"):
        fit_classifier([Sample("a", image, np.full(mask.shape, UNLABELED, np.uint8))], 2)
    with pytest.raises(MetalsegError, match="no images"):
        fit_classifier([], 2)


def test_a_single_labelled_phase_is_refused():
    image, mask = micrograph(3, size=64)
    labels = np.full(mask.shape, UNLABELED, np.uint8)
    labels[10:20, 10:20] = 1
    with pytest.raises(MetalsegError, match="only phase 1 is labelled.*at least two phases must be scribbled"):
        fit_classifier([Sample("a", image, labels)], 3)


def test_mask_values_beyond_the_phases_are_refused():
    image, mask = micrograph(3, size=64)
    labels = mask.copy()
    labels[0, 0] = 7
    with pytest.raises(MetalsegError, match="bad.tif: the mask holds value.*7.*3 phases"):
        fit_classifier([Sample("bad.tif", image, labels)], 3)


# -- the model contract ------------------------------------------------------------------------------------------
def test_model_contract(two_phase):
    model, image, _, _ = two_phase
    assert (model.kind, model.img_size, model.predict_size, model.num_phases) == ("classical", SIZE, SIZE, 2)
    assert (model.guidance, model.supports_boxes, model.light_decoder, model.finetune_mode) == (
        "none",
        False,
        False,
        None,
    )
    assert model.eval() is model and model.train() is model and model.to("cpu") is model
    assert list(model.parameters()) == []
    assert isinstance(model.n_parameters, int) and model.n_parameters >= model.n_trees

    batch = torch.from_numpy(np.stack([image[:64, :80], image[100:164, 50:130]]))
    x = model.preprocess(batch)
    assert x.shape == (2, 1, 64, 80) and torch.equal(x[:, 0], batch)  # intensities unchanged
    emb = model.embed(x)
    assert emb.shape == (2, n_features(), 64, 80) and emb.dtype == torch.float32
    assert torch.equal(emb[1], torch.from_numpy(pixel_features(image[100:164, 50:130])))
    logp = model.decode(emb)
    assert logp.shape == (2, 2, 64, 80) and logp.dtype == torch.float32
    torch.testing.assert_close(logp.exp().sum(1), torch.ones(2, 64, 80))
    assert torch.equal(model(x), logp) and torch.equal(model.forward(x), logp)
    direct = model.predict_proba_features(emb[0].numpy())
    np.testing.assert_allclose(torch.softmax(logp, 1)[0].numpy(), direct, atol=1e-6)
    assert model.decode(emb, out_size=(32, 40)).shape == (2, 2, 32, 40)

    with pytest.raises(ValueError, match=r"without phase-fraction guidance \(guidance='none'\)"):
        model.decode(emb, ratios=torch.tensor([[0.5, 0.5], [0.5, 0.5]]))
    with pytest.raises(MetalsegError, match="box prompts need a SAM model"):
        model.decode(emb, boxes=torch.tensor([[0.0, 0.0, 10.0, 10.0]] * 2))
    with pytest.raises(MetalsegError, match="box prompts need a SAM model"):
        model(x, boxes=torch.tensor([[0.0, 0.0, 10.0, 10.0]] * 2))
    with pytest.raises(ValueError, match="features"):
        model.decode(emb[:, :5])


def test_unlabelled_phase_decodes_to_a_finite_log_zero(two_phase):
    _, image, _, labels = two_phase
    model = fit_classifier([Sample("a", image, labels)], 3, tile_size=SIZE, max_pixels=500, n_estimators=5)
    logp = model.decode(model.embed(torch.from_numpy(image[None, :32, :32])), out_size=(48, 48))
    assert torch.isfinite(logp).all()
    torch.testing.assert_close(logp[:, 2], torch.full_like(logp[:, 2], LOG_ZERO))
    assert (torch.softmax(logp, 1)[:, 2] == 0).all()


def test_signatures(two_phase, three_phase):
    model, other = two_phase[0], three_phase[0]
    assert model.signature("encoder") == other.signature("encoder")  # features do not depend on the trees
    assert model.signature("model") != other.signature("model")
    assert model.signature("model").startswith(f"classical-{SIZE}-k2-none-")
    retiled = PixelClassifier.from_text(model.to_text().replace(f'"tile_size":{SIZE}', '"tile_size":256'), "x")
    assert retiled.signature("encoder") != model.signature("encoder")
    with pytest.raises(ValueError, match="scope"):
        model.signature("decoder")


def test_the_tiled_predictor_runs_the_classifier(two_phase):
    from napari_metalseg.predict import Predictor

    model, _, _, _ = two_phase
    image, mask = micrograph(13, size=300)  # larger than a tile: 2 x 2 blended tiles
    predictor = Predictor(model, PhaseSet.from_names(["matrix", "blobs"]), device="cpu")
    result = predictor.predict(image)
    assert result.labels.shape == (300, 300) and result.probs.shape == (2, 300, 300)
    np.testing.assert_allclose(result.probs.sum(0), 1, atol=1e-4)
    assert (result.labels == mask).mean() > 0.9
    with pytest.raises(MetalsegError, match="box prompts need a SAM model"):
        predictor.predict(image, box=(10, 10, 100, 100))


# -- storage -----------------------------------------------------------------------------------------------------
def test_save_load_round_trip_is_bit_identical(three_phase, tmp_path):
    model, image, _, _ = three_phase
    path = save_classifier(model, tmp_path / "classifier.txt")
    data = path.read_bytes()
    text = data.decode("utf-8")  # plain UTF-8 text
    assert b"\x00" not in data and text.startswith(f"{HEADER_PREFIX}v1 {{")
    header = json.loads(text.split("\n", 1)[0][len(HEADER_PREFIX) + 3 :])
    assert header["feature_set"] == FEATURE_SET and header["sigmas"] == list(DEFAULT_SIGMAS)
    assert header["num_phases"] == 3 and header["tile_size"] == SIZE and "lightgbm" in header
    assert text.split("\n", 1)[1].startswith("tree\n")  # LightGBM's own text model follows

    loaded = load_classifier(path)
    feats = pixel_features(image)
    assert np.array_equal(loaded.predict_proba_features(feats), model.predict_proba_features(feats))
    x = torch.from_numpy(image[None, :64, :64])
    assert torch.equal(loaded(x), model(x))
    assert loaded.to_text() == model.to_text() and loaded.signature() == model.signature()
    assert loaded.n_parameters == model.n_parameters


class _Payload:
    """Unpickling this creates ``marker``: proof that a loader executed the pickle."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("protocol", [0, pickle.HIGHEST_PROTOCOL])
def test_a_pickle_payload_is_refused_and_never_executed(tmp_path, protocol):
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Payload(str(marker)), protocol=protocol)
    assert not marker.exists()
    path = tmp_path / "classifier.txt"
    path.write_bytes(payload)
    with pytest.raises(MetalsegError, match="classifier.txt") as info:
        load_classifier(path)
    assert "not a text file" in str(info.value) or "not a napari-metalseg classical" in str(info.value)
    assert not marker.exists()
    pickle.loads(payload)  # the payload is live: unpickling does create the marker
    assert marker.exists()
    os.remove(marker)


def _with_body(text: str, body: str, fix_checksum: bool) -> str:
    first = text.split("\n", 1)[0]
    if fix_checksum:
        header = json.loads(first[len(HEADER_PREFIX) + 3 :])
        header["model_sha256"] = hashlib.sha256(body.encode()).hexdigest()
        first = f"{HEADER_PREFIX}v1 {json.dumps(header)}"
    return f"{first}\n{body}"


def test_broken_files_are_refused_with_one_error_naming_the_file(two_phase, tmp_path):
    text = two_phase[0].to_text()
    body = text.split("\n", 1)[1]
    cases = {
        "empty": ("", "empty"),
        "garbage": (_with_body(text, "tree\nthis is not a model\n" * 20, False), "checksum"),
        "garbage-with-checksum": (
            _with_body(text, "tree\nversion=v4\nnum_class=banana\n", True),
            "not a valid LightGBM text model",
        ),
        "truncated": (text[: len(text) // 2], "checksum"),
        "truncated-with-checksum": (_with_body(text, body[: len(body) // 2], True), "truncated"),
        "version": (text.replace(f"{HEADER_PREFIX}v1 ", f"{HEADER_PREFIX}v2 ", 1), "'v2' is not supported"),
        "header": ("# some other tool v1 {}\n" + body, "not a napari-metalseg classical"),
        "json": (text.replace('{"', "{", 1), "not valid JSON"),
        "feature-set": (text.replace(FEATURE_SET, "weka-v9"), "feature_set 'weka-v9' is not supported"),
        "phases": (text.replace('"num_phases":2', '"num_phases":3'), "do not split phases 0..2"),
        "nul": (text + "\x00", "NUL"),
        "binary": (None, "not a text file"),
    }
    for name, (content, reason) in cases.items():
        path = tmp_path / f"{name}.txt"
        if content is None:
            path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
        else:
            path.write_text(content, encoding="utf-8")
        with pytest.raises(MetalsegError) as info:
            load_classifier(path)
        message = str(info.value)
        assert str(path) in message and reason in message, (name, message)
    with pytest.raises(MetalsegError, match="missing.txt: cannot read"):
        load_classifier(tmp_path / "missing.txt")


def test_inconsistent_lightgbm_text_never_reaches_lightgbm(two_phase, tmp_path):
    """LightGBM's parser trusts tree offsets and child links (out-of-bounds reads, process aborts): texts that
    carry a valid checksum but break them are refused by our own check, and the process survives."""
    text = two_phase[0].to_text()
    body = text.split("\n", 1)[1]
    sizes = next(line for line in body.split("\n") if line.startswith("tree_sizes="))
    left = next(line for line in body.split("\n") if line.startswith("left_child="))

    def edit_tree0(old: str, new: str) -> str:
        """Replace in the first tree and fix its size, so that only the edit is wrong."""
        first, rest = sizes[len("tree_sizes=") :].split(" ", 1)
        fixed = f"tree_sizes={int(first) + len(new) - len(old)} {rest}"
        return body.replace(old, new, 1).replace(sizes, fixed, 1)

    cases = {
        "cycle": (edit_tree0(left, "left_child=0" + left[len("left_child=") + 1 :]), "do not form a tree"),
        "offsets": (body.replace(sizes, sizes + "0", 1), "truncated"),
        "feature": (edit_tree0("split_feature=", "split_feature=999"), "not below"),
        "no-trees": (body[: body.index("Tree=0")], "hold trees"),
        "categorical": (edit_tree0("num_cat=0", "num_cat=1"), "categorical"),
        "nan": (edit_tree0("leaf_value=", "leaf_value=nan"), "not a finite float"),
        "misaligned": (body.replace("split_feature=", "split_feature=999", 1), "in this order"),
        "tail": (body + "[linear_tree: 1]\nsomething else\n", "followed by"),
    }
    for name, (new_body, reason) in cases.items():
        assert new_body != body, name
        path = tmp_path / f"{name}.txt"
        path.write_text(_with_body(text, new_body, True), encoding="utf-8")
        with pytest.raises(MetalsegError) as info:
            load_classifier(path)
        assert str(path) in str(info.value) and reason in str(info.value), (name, str(info.value))
