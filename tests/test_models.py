"""Tests of the model layer: SAM builder, checkpoint loading, LoRA, guidance, PhaseSAM, triton guard.

Everything runs on the CPU with the ``tiny`` kind, except checkpoint loading, which uses an official-layout
vit_b state dict (built by ``segment_anything``'s own registry, saved once per session).
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from napari_metalseg.errors import MetalsegError
from napari_metalseg.models import (
    SAM_KINDS,
    RatioEncoder,
    SpatialRatioEncoder,
    build_phase_sam,
    build_sam,
    count_parameters,
    detect_kind,
    load_sam_checkpoint,
    load_trainable_state_dict,
    merge_lora,
    set_finetune_mode,
    trainable_state_dict,
)
from napari_metalseg.models.lora import parameter_group

REPO = Path(__file__).resolve().parents[1]
SIZE = 128  # tiny-model input size for the fast tests
K = 3


# ----------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def vit_b_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An official-layout vit_b state dict at 1024 px, K=3 (from segment_anything's own builder)."""
    from segment_anything import sam_model_registry

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        sam = sam_model_registry["vit_b"]()
        # the official builder zero-initialises pos_embed and rel_pos; give them values to check interpolation
        with torch.no_grad():
            for name, param in sam.image_encoder.named_parameters():
                if "pos" in name:
                    param.normal_()
    path = tmp_path_factory.mktemp("ckpt") / "sam_vit_b_test.pth"
    torch.save(sam.state_dict(), path)
    return path


@pytest.fixture(scope="session")
def vit_b_state(vit_b_file: Path) -> dict[str, torch.Tensor]:
    return torch.load(vit_b_file, map_location="cpu", weights_only=True)


@pytest.fixture(scope="session")
def tiny_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny SAM state dict (256 px, K=3) in the official layout."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(2)
        sam = build_sam("tiny", img_size=256, num_phases=3)
    path = tmp_path_factory.mktemp("ckpt") / "sam_tiny.pth"
    torch.save(sam.state_dict(), path)
    return path


def _images(b: int = 2, size: int = SIZE, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 1, size, size, generator=g)


def _train_steps(model, steps: int = 3, ratios: torch.Tensor | None = None) -> None:
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    x = model.preprocess(_images(2, model.img_size))
    y = torch.randint(
        0, model.num_phases, (2, model.img_size, model.img_size), generator=torch.Generator().manual_seed(1)
    )
    for _ in range(steps):
        loss = F.cross_entropy(model(x, ratios=ratios), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


def _logits(model, x: torch.Tensor, **kw) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(x, **kw)


# ----------------------------------------------------------------------------------------------- imports


def _run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=120,
    )


def test_package_import_does_not_import_torch():
    proc = _run_python("""
        import sys
        import napari_metalseg.models as m
        assert "torch" not in sys.modules, "torch imported"
        assert m.SAM_KINDS == ("tiny", "vit_b", "vit_l", "vit_h") and "lora" in m.FINETUNE_MODES
        print("ok")
    """)
    assert proc.returncode == 0, proc.stderr
    assert "ok" in proc.stdout


def test_triton_guard_then_peft_works():
    proc = _run_python(
        """
        import sys
        import torch
        from napari_metalseg.models.triton_guard import guard_triton
        assert not torch.cuda.is_available()
        assert "triton" not in sys.modules
        assert guard_triton() is True
        assert sys.modules["triton"] is None
        import peft  # reaches torch._dynamo, which must treat triton as missing
        import torch._dynamo
        from torch.utils._triton import has_triton
        assert has_triton() is False
        try:
            import triton  # noqa: F401
        except ImportError:
            pass
        else:
            raise AssertionError("import triton did not fail")
        from napari_metalseg.models import build_phase_sam
        model, _ = build_phase_sam("tiny", img_size=64, finetune="lora")
        assert any("lora_A" in n for n, _ in model.named_parameters())
        out = torch.compile(lambda x: x * 2, backend="eager")(torch.ones(2))  # dynamo still usable
        assert out.tolist() == [2.0, 2.0]
        assert guard_triton() is True  # idempotent
        print("ok", peft.__version__)
    """,
        CUDA_VISIBLE_DEVICES="",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ok" in proc.stdout


_GL_SCRIPT = """
import numpy as np
import napari
from qtpy.QtWidgets import QApplication

viewer = napari.Viewer(show=True)  # an OpenGL context under Mesa
viewer.add_image(np.random.rand(64, 64))
QApplication.processEvents()
from napari_metalseg.models import build_phase_sam  # noqa: E402

model, _ = build_phase_sam("tiny", img_size=64, finetune="lora")  # segment_anything, torchvision, peft
import torch  # noqa: E402

optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
model(model.preprocess(torch.rand(1, 64, 64))).mean().backward()
optimizer.step()  # the first step imports torch._dynamo
viewer.close()
print("lora model trained")
"""


@pytest.mark.gui  # opens a napari viewer (needs a display or xvfb-run)
def test_triton_guard_prevents_segfault_with_napari_gl_context():
    """Without the guard, importing segment_anything/peft or stepping an optimizer after a napari viewer
    opened segfaults under Mesa (exit code -11 or 139)."""
    import shutil

    if os.environ.get("DISPLAY"):
        cmd = [sys.executable, "-c", _GL_SCRIPT]
    elif shutil.which("xvfb-run"):
        cmd = ["xvfb-run", "-a", "-s", "-screen 0 1280x1024x24", sys.executable, "-c", _GL_SCRIPT]
    else:
        pytest.fail("needs a display or xvfb-run (make test runs the suite under xvfb-run)")
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env, timeout=180)
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr[-2000:]}"
    assert "lora model trained" in proc.stdout


# ----------------------------------------------------------------------------------------------- builder


@pytest.mark.parametrize("kind", ["vit_b", "vit_l", "vit_h"])
def test_configs_match_official_builder(kind):
    from segment_anything import sam_model_registry

    with torch.device("meta"):
        official = sam_model_registry[kind]()
        ours = build_sam(kind, img_size=1024, num_phases=3)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in official.state_dict().items()}
    assert [b.window_size for b in ours.image_encoder.blocks] == [b.window_size for b in official.image_encoder.blocks]
    assert detect_kind(official.state_dict()) == kind


@pytest.mark.parametrize("size", [64, 128, 320])
def test_build_sam_sizes_consistent(size):
    sam = build_sam("tiny", img_size=size, num_phases=5)
    grid = size // 16
    assert sam.image_encoder.img_size == size
    assert sam.image_encoder.pos_embed.shape == (1, grid, grid, 96)
    assert tuple(sam.prompt_encoder.image_embedding_size) == (grid, grid)
    assert tuple(sam.prompt_encoder.input_image_size) == (size, size)
    assert sam.mask_decoder.num_mask_tokens == 6
    assert detect_kind(sam.state_dict()) == "tiny"


@pytest.mark.parametrize("size", [0, 32, 48, 100, 520.0, "512"])
def test_build_sam_rejects_bad_sizes(size):
    with pytest.raises(MetalsegError, match="img_size"):
        build_sam("tiny", img_size=size)


def test_build_rejects_unknown_names():
    with pytest.raises(MetalsegError, match="vit_x.*tiny, vit_b, vit_l, vit_h"):
        build_sam("vit_x")
    with pytest.raises(MetalsegError, match="guidance"):
        build_phase_sam("tiny", img_size=64, guidance="magic")
    with pytest.raises(MetalsegError, match="finetune"):
        build_phase_sam("tiny", img_size=64, finetune="partial")
    with pytest.raises(MetalsegError, match="phases"):
        build_phase_sam("tiny", img_size=64, num_phases=0)


@pytest.mark.parametrize("finetune", ["full", "decoder", "lora"])
def test_a_model_reports_its_spec_which_rebuilds_it(finetune):
    from napari_metalseg.models.spec import ModelSpec, builder_arguments

    model, _ = build_phase_sam("tiny", img_size=64, num_phases=K, guidance="ratio", finetune=finetune, lora_rank=4)
    spec = ModelSpec(**model.spec_fields(), phases=[{"name": f"p{k}"} for k in range(K)])
    assert spec.builder_arguments() == model.config
    assert spec.finetune == finetune and spec.lora_rank == (4 if finetune == "lora" else 8)
    rebuilt, _ = spec.build()
    assert rebuilt.signature() == model.signature()
    assert set(trainable_state_dict(rebuilt)) == set(trainable_state_dict(model))
    with pytest.raises(MetalsegError, match=r"unknown field\(s\) phases"):
        builder_arguments({**model.spec_fields(), "phases": []}, K)
    with pytest.raises(MetalsegError, match="'kind' is missing"):
        builder_arguments({"img_size": 64}, K)


def test_build_is_deterministic():
    a, _ = build_phase_sam("tiny", img_size=64, finetune="lora", guidance="ratio")
    b, _ = build_phase_sam("tiny", img_size=64, finetune="lora", guidance="ratio")
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a.signature() == b.signature()
    c, _ = build_phase_sam("tiny", img_size=64, finetune="lora", guidance="ratio", seed=1)
    assert c.signature() != a.signature()


# ----------------------------------------------------------------------------------------------- checkpoints


def test_official_checkpoint_loads_unchanged_at_1024(vit_b_file, vit_b_state):
    sam = build_sam("vit_b", img_size=1024, num_phases=3)
    report = load_sam_checkpoint(sam, vit_b_file, "vit_b")
    assert report.kind == "vit_b"
    assert report.loaded == len(vit_b_state) == len(sam.state_dict())
    assert report.interpolated == [] and report.reinitialised == [] and report.ignored == []
    for key, value in sam.state_dict().items():
        assert torch.equal(value, vit_b_state[key]), key


def test_official_checkpoint_at_512_interpolates_and_runs(vit_b_file, vit_b_state):
    model, report = build_phase_sam("vit_b", img_size=512, num_phases=3, checkpoint=str(vit_b_file))
    assert model.finetune_mode == "lora"
    enc = model.sam.image_encoder
    assert enc.pos_embed.shape == (1, 32, 32, 768)
    expected = F.interpolate(
        vit_b_state["image_encoder.pos_embed"].permute(0, 3, 1, 2),
        size=(32, 32),
        mode="bicubic",
        align_corners=False,
    ).permute(0, 2, 3, 1)
    torch.testing.assert_close(enc.pos_embed.detach(), expected)
    interpolated = {k for k, _ in report.interpolated}
    assert "image_encoder.pos_embed" in interpolated
    for i, block in enumerate(enc.blocks):
        src = vit_b_state[f"image_encoder.blocks.{i}.attn.rel_pos_h"]
        if i in (2, 5, 8, 11):
            assert block.window_size == 0
            assert block.attn.rel_pos_h.shape == block.attn.rel_pos_w.shape == (63, 64)
            assert f"image_encoder.blocks.{i}.attn.rel_pos_w" in interpolated
            ref = F.interpolate(src.T[None], size=63, mode="linear", align_corners=False)[0].T
            torch.testing.assert_close(block.attn.rel_pos_h.detach(), ref)
        else:
            assert block.window_size == 14
            assert torch.equal(block.attn.rel_pos_h.detach(), src)  # windowed: unchanged (27, 64)
    assert len(interpolated) == 1 + 4 * 2
    assert report.reinitialised == [] and report.ignored == []
    qkv = enc.blocks[0].attn.qkv.base_layer.weight  # loaded under the LoRA wrapper
    assert torch.equal(qkv, vit_b_state["image_encoder.blocks.0.attn.qkv.weight"])
    logits = _logits(model, model.preprocess(_images(1, 512)))
    assert logits.shape == (1, 3, 512, 512) and torch.isfinite(logits).all()


def test_wrong_kind_is_refused(vit_b_file):
    sam = build_sam("tiny", img_size=64)
    with pytest.raises(MetalsegError) as err:
        load_sam_checkpoint(sam, vit_b_file, "vit_l")
    msg = str(err.value)
    assert msg == f"{vit_b_file}: checkpoint is vit_b (768-dim, 12 blocks) but model vit_l was requested"


def test_tiny_checkpoint_requested_as_vit_b(tiny_file):
    with pytest.raises(MetalsegError, match=r"sam_tiny.pth: checkpoint is tiny \(96-dim, 4 blocks\) but model vit_b"):
        load_sam_checkpoint(build_sam("tiny", img_size=64), tiny_file, "vit_b")


@pytest.mark.parametrize("num_phases", [5, 2])
def test_other_number_of_phases(tiny_file, num_phases):
    src = torch.load(tiny_file, weights_only=True)
    sam = build_sam("tiny", img_size=256, num_phases=num_phases)
    fresh = {k: v.clone() for k, v in sam.state_dict().items()}
    report = load_sam_checkpoint(sam, tiny_file, "tiny")
    tokens = sam.mask_decoder.mask_tokens.weight.detach()
    rows = min(4, num_phases + 1)
    assert torch.equal(tokens[:rows], src["mask_decoder.mask_tokens.weight"][:rows])
    reinit = dict(report.reinitialised)
    if num_phases == 5:
        assert "rows 4..5" in reinit["mask_decoder.mask_tokens.weight"]
        assert torch.equal(tokens[4:], fresh["mask_decoder.mask_tokens.weight"][4:])
        assert "mask_decoder.iou_prediction_head.layers.2.weight" in reinit
        for i in (4, 5):
            key = f"mask_decoder.output_hypernetworks_mlps.{i}.layers.0.weight"
            assert "hypernetwork" in reinit[key]
            assert torch.equal(sam.state_dict()[key], fresh[key])
        assert torch.equal(
            sam.mask_decoder.output_hypernetworks_mlps[3].layers[0].weight.detach(),
            src["mask_decoder.output_hypernetworks_mlps.3.layers.0.weight"],
        )
        assert report.ignored == []
    else:
        assert reinit == {}
        assert "mask_decoder.output_hypernetworks_mlps.3.layers.0.weight" in report.ignored


@pytest.mark.parametrize(
    "wrapper,prefix",
    [("model_state", "sam."), ("model", "module."), ("state_dict", "module.sam."), (None, "model.sam.")],
)
def test_wrapped_and_prefixed_checkpoints_load(tmp_path, tiny_file, wrapper, prefix):
    src = torch.load(tiny_file, weights_only=True)
    inner = {prefix + k: v for k, v in src.items()}
    obj = {wrapper: inner, "optimizer_state": {"lr": 0.1}, "epoch": 3} if wrapper else inner
    path = tmp_path / "micro_sam_export.pt"
    torch.save(obj, path)
    sam = build_sam("tiny", img_size=256, num_phases=3)
    report = load_sam_checkpoint(sam, path, "tiny")
    assert report.loaded == len(src) and report.ignored == [] and report.reinitialised == []
    assert all(torch.equal(v, src[k]) for k, v in sam.state_dict().items())


def test_truncated_file_is_refused(tmp_path, tiny_file):
    data = tiny_file.read_bytes()
    path = tmp_path / "half.pth"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(MetalsegError, match=r"half\.pth: cannot read checkpoint: file is truncated or corrupt"):
        load_sam_checkpoint(build_sam("tiny", img_size=64), path, "tiny")
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(MetalsegError, match=r"empty\.pth: cannot read checkpoint"):
        load_sam_checkpoint(build_sam("tiny", img_size=64), empty, "tiny")


def test_non_sam_state_dict_is_refused(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.randn(8, 3, 3, 3), "fc.bias": torch.randn(10)}, path)
    with pytest.raises(MetalsegError, match=r"resnet\.pth: not a Segment Anything checkpoint"):
        load_sam_checkpoint(build_sam("tiny", img_size=64), path, "tiny")
    lst = tmp_path / "list.pth"
    torch.save([1, 2, 3], lst)
    with pytest.raises(MetalsegError, match=r"list\.pth: not a model state dict"):
        load_sam_checkpoint(build_sam("tiny", img_size=64), lst, "tiny")
    with pytest.raises(MetalsegError, match=r"missing\.pth: checkpoint file not found"):
        load_sam_checkpoint(build_sam("tiny", img_size=64), tmp_path / "missing.pth", "tiny")


class _Payload:
    """Unpickling this would create a directory: proof that a loader executed pickled code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def test_pickled_objects_are_refused_not_executed(tmp_path, tiny_file):
    marker = tmp_path / "code_was_executed"
    state = torch.load(tiny_file, weights_only=True)
    path = tmp_path / "evil.pth"
    torch.save({"model": state, "payload": _Payload(marker)}, path)
    with pytest.raises(MetalsegError, match=r"evil\.pth: refused: the file contains a pickled Python object"):
        load_sam_checkpoint(build_sam("tiny", img_size=256), path, "tiny")
    plain = tmp_path / "plain.pkl"
    plain.write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(MetalsegError, match=r"plain\.pkl: "):
        load_sam_checkpoint(build_sam("tiny", img_size=256), plain, "tiny")
    assert not marker.exists()


# ----------------------------------------------------------------------------------------------- LoRA


def _groups(model, trainable: bool) -> set[str]:
    return {parameter_group(n) for n, p in model.named_parameters() if p.requires_grad == trainable}


def test_lora_mode_trains_only_lora_decoder_guidance():
    model, _ = build_phase_sam("tiny", img_size=SIZE, finetune="lora", guidance="ratio")
    assert _groups(model, True) == {"lora", "decoder", "guidance"}
    assert _groups(model, False) == {"base"}
    for name, p in model.named_parameters():
        if name.startswith(("sam.image_encoder.", "sam.prompt_encoder.")) and "lora_" not in name:
            assert not p.requires_grad, name
    lora_a = [n for n, _ in model.named_parameters() if "lora_A" in n]
    assert len(lora_a) == 4 and all(".attn.qkv." in n for n in lora_a)
    total, trainable = count_parameters(model)
    assert 0 < trainable < total
    assert set(trainable_state_dict(model)) == {n for n, p in model.named_parameters() if p.requires_grad}


def test_lora_mlp_and_proj_targets():
    from napari_metalseg.models import apply_lora

    sam = build_sam("tiny", img_size=64)
    apply_lora(sam, rank=2, targets=("qkv", "proj"), include_mlp=True)
    names = {n.rsplit(".lora_A", 1)[0] for n, _ in sam.named_parameters() if "lora_A" in n}
    assert len(names) == 4 * 4
    assert {".".join(n.split(".")[-2:]) for n in names} == {"attn.qkv", "attn.proj", "mlp.lin1", "mlp.lin2"}
    assert not any("mask_decoder" in n for n in names)
    with pytest.raises(MetalsegError, match="LoRA targets"):
        apply_lora(build_sam("tiny", img_size=64), targets=("fc",))
    with pytest.raises(MetalsegError, match="lora_rank"):
        apply_lora(build_sam("tiny", img_size=64), rank=0)


def test_finetune_modes():
    model, _ = build_phase_sam("tiny", img_size=64, finetune="lora", guidance="spatial")
    set_finetune_mode(model, "decoder")
    assert _groups(model, True) == {"decoder", "guidance"}
    assert not any(parameter_group(k) in ("lora", "base") for k in trainable_state_dict(model))
    set_finetune_mode(model, "full")
    assert _groups(model, False) == set()
    assert trainable_state_dict(model).keys() == model.state_dict().keys()
    plain, _ = build_phase_sam("tiny", img_size=64)
    assert plain.finetune_mode == "full" and plain.lora is None
    with pytest.raises(ValueError, match="apply_lora"):
        set_finetune_mode(plain, "lora")


@pytest.fixture(scope="module")
def trained_lora():
    """A tiny LoRA model with guidance after a few optimizer steps, and a snapshot of its initial state."""
    model, _ = build_phase_sam("tiny", img_size=SIZE, finetune="lora", guidance="ratio", lora_rank=4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _train_steps(model, steps=3, ratios=torch.tensor([[0.5, 0.3, 0.2], [0.2, 0.2, 0.6]]))
    return model, before


def test_lora_training_keeps_base_frozen(trained_lora):
    model, before = trained_lora
    after = model.state_dict()
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    for key in after:
        if parameter_group(key) == "base":
            assert key not in changed, f"frozen weight changed: {key}"
    assert any("lora_A" in k for k in changed) and any("lora_B" in k for k in changed)
    assert all(k in changed for k in after if "lora_B" in k)
    assert any(k.startswith("sam.mask_decoder.") for k in changed)
    assert any(k.startswith("guidance_encoder.") for k in changed)


def test_trainable_state_roundtrip_safetensors(tmp_path, trained_lora):
    model, _ = trained_lora
    state = trainable_state_dict(model)
    assert state and not any(parameter_group(k) == "base" for k in state)
    assert not any(k.startswith(("sam.image_encoder.", "sam.prompt_encoder.")) and "lora_" not in k for k in state)
    path = tmp_path / "adapter.safetensors"
    save_file(state, str(path))
    fresh, _ = build_phase_sam(**{**model.config, "finetune": "lora"})
    x = model.preprocess(_images(2, SIZE, seed=3))
    r = torch.tensor([[0.3, 0.3, 0.4], [0.6, 0.2, 0.2]])
    assert not torch.equal(_logits(fresh, x, ratios=r), _logits(model, x, ratios=r))
    assert fresh.signature() != model.signature()
    load_trainable_state_dict(fresh, load_file(str(path)), source=str(path))
    assert torch.equal(_logits(fresh, x, ratios=r), _logits(model, x, ratios=r))
    assert fresh.signature() == model.signature()


def test_load_trainable_state_is_strict(trained_lora):
    model, _ = trained_lora
    state = {k: v.clone() for k, v in trainable_state_dict(model).items()}
    target, _ = build_phase_sam(**{**model.config, "finetune": "lora"})
    missing = dict(state)
    missing.pop(next(k for k in missing if "lora_B" in k))
    with pytest.raises(MetalsegError, match=r"run1\.safetensors: trained weights lack 1 tensor"):
        load_trainable_state_dict(target, missing, source="run1.safetensors")
    with pytest.raises(MetalsegError, match="does not have"):
        load_trainable_state_dict(target, {**state, "sam.image_encoder.neck.0.weight": torch.zeros(1)})
    other_k, _ = build_phase_sam(**{**model.config, "num_phases": 4, "finetune": "lora"})
    with pytest.raises(MetalsegError, match="trained weights are for 3 phases, the model has 4"):
        load_trainable_state_dict(other_k, state)
    wide = dict(state)
    key = next(k for k in wide if "lora_A" in k)
    wide[key] = torch.zeros(8, wide[key].shape[1])
    with pytest.raises(MetalsegError, match=f"tensor {key} has shape"):
        load_trainable_state_dict(target, wide)


def test_merge_lora_matches_adapted_model(trained_lora):
    model, _ = trained_lora
    merged = merge_lora(model)
    assert not any("lora_" in k or "base_layer" in k for k in merged)
    plain, _ = build_phase_sam(**{**model.config, "finetune": "full"}, seed=5)
    plain.load_state_dict(merged, strict=True)
    x = model.preprocess(_images(2, SIZE, seed=4))
    r = torch.tensor([[0.3, 0.3, 0.4], [0.6, 0.2, 0.2]])
    torch.testing.assert_close(_logits(plain, x, ratios=r), _logits(model, x, ratios=r), atol=1e-5, rtol=0)
    # the LoRA update is not trivially zero: the merged qkv differs from the frozen base weight
    base = model.sam.image_encoder.blocks[0].attn.qkv.base_layer.weight
    assert not torch.equal(merged["sam.image_encoder.blocks.0.attn.qkv.weight"], base)


def test_exported_full_model_loads_as_sam_checkpoint(tmp_path, trained_lora):
    model, _ = trained_lora
    merged = merge_lora(model)
    path = tmp_path / "model_full.safetensors"
    save_file(merged, str(path))
    sam = build_sam("tiny", img_size=SIZE, num_phases=K)
    report = load_sam_checkpoint(sam, path, "tiny")
    assert report.loaded == len(sam.state_dict()) and report.reinitialised == []
    assert report.ignored and all(k.startswith("guidance_encoder.") for k in report.ignored)
    assert torch.equal(
        sam.image_encoder.blocks[1].attn.qkv.weight, merged["sam.image_encoder.blocks.1.attn.qkv.weight"]
    )
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(MetalsegError, match=r"broken\.safetensors: cannot read checkpoint"):
        load_sam_checkpoint(sam, broken, "tiny")


# ----------------------------------------------------------------------------------------------- guidance


@pytest.mark.parametrize("cls", [RatioEncoder, SpatialRatioEncoder])
def test_guidance_identity_at_init(cls):
    enc = cls(K, 64)
    emb = torch.randn(2, 64, 8, 8)
    ratios = torch.tensor([[0.2, 0.3, 0.5], [1.0, 0.0, 0.0]])
    assert torch.equal(enc(emb, ratios), emb)
    assert enc(emb, None) is emb
    with torch.no_grad():
        for p in enc.parameters():
            p.normal_(std=0.1)
    out = enc(emb, ratios)
    assert out.shape == emb.shape and not torch.allclose(out, emb)
    assert not torch.allclose(out[0], enc(emb, ratios.flip(0))[0])  # depends on the ratios
    partial = enc(emb, torch.tensor([[0.2, 0.3, 0.5], [float("nan")] * 3]))
    assert torch.equal(partial[1], emb[1]) and torch.allclose(partial[0], out[0])
    with pytest.raises(ValueError, match="ratios must have shape"):
        enc(emb, torch.ones(2, K + 1))


def test_spatial_guidance_depends_on_position():
    enc = SpatialRatioEncoder(K, 16)
    with torch.no_grad():
        for p in enc.parameters():
            p.normal_(std=0.1)
    coords = SpatialRatioEncoder.coordinates(torch.zeros(1, 16, 4, 6))
    assert coords.shape == (1, 2, 4, 6)
    assert coords[0, 0, 0, 0] == -1 and coords[0, 0, 0, -1] == 1 and coords[0, 1, -1, 0] == 1
    delta = enc(torch.zeros(1, 16, 4, 4), torch.tensor([[0.2, 0.3, 0.5]]))
    assert not torch.allclose(delta[..., 0, 0], delta[..., 3, 3])


# ----------------------------------------------------------------------------------------------- PhaseSAM


@pytest.fixture(scope="module")
def guided_model():
    model, _ = build_phase_sam("tiny", img_size=SIZE, num_phases=K, guidance="spatial", finetune="full")
    return model.eval()


def test_preprocess_standardises_per_image(guided_model):
    gray = _images(2)
    x = guided_model.preprocess(gray)
    assert x.shape == (2, 3, SIZE, SIZE)
    assert torch.equal(x[:, 0], x[:, 2])
    torch.testing.assert_close(x.mean(dim=(1, 2, 3)), torch.zeros(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(x.std(dim=(2, 3), correction=0)[:, 0], torch.ones(2), atol=1e-2, rtol=0)
    # another instrument: darker and lower contrast -> (almost) the same model input
    torch.testing.assert_close(guided_model.preprocess(0.1 + 0.5 * gray[:, 0]), x, atol=1e-2, rtol=0)
    with pytest.raises(ValueError, match="grey images"):
        guided_model.preprocess(torch.rand(2, 3, SIZE, SIZE))


def test_forward_shapes_batch2(guided_model):
    x = guided_model.preprocess(_images(2))
    ratios = torch.tensor([[0.2, 0.3, 0.5], [0.6, 0.3, 0.1]])
    boxes = torch.tensor([[10.0, 10.0, 100.0, 90.0], [0.0, 0.0, 64.0, 64.0]])
    plain = _logits(guided_model, x)
    assert plain.shape == (2, K, SIZE, SIZE)
    for kw in ({"ratios": ratios}, {"boxes": boxes}, {"ratios": ratios, "boxes": boxes}):
        out = _logits(guided_model, x, **kw)
        assert out.shape == (2, K, SIZE, SIZE) and torch.isfinite(out).all()
    # fresh guidance is the identity; a box prompt changes the result
    assert torch.equal(_logits(guided_model, x, ratios=ratios), plain)
    boxed = _logits(guided_model, x, boxes=boxes)
    assert not torch.allclose(boxed, plain)
    # images are decoded independently: batch == one by one, NaN box row == no box
    single = torch.cat([_logits(guided_model, x[i : i + 1], boxes=boxes[i : i + 1]) for i in range(2)])
    torch.testing.assert_close(boxed, single, atol=1e-5, rtol=1e-5)
    mixed = _logits(guided_model, x, boxes=torch.tensor([[10.0, 10.0, 100.0, 90.0], [float("nan")] * 4]))
    torch.testing.assert_close(mixed[0], boxed[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mixed[1], plain[1], atol=1e-5, rtol=1e-5)


def test_embed_decode_split(guided_model):
    x = guided_model.preprocess(_images(2))
    with torch.no_grad():
        emb = guided_model.embed(x)
        assert emb.shape == (2, 64, SIZE // 16, SIZE // 16)
        torch.testing.assert_close(guided_model.decode(emb), _logits(guided_model, x))
        assert guided_model.decode(emb, out_size=(50, 70)).shape == (2, K, 50, 70)
        assert guided_model.decode(emb, out_size=(SIZE // 4, SIZE // 4)).shape == (2, K, SIZE // 4, SIZE // 4)
    with pytest.raises(ValueError, match="embed expects"):
        guided_model.embed(torch.zeros(1, 3, 64, 64))
    with pytest.raises(ValueError, match="boxes must have shape"):
        guided_model.decode(emb, boxes=torch.zeros(1, 4))


def test_ratios_without_guidance_are_refused():
    model, _ = build_phase_sam("tiny", img_size=64)
    x = model.preprocess(_images(1, 64))
    with pytest.raises(ValueError, match="without phase-fraction guidance"):
        model(x, ratios=torch.ones(1, K) / K)


def test_gradients_reach_lora_through_forward():
    model, _ = build_phase_sam("tiny", img_size=64, finetune="lora", guidance="ratio")
    model.train()
    x = model.preprocess(_images(2, 64))
    logits = model(x, ratios=torch.full((2, K), 1 / K), boxes=torch.tensor([[0.0, 0.0, 32.0, 32.0]] * 2))
    logits.sum().backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert all(g is not None for n, g in grads.items() if "lora_B" in n)
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)


def test_signature_tracks_weights():
    model, _ = build_phase_sam("tiny", img_size=64, finetune="lora")
    sig, enc = model.signature(), model.signature("encoder")
    assert sig.startswith("tiny-64-k3-none-") and enc.startswith("tiny-64-enc-")
    with torch.no_grad():
        model.sam.mask_decoder.mask_tokens.weight[0, 0] += 1
    assert model.signature() != sig and model.signature("encoder") == enc
    with torch.no_grad():
        model.sam.image_encoder.blocks[0].attn.qkv.lora_B["default"].weight[0, 0] += 1
    assert model.signature("encoder") != enc
    other, _ = build_phase_sam("tiny", img_size=80, finetune="lora")
    assert other.signature().startswith("tiny-80-")


def test_signature_fingerprints_large_frozen_tensors(monkeypatch):
    from napari_metalseg.models import phase_sam

    monkeypatch.setattr(phase_sam, "_FULL_HASH_NUMEL", 1000)  # tiny tensors count as "large" here
    monkeypatch.setattr(phase_sam, "_SAMPLES", 64)
    model, _ = build_phase_sam("tiny", img_size=64, finetune="lora")
    sig = model.signature("encoder")
    weight = model.sam.image_encoder.blocks[0].mlp.lin1.weight  # frozen, 36864 elements: sampled
    assert not weight.requires_grad and weight.numel() > 1000
    with torch.no_grad():
        weight.view(-1)[577] += 1  # on the sample grid (stride 36864 // 64 + 1)
    assert model.signature("encoder") != sig


def test_kinds_listed():
    assert SAM_KINDS == ("tiny", "vit_b", "vit_l", "vit_h")
