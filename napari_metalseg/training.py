"""The trainer: one GUI-agnostic loop driven by the CLI and the napari worker alike.

:func:`train` is a generator of :class:`~napari_metalseg.progress.ProgressEvent`; it honours a cooperative stop
request and a wall-clock budget, validates periodically, keeps the best validated model in the run directory
(atomically) and can resume. It trains every family of :mod:`napari_metalseg.models.registry` the same way: the
gradient families (SAM, the CNNs) through one loop, the classical pixel classifier through its one-call fit.
It is ready for ``torch.distributed``: no global state, sampling seeded per rank, only rank 0 validates and writes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from napari_metalseg.data.samples import CropSampler, Sample, holdout_pixels, normalize_contrast
from napari_metalseg.errors import MetalsegError
from napari_metalseg.models.options import check_finetune, check_positive_number, check_training_guidance
from napari_metalseg.models.registry import (
    DEFAULT_BUDGET_S,
    DEFAULT_IMG_SIZE,
    DEFAULT_MODEL,
    FAMILIES,
    TRAIN_DEFAULTS,
    check_model_options,
    family_of,
)
from napari_metalseg.models.sam import check_img_size
from napari_metalseg.phases import UNLABELED, PhaseSet, phase_fractions
from napari_metalseg.progress import ProgressEvent


@dataclass
class TrainConfig:
    """Training arguments (the CLI flags and the training widget's fields map one-to-one onto these)."""

    model: str | None = None
    checkpoint: str | None = None
    img_size: int | None = None
    width: int | None = None
    depth: int | None = None
    budget_s: float | None = None
    finetune: str | None = None
    lora_rank: int = 8
    lora_alpha: float | None = None
    lora_dropout: float = 0.0
    lora_mlp: bool = False
    guidance: str = "none"
    steps: int | None = None
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    weight_decay: float = 1e-2
    warmup: float = 0.05
    val_every: int | None = None
    device: str = "auto"
    seed: int = 0
    augment: bool = True
    holdout: float = 0.1
    bf16: bool | None = None
    ratio_noise: float = 0.05
    ratio_dropout: float = 0.25
    box_probability: float = 0.5

    def __post_init__(self) -> None:
        needs_base = self.finetune in ("lora", "decoder") and not self.checkpoint
        if needs_base and (self.model is None or family_of(self.model).name == "sam"):
            raise MetalsegError(
                f"finetune {self.finetune!r} needs a pretrained checkpoint (the base it adapts); "
                "without one use finetune 'full'"
            )
        if self.model is None:  # the measured CPU default, or the SAM kind of the checkpoint
            self.model = checkpoint_kind(self.checkpoint) if self.checkpoint else DEFAULT_MODEL
        family = family_of(self.model)
        check_training_guidance(self.guidance)
        check_model_options(
            self.model,
            guidance=self.encoder_guidance,
            finetune=self.finetune,
            checkpoint=self.checkpoint,
            boxes=self.uses_boxes,
        )
        if family.name != "sam":
            self.finetune = "full"
        if family.name == "cnn" and self.steps is None and self.epochs is None and self.budget_s is None:
            self.budget_s = DEFAULT_BUDGET_S
        self.batch_size = TRAIN_DEFAULTS[family.name]["batch_size"] if self.batch_size is None else self.batch_size
        self.lr = TRAIN_DEFAULTS[family.name]["lr"] if self.lr is None else self.lr
        if self.finetune is None:
            self.finetune = "lora" if self.checkpoint else "full"
        check_finetune(self.finetune)
        if self.img_size is None:
            self.img_size = DEFAULT_IMG_SIZE[self.model]
        check_img_size(self.img_size)
        if self.budget_s is not None:
            check_positive_number("budget_s", self.budget_s, "seconds")
        cnns = "/".join(FAMILIES["cnn"].kinds)
        for name in ("width", "depth"):
            value = getattr(self, name)
            if value is not None and (family.name != "cnn" or value < 1):
                raise MetalsegError(f"{name} {value}: applies to {cnns} only, as a positive number")
        for name in ("steps", "epochs", "batch_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise MetalsegError(f"{name} {value}: must be at least 1")
        check_positive_number("lr", self.lr)

    @property
    def encoder_guidance(self) -> str:
        """The guidance module: ``"none"``, ``"ratio"`` or ``"spatial"``."""
        return self.guidance.split("+")[0] if self.guidance != "box" else "none"

    @property
    def uses_boxes(self) -> bool:
        return "box" in self.guidance

    def total_steps(self, samples: list[Sample]) -> int:
        """Optimizer steps of the run: ``steps``, else ``epochs`` (10 by default) over the training pixels; with a
        time budget and neither given, as many as the budget allows (the schedule follows the clock)."""
        if self.steps is not None:
            return self.steps
        if self.budget_s is not None and self.epochs is None:
            return UNTIL_BUDGET
        pixels = sum(s.image.size for s in samples)
        per_epoch = max(1, math.ceil(pixels / (self.img_size**2) / self.batch_size))
        return per_epoch * (self.epochs or 10)


def model_spec(config: TrainConfig, phases: PhaseSet):
    """The :class:`~napari_metalseg.runs.ModelSpec` a run of ``config`` writes (the base checkpoint by path and
    sha256)."""
    from napari_metalseg.runs import ModelSpec, sha256_file

    return ModelSpec(
        kind=config.model,
        img_size=config.img_size,
        phases=phases.to_json(),
        finetune=config.finetune,
        guidance=config.encoder_guidance,
        lora_rank=config.lora_rank,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        lora_mlp=config.lora_mlp,
        checkpoint=str(Path(config.checkpoint).resolve()) if config.checkpoint else None,
        checkpoint_sha256=sha256_file(config.checkpoint) if config.checkpoint else None,
        width=config.width,
        depth=config.depth,
    )


UNTIL_BUDGET = 10**9
""":meth:`TrainConfig.total_steps` of a run that ends when its time budget is spent (no step count)."""


def use_bf16(config: TrainConfig, device: str) -> bool:
    """bfloat16 autocast in training: on CUDA always; on a CPU with native bf16 (AVX512-BF16 / AMX) for the CNNs
    (1.4-1.5x faster steps measured here); ``config.bf16`` overrides."""
    if config.bf16 is not None:
        return bool(config.bf16)
    if device.startswith("cuda"):
        return True
    if family_of(config.model).name != "cnn":
        return False
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a private torch check: absent or failing means no
        return False


def checkpoint_kind(checkpoint: str) -> str:
    """The SAM kind (``vit_b``, ...) of a checkpoint file, from its tensor shapes."""
    from napari_metalseg.models.checkpoint import detect_kind, read_sam_state_dict

    if not Path(checkpoint).is_file():
        raise MetalsegError(f"checkpoint {checkpoint}: no such file")
    return detect_kind(read_sam_state_dict(checkpoint))


def _rank() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def lr_factor(step: int, total: int, warmup: float) -> float:
    """Linear warm-up over ``warmup * total`` steps, then polynomial (power 0.9) decay to 0."""
    warm = max(1, int(round(warmup * total)))
    if step < warm:
        return (step + 1) / warm
    return max(0.0, 1 - (step - warm) / max(1, total - warm)) ** 0.9


def time_lr_factor(elapsed: float, budget: float, warmup: float) -> float:
    """The schedule of :func:`lr_factor` on the clock: linear warm-up over the first ``warmup`` of the budget
    (from 1 %), then polynomial (power 0.9) decay reaching 0 when ``budget`` seconds are spent."""
    frac = min(1.0, max(0.0, elapsed / budget))
    if frac < warmup:
        return max(0.01, frac / warmup)
    return max(0.0, 1 - (frac - warmup) / max(1e-9, 1 - warmup)) ** 0.9


def deep_supervision_loss(outputs, target, num_phases: int, aux_weight: float = 0.4):
    """Loss of a model output: a logits tensor, or ``[main, aux, ...]`` (deep supervision) where every auxiliary
    output is upsampled to the target size and weighted by ``aux_weight``."""
    import torch.nn.functional as F

    if not isinstance(outputs, (list, tuple)):
        return segmentation_loss(outputs.float(), target, num_phases)
    loss = segmentation_loss(outputs[0].float(), target, num_phases)
    for aux in outputs[1:]:
        if tuple(aux.shape[2:]) != tuple(target.shape[1:]):
            aux = F.interpolate(aux.float(), size=tuple(target.shape[1:]), mode="bilinear", align_corners=False)
        loss = loss + aux_weight * segmentation_loss(aux.float(), target, num_phases)
    return loss


def segmentation_loss(logits, target, num_phases: int):
    """Cross-entropy + soft Dice, both ignoring unlabeled (255) pixels."""
    import torch
    import torch.nn.functional as F

    ce = F.cross_entropy(logits, target, ignore_index=UNLABELED) if (target != UNLABELED).any() else logits.sum() * 0
    valid = (target != UNLABELED).unsqueeze(1).float()
    probs = torch.softmax(logits.float(), dim=1) * valid
    onehot = F.one_hot(torch.where(target == UNLABELED, 0, target), num_phases).permute(0, 3, 1, 2).float() * valid
    inter = (probs * onehot).sum(dim=(0, 2, 3))
    denom = probs.sum(dim=(0, 2, 3)) + onehot.sum(dim=(0, 2, 3))
    dice = (2 * inter + 1) / (denom + 1)
    return ce + (1 - dice.mean())


def box_from_mask(mask: np.ndarray, rng: np.random.Generator, jitter: float = 0.1) -> np.ndarray | None:
    """A box prompt around one ground-truth phase region of ``mask``, with jitter (x0, y0, x1, y1)."""
    from scipy import ndimage

    present = [k for k in np.unique(mask) if k != UNLABELED]
    if not present:
        return None
    phase = present[rng.integers(len(present))]
    regions, n = ndimage.label(mask == phase)
    objects = ndimage.find_objects(regions)
    sl = objects[int(rng.integers(n))]
    y0, y1, x0, x1 = sl[0].start, sl[0].stop, sl[1].start, sl[1].stop
    bh, bw = y1 - y0, x1 - x0
    h, w = mask.shape
    d = rng.uniform(-jitter, jitter, 4) * np.array([bw, bh, bw, bh])
    box = np.array([x0, y0, x1, y1], float) + d
    box[[0, 2]] = np.clip(box[[0, 2]], 0, w)
    box[[1, 3]] = np.clip(box[[1, 3]], 0, h)
    if box[2] - box[0] < 4 or box[3] - box[1] < 4:
        box = np.array([max(0, x0 - 2), max(0, y0 - 2), min(w, x1 + 2), min(h, y1 + 2)], float)
    return box


def _batch(sampler: CropSampler, config: TrainConfig, num_phases: int, rng: np.random.Generator):
    """Images (B, H, W), targets (B, H, W), ratios (B, K) or None, boxes (B, 4) or None."""
    crops = [sampler.sample() for _ in range(config.batch_size)]
    images = np.stack([c[0] for c in crops])
    masks = np.stack([c[1] for c in crops])
    ratios = None
    if config.encoder_guidance != "none" and rng.random() >= config.ratio_dropout:
        vectors = []
        for m in masks:
            r = phase_fractions(m, num_phases)
            r = np.full(num_phases, 1 / num_phases) if r is None else r
            r = np.clip(r + rng.normal(0, config.ratio_noise, num_phases), 0, None)
            vectors.append(r / max(r.sum(), 1e-6))
        ratios = np.stack(vectors).astype(np.float32)
    boxes = None
    if config.uses_boxes and rng.random() < config.box_probability:
        found = [box_from_mask(m, rng) for m in masks]
        if all(b is not None for b in found):
            boxes = np.stack(found).astype(np.float32)
            for m, b in zip(masks, boxes):  # the loss only sees the inside of the box
                inside = np.zeros(m.shape, bool)
                inside[int(b[1]) : int(np.ceil(b[3])), int(b[0]) : int(np.ceil(b[2]))] = True
                m[~inside] = UNLABELED
    return images, masks, ratios, boxes


def validate(model, samples: list[Sample], phases: PhaseSet, device: str, ratios: bool = False):
    """Evaluate ``model`` on whole images (tiled); with ``ratios`` each image gets its true phase fractions."""
    from napari_metalseg.metrics import Evaluation
    from napari_metalseg.predict import Predictor

    predictor = Predictor(model, phases, device=device, cache_size=0)
    evaluation = Evaluation(phases.names)
    for s in samples:
        r = phase_fractions(s.mask, len(phases)) if ratios else None
        evaluation.add(s.name, predictor.predict(s.image, ratios=r).labels, s.mask, s.magnification)
    return evaluation


def train(
    samples: list[Sample],
    phases: PhaseSet,
    out: str | Path,
    config: TrainConfig,
    val_samples: list[Sample] | None = None,
    stop: Callable[[], bool] | None = None,
    resume: bool = False,
    export_full: bool = False,
) -> Iterator[ProgressEvent]:
    """Train a phase-segmentation model; yields progress events; writes the run directory ``out``.

    Parameters
    ----------
    samples : list of Sample
        Training images with (partial) masks; unlabeled pixels (255) are ignored by the loss.
    phases : PhaseSet
    out : path
        Run directory (:mod:`napari_metalseg.runs`: configuration, weights, metrics history, resume state).
    config : TrainConfig
    val_samples : list of Sample, optional
        Held-out images for validation; the best validated model is kept. Without them, ``config.holdout`` of the
        labelled pixels (whole 32 px squares) are set aside for validation instead (:func:`holdout_pixels`); with
        ``holdout=0`` the last model is kept.
    stop : callable, optional
        Polled every step; when it returns True the run saves and ends with a ``"stopped"`` event.
    resume : bool
        Continue from ``out/resume.pt`` when it exists.
    export_full : bool
        Also write ``model_full.safetensors``: LoRA merged into the base, a stand-alone model.

    Yields
    ------
    ProgressEvent
        ``"info"`` (set-up), ``"train"`` (every step: loss, lr), ``"validate"`` (Dice per phase and
        magnification), then ``"done"`` or ``"stopped"`` with the run directory in ``message``.
    """
    import torch

    from napari_metalseg.models.lora import count_parameters, trainable_state_dict
    from napari_metalseg.predict import resolve_device
    from napari_metalseg.runs import RESUME, is_run, save_run

    out = Path(out)
    if not samples:
        raise MetalsegError("no labelled images to train on")
    rank, world = _rank()
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng([config.seed, rank])
    spec = model_spec(config, phases)
    val_set = val_samples if val_samples else None
    source = "val"
    training = {k: v for k, v in asdict(config).items()} | {
        "train_images": [s.name for s in samples],
        "val_images": [s.name for s in val_set or []],
    }
    if val_set is None and config.holdout > 0:
        samples, held = holdout_pixels(samples, len(phases), config.holdout, seed=config.seed)
        if held:
            val_set, source = held, "held-out pixels"
            training["val_images"] = f"{config.holdout:.0%} of the labelled pixels of the training images"
    source = source if val_set else "train"
    if not family_of(config.model).gradient:
        yield from _fit_once(samples, phases, out, config, spec, val_set, source, training, rank)
        return
    model, report = spec.build(device, seed=config.seed)
    total_params, trainable_params = count_parameters(model)
    yield ProgressEvent(
        "info",
        message=f"{config.model} at {config.img_size}px, {config.finetune} fine-tuning: "
        f"{trainable_params:,} of {total_params:,} parameters trainable on {device}"
        + (f"; {report.summary()}" if report is not None else "")
        + (f"; budget {config.budget_s:g} s" if config.budget_s else ""),
        metrics={"parameters": total_params, "trainable": trainable_params},
    )
    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    total = config.total_steps(samples)
    budget = config.budget_s
    start, history, best, spent = 0, [], -1.0, 0.0
    if resume and (out / RESUME).is_file():
        state = torch.load(out / RESUME, map_location=device, weights_only=True)
        from napari_metalseg.models.lora import load_trainable_state_dict

        load_trainable_state_dict(model, state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start, best, spent = int(state["step"]), float(state["best"]), float(state.get("seconds", 0.0))
        rng = np.random.default_rng([config.seed, rank, start])
        yield ProgressEvent("info", step=start, total=total, message=f"resumed at step {start}")
    crops_from = samples
    if getattr(model, "contrast", None) == "image":  # as the predictor does for every micrograph it is given
        crops_from = [replace(s, image=normalize_contrast(s.image)) for s in samples]
    sampler = CropSampler(
        crops_from, config.img_size, len(phases), seed=int(rng.integers(2**31)), augment=config.augment
    )
    val_every = config.val_every or max(1, total // 5)
    val_seconds = budget / 5 if budget else None
    amp = use_bf16(config, device)
    last_metrics: dict = {}
    t0 = time.perf_counter() - spent
    next_val = spent + val_seconds if val_seconds else None

    def save(metrics: dict) -> None:
        if rank == 0:
            save_run(out, spec, trainable_state_dict(model), training=training, metrics=metrics, history=history)

    def save_resume(step: int) -> None:
        if rank == 0:
            from napari_metalseg.io.atomic import atomic_path

            with atomic_path(out / RESUME) as tmp:
                torch.save(
                    {
                        "model": trainable_state_dict(model),
                        "optimizer": optimizer.state_dict(),
                        "step": step,
                        "best": best,
                        "seconds": time.perf_counter() - t0,
                    },
                    tmp,
                )

    def factor(step: int) -> float:
        if total == UNTIL_BUDGET:
            return time_lr_factor(time.perf_counter() - t0, budget, config.warmup)
        return lr_factor(step, total, config.warmup)

    step = start
    while step < total:
        if stop is not None and stop():
            if val_set is None or not is_run(out):
                save(last_metrics)
            save_resume(step)
            yield ProgressEvent("stopped", step, total, message=str(out))
            return
        model.train()
        images, masks, ratios, boxes = _batch(sampler, config, len(phases), rng)
        x = model.preprocess(torch.from_numpy(images).to(device))
        target = torch.from_numpy(masks).long().to(device)
        r = torch.from_numpy(ratios).to(device) if ratios is not None else None
        b = torch.from_numpy(boxes).to(device) if boxes is not None else None
        lr = config.lr * factor(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        with torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=amp):
            outputs = net(x, ratios=r, boxes=b)
        loss = deep_supervision_loss(outputs, target, len(phases))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        loss_value = float(loss.detach())
        if not math.isfinite(loss_value):
            save_resume(step)
            raise MetalsegError(
                f"training diverged at step {step + 1} (loss {loss_value}); the last good run in "
                f"{out} is kept; try a lower learning rate (lr)"
            )
        step += 1
        elapsed = time.perf_counter() - t0
        out_of_time = budget is not None and elapsed >= budget
        shown_total = total
        if total == UNTIL_BUDGET:  # estimated from the pace so far
            shown_total = step if out_of_time else max(step + 1, int(round(step * budget / max(elapsed, 1e-6))))
        history.append({"step": step, "loss": loss_value, "lr": lr, "seconds": round(elapsed, 3)})
        yield ProgressEvent(
            "train", step, shown_total, loss_value, {"lr": lr, "seconds": elapsed}, message=f"loss {loss_value:.4f}"
        )
        last = step == total or out_of_time
        due = (elapsed >= next_val) if next_val is not None else step % val_every == 0
        if due or last:
            if next_val is not None:
                next_val += val_seconds
            model.eval()
            if rank == 0:
                evaluation = validate(model, val_set or samples, phases, device)
                last_metrics = _metrics(evaluation, source)
                history.append({"step": step, **last_metrics})
                score = last_metrics["mean_dice"]
                if val_set is None or score > best or not is_run(out):
                    best = max(best, score) if math.isfinite(score) else best
                    save(last_metrics)
                yield ProgressEvent(
                    "validate",
                    step,
                    shown_total,
                    loss_value,
                    last_metrics,
                    message=f"{last_metrics['source']} mean Dice {last_metrics['mean_dice']:.2f}%",
                )
            save_resume(step)
        if last:
            total = step
            break
    if export_full and rank == 0 and family_of(config.model).name == "sam":
        from napari_metalseg.models.lora import merge_lora
        from napari_metalseg.runs import export_full_model

        export_full_model(out, merge_lora(model))
    yield ProgressEvent("done", total, total, metrics=last_metrics, message=str(out))


CLASSICAL_FIT = {"n_estimators": 60, "num_leaves": 31, "learning_rate": 0.15, "max_pixels": 120_000}
"""LightGBM settings of a trained classical classifier: more and larger trees than the live preview's, which must
refit within a second (docs/quality.md compares both)."""


def _fit_once(
    samples: list[Sample],
    phases: PhaseSet,
    out: Path,
    config: TrainConfig,
    spec,
    val_set,
    source: str,
    training: dict,
    rank: int,
) -> Iterator[ProgressEvent]:
    """Train a family fitted in one call (the classical pixel classifier): fit, validate, write the run."""
    from napari_metalseg.models.classical import fit_classifier
    from napari_metalseg.runs import save_run

    t0 = time.perf_counter()
    yield ProgressEvent("info", message=f"{config.model}: fitting on the labelled pixels of {len(samples)} image(s)")
    model = fit_classifier(samples, len(phases), tile_size=config.img_size, seed=config.seed, **CLASSICAL_FIT)
    seconds = time.perf_counter() - t0
    history = [{"step": 1, "seconds": round(seconds, 3)}]
    yield ProgressEvent(
        "train",
        1,
        1,
        metrics={"seconds": seconds, "parameters": model.n_parameters},
        message=f"fitted in {seconds:.1f} s",
    )
    metrics: dict = {}
    if rank == 0:
        metrics = _metrics(validate(model, val_set or samples, phases, "cpu"), source)
        history.append({"step": 1, **metrics})
        save_run(out, spec, model, training=training | {"fit_seconds": seconds}, metrics=metrics, history=history)
        yield ProgressEvent(
            "validate", 1, 1, metrics=metrics, message=f"{metrics['source']} mean Dice {metrics['mean_dice']:.2f}%"
        )
    yield ProgressEvent("done", 1, 1, metrics=metrics, message=str(out))


def _metrics(evaluation, source: str) -> dict:
    return {
        "source": source,
        "mean_dice": evaluation.average,
        "by_magnification": evaluation.by_magnification(),
        "dice_per_phase": evaluation.dice_per_phase(),
    }
