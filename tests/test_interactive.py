"""Box prompts and ratio changes from the cached tile embeddings: no encoder work, same labels, bounded cache."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from napari_metalseg.embeddings import EmbeddingCache
from napari_metalseg.errors import MetalsegError
from napari_metalseg.models.phase_sam import build_phase_sam, decode_paired
from napari_metalseg.phases import UNLABELED, PhaseSet
from napari_metalseg.predict import Predictor, _low_res_rows, _upsample_region
from napari_metalseg.tiles import TileGrid

SIZE = 64
PHASES = PhaseSet.from_names(["ferrite", "martensite", "bainite"])


def model(seed: int = 0):
    m, _ = build_phase_sam("tiny", img_size=SIZE, num_phases=3, guidance="ratio", seed=seed)
    with torch.no_grad():  # give the zero-initialised guidance a visible effect
        for p in m.guidance_encoder.parameters():
            p.normal_(0, 0.5)
    return m.eval()


def image(shape, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


class CountingEncoder:
    """Counts the tiles the model's encoder runs on."""

    def __init__(self, m) -> None:
        self.tiles = 0
        self.original = m.embed
        m.embed = self

    def __call__(self, x):
        self.tiles += x.shape[0]
        return self.original(x)


def test_a_box_on_a_predicted_micrograph_runs_no_encoder():
    m = model()
    predictor = Predictor(m, PHASES, bf16=False)
    img = image((150, 170))
    predictor.predict(img)
    counter = CountingEncoder(m)
    rng = np.random.default_rng(1)
    for _ in range(10):
        x0, y0 = rng.integers(0, 120), rng.integers(0, 100)
        predictor.predict(img, box=(x0, y0, x0 + rng.integers(5, 50), y0 + rng.integers(5, 50)))
    predictor.predict(img, ratios=[0.2, 0.3, 0.5])
    assert counter.tiles == 0


def test_a_box_on_a_new_micrograph_encodes_only_the_tiles_it_needs():
    m = model()
    predictor = Predictor(m, PHASES, bf16=False)
    img = image((150, 170))
    grid = predictor.tile_grid(img.shape)
    counter = CountingEncoder(m)
    box = (5, 5, 30, 30)
    predictor.predict(img, box=box)
    assert counter.tiles == len(grid.tiles_for_box(box)) == 1 < len(grid)
    predictor.predict(img)  # the whole micrograph: only the other tiles
    assert counter.tiles == len(grid)


def test_box_on_an_image_that_fits_one_tile_equals_a_single_pass():
    m = model()
    img = image((SIZE, SIZE), seed=3)
    box = (7.0, 12.0, 45.0, 50.0)
    result = Predictor(m, PHASES, bf16=False).predict(img, box=box, ratios=[0.5, 0.3, 0.2])
    with torch.inference_mode():
        x = m.preprocess(torch.from_numpy(img)[None])
        ratios = torch.tensor([[0.5, 0.3, 0.2]])
        direct = torch.softmax(m.decode(m.embed(x), ratios=ratios, boxes=torch.tensor([box])), 1)[0].numpy()
    inside = (slice(12, 50), slice(7, 45))
    np.testing.assert_allclose(result.probs[(slice(None), *inside)], direct[(slice(None), *inside)], atol=1e-5)
    assert np.array_equal(result.labels[inside], direct.argmax(0)[inside])
    outside = np.ones(img.shape, bool)
    outside[inside] = False
    assert (result.labels[outside] == UNLABELED).all() and result.probs[:, outside].sum() == 0


class BoxBlind(torch.nn.Module):
    """A model whose decoder ignores box prompts but records them: a box result must then be the whole
    prediction inside the box, which checks the tile choice, the stitching and the region upsampling."""

    def __init__(self, m) -> None:
        super().__init__()
        self.m = m
        self.seen = []
        for name in ("kind", "img_size", "guidance", "mask_size", "light_decoder", "heavy_encoder"):
            setattr(self, name, getattr(m, name))

    def signature(self, scope="model"):
        return self.m.signature(scope)

    def preprocess(self, x):
        return self.m.preprocess(x)

    def embed(self, x):
        return self.m.embed(x)

    def decode(self, emb, ratios=None, boxes=None, out_size=None):
        if boxes is not None:
            self.seen.append(boxes.clone())
        return self.m.decode(emb, ratios=ratios, boxes=None, out_size=out_size)


@pytest.mark.parametrize("box", [(10, 10, 150, 120), (50, 30, 110, 90), (3, 70, 40, 149)])
def test_boxes_spanning_tiles_are_stitched_like_the_whole_prediction(box):
    blind = BoxBlind(model(seed=2))
    predictor = Predictor(blind, PHASES, bf16=False)
    img = image((150, 170), seed=4)
    whole = predictor.predict(img, ratios=[0.3, 0.3, 0.4], match_fractions=False)  # the decoder's own map
    boxed = predictor.predict(img, box=box, ratios=[0.3, 0.3, 0.4])
    x0, y0, x1, y1 = box
    grid = predictor.tile_grid(img.shape)
    tiles = grid.tiles_for_box(box, margin=8)  # two pixels of the tiny decoder's 4x coarser map
    if box == (50, 30, 110, 90):
        assert len(tiles) > 1  # wider than a tile: decoded on every tile it overlaps
    if len(tiles) == 1:  # one tile holds the box: that tile alone, so compare with that tile's single pass
        y, x = grid.origins[tiles[0]]
        whole = predictor.predict(img[y : y + SIZE, x : x + SIZE], ratios=[0.3, 0.3, 0.4], match_fractions=False)
        x0, y0, x1, y1 = x0 - x, y0 - y, x1 - x, y1 - y
        boxed_region = boxed.probs[:, box[1] : box[3], box[0] : box[2]]
    else:
        boxed_region = boxed.probs[:, y0:y1, x0:x1]
    np.testing.assert_allclose(boxed_region, whole.probs[:, y0:y1, x0:x1], atol=1e-5)
    # each decoded tile (those under the box and the map pixels of margin) saw the box in its own coordinates,
    # clipped to the tile
    seen = [row.tolist() for row in blind.seen[-1].numpy()]
    expected = []
    for t in tiles:
        y, x = grid.origins[t]
        clip = [min(max(v, 0), SIZE) for v in (box[0] - x, box[1] - y, box[2] - x, box[3] - y)]
        expected.append(clip)
    rest = iter(expected)
    assert all(any(row == e for e in rest) for row in seen)  # an ordered subset of the tiles' boxes
    assert 1 <= len(seen) <= len(tiles)


def test_region_upsampling_equals_cropping_the_whole_upsampled_map():
    logits = torch.randn(3, 16, 16)
    full = F.interpolate(logits[None], size=(64, 64), mode="bilinear", align_corners=False)[0]
    for region in [(0, 64, 0, 64), (5, 9, 30, 63), (13, 14, 0, 1), (40, 64, 17, 45), (61, 64, 4, 8)]:
        y0, y1, x0, x1 = region
        a0, a1, b0, b1 = _low_res_rows(region, 4, (16, 16))
        part = _upsample_region(logits[:, a0:a1, b0:b1], (a0, b0), 4, region)
        np.testing.assert_allclose(part, full[:, y0:y1, x0:x1], atol=1e-6)


def test_paired_decoding_equals_segment_anythings_own_decoder():
    m = model()
    emb = torch.randn(3, m.embed_dim, *m.embedding_size)
    boxes = torch.tensor([[3.0, 4.0, 40.0, 30.0], [0.0, 0.0, 64.0, 64.0], [10.0, 20.0, 12.0, 50.0]])
    with torch.inference_mode():
        paired = decode_paired(m.sam, emb, boxes)
        pe, decoder = m.sam.prompt_encoder, m.sam.mask_decoder
        for i in range(3):
            sparse, dense = pe(points=None, boxes=boxes[i : i + 1], masks=None)
            own, _ = decoder(
                image_embeddings=emb[i : i + 1],
                image_pe=pe.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=True,
            )
            np.testing.assert_allclose(paired[i : i + 1], own, atol=1e-5)


def test_the_cache_byte_bound_holds_and_drops_the_least_recently_used():
    m = model()
    per_image = 4 * m.embed_dim * m.embedding_size[0] * m.embedding_size[1] * 4  # 4 tiles of 100 x 100, fp32
    predictor = Predictor(m, PHASES, bf16=False, cache_size=100, cache_bytes=int(2.5 * per_image))
    images = [image((100, 100), seed=s) for s in range(4)]
    for img in images:
        predictor.predict(img)
        assert predictor.cache.nbytes <= predictor.cache.max_bytes
    assert len(predictor.cache) == 2
    counter = CountingEncoder(m)
    predictor.predict(images[-1], ratios=[0.1, 0.1, 0.8])  # the newest is cached: no encoder
    assert counter.tiles == 0
    predictor.predict(images[0])  # the oldest was dropped: encoded again
    assert counter.tiles == 4


def test_an_entry_larger_than_the_bound_is_not_kept():
    cache = EmbeddingCache(max_images=4, max_bytes=100)
    entry = cache.entry("a", 2)
    entry.store([0, 1], torch.zeros(2, 8, 4))
    cache.trim()
    assert len(cache) == 0 and cache.nbytes == 0


def test_tiles_for_a_box():
    grid = TileGrid((150, 170), 64, 16)
    assert len(grid.tiles_for_box((0, 0, 10, 10))) == 1
    one = grid.tiles_for_box((60, 50, 90, 80))  # inside several tiles: the one whose centre is nearest
    assert len(one) == 1
    y, x = grid.origins[one[0]]
    assert x <= 60 and 90 <= x + 64 and y <= 50 and 80 <= y + 64
    assert len(grid.tiles_for_box((0, 0, 170, 150))) == len(grid)


def test_token_space_decoder_equals_segment_anythings_modules_and_follows_weight_changes():
    from napari_metalseg.models.sam_decoder import TokenDecoder

    m = model()
    decoder = TokenDecoder(m.sam)
    emb = torch.randn(2, m.embed_dim, *m.embedding_size)
    boxes = torch.tensor([[3.0, 4.0, 40.0, 30.0], [10.0, 0.0, 64.0, 33.0]])
    for _ in range(2):
        with torch.inference_mode():
            reference = decode_paired(m.sam, emb, boxes)
            np.testing.assert_allclose(torch.stack(decoder.masks(emb, boxes)), reference, atol=1e-5)
            np.testing.assert_allclose(decoder.masks(emb, None)[1], decode_paired(m.sam, emb, None)[1], atol=1e-5)
            cells = [(1, 3, 0, 2), (0, 4, 2, 4)]
            for part, full, (r0, r1, c0, c1) in zip(decoder.masks(emb, boxes, cells), reference, cells, strict=True):
                np.testing.assert_allclose(part, full[:, 4 * r0 : 4 * r1, 4 * c0 : 4 * c1], atol=1e-5)
        with torch.no_grad():  # a training step changes the weights in place: the cached PE terms must follow
            for layer in m.sam.mask_decoder.transformer.layers:
                layer.cross_attn_token_to_image.k_proj.weight.add_(0.3)
                layer.cross_attn_image_to_token.q_proj.bias.add_(0.3)


def test_decode_uses_the_token_decoder_only_without_gradients():
    m = model()
    emb = torch.randn(1, m.embed_dim, *m.embedding_size)
    with torch.no_grad():
        fast = m.decode(emb, boxes=torch.tensor([[1.0, 2.0, 30.0, 40.0]]))
    slow = m.decode(emb, boxes=torch.tensor([[1.0, 2.0, 30.0, 40.0]]))
    assert slow.requires_grad and not fast.requires_grad
    np.testing.assert_allclose(fast, slow.detach(), atol=1e-5)


def test_fused_encoder_attention_equals_segment_anythings_and_the_reference_copy_is_stock():
    from segment_anything.modeling.image_encoder import Attention

    from napari_metalseg.models.sam_attention import FusedAttention, stock_copy

    m = model()
    blocks = [mod for mod in m.sam.image_encoder.modules() if isinstance(mod, Attention)]
    assert blocks and all(type(mod) is FusedAttention for mod in blocks)
    stock = stock_copy(m.sam)
    assert all(type(mod) is Attention for mod in stock.image_encoder.modules() if isinstance(mod, Attention))
    x = m.preprocess(torch.from_numpy(image((SIZE, SIZE)))[None])
    with torch.inference_mode():
        np.testing.assert_allclose(m.embed(x), stock.image_encoder(x), atol=1e-5)
    trained = m.embed(x)  # with gradients: segment-anything's own code path, differentiable
    assert trained.requires_grad


def test_probabilities_are_computed_on_first_use_only():
    import subprocess
    import sys

    m = model()
    result = Predictor(m, PHASES, bf16=False).predict(image((150, 170)), ratios=[0.2, 0.3, 0.5])
    assert result._probs is None  # a ratio change needs the labels only
    probs = result.probs
    assert probs.shape == (3, 150, 170) and np.allclose(probs.sum(0), 1, atol=1e-5)
    assert np.array_equal(probs.argmax(0), result.labels)
    assert result.probs is probs  # computed once
    code = "import sys, napari_metalseg.predict; print('torch' in sys.modules)"  # the GUI imports it at start-up
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


def test_only_heavy_encoders_use_the_disk_store_and_any_signature_makes_a_valid_entry(tmp_path):
    from napari_metalseg.io.embedding_store import EmbeddingStore

    store = EmbeddingStore(tmp_path)
    m = model()
    m.signature = lambda scope="model": "tiny+classical/odd key:with+signs"  # characters a file name refuses
    predictor = Predictor(m, PHASES, bf16=False, cache_dir=store)
    img = image((100, 100))
    first = predictor.predict(img)
    assert store.count() == 1
    again = Predictor(m, PHASES, bf16=False, cache_dir=store)
    counter = CountingEncoder(m)
    np.testing.assert_allclose(again.predict(img).probs, first.probs, atol=1e-6)
    assert counter.tiles == 0  # from disk

    cheap = BoxBlind(model())
    cheap.heavy_encoder = False  # like the CNNs, whose "embedding" is the image itself
    assert Predictor(cheap, PHASES, cache_dir=store).store is None


def test_labels_taken_band_by_band_equal_the_whole_upsampled_map(monkeypatch):
    import napari_metalseg.predict as predict_module

    m = model()
    img = image((150, 170), seed=9)
    whole = Predictor(m, PHASES, bf16=False).predict(img, ratios=[0.3, 0.3, 0.4])
    monkeypatch.setattr(predict_module, "BAND_VALUES", 3 * 172 * 8)  # bands of 8 rows
    banded = Predictor(m, PHASES, bf16=False).predict(img, ratios=[0.3, 0.3, 0.4])
    assert np.array_equal(banded.labels, whole.labels)
    np.testing.assert_allclose(banded.probs, whole.probs, atol=1e-6)
    assert np.array_equal(banded.probs.argmax(0), banded.labels)


def test_an_8_bit_micrograph_is_predicted_as_its_float_values_without_a_float_copy():
    m = model()
    img = np.random.default_rng(3).integers(0, 256, (150, 170), dtype=np.uint8)
    as_int = Predictor(m, PHASES, bf16=False).predict(img, ratios=[0.3, 0.3, 0.4])
    as_float = Predictor(m, PHASES, bf16=False).predict(img.astype(np.float32), ratios=[0.3, 0.3, 0.4])
    assert np.array_equal(as_int.labels, as_float.labels)
    np.testing.assert_allclose(as_int.probs, as_float.probs, atol=1e-6)
    bad = img.astype(np.float32)
    bad[140, 3] = np.nan
    with pytest.raises(MetalsegError, match="NaN or infinite"):
        Predictor(m, PHASES).predict(bad)


def test_a_prediction_never_upsamples_the_whole_map_at_once(monkeypatch):
    """Huge micrographs in bounded memory: the labels come from bands, no K x H x W float map is built."""
    import napari_metalseg.predict as predict_module

    sizes = []
    original = F.interpolate

    def spy(x, *args, **kwargs):
        out = original(x, *args, **kwargs)
        sizes.append(out.numel())
        return out

    monkeypatch.setattr(F, "interpolate", spy)
    monkeypatch.setattr(predict_module, "BAND_VALUES", 3 * 704 * 16)
    result = Predictor(model(), PHASES, bf16=False).predict(image((600, 700)))
    assert sizes and max(sizes) <= 2 * predict_module.BAND_VALUES < 3 * 600 * 700 // 10
    assert result.labels.shape == (600, 700) and result._probs is None


def test_the_predict_dock_job_computes_probabilities_in_its_worker():
    from napari_metalseg._widgets.predict import _with_probabilities
    from napari_metalseg.progress import run_job

    job = Predictor(model(), PHASES, bf16=False).predict_job(image((100, 120)))
    result = run_job(_with_probabilities(job))  # run_job drives it as the napari worker does
    assert result._probs is not None and result.probs.shape == (3, 100, 120)


@pytest.mark.parametrize("kind", ["tiny", "elunet"])
def test_a_huge_micrograph_is_streamed_by_rows_of_tiles_to_the_same_labels(kind, monkeypatch):
    """Above STREAM_PIXELS the micrograph is predicted row of tiles after row of tiles (nothing cached, labels only):
    the labels are those of the cached, whole-map path, for SAM (maps 4 times coarser) and a CNN (full resolution)."""
    import napari_metalseg.predict as predict_module
    from napari_metalseg.models.spec import ModelSpec

    if kind == "tiny":
        m, img = model(), image((150, 170), seed=4)
    else:
        m = ModelSpec(kind="elunet", img_size=64, phases=PHASES.to_json()).build("cpu")[0].eval()
        img = image((1100, 700), seed=4)  # 3 x 2 tiles of 512 px
    whole = Predictor(m, PHASES, bf16=False).predict(img)
    monkeypatch.setattr(predict_module, "STREAM_PIXELS", img.size - 1)
    streamed_by = Predictor(m, PHASES, bf16=False)
    grid = streamed_by.tile_grid(img.shape)
    assert len({y for y, _ in grid.origins}) >= 3  # several rows of tiles, so rows are labelled before the end
    counter = CountingEncoder(m)
    events = []
    from napari_metalseg.progress import run_job

    streamed = run_job(streamed_by.predict_job(img), events.append)
    assert np.array_equal(streamed.labels, whole.labels)
    assert counter.tiles == len(grid) and len(streamed_by.cache) == 0  # each tile once, nothing cached
    assert [e.step for e in events][-1] == len(grid)
    np.testing.assert_allclose(streamed.fractions(), whole.fractions())
    with pytest.raises(MetalsegError, match="predicted as a stream of tiles"):
        streamed.probs  # noqa: B018
    with pytest.raises(MetalsegError, match="predict it without tta"):
        streamed_by.predict(img, tta=True)
