"""Tests of the CNN families (plain U-Net, Enhanced U-Net3+, Enhanced ELU-Net) and their :class:`PhaseCNN` wrapper.

Everything runs on the CPU with narrow, shallow networks on 32-64 px inputs, so the whole file takes seconds.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from napari_metalseg.errors import MetalsegError
from napari_metalseg.models.cnn import PhaseCNN
from napari_metalseg.models.elunet import ELUNet, build_elunet
from napari_metalseg.models.unet import UNet, build_unet
from napari_metalseg.models.unet3plus import UNet3Plus, build_unet3plus

BUILDERS = {"unet": build_unet, "unet3plus": build_unet3plus, "elunet": build_elunet}
BACKBONES = {"unet": UNet, "unet3plus": UNet3Plus, "elunet": ELUNet}
FAMILIES = list(BUILDERS)
K = 3


def _build(family: str, **kwargs) -> PhaseCNN:
    kwargs.setdefault("num_phases", K)
    kwargs.setdefault("img_size", 32)
    kwargs.setdefault("width", 4)
    kwargs.setdefault("depth", 3)
    return BUILDERS[family](**kwargs)


def _images(b: int = 2, size: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, size, size, generator=g)


def _aux_count(family: str, depth: int) -> int:
    """Side outputs with deep supervision: every deeper decoder stage (U-Net3+ also the bottleneck)."""
    return depth if family == "unet3plus" else depth - 1


def _calibrate(model: PhaseCNN, x: torch.Tensor) -> PhaseCNN:
    """Set the BatchNorm running statistics to those of ``x`` (fresh statistics shrink deep features to ~0)."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average: after one batch, the statistics of that batch
    with torch.no_grad():
        model.train()(x)
    for norm in norms:
        norm.momentum = 0.1
    return model.eval()


def _perturb(module: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))


# ------------------------------------------------------------------------------------------------- contract


@pytest.mark.parametrize("family", FAMILIES)
def test_contract_attributes(family):
    model = _build(family, img_size=64, depth=4, guidance="ratio")
    assert isinstance(model, PhaseCNN) and model.kind == family
    assert isinstance(model.backbone, BACKBONES[family])
    assert (model.img_size, model.num_phases, model.guidance) == (64, K, "ratio")
    assert model.supports_boxes is False and model.light_decoder is False and model.finetune_mode == "full"
    assert model.predict_size == 512 and model.training
    config = model.config
    assert config["kind"] == family and config["width"] == 4 and config["depth"] == 4
    assert config["deep_supervision"] is True and ("cgm" in config) == (family == "unet3plus")
    # the config rebuilds the same architecture
    rebuilt = BUILDERS[family](**{k: v for k, v in config.items() if k != "kind"})
    assert rebuilt.signature() == model.signature()
    # predict_size: at least 512, a multiple of 2**depth
    assert _build(family, img_size=640, depth=4).predict_size == 640
    assert _build(family, img_size=96, depth=5).predict_size == 512
    assert _build(family, img_size=520, depth=3).predict_size == 520
    assert _build(family, img_size=576, depth=6, width=1).predict_size == 576


@pytest.mark.parametrize("family", FAMILIES)
def test_a_model_reports_its_spec_which_rebuilds_it(family):
    from napari_metalseg.models.spec import ModelSpec

    model = _build(family, img_size=64, depth=3, guidance="spatial", seed=3)
    spec = ModelSpec(**model.spec_fields(), phases=[{"name": f"p{k}"} for k in range(K)])
    assert spec.builder_arguments() == {k: v for k, v in model.config.items() if k != "kind"}
    rebuilt, report = spec.build(seed=3)
    assert report is None and rebuilt.signature() == model.signature()
    assert _build(family, img_size=64, depth=3, guidance="spatial", seed=4).signature() != model.signature()


@pytest.mark.parametrize("family", FAMILIES)
def test_bad_build_arguments_are_refused(family):
    with pytest.raises(MetalsegError, match="img_size"):
        _build(family, img_size=40, depth=4)  # not a multiple of 16
    with pytest.raises(MetalsegError, match="guidance"):
        _build(family, guidance="magic")
    with pytest.raises(MetalsegError, match="width"):
        _build(family, width=0)
    with pytest.raises(MetalsegError, match="depth"):
        _build(family, depth=0)
    with pytest.raises(MetalsegError, match="phases"):
        _build(family, num_phases=0)


def test_preprocess_is_one_fixed_mapping_after_the_micrograph_contrast_stretch():
    from napari_metalseg.data.samples import normalize_contrast

    model = _build("elunet")
    assert model.contrast == "image"
    gray = _images(2)
    x = model.preprocess(gray)
    assert x.shape == (2, 1, 32, 32)
    torch.testing.assert_close(x, (gray[:, None] - 0.5) / 0.25)
    # the same pixel value maps to the same input in every tile (no per-tile statistics)
    torch.testing.assert_close(model.preprocess(gray[:, :16])[0], x[0, :, :16])
    stretched = normalize_contrast(0.2 + 0.3 * gray[0].numpy())
    assert stretched.min() == 0.0 and stretched.max() == 1.0
    assert torch.equal(model.embed(x), x)
    with pytest.raises(ValueError, match="grey images"):
        model.preprocess(torch.rand(2, 3, 32, 32))


# ------------------------------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(("num_phases", "depth", "width"), [(2, 3, 4), (3, 4, 4), (5, 3, 6)])
def test_forward_shapes(family, num_phases, depth, width):
    size = 32
    model = _build(family, num_phases=num_phases, depth=depth, width=width)
    x = model.preprocess(_images(2, size))
    outputs = model.train()(x)
    assert isinstance(outputs, list) and len(outputs) == 1 + _aux_count(family, depth)
    assert outputs[0].shape == (2, num_phases, size, size)
    for level, aux in enumerate(outputs[1:], start=1):
        assert aux.shape == (2, num_phases, size >> level, size >> level)
    outputs[0].mean().backward()  # gradients reach the first encoder convolution
    assert model.backbone.encoder.stages[0][0][0].weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        out = model(x)
        assert isinstance(out, torch.Tensor) and out.shape == (2, num_phases, size, size)
        assert out.is_contiguous() and torch.isfinite(out).all()
        torch.testing.assert_close(model.decode(model.embed(x)), out)


@pytest.mark.parametrize("family", FAMILIES)
def test_without_deep_supervision_forward_returns_a_tensor(family):
    model = _build(family, deep_supervision=False)
    out = model.train()(model.preprocess(_images(2)))
    assert isinstance(out, torch.Tensor) and out.shape == (2, K, 32, 32)
    assert not any(k.startswith("backbone.heads.1.") for k in model.state_dict())


@pytest.mark.parametrize("family", FAMILIES)
def test_decode_resizes_and_checks_sizes(family):
    model = _build(family, depth=3).eval()
    x = model.preprocess(_images(1, 48))  # any multiple of 2**depth, not only img_size
    with torch.no_grad():
        full = model.decode(x)
        assert full.shape == (1, K, 48, 48)
        small = model.decode(x, out_size=(24, 24))
        assert small.shape == (1, K, 24, 24)
        torch.testing.assert_close(small, F.interpolate(full, size=(24, 24), mode="bilinear", align_corners=False))
        assert model.decode(x, out_size=(50, 70)).shape == (1, K, 50, 70)
        assert model.decode(model.preprocess(_images(1, 16))).shape == (1, K, 16, 16)
    for shape in [(1, 1, 36, 32), (1, 1, 32, 20), (1, 3, 32, 32), (32, 32)]:
        with pytest.raises(ValueError, match="multiples of 2\\*\\*depth = 8"):
            model.decode(torch.zeros(shape))


# ------------------------------------------------------------------------------------------------- guidance


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("guidance", ["ratio", "spatial"])
def test_guidance_at_the_bottleneck(family, guidance):
    model = _build(family, guidance=guidance)
    assert model.guidance_encoder.embed_dim == model.backbone.bottleneck_channels
    x = model.preprocess(_images(2))
    _calibrate(model, x)
    r1 = torch.tensor([[0.2, 0.3, 0.5], [0.6, 0.3, 0.1]])
    r2 = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    nan = torch.full((2, K), float("nan"))
    with torch.no_grad():
        plain = model.decode(x)
        assert torch.equal(model.decode(x, ratios=nan), plain)
        assert torch.equal(model.decode(x, ratios=r1), plain)  # zero-initialised: the identity
        last = model.guidance_encoder.mlp[-1] if guidance == "ratio" else model.guidance_encoder.net[-1]
        torch.nn.init.normal_(last.weight, std=0.5)
        out1, out2 = model.decode(x, ratios=r1), model.decode(x, ratios=r2)
        assert not torch.allclose(out1, out2) and not torch.allclose(out1, plain)
        assert torch.equal(model.decode(x), plain) and torch.equal(model.decode(x, ratios=nan), plain)
        mixed = model.decode(x, ratios=torch.cat([r1[:1], nan[:1]]))
        torch.testing.assert_close(mixed[0], out1[0])
        torch.testing.assert_close(mixed[1], plain[1])
    with pytest.raises(ValueError, match="ratios must have shape"):
        model.decode(x, ratios=torch.ones(2, K + 1))


@pytest.mark.parametrize("family", FAMILIES)
def test_ratios_without_guidance_and_boxes_are_refused(family):
    model = _build(family)
    x = model.preprocess(_images(1))
    with pytest.raises(ValueError, match="without phase-fraction guidance"):
        model(x, ratios=torch.ones(1, K) / K)
    with pytest.raises(MetalsegError, match=f"box prompts need a SAM model; {family} has no prompt encoder"):
        model.decode(x, boxes=torch.tensor([[0.0, 0.0, 16.0, 16.0]]))
    with pytest.raises(MetalsegError, match="box prompts"):
        model(x, boxes=torch.tensor([[0.0, 0.0, 16.0, 16.0]]))


# ------------------------------------------------------------------------------------------------- learning


def _discs(b: int, size: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Grey images of a bright disc (phase 1) on a dark background (phase 0), with noise."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    centre = size * (0.3 + 0.4 * torch.rand(b, 2, generator=g))
    radius = size * (0.15 + 0.15 * torch.rand(b, generator=g))
    dist = ((yy - centre[:, 0, None, None]) ** 2 + (xx - centre[:, 1, None, None]) ** 2).sqrt()
    labels = (dist < radius[:, None, None]).long()
    gray = 0.35 + 0.3 * labels + 0.08 * torch.randn(b, size, size, generator=g)
    return gray.clamp(0, 1), labels


@pytest.mark.parametrize("family", FAMILIES)
def test_short_training_learns_discs(family):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    model = _build(family, num_phases=2, img_size=64, width=8, depth=3).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    losses = []
    for _ in range(80):
        gray, labels = _discs(4, 64, g)
        outputs = model(model.preprocess(gray))
        main, aux = outputs[0], outputs[1:]
        loss = F.cross_entropy(main, labels)
        for side in aux:
            loss = loss + 0.3 * F.cross_entropy(F.interpolate(side, size=(64, 64), mode="bilinear"), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(F.cross_entropy(main.detach(), labels).item())
    assert sum(losses[-10:]) / 10 < 0.3 * losses[0]
    gray, labels = _discs(2, 64, torch.Generator().manual_seed(123))
    with torch.no_grad():
        pred = model.eval()(model.preprocess(gray)).argmax(1)
    accuracy = (pred == labels).float().mean().item()
    assert accuracy > 0.9, f"pixel accuracy {accuracy:.3f}"


# ------------------------------------------------------------------------------------------------- state


@pytest.mark.parametrize("family", FAMILIES)
def test_trainable_state_round_trip(family):
    model = _build(family, guidance="ratio", seed=0).train()
    _perturb(model)
    with torch.no_grad():
        for seed in range(3):  # update the BatchNorm running statistics
            model(model.preprocess(_images(2, seed=seed)))
    keys = model.trainable_state_keys()
    assert keys == list(model.state_dict())
    assert any(k.endswith("running_mean") for k in keys) and any(k.endswith("running_var") for k in keys)
    assert any(k.endswith("num_batches_tracked") for k in keys)
    assert any(k.startswith("guidance_encoder.") for k in keys)
    state = {k: model.state_dict()[k].clone() for k in keys}
    fresh = _build(family, guidance="ratio", seed=1)
    x = model.preprocess(_images(2, seed=7))
    ratios = torch.tensor([[0.2, 0.3, 0.5], [0.6, 0.3, 0.1]])
    model.eval()
    fresh.eval()
    with torch.no_grad():
        expected = model.decode(x, ratios=ratios)
        assert not torch.allclose(fresh.decode(x, ratios=ratios), expected)
        fresh.load_state_dict(state, strict=True)
        assert torch.equal(fresh.decode(x, ratios=ratios), expected)
    assert fresh.signature() == model.signature()


@pytest.mark.parametrize("family", FAMILIES)
def test_signature_tracks_weights_not_the_encoder_cache(family):
    model = _build(family)
    sig, enc = model.signature(), model.signature("encoder")
    assert sig.startswith(f"{family}-32-k{K}-none-") and enc.startswith(f"{family}-512-enc-")
    assert _build(family).signature() == sig  # deterministic build
    assert _build(family, seed=1).signature() != sig
    with torch.no_grad():
        model.backbone.heads[0].bias[0] += 1
    assert model.signature() != sig and model.signature("encoder") == enc
    sig = model.signature()
    model.backbone.encoder.stages[0][0][1].running_mean[0] += 1  # BatchNorm statistics count too
    assert model.signature() != sig and model.signature("encoder") == enc
    assert _build(family, guidance="ratio").signature("encoder") == enc
    assert _build(family, img_size=48, depth=3).signature().startswith(f"{family}-48-")
    with pytest.raises(ValueError, match="scope"):
        model.signature("decoder")


# ------------------------------------------------------------------------------------------------- CGM


def test_unet3plus_classification_guided_module():
    model = _build("unet3plus", cgm=True, depth=4)
    assert model.config["cgm"] is True and model.backbone.guide is not None
    x = model.preprocess(_images(2))
    outputs = model.train()(x)
    assert isinstance(outputs, list) and len(outputs) == 1 + _aux_count("unet3plus", 4)
    assert outputs[0].shape == (2, K, 32, 32)
    outputs[0].sum().backward()
    assert model.backbone.guide.classify.weight.grad is not None
    model.eval()
    with torch.no_grad():
        model.backbone.guide.classify.bias[0] = -30.0  # phase 0 "absent" in every image
        gated = model(x)
        guide, model.backbone.guide = model.backbone.guide, None
        plain = model(x)
        model.backbone.guide = guide
    # the probabilities are multiplied by the presence: a per-image, per-phase constant logit shift <= 0
    shift = gated - plain
    torch.testing.assert_close(shift, shift[:, :, :1, :1].expand_as(shift))
    assert (shift[:, 1:] <= 0).all() and (shift[:, 1:] > math.log(0.5)).all()
    torch.testing.assert_close(shift[:, 0, 0, 0], torch.full((2,), math.log(1e-4)))
