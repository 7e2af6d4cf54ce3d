"""The trainer: learning, progress events, stop/resume, the run format, LoRA on a frozen base."""

import json

import numpy as np
import pytest
import torch

from napari_metalseg.errors import MetalsegError
from napari_metalseg.runs import ADAPTER, CONFIG, load_run, read_run_config, save_run
from napari_metalseg.training import TrainConfig, box_from_mask, lr_factor, segmentation_loss, train, validate


def test_training_learns_far_above_untrained(trained_run, split_samples, synth_dataset):
    run, events = trained_run
    model, config = load_run(run)
    trained = validate(model, split_samples["test"], synth_dataset.phases, "cpu").average
    untrained_model, _ = config.spec.build()
    untrained = validate(untrained_model, split_samples["test"], synth_dataset.phases, "cpu").average
    print(f"held-out mean Dice: trained {trained:.1f} %, untrained {untrained:.1f} %")
    assert trained > untrained + 15
    assert trained > 40


def test_progress_events_and_run_files(trained_run):
    run, events = trained_run
    kinds = [e.kind for e in events]
    assert kinds[0] == "info" and kinds[-1] == "done"
    steps = [e for e in events if e.kind == "train"]
    assert [e.step for e in steps] == list(range(1, len(steps) + 1))
    assert all(np.isfinite(e.loss) and "lr" in e.metrics for e in steps)
    assert np.mean([e.loss for e in steps[-20:]]) < np.mean([e.loss for e in steps[:20]])
    val = [e for e in events if e.kind == "validate"]
    assert len(val) == 2
    assert set(val[-1].metrics["dice_per_phase"]) == {"ferrite", "martensite", "bainite"}
    assert all(k.startswith("x") for k in val[-1].metrics["by_magnification"])
    config = json.loads((run / CONFIG).read_text())
    assert config["model"]["kind"] == "tiny" and config["model"]["guidance"] == "ratio"
    assert config["training"]["steps"] == len(steps)
    assert config["metrics"]["source"] == "val"


def test_adapter_round_trip_gives_identical_predictions(trained_run, split_samples, tmp_path):
    from napari_metalseg.models.lora import trainable_state_dict
    from napari_metalseg.predict import Predictor

    run, _ = trained_run
    model, config = load_run(run)
    save_run(tmp_path / "copy", config.spec, trainable_state_dict(model))
    image = split_samples["test"][0].image
    a = Predictor.from_run(run, device="cpu").predict(image, ratios=[0.2, 0.5, 0.3])
    b = Predictor.from_run(tmp_path / "copy", device="cpu").predict(image, ratios=[0.2, 0.5, 0.3])
    assert np.array_equal(a.labels, b.labels)
    assert np.array_equal(a.probs, b.probs)


def test_ratio_guidance_steers_predicted_fractions(trained_run, split_samples):
    """The seed's "Effects of Ratio Encoding": raising a phase's input ratio raises its predicted amount."""
    from napari_metalseg.predict import Predictor

    run, _ = trained_run
    predictor = Predictor.from_run(run, device="cpu")
    images = [s.image for s in split_samples["test"] + split_samples["val"]]

    def mean_fractions(ratio):  # the guidance encoder alone: the labels are not given the fractions afterwards
        return np.mean(
            [predictor.predict(im, ratios=ratio, match_fractions=False).fractions() for im in images], axis=0
        )

    rises = []
    for k in range(3):
        low = [0.45, 0.45, 0.45]
        low[k] = 0.05
        high = [0.1, 0.1, 0.1]
        high[k] = 0.8
        lo, hi = mean_fractions(low)[k], mean_fractions(high)[k]
        print(f"phase {k}: fraction {lo:.3f} at ratio 0.05 -> {hi:.3f} at ratio 0.8")
        assert hi >= lo - 1e-3  # never the opposite direction (beyond a few pixels of a phase not learnt yet)
        rises.append(hi - lo)
    # Training feeds each crop its micrograph's fractions, which vary only from one training micrograph to the next,
    # so the encoder learns a prior, not "this view is 80 % ferrite": the rises are moderate. A 300-step CPU model may
    # not have learnt the rarest phase yet; the others must follow the ratio.
    assert sum(r > 0.04 for r in rises) >= 2, rises
    assert sum(rises) > 0.1, rises


def test_stop_and_resume(split_samples, synth_dataset, tmp_path):
    config = TrainConfig(steps=8, img_size=64, batch_size=1, device="cpu", val_every=100)
    calls = iter(range(100))
    events = list(
        train(split_samples["train"][:1], synth_dataset.phases, tmp_path / "run", config, stop=lambda: next(calls) >= 3)
    )
    assert events[-1].kind == "stopped" and events[-1].step == 3
    assert (tmp_path / "run" / ADAPTER).is_file()
    resumed = list(train(split_samples["train"][:1], synth_dataset.phases, tmp_path / "run", config, resume=True))
    assert any("resumed at step 3" in e.message for e in resumed[:3])  # after the scale and set-up notes
    assert [e.step for e in resumed if e.kind == "train"] == [4, 5, 6, 7, 8]
    assert resumed[-1].kind == "done"


def test_train_is_a_job_that_returns_the_run_directory(split_samples, synth_dataset, tmp_path):
    from napari_metalseg.progress import run_job
    from napari_metalseg.runs import is_run

    config = TrainConfig(model="unet", width=4, depth=2, steps=2, img_size=64, batch_size=1, device="cpu")
    events = []
    run = run_job(train(split_samples["train"][:1], synth_dataset.phases, tmp_path / "run", config), events.append)
    assert run == tmp_path / "run" and is_run(run)
    assert [e.kind for e in events if e.kind in ("done", "stopped")] == ["done"]
    samples, phases = split_samples["train"][:1], synth_dataset.phases
    stopped = run_job(train(samples, phases, tmp_path / "s", config, stop=lambda: True))
    assert stopped == tmp_path / "s" and is_run(stopped)


def test_crash_mid_save_keeps_previous_good_run(trained_run, tmp_path, monkeypatch):
    import safetensors.torch

    from napari_metalseg.models.lora import trainable_state_dict

    run, _ = trained_run
    model, config = load_run(run)
    target = tmp_path / "run"
    save_run(target, config.spec, trainable_state_dict(model), metrics={"mean_dice": 1.0})
    before = (target / ADAPTER).read_bytes(), (target / CONFIG).read_text()

    def crash(tensors, path, metadata=None):
        with open(path, "wb") as fh:
            fh.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", crash)
    with pytest.raises(OSError):
        save_run(target, config.spec, trainable_state_dict(model), metrics={"mean_dice": 2.0})
    assert ((target / ADAPTER).read_bytes(), (target / CONFIG).read_text()) == before
    assert sorted(p.name for p in target.iterdir()) == [ADAPTER, CONFIG]
    load_run(target)


def test_lora_training_keeps_base_frozen_and_records_it(split_samples, synth_dataset, tmp_path):
    from napari_metalseg.models.phase_sam import build_phase_sam
    from napari_metalseg.runs import sha256_file

    base, _ = build_phase_sam("tiny", img_size=64, num_phases=3, seed=7)
    ckpt = tmp_path / "tiny_base.pth"
    torch.save(base.sam.state_dict(), ckpt)
    config = TrainConfig(checkpoint=str(ckpt), img_size=64, steps=6, batch_size=2, device="cpu", lr=5e-3)
    assert config.finetune == "lora"
    events = list(train(split_samples["train"][:2], synth_dataset.phases, tmp_path / "lora", config, export_full=True))
    assert events[-1].kind == "done"
    model, cfg = load_run(tmp_path / "lora")
    assert cfg.spec.checkpoint_sha256 == sha256_file(ckpt)
    trained = model.state_dict()
    for key, value in base.sam.image_encoder.state_dict().items():
        key = f"sam.image_encoder.{key}"
        key = key.replace(".qkv.", ".qkv.base_layer.") if key not in trained else key
        assert torch.equal(trained[key], value), key
    from safetensors.torch import load_file

    adapter = load_file(str(tmp_path / "lora" / ADAPTER))
    assert any("lora_" in k for k in adapter)
    assert not any(k.startswith("sam.image_encoder.") and "lora_" not in k for k in adapter)
    assert any(not torch.equal(v, torch.zeros_like(v)) for k, v in adapter.items() if "lora_B" in k)
    full = load_file(str(tmp_path / "lora" / "model_full.safetensors"))
    assert not any("lora_" in k for k in full)


def test_config_errors():
    with pytest.raises(MetalsegError, match="needs a pretrained checkpoint"):
        TrainConfig(finetune="lora")
    with pytest.raises(MetalsegError, match="multiple of 16"):
        TrainConfig(img_size=100)
    with pytest.raises(MetalsegError, match="guidance 'magic' is unknown"):
        TrainConfig(guidance="magic")
    with pytest.raises(MetalsegError, match="run directory does not exist"):
        read_run_config("/nonexistent/run")


def test_run_config_is_typed_and_round_trips(tmp_path):
    from dataclasses import FrozenInstanceError

    from napari_metalseg.models.spec import ModelSpec
    from napari_metalseg.runs import RunConfig, is_run, require_run, write_run_config

    spec = ModelSpec(kind="elunet", img_size=64, phases=[{"name": "a", "color": "#000000"}, {"name": "b"}])
    assert (spec.width, spec.depth) == (8, 4)  # the CNN defaults are filled in
    config = RunConfig(spec=spec, training={"steps": 3, "train_images": ["x"]}, metrics={"mean_dice": np.float32(50)})
    with pytest.raises(FrozenInstanceError):
        config.spec = spec
    assert not is_run(tmp_path)
    write_run_config(tmp_path, config)
    assert require_run(tmp_path) == tmp_path and json.loads((tmp_path / CONFIG).read_text())["model"]["width"] == 8
    back = read_run_config(tmp_path)
    assert isinstance(back, RunConfig) and back.spec == spec and back.training == config.training
    assert back.metrics == {"mean_dice": 50.0} and back.format_version == config.format_version
    (tmp_path / CONFIG).write_text('{"model": {"kind": "elunet", "phases": "nope"}}')
    with pytest.raises(MetalsegError, match="unreadable run configuration"):
        read_run_config(tmp_path)
    with pytest.raises(MetalsegError, match=f"not a trained run \\({CONFIG} is missing\\)"):
        (tmp_path / "empty").mkdir()
        read_run_config(tmp_path / "empty")


def test_loss_ignores_unlabeled_and_schedule():
    logits = torch.zeros(1, 3, 4, 4, requires_grad=True)
    target = torch.full((1, 4, 4), 255)
    target[0, 0, 0] = 1
    loss = segmentation_loss(logits, target, 3)
    loss.backward()
    assert logits.grad[0, :, 1:, :].abs().sum() == 0  # unlabeled pixels get no gradient
    assert logits.grad[0, :, 0, 0].abs().sum() > 0
    factors = [lr_factor(s, 100, 0.1) for s in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert factors[-1] < 0.05 and all(a >= b for a, b in zip(factors[9:], factors[10:]))


def test_the_loss_of_ranks_sharing_a_batch_is_the_loss_and_gradient_of_the_whole_batch():
    """Two 'ranks' each holding half of a batch, their sums reduced over both (as torch.distributed would): each rank
    sees the whole batch's loss, and the mean of their gradients (what DistributedDataParallel applies) is the whole
    batch's gradient; without the reduction the halves' gradients are not."""
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 3, 8, 8, generator=generator)
    target = torch.randint(0, 3, (4, 8, 8), generator=generator)
    target[1, :4] = 255  # unequal labelled pixels per rank: the cross-entropy's normaliser is the global count
    whole = logits.clone().requires_grad_(True)
    expected = segmentation_loss(whole, target, 3)
    expected.backward()

    halves = [logits[:2].clone().requires_grad_(True), logits[2:].clone().requires_grad_(True)]
    targets = [target[:2], target[2:]]
    local = [_local_sums(half.detach(), t) for half, t in zip(halves, targets)]

    def reduce_over(rank):  # what torch.distributed's all-reduce hands rank ``rank``: its sums plus the other's
        return lambda tensor: (tensor + local[1 - rank], 2)

    losses = [segmentation_loss(halves[r], targets[r], 3, reduce=reduce_over(r)) for r in (0, 1)]
    for loss in losses:
        assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-6)
        loss.backward()
    averaged = torch.cat([h.grad for h in halves]) / 2
    torch.testing.assert_close(averaged, whole.grad, rtol=1e-5, atol=1e-7)
    alone = [logits[:2].clone().requires_grad_(True), logits[2:].clone().requires_grad_(True)]
    for half, t in zip(alone, targets):
        segmentation_loss(half, t, 3).backward()
    assert not torch.allclose(torch.cat([h.grad for h in alone]) / 2, whole.grad, rtol=1e-3)


def _local_sums(logits, target):
    """The sums one rank contributes to the global loss (what it hands to the reduction)."""
    captured = []
    segmentation_loss(logits, target, 3, reduce=lambda t: (captured.append(t) or t, 1))
    return captured[0]


def test_box_from_mask_covers_one_region():
    mask = np.full((40, 40), 255, np.uint8)
    mask[5:15, 5:25] = 1
    box = box_from_mask(mask, np.random.default_rng(0), jitter=0.0)
    assert box.tolist() == [5, 5, 25, 15]


def test_guided_batches_carry_the_fractions_of_the_crops_micrograph():
    """A crop shows a part of its micrograph, but a user gives the fractions of the whole micrograph at prediction
    time: training feeds those, so the guidance encoder learns the prior it is later given (not a crop's content)."""
    from napari_metalseg.data.samples import CropSampler, Sample
    from napari_metalseg.phases import phase_fractions
    from napari_metalseg.training.batches import make_batch

    halves = np.zeros((256, 256), np.uint8)
    halves[:, 128:] = 1  # 50 % / 50 %, but a 32 px crop mostly shows one half
    quarters = np.zeros((256, 256), np.uint8)
    quarters[:, 64:] = 2  # 25 % / 0 % / 75 %
    image = np.random.default_rng(0).random((256, 256), np.float32)
    samples = [Sample(name, image, mask) for name, mask in (("a", halves), ("b", quarters))]
    sampler = CropSampler(samples, 32, 3, seed=0, augment=False)
    config = TrainConfig(model="elunet", guidance="ratio", batch_size=16, ratio_noise=0.0, ratio_dropout=0.0, seed=3)
    wholes = [np.array([0.5, 0.5, 0.0]), np.array([0.25, 0.0, 0.75])]
    crop_fractions = []
    for step in range(3):
        _, masks, ratios, _ = make_batch(sampler, config, 3, step=step)
        for mask, ratio in zip(masks, ratios, strict=True):
            assert any(np.allclose(ratio, w, atol=1e-6) for w in wholes), ratio
            crop_fractions.append(phase_fractions(mask, 3))
    # the crops themselves are far from their micrograph's fractions, so the test tells the two apart
    assert max(min(np.abs(c - w).max() for w in wholes) for c in crop_fractions) > 0.3
