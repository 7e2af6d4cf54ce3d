"""The predictor: tiling, embedding cache, box prompts, ratio checks; and encoder feature maps."""

import numpy as np
import pytest
import torch

from napari_metalseg.errors import MetalsegError
from napari_metalseg.phases import UNLABELED
from napari_metalseg.predict import Predictor, check_ratios
from napari_metalseg.tiles import blend_window, tile_starts
from tests.conftest import IMG_SIZE


@pytest.fixture(scope="module")
def predictor(trained_run):
    run, _ = trained_run
    return Predictor.from_run(run, device="cpu", bf16=False)  # fp32: compared with the model called directly


def test_tiling_equals_single_pass_on_an_image_that_fits(predictor, split_samples):
    image = split_samples["test"][0].image[:IMG_SIZE, :IMG_SIZE]
    tiled = predictor.predict(image)
    model = predictor.model
    with torch.inference_mode():
        logits = model(model.preprocess(torch.from_numpy(np.ascontiguousarray(image))[None]))
    direct = torch.softmax(logits, 1)[0].numpy()
    np.testing.assert_allclose(tiled.probs, direct, atol=1e-5)
    assert np.array_equal(tiled.labels, direct.argmax(0))


def test_large_non_square_image_is_tiled_with_blending(predictor, split_samples):
    image = np.tile(split_samples["test"][0].image, (2, 3))[:400, :700]
    calls = []
    original = predictor.model.embed
    predictor.model.embed = lambda x: (calls.append(x.shape[0]), original(x))[1]
    try:
        result = predictor.predict(image)
        again = predictor.predict(image, ratios=[0.3, 0.4, 0.3])  # decoder only: embedding cached
    finally:
        predictor.model.embed = original
    assert result.labels.shape == (400, 700) and result.probs.shape == (3, 400, 700)
    np.testing.assert_allclose(result.probs.sum(0), 1, atol=1e-4)
    n_tiles = len(tile_starts(400, IMG_SIZE, predictor.overlap)) * len(tile_starts(700, IMG_SIZE, predictor.overlap))
    assert sum(calls) == n_tiles  # the second prediction reused the cached embeddings
    assert not np.array_equal(result.probs, again.probs)
    # far from tile seams the blended result equals an untiled prediction of that region
    crop = predictor.predict(image[:IMG_SIZE, :IMG_SIZE])
    c = IMG_SIZE // 2
    assert np.array_equal(crop.labels[c - 8 : c + 8, c - 8 : c + 8], result.labels[c - 8 : c + 8, c - 8 : c + 8])


def test_small_image_is_padded(predictor):
    image = np.random.default_rng(0).random((40, 90)).astype(np.float32)
    assert predictor.predict(image).labels.shape == (40, 90)


def test_box_restricts_the_prediction(predictor, split_samples):
    image = split_samples["test"][0].image
    result = predictor.predict(image, box=(30, 40, 150, 120))
    inside = np.zeros(image.shape, bool)
    inside[40:120, 30:150] = True
    assert (result.labels[~inside] == UNLABELED).all()
    assert (result.labels[inside] < 3).all()
    assert result.probs[:, ~inside].sum() == 0
    np.testing.assert_allclose(result.probs[:, inside].sum(0), 1, atol=1e-4)


def test_box_larger_than_the_model_input(predictor, split_samples):
    image = np.tile(split_samples["test"][0].image, (2, 2))
    result = predictor.predict(image, box=(10, 10, 400, 300))
    assert (result.labels[10:300, 10:400] < 3).all()
    assert (result.labels[301:] == UNLABELED).all()


@pytest.mark.parametrize(
    "ratio, fragment",
    [
        ([0.5, 0.5], "has 2 values but the model has 3 phases"),
        ([0.5, float("nan"), 0.5], "NaN"),
        ([0.5, -0.1, 0.6], "negative"),
        ([0, 0, 0], "sums to 0"),
    ],
)
def test_bad_ratios(predictor, ratio, fragment):
    with pytest.raises(MetalsegError, match=fragment):
        check_ratios(ratio, predictor.phases)


def test_ratio_is_normalised(predictor):
    assert check_ratios([2, 1, 1], predictor.phases).tolist() == [0.5, 0.25, 0.25]


def test_tile_layout_and_window():
    assert tile_starts(100, 128, 32) == [0]
    assert tile_starts(300, 128, 32) == [0, 96, 172]
    w = blend_window(8)
    assert w.shape == (8, 8) and w.min() > 0 and w[4, 4] > w[0, 0]


def test_encoder_feature_maps(trained_run, split_samples):
    from napari_metalseg.features import encoder_feature_maps, pca_rgb
    from napari_metalseg.runs import load_run

    model, _ = load_run(trained_run[0])
    image = split_samples["test"][0].image[:, :200]
    fm = encoder_feature_maps(model, image)
    depth = len(model.sam.image_encoder.blocks)
    # native resolution: the 256 x 200 micrograph is tiled at the model input size, one map pixel per 16 px
    assert fm.maps.shape == (depth, 256 // 16, round(200 / 16), 3)
    assert fm.maps.dtype == np.uint8
    assert fm.scale == pytest.approx((256 / fm.maps.shape[1], 200 / fm.maps.shape[2]))
    assert all(m.std() > 0 for m in fm.maps)
    # PCA of features that vary along one axis gives a map that varies along that axis
    feats = np.zeros((4, 5, 10))
    feats[:, :, 0] = np.arange(5)[None]
    rgb = pca_rgb(feats)
    assert (np.diff(rgb[0, :, 0].astype(int)) >= 0).all() and rgb[0, 0, 0] < rgb[0, -1, 0]


def test_feature_maps_base_vs_lora_adapted(tmp_path):
    from napari_metalseg.features import encoder_feature_maps
    from napari_metalseg.models.phase_sam import build_phase_sam

    base, _ = build_phase_sam("tiny", img_size=64, num_phases=2, seed=1)
    ckpt = tmp_path / "base.pth"
    torch.save(base.sam.state_dict(), ckpt)
    model, _ = build_phase_sam("tiny", img_size=64, num_phases=2, checkpoint=str(ckpt), finetune="lora")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    image = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    adapted = encoder_feature_maps(model, image)
    base_maps = encoder_feature_maps(model, image, base=True)
    reference = encoder_feature_maps(base, image)
    assert np.array_equal(base_maps.maps, reference.maps)  # LoRA off = the frozen base
    assert not np.array_equal(adapted.maps, base_maps.maps)


def test_embeddings_cached_on_disk_are_reused(trained_run, split_samples, tmp_path):
    run, _ = trained_run
    image = split_samples["test"][0].image
    first = Predictor.from_run(run, device="cpu", cache_dir=tmp_path)
    reference = first.predict(image)
    assert first.store.count() == 1
    second = Predictor.from_run(run, device="cpu", cache_dir=tmp_path)
    calls = []
    original = second.model.embed
    second.model.embed = lambda x: (calls.append(1), original(x))[1]
    again = second.predict(image)
    assert calls == []  # the encoder did not run: the embedding came from disk
    np.testing.assert_allclose(again.probs, reference.probs, atol=1e-6)
