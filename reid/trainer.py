"""One epoch of training, the optimiser (the paper's SGD with two learning-rate groups, or Adam), the learning-rate
schedule (warm-up, step or cosine), mixed precision."""
import math
import time

import torch

from . import data
from .errors import UsageError
from .losses import part_accuracy
from .progress import progress_bar

ADAM_BETAS = (0.9, 0.999)
LR_DECAY = 0.1


def build_optimizer(model, train_config, pretrained):
    """The optimiser of a ``TrainConfig``, over two parameter groups: ``backbone`` and ``new`` (the DSA gates, the
    deep-supervision and part heads).

    ``sgd``: the paper's SGD with Nesterov momentum, an ImageNet-initialised (``pretrained``) backbone at
    0.1 x lr. ``adam``: Adam (betas 0.9, 0.999) with every layer at lr, as in the BoT baseline. Both with
    ``weight_decay`` on every parameter.
    """
    backbone_ids = {id(p) for module in model.backbone_modules() for p in module.parameters()}
    backbone = [p for p in model.parameters() if id(p) in backbone_ids]
    new = [p for p in model.parameters() if id(p) not in backbone_ids]
    lr = train_config.lr
    backbone_lr = lr * 0.1 if pretrained and train_config.optimizer == "sgd" else lr
    groups = [{"params": backbone, "lr": backbone_lr, "name": "backbone"}, {"params": new, "lr": lr, "name": "new"}]
    if train_config.optimizer == "adam":
        return torch.optim.Adam(groups, lr=lr, betas=ADAM_BETAS, weight_decay=train_config.weight_decay)
    if train_config.optimizer != "sgd":
        raise UsageError(f"Unknown --optimizer {train_config.optimizer!r}; choose sgd or adam.")
    momentum = train_config.momentum
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=train_config.weight_decay,
                           nesterov=momentum > 0)


def decay_epochs(train_config):
    """The epochs (0-based) from which the step schedule multiplies the lr by 0.1 once more: ``milestones`` when
    given, else every ``step_size`` epochs (never, when it is 0)."""
    if train_config.milestones:
        return sorted(train_config.milestones)
    if not train_config.step_size:
        return []
    return list(range(train_config.step_size, train_config.epochs + 1, train_config.step_size))


class LearningRateSchedule:
    """Sets every parameter group's lr before each training step, as a function of where training stands.

    lr = base lr x linear warm-up x (step: 0.1 per decay epoch passed | cosine: half a cosine period from the end
    of the warm-up to the end of training, down to 0). The warm-up rises step by step and reaches the base lr at
    the end of epoch ``warmup_epochs``: the lr of step s (0-based) of N in epoch e is scaled by
    ``min(1, (e + (s + 1) / N) / warmup_epochs)``, so that the last step of epoch t (1-based) has BoT's
    per-epoch ``t / warmup_epochs``.

    The base lr is each group's ``initial_lr`` (set here from its lr when missing), which the optimiser's state
    carries: a resumed run keeps the lr saved in its checkpoint, and the schedule itself has no state to save.
    The step schedule multiplies by 0.1 one decay at a time, the way ``StepLR`` does, so its lrs are bit for bit
    those of the per-epoch ``StepLR`` of earlier versions.
    """

    def __init__(self, optimizer, train_config):
        if train_config.lr_schedule not in ("step", "cosine"):
            raise UsageError(f"Unknown --lr-schedule {train_config.lr_schedule!r}; choose step or cosine.")
        self.optimizer = optimizer
        self.kind = train_config.lr_schedule
        self.epochs = train_config.epochs
        self.warmup_epochs = train_config.warmup_epochs
        self.decay_epochs = decay_epochs(train_config)
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])

    def lr(self, base_lr, epoch, step=0, steps_in_epoch=1):
        """The lr of step ``step`` (0-based) of ``steps_in_epoch`` in ``epoch`` (0-based) for ``base_lr``."""
        lr = base_lr
        warmup_progress = epoch + (step + 1) / steps_in_epoch
        if warmup_progress < self.warmup_epochs:
            lr = lr * (warmup_progress / self.warmup_epochs)
        if self.kind == "cosine":
            return lr * self._cosine_factor(epoch + step / steps_in_epoch)
        for decay_epoch in self.decay_epochs:
            if epoch >= decay_epoch:
                lr = lr * LR_DECAY
        return lr

    def _cosine_factor(self, progress):
        span = self.epochs - self.warmup_epochs
        done = min(max(progress - self.warmup_epochs, 0.0) / span, 1.0) if span > 0 else 1.0
        return 0.5 * (1.0 + math.cos(math.pi * done))

    def set_position(self, epoch, step=0, steps_in_epoch=1):
        """Set the groups' lrs for step ``step`` of ``steps_in_epoch`` in ``epoch``."""
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr(group["initial_lr"], epoch, step, steps_in_epoch)


def mixed_precision(device):
    """(autocast dtype, gradient scaler) for --amp on ``device``: bf16 where the GPU computes it natively
    (compute capability 8.0 and up), else fp16 with a gradient scaler against underflow.

    ``torch.cuda.is_bf16_supported()`` is not used: it also says yes where bf16 is only emulated (T4, V100),
    which is slower than fp16 there.
    """
    if torch.cuda.get_device_capability(device)[0] >= 8:
        return torch.bfloat16, None
    scaler = torch.amp.GradScaler("cuda") if hasattr(torch.amp, "GradScaler") else torch.cuda.amp.GradScaler()
    return torch.float16, scaler


def apply_gradients(loss, optimizer, scaler=None):
    """Back-propagate ``loss`` and take one optimiser step, through the fp16 gradient scaler when there is one."""
    optimizer.zero_grad(set_to_none=True)
    if scaler is None:
        loss.backward()
        optimizer.step()
        return
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()


def train_one_epoch(model, criterion, optimizer, loader, device, epoch, scaler=None, autocast_dtype=None,
                    channels_last=False, stop=None, start_step=0, print_freq=10, show_progress=True, schedule=None):
    """Train for one pass over ``loader`` (from batch ``start_step``); return the epoch's figures.

    ``schedule`` (a ``LearningRateSchedule``) sets the lr before every step and, after the last one, to the
    first step of the next epoch. The returned dict has ``loss``, ``accuracy`` and ``terms`` (the loss terms
    by name, see ``reid.losses``) as means over the steps run, ``images``, ``seconds``, ``steps`` and
    ``stopped_at_step`` (the next step to run when a stop was requested, else None). A stop requested during
    the last step is left to the caller, which then stops at the end of the epoch.
    """
    model.train()
    total_steps = start_step + math.ceil(len(loader.sampler) / loader.batch_size)
    sums = {"loss": 0.0, "accuracy": 0.0}
    images_seen = steps_run = 0
    started = time.perf_counter()
    progress = progress_bar(loader, total=total_steps, initial=start_step, desc=f"epoch {epoch + 1}", unit="step",
                            every=print_freq, show=show_progress)
    for step, (images, targets, _, _) in enumerate(progress, start=start_step):
        if schedule is not None:
            schedule.set_position(epoch, step, total_steps)
        images = data.to_model_input(images, device, channels_last)
        targets = targets.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            output = model(images)
        loss = criterion(output, targets)
        values = _checked_values(loss, epoch, step)
        apply_gradients(loss.total, optimizer, scaler)
        values["accuracy"] = part_accuracy(output, targets).item()
        for name, value in values.items():
            sums[name] = sums.get(name, 0.0) + value
        images_seen += images.shape[0]
        steps_run += 1
        if (step + 1) % print_freq == 0 or step + 1 == total_steps:
            progress.set_postfix(_running_figures(sums, steps_run, images_seen, started))
        if stop and step + 1 < total_steps:
            progress.close()
            return _summary(sums, steps_run, images_seen, started, stopped_at=step + 1)
    progress.close()
    if schedule is not None:
        schedule.set_position(epoch + 1, 0, total_steps)
    return _summary(sums, steps_run, images_seen, started, stopped_at=None)


def _checked_values(loss, epoch, step):
    """The step's loss and loss terms as floats (one device sync); a UsageError when the loss is not finite."""
    names = ["loss", *loss.terms]
    values = dict(zip(names, torch.stack([loss.total.detach(), *loss.terms.values()]).tolist()))
    if not math.isfinite(values["loss"]):
        raise UsageError(
            f"The loss became {values['loss']} at epoch {epoch + 1}, step {step + 1}: training diverged and was "
            f"stopped before that step changed the model. Train again with a lower --lr (a resumed run keeps "
            f"the learning rate saved in its checkpoint).")
    return values


def _running_figures(sums, steps_run, images_seen, started):
    """The progress line's figures: the loss and accuracy averaged over the steps run so far, and images/s."""
    seconds = max(time.perf_counter() - started, 1e-9)
    return {"loss": f"{sums['loss'] / steps_run:.4f}", "acc": f"{sums['accuracy'] / steps_run:.1%}",
            "img/s": f"{images_seen / seconds:.1f}"}


def _summary(sums, steps_run, images_seen, started, stopped_at):
    means = {name: value / max(steps_run, 1) for name, value in sums.items()}
    return {"loss": means.pop("loss"), "accuracy": means.pop("accuracy"), "terms": means, "steps": steps_run,
            "images": images_seen, "seconds": time.perf_counter() - started, "stopped_at_step": stopped_at}
