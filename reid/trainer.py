"""One epoch of training, the optimiser with the original's two learning-rate groups, its schedule."""
import math
import signal
import time

import torch
from tqdm import tqdm

from . import data, distributed
from .errors import UsageError
from .losses import part_accuracy


def build_optimizer(model, lr, momentum, weight_decay, backbone_lr_mult):
    """SGD with Nesterov momentum; the (pretrained) backbone at ``lr * backbone_lr_mult``, new layers at ``lr``.

    New layers are everything outside the backbone: the DSA gates, deep-supervision and part heads.
    """
    backbone_ids = {id(p) for module in model.backbone_modules() for p in module.parameters()}
    backbone = [p for p in model.parameters() if id(p) in backbone_ids]
    new = [p for p in model.parameters() if id(p) not in backbone_ids]
    groups = [{"params": backbone, "lr": lr * backbone_lr_mult, "name": "backbone"},
              {"params": new, "lr": lr, "name": "new"}]
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=momentum > 0)


def build_scheduler(optimizer, step_size, gamma=0.1):
    """lr x ``gamma`` every ``step_size`` epochs (never, when ``step_size`` is 0)."""
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=step_size or 10**9, gamma=gamma)


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


class StopRequest:
    """Turns SIGINT/SIGTERM into a flag the epoch loop checks after each step, so the run can save and exit.

    Under torchrun the flag is agreed across processes at every check (``device`` holds the tensor the
    processes exchange): a signal that reaches one process, or reaches them at different steps, stops all of
    them at the same step, where a lone stop would leave the others waiting in DDP's gradient all-reduce.
    """

    def __init__(self, device=None):
        self.signal_name = None
        self.device = device
        self._previous = {}

    def __enter__(self):
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum, frame):
        if self.signal_name is not None:
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(signum).name

    def __bool__(self):
        if distributed.is_distributed():
            signum = signal.Signals[self.signal_name].value if self.signal_name else 0
            agreed = torch.tensor([signum], device=self.device)
            torch.distributed.all_reduce(agreed, op=torch.distributed.ReduceOp.MAX)
            if agreed.item() and self.signal_name is None:
                self.signal_name = signal.Signals(int(agreed.item())).name
        return self.signal_name is not None


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


def train_one_epoch(model, criterion, optimizer, loader, device, epoch, args, scaler=None, autocast_dtype=None,
                    stop=None, start_step=0, show_progress=True):
    """Train for one pass over ``loader`` (from batch ``start_step``); return the epoch's figures.

    The returned dict has ``loss``, ``accuracy`` (means over the steps run), ``images``, ``seconds``,
    ``steps`` and ``stopped_at_step`` (the next step to run when a stop was requested, else None). A stop
    requested during the last step is left to the caller, which then stops at the end of the epoch.
    """
    model.train()
    total_steps = start_step + math.ceil(len(loader.sampler) / loader.batch_size)
    loss_sum = accuracy_sum = 0.0
    images_seen = steps_run = 0
    started = time.perf_counter()
    progress = tqdm(loader, total=total_steps, initial=start_step, desc=f"epoch {epoch + 1}", leave=False,
                    disable=not show_progress, dynamic_ncols=True)
    for step, (images, targets, _, _) in enumerate(progress, start=start_step):
        images = data.to_model_input(images, device, args.channels_last)
        targets = targets.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            logits = model(images)
        loss = criterion(logits, targets)
        loss_value = loss.item()
        if not math.isfinite(loss_value):
            raise UsageError(
                f"The loss became {loss_value} at epoch {epoch + 1}, step {step + 1}: training diverged and was "
                f"stopped before that step changed the model. Train again with a lower --lr (a resumed run keeps "
                f"the learning rate saved in its checkpoint).")
        apply_gradients(loss, optimizer, scaler)
        accuracy = part_accuracy(logits, targets).item()
        loss_sum += loss_value
        accuracy_sum += accuracy
        images_seen += images.shape[0]
        steps_run += 1
        if step % args.print_freq == 0:
            progress.set_postfix(loss=f"{loss_value:.3f}", acc=f"{accuracy:.1%}")
        if stop and step + 1 < total_steps:
            progress.close()
            return _summary(loss_sum, accuracy_sum, steps_run, images_seen, started, stopped_at=step + 1)
    progress.close()
    return _summary(loss_sum, accuracy_sum, steps_run, images_seen, started, stopped_at=None)


def _summary(loss_sum, accuracy_sum, steps_run, images_seen, started, stopped_at):
    return {"loss": loss_sum / max(steps_run, 1), "accuracy": accuracy_sum / max(steps_run, 1), "steps": steps_run,
            "images": images_seen, "seconds": time.perf_counter() - started, "stopped_at_step": stopped_at}
