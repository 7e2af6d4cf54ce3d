"""The gradient loop shared by every gradient family (SAM, the CNNs): one optimizer step after the other, periodic
validation, a cooperative stop, a wall-clock budget, resuming, and starting from the weights of another run."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import replace

from napari_metalseg.data.samples import HELD_OUT, CropSampler, normalize_contrast
from napari_metalseg.errors import MetalsegError
from napari_metalseg.models.registry import family_of
from napari_metalseg.progress import ProgressEvent
from napari_metalseg.training.averaging import WeightAverage
from napari_metalseg.training.batches import make_batch
from napari_metalseg.training.checkpoints import RunKeeper
from napari_metalseg.training.config import use_bf16
from napari_metalseg.training.losses import deep_supervision_loss
from napari_metalseg.training.one_call import fit_companion
from napari_metalseg.training.plan import RunPlan
from napari_metalseg.training.pseudo import mark_open, pseudo_label_loss, split_target, teacher_labels
from napari_metalseg.training.schedule import Pace
from napari_metalseg.training.validation import metrics_of, validate


def fit_gradient(
    plan: RunPlan, stop: Callable[[], bool] | None = None, resume: bool = False, export_full: bool = False
) -> Iterator[ProgressEvent]:
    """Train the model of ``plan`` by gradient descent (AdamW, gradient clipping, warm-up and decay); the moving
    average of its weights (:class:`~napari_metalseg.training.averaging.WeightAverage`) is validated and kept.

    Yields the events of :func:`napari_metalseg.training.train`; see there for ``stop``, ``resume`` and
    ``export_full``.
    """
    import torch

    from napari_metalseg.distributed import Agreement

    config = plan.config
    model, report = plan.spec.build(plan.device, seed=config.seed)
    yield _setup_event(model, report, plan)
    if config.init_from is not None:
        yield _initialise(model, plan)
    net = _distributed(model, plan)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    total = config.total_steps(plan.samples)
    average = WeightAverage(model, decay=config.ema)
    keeper = RunKeeper(plan=plan, model=model, optimizer=optimizer, average=average)
    agree = Agreement(world=plan.world, device=plan.device)
    start, spent = 0, 0.0
    resumed = keeper.resume() if resume else None
    if resumed is not None:
        start, spent = resumed
        yield ProgressEvent("info", step=start, total=total, message=f"resumed at step {start}")
    sampler = _sampler(model, plan)
    amp = use_bf16(config, plan.device)
    if plan.spec.pooled:  # fitted before the network's clock starts: the budget is the network's training time
        yield from fit_companion(plan)
    teacher = average if config.pseudo > 0 else None  # labels the pixels left unlabelled (training/pseudo.py)
    pace = Pace(total=total, budget=config.budget_s, warmup=config.warmup, val_every=config.val_every, spent=spent)
    step, ended = start, None
    while step < total:
        stopping, clock = agree.before_step(stop is not None and stop(), pace.elapsed())
        if stopping:
            with average.applied():
                keeper.keep_on_stop(step)
            keeper.save_resume(step, pace.elapsed())
            if plan.spec.pooled and plan.rank == 0 and keeper.best >= 0:
                yield from _choose_pool(plan, keeper, step)
            keeper.finish(step, pace.elapsed(), "stopped")
            yield ProgressEvent("stopped", step, total, message=str(plan.out))
            return
        model.train()
        batch = make_batch(sampler, config, len(plan.phases), step=step, rank=plan.rank, world=plan.world)
        lr = config.lr * pace.lr_factor(step, clock)
        loss_value = _optimizer_step(model, net, optimizer, params, batch, lr=lr, plan=plan, amp=amp, teacher=teacher)
        average.update()
        elapsed = pace.elapsed()
        loss_value, out_of_time, due = agree.step(
            loss_value, out_of_time=pace.out_of_time(elapsed), validate=pace.validation_due(step + 1, elapsed)
        )
        if not math.isfinite(loss_value):
            keeper.save_resume(step, pace.elapsed())
            raise MetalsegError(
                f"training diverged at step {step + 1} (loss {loss_value}); the last good run in "
                f"{plan.out} is kept; try a lower learning rate (lr)"
            )
        step += 1
        shown_total = pace.shown_total(step, elapsed)
        keeper.history.append({"step": step, "loss": loss_value, "lr": lr, "seconds": round(elapsed, 3)})
        yield ProgressEvent(
            "train", step, shown_total, loss_value, {"lr": lr, "seconds": elapsed}, message=f"loss {loss_value:.4f}"
        )
        ended = "steps" if step == total else "budget" if out_of_time else None
        if due or ended:
            pace.validated()
            with average.applied():  # the average is what is validated and kept
                yield from _validate(model, plan, keeper, step, shown_total, loss_value)
            keeper.save_resume(step, pace.elapsed())
        if ended:
            total = step
            break
    if plan.spec.pooled and plan.rank == 0 and keeper.best >= 0:
        yield from _choose_pool(plan, keeper, total)
    keeper.finish(step, pace.elapsed(), ended or "steps")
    if export_full and plan.rank == 0 and family_of(config.model).name == "sam":
        from napari_metalseg.models.lora import merge_lora
        from napari_metalseg.runs import export_full_model

        export_full_model(plan.out, merge_lora(model))
    yield ProgressEvent("done", total, total, metrics=keeper.last_metrics, message=str(plan.out))


def _distributed(model, plan: RunPlan):
    """``model`` wrapped for a distributed run (DistributedDataParallel: gradients all-reduced over the ranks; batch
    norm synchronised across GPUs), or itself in a single process. The wrapper shares ``model``'s parameters: the
    loop saves ``model``."""
    if plan.world == 1:
        return model
    import torch

    if plan.device.startswith("cuda"):
        torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    # guidance inputs (ratios, boxes) are drawn per batch: a step without them leaves their parameters unused
    return torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)


def _setup_event(model, report, plan: RunPlan) -> ProgressEvent:
    from napari_metalseg.models.lora import count_parameters

    config = plan.config
    total_params, trainable_params = count_parameters(model)
    return ProgressEvent(
        "info",
        message=f"{config.model} at {config.img_size}px, {config.finetune} fine-tuning: "
        f"{trainable_params:,} of {total_params:,} parameters trainable on {plan.device}"
        + (f"; {report.summary()}" if report is not None else "")
        + (f"; budget {config.budget_s:g} s" if config.budget_s else ""),
        metrics={"parameters": total_params, "trainable": trainable_params},
    )


def _initialise(model, plan: RunPlan) -> ProgressEvent:
    """Load the trained weights of the run ``config.init_from`` into the freshly built ``model`` (checked to be its
    model when the run was planned): the run continues from that model."""
    from napari_metalseg.runs import INIT_FROM, load_run_weights

    source = plan.training[INIT_FROM]
    load_run_weights(model, source["run"])
    companion = "; the classical pixel classifier pooled with it is refitted" if plan.spec.pooled else ""
    return ProgressEvent("info", message=f"continuing from the model of {source['run']}{companion}")


def _sampler(model, plan: RunPlan) -> CropSampler:
    """Random crops of the training images; contrast-stretched first for a model that expects it (as the
    predictor does for every micrograph it is given)."""
    crops_from = plan.samples
    if getattr(model, "contrast", None) == "image":
        crops_from = [replace(s, image=normalize_contrast(s.image)) for s in plan.samples]
    config = plan.config  # one seed for every rank: the crops are drawn per step (make_batch)
    if config.pseudo > 0:  # the pixels left unlabelled may take pseudo-labels, the held-out ones never
        crops_from = mark_open(crops_from, plan.val_set if plan.source == HELD_OUT else None)
    return CropSampler(crops_from, config.img_size, len(plan.phases), seed=config.seed, augment=config.augment)


def _optimizer_step(
    model, net, optimizer, params, batch: tuple, *, lr: float, plan: RunPlan, amp: bool, teacher=None
) -> float:
    """One AdamW step on ``batch`` at learning rate ``lr`` (bf16 autocast with ``amp``, gradients clipped to 1);
    returns the loss (in a distributed run, that of the global batch)."""
    import torch

    from napari_metalseg.distributed import sum_over_ranks

    images, masks, ratios, boxes = batch
    device = plan.device
    x = model.preprocess(torch.from_numpy(images).to(device))
    target = torch.from_numpy(masks).long().to(device)
    r = torch.from_numpy(ratios).to(device) if ratios is not None else None
    b = torch.from_numpy(boxes).to(device) if boxes is not None else None
    for group in optimizer.param_groups:
        group["lr"] = lr
    target, open_ = split_target(target)
    pseudo = None
    if teacher is not None and bool(open_.any()):
        pseudo = teacher_labels(model, teacher, x, open_, ratios=r, boxes=b, amp=amp)
    with torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=amp):
        outputs = net(x, ratios=r, boxes=b)
    reduce = sum_over_ranks if plan.world > 1 else None  # the loss of the global batch
    loss = deep_supervision_loss(outputs, target, len(plan.phases), reduce=reduce)
    if pseudo is not None:
        main = outputs[0] if isinstance(outputs, (list, tuple)) else outputs
        loss = loss + plan.config.pseudo * pseudo_label_loss(main, pseudo, open_.sum(), reduce=reduce)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    return float(loss.detach())


def _validate(
    model, plan: RunPlan, keeper: RunKeeper, step: int, shown_total: int, loss_value: float
) -> Iterator[ProgressEvent]:
    """Validate after ``step`` (rank 0 only) and keep the model if it is the best."""
    model.eval()
    if plan.rank != 0:
        return
    evaluation = validate(model, plan.val_set or plan.samples, plan.phases, plan.device)
    metrics = metrics_of(evaluation, plan.source)
    keeper.validated(step, metrics)
    yield ProgressEvent(
        "validate",
        step,
        shown_total,
        loss_value,
        metrics,
        message=f"{metrics['source']} mean Dice {metrics['mean_dice']:.2f}%",
    )


def _choose_pool(plan: RunPlan, keeper: RunKeeper, step: int) -> Iterator[ProgressEvent]:
    """Decide what the run's model is after ``step`` steps, the kept network pooled with the classical classifier (at
    which weight) or the network alone (:func:`~napari_metalseg.models.pooled.pool_weight`), and record it with its
    validation.

    The classifier is validated alone on the run's validation pixels (contrast-stretched, as it was fitted) and
    compared with the kept network's best validation. A pooled model is validated once more, at the end (during
    training the network is validated alone: the classifier's features would be recomputed every time). A run that
    keeps the network alone keeps the classifier's file too, unused.
    """
    from dataclasses import replace

    from napari_metalseg.models.classical import load_classifier
    from napari_metalseg.models.pooled import pool_weight
    from napari_metalseg.models.registry import CLASSIFIER
    from napari_metalseg.runs import load_run, read_run_config

    val_set = plan.val_set or plan.samples
    stretched = [replace(s, image=normalize_contrast(s.image)) for s in val_set]
    classical = validate(load_classifier(plan.out / CLASSIFIER), stretched, plan.phases, "cpu").average
    margin = plan.config.pool_margin
    weight = pool_weight(network_dice=keeper.best, classical_dice=classical, margin=margin, weight=plan.spec.pooled)
    if not weight:
        relation = f"more than {margin:g} points behind the network"
    elif weight > plan.spec.pooled:
        relation = "as good as the network or better: the classifier leads the pool"
    else:
        relation = f"within {margin:g} points of the network"
    compared = f"{plan.source}: network {keeper.best:.2f}%, classical classifier {classical:.2f}% ({relation})"
    saved = read_run_config(plan.out)
    if weight:
        pooled, _ = load_run(plan.out, device=plan.device)
        pooled.weight = weight
        metrics = metrics_of(validate(pooled, val_set, plan.phases, plan.device), plan.source)
        message = f"{compared}: pooled (classical weight {weight:g}), mean Dice {metrics['mean_dice']:.2f}%"
    else:
        metrics = dict(saved.metrics)  # the kept network's validation
        message = f"{compared}: the run's model is the network alone, mean Dice {keeper.best:.2f}%"
    choice = {"network_mean_dice": keeper.best, "classical_mean_dice": classical, "weight": weight}
    metrics |= {"network_mean_dice": keeper.best, "classical_mean_dice": classical}
    keeper.record_final(metrics, spec=replace(saved.spec, pooled=weight), pool_choice=choice)
    yield ProgressEvent("validate", step, step, metrics=metrics, message=message)
