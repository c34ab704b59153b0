"""One run of ``main.py``, in four phases: build (data, model), restore (a checkpoint's training state), fit (the
epoch loop) and the final evaluation.

Files written (by the main process only, see ``reid.run_files``): ``log.txt`` (a copy of stdout), ``metrics.csv``
and ``curves.png`` (one row / point per epoch), ``checkpoint.pth.tar`` (every epoch), ``model_best.pth.tar``
(best evaluated mAP), ``results.json`` (the final test metrics), ``per_query.csv`` (each valid query's AP, first
correct rank and INP: ``reid.evaluator.write_per_query``), ``run.json`` (the command and flags, for ``--rerun``) and
TensorBoard's event files (``reid.tensorboard_log``).
"""
import collections
import contextlib
import dataclasses
import os
import shlex
import signal
import sys
import traceback
from dataclasses import dataclass, field

import torch
from torch.nn.parallel import DistributedDataParallel

from . import checkpoint, data, datasets, distributed, evaluator, figures, models, recipes, run_files
from .checkpoint import Checkpoint
from .errors import RunInterrupted, UsageError
from .losses import build_criterion
from .stopping import StopRequest
from .tensorboard_log import NO_BOARD, open_board
from .trainer import LearningRateSchedule, build_optimizer, mixed_precision, train_one_epoch


def run(config, record=None, warnings=()):
    """Carry out a ``RunConfig``: train (or only evaluate) and write every file into ``config.logs_dir``.

    ``record`` (main.py's parsed flags) goes into the folder's run.json; ``warnings`` (settings that have no effect,
    ``reid.recipes.ineffective``) are printed to stderr and log.txt before anything else is done.
    """
    rank, world_size, device = distributed.init_from_environment(config.device.device)
    try:
        run_files.check_logs_dir_is_free(config.logs_dir, config.resume, config.evaluate, config.overwrite)
        with contextlib.ExitStack() as stack:
            stack.enter_context(distributed.peers_alive())
            if rank == 0:
                log = stack.enter_context(run_files.claim_logs_dir(config.logs_dir, config.resume, config.evaluate,
                                                                   config.overwrite))
                stack.enter_context(contextlib.redirect_stdout(run_files.Tee(sys.stdout, log)))
                for path in checkpoint.remove_stale_temporaries(config.logs_dir):
                    print(f"note: removed {path}, left half-written by an earlier run that was killed")
                run_files.write_run_record(config.logs_dir, config, record or {})
                for message in warnings:
                    run_files.warn(message)
            else:
                log = stack.enter_context(open(os.devnull, "w"))
                stack.enter_context(contextlib.redirect_stdout(log))
            try:
                _run(config, rank, world_size, device)
            except RunInterrupted as stop:
                log.write(f"{stop}\n")  # the terminal may be gone (SIGHUP): the log keeps how to resume
                raise
    except UsageError as error:
        _release_frames(error)
        raise


def _run(config, rank, world_size, device):
    built = build(config, rank, world_size, device)
    if built.evaluation_only:
        final_evaluation(built, built.trained_epochs)
        return
    state = restore(built)
    with open_board(built.config.logs_dir, state.start_epoch + 1, built.config.to_dict(),
                    built.config.tensorboard and built.is_main) as board:
        last_results = fit(built, state, board)
        final_evaluation(built, built.config.train.epochs, last_results, board)


def _release_frames(error):
    """Clear the locals of the frames an error (and the errors it replaced) went through.

    A DataLoader re-raising a worker's error keeps itself in a reference cycle with the error; its worker
    processes would then be shut down only at some later garbage collection, stalling for seconds there.
    """
    for link in _chain(error):
        traceback.clear_frames(link.__traceback__)


# Build ----------------------------------------------------------------------------------------------------

@dataclass
class Built:
    """What the build phase made and every later phase shares. ``config`` is the resolved ``RunConfig`` (input
    size, model settings and CUDA-only options as they apply), the one recorded in checkpoints and results."""

    config: object
    rank: int
    world_size: int
    device: torch.device
    dataset: object
    model: torch.nn.Module
    saved: Checkpoint = None
    autocast_dtype: torch.dtype = None
    scaler: object = None
    test_datasets: list = field(default_factory=list)  # (name, dataset) evaluated after the test

    @property
    def is_main(self):
        return self.rank == 0

    @property
    def trained_epochs(self):
        return self.saved.epoch if self.saved is not None else 0

    @property
    def pretrained(self):
        """Whether the backbone started from ImageNet weights (then it trains at a tenth of the lr)."""
        if self.saved is not None:
            return self.saved.pretrained
        return self.config.pretrained or self.config.pretrained_path is not None

    @property
    def evaluation_only(self):
        finished = (self.saved is not None and self.trained_epochs >= self.config.train.epochs
                    and self.saved.finished)
        return self.config.evaluate or self.config.train.epochs == 0 or finished


def build(config, rank, world_size, device):
    """Resolve the settings against the device and the checkpoint, load the data and build the model."""
    if config.data.batch_size % world_size:
        raise UsageError(f"-b/--batch-size {config.data.batch_size} must be divisible by the {world_size} "
                         f"processes.")
    print(f"command: {shlex.join(config.command)}")
    device_config, autocast_dtype, scaler = _speed_settings(config.device, device)
    _seed(config.train, device)
    dataset = _load_dataset(config.data, rank == 0)
    test_datasets = [(name, _load_dataset(dataclasses.replace(config.data, dataset=name, root=root,
                                                              combine_trainval=True), rank == 0))
                     for name, root in config.test_datasets]
    _check_scorable(config, dataset, test_datasets)
    if config.train.epochs > 0 and not config.evaluate:
        _check_trainable(config, dataset, world_size, warn=rank == 0)
    saved = checkpoint.read(config.resume) if config.resume else None
    height, width = _input_size(config.data, saved)
    if height // 16 < config.model.parts:
        raise UsageError(f"The input height {height} is too small for --parts {config.model.parts}: layer4 is 1/16 "
                         f"of the input height, so it needs at least {16 * config.model.parts} pixels (--height).")
    if saved is not None:
        _check_resumable(config, saved)
        if not config.evaluate:
            recipes.check_resume(saved.run, config, config.resume)
    model_config = _model_config(config, saved, dataset.num_train_ids)
    config = dataclasses.replace(
        config, device=device_config, model=model_config,
        data=dataclasses.replace(config.data, height=height, width=width),
        eval=dataclasses.replace(config.eval, height=height, width=width))
    model = _build_model(config, saved, device, world_size)
    return Built(config, rank, world_size, device, dataset, model, saved, autocast_dtype, scaler, test_datasets)


def _check_scorable(config, dataset, test_datasets):
    """Every split the run will evaluate must be scorable (see ``evaluator.check_scorable``), checked now rather
    than after an epoch of training."""
    where = f"{config.data.dataset} at {config.data.root}"
    evaluator.check_scorable(dataset.query, dataset.gallery, f"test split (query/gallery) of {where}")
    if dataset.val_query and not config.evaluate:
        try:
            evaluator.check_scorable(dataset.val_query, dataset.val_gallery, f"validation split of {where}")
        except UsageError as error:
            raise UsageError(f"{error} The validation split holds out --num-val {config.data.num_val} training "
                             f"identities, and theirs have one image per camera; train with --combine-trainval "
                             f"(evaluating on the test split) instead.") from None
    for name, other in test_datasets:
        evaluator.check_scorable(other.query, other.gallery, f"test split of --test-dataset {name} at {other.root}")


def _check_trainable(config, dataset, world_size, warn):
    """Refuse a training split or batch on which the losses are 0 at every step (a single identity; one identity
    per batch with the triplet loss); warn (when ``warn``) when no identity has --num-instances images."""
    data, train = config.data, config.train
    if dataset.num_train_ids < 2:
        held_out = "" if data.combine_trainval else (f" (without --combine-trainval, --num-val {data.num_val} "
                                                     f"identities are held out of it for validation)")
        raise UsageError(f"The training split of {data.dataset} at {data.root} has a single identity{held_out}: "
                         f"the cross-entropy over one class is 0 at every step, and the triplet loss has no other "
                         f"identity to compare with, so nothing would train. Train on at least two identities.")
    if not data.num_instances:
        return
    per_process = data.batch_size // world_size
    if train.triplet_weight > 0 and per_process % data.num_instances == 0 and per_process < 2 * data.num_instances:
        processes = f" ({per_process} images in each of {world_size} processes)" if world_size > 1 else ""
        raise UsageError(
            f"--triplet-weight {train.triplet_weight} with -b/--batch-size {data.batch_size}{processes} and "
            f"--num-instances {data.num_instances} puts a single identity in each batch: the batch-hard triplet loss "
            f"has no other identity to compare with and is 0 at every step. Use -b "
            f"{2 * data.num_instances * world_size} or more (a multiple of {data.num_instances * world_size}), or "
            f"--triplet-weight 0.")
    most = max(collections.Counter(pid for _, pid, _ in dataset.train).values())
    if warn and most < data.num_instances:
        run_files.warn(f"--num-instances {data.num_instances}: no training identity has that many images (the most "
                       f"is {most}), so every identity's group in a batch repeats some of its images.")


def _check_resumable(config, saved):
    """Refuse a checkpoint with non-finite weights, and a mid-epoch one resumed with another batch size or fewer
    --epochs than it has started (either would end that epoch early)."""
    broken = [key for key, value in saved.model.items() if value.is_floating_point() and not value.isfinite().all()]
    if broken:
        raise UsageError(f"The checkpoint {config.resume} holds NaN or infinite weights ({len(broken)} tensors, e.g. "
                         f"{broken[0]}): the training that wrote it had diverged. Use an earlier checkpoint.")
    if config.evaluate or not saved.step:
        return
    saved_run = saved.run.get("data") or saved.run.get("format_1_args") or {}
    saved_batch = saved_run.get("batch_size")
    if saved_batch is not None and saved_batch != config.data.batch_size:
        raise UsageError(f"The checkpoint {config.resume} was saved in the middle of epoch {saved.epoch + 1} of a "
                         f"run with -b/--batch-size {saved_batch}; resume it with -b {saved_batch} (another batch "
                         f"size would change which images the rest of that epoch sees).")
    if config.train.epochs <= saved.epoch:
        raise UsageError(f"The checkpoint {config.resume} was saved in the middle of epoch {saved.epoch + 1}; "
                         f"--epochs {config.train.epochs} would end the run before that epoch is finished. Resume "
                         f"with --epochs {saved.epoch + 1} or more.")


def _speed_settings(device_config, device):
    """(DeviceConfig as it applies, autocast dtype, gradient scaler): CUDA-only options are noted and turned off
    on other devices."""
    if device.type != "cuda":
        ignored = [flag for flag, on in (("--amp", device_config.amp), ("--channels-last", device_config.channels_last),
                                         ("--compile", device_config.compile), ("--sync-bn", device_config.sync_bn))
                   if on]
        if ignored:
            print(f"note: {', '.join(ignored)} only apply on CUDA; ignored on {device.type}.")
        off = dataclasses.replace(device_config, amp=False, channels_last=False, compile=False, sync_bn=False)
        return off, None, None
    if not device_config.amp:
        return device_config, None, None
    return (device_config, *mixed_precision(device))


def _seed(train_config, device):
    torch.manual_seed(train_config.seed)
    if train_config.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def _load_dataset(data_config, is_main):
    """The dataset, loaded by the main process first (it may generate the synthetic one) and then by the rest."""
    def load(verbose):
        return datasets.create(data_config.dataset, data_config.root, combine_trainval=data_config.combine_trainval,
                               num_val=data_config.num_val, verbose=verbose, cuhk03=data_config.cuhk03,
                               name_pattern=data_config.name_pattern, camera_ranges=data_config.camera_ranges,
                               split=data_config.split)

    dataset = load(verbose=True) if is_main else None
    distributed.barrier()
    return dataset if is_main else load(verbose=False)


def _input_size(data_config, saved):
    """--height/--width where given, else the size the checkpoint was trained at, else 384x128."""
    trained_size = saved.input_size if saved is not None else None
    height, width = data.input_size(data_config.height, data_config.width, [trained_size])
    if trained_size is not None and (height, width) != tuple(trained_size):
        print(f"note: input size {height}x{width} from --height/--width; the checkpoint was trained at "
              f"{trained_size[0]}x{trained_size[1]}")
    return height, width


def _model_config(config, saved, num_classes):
    """The model to build: from the flags and the data, or from the checkpoint being resumed (the retrieval
    ``feature`` is the flag's in either case: it changes no weight)."""
    wanted = dataclasses.replace(config.model, num_classes=num_classes)
    if saved is None:
        return wanted
    stored = saved.model_config
    if stored.num_classes != num_classes and not config.evaluate:
        raise UsageError(
            f"The checkpoint {config.resume} was trained on {stored.num_classes} identities, but the training "
            f"split of {config.data.dataset} at {config.data.root} has {num_classes}: it cannot continue training "
            f"here. Resume it on the dataset it was trained on (with the same --combine-trainval / --num-val), or "
            f"use --evaluate to test it on this dataset.")
    used = dataclasses.replace(stored, feature=config.model.feature)
    differences = [f"{key}={value}" for key, value in dataclasses.asdict(used).items()
                   if value != getattr(wanted, key)]
    if differences:
        print(f"note: using the checkpoint's model settings: {', '.join(differences)}")
    return used


def _build_model(config, saved, device, world_size):
    model_config = config.model
    if saved is None:
        model = models.create(**dataclasses.asdict(model_config), pretrained=config.pretrained,
                              pretrained_path=config.pretrained_path)
    else:
        model = models.create(**dataclasses.asdict(model_config))
        models.load_model_state(model, saved.model, config.resume)
    if distributed.is_distributed() and config.device.sync_bn:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    if config.device.channels_last:
        model.to(memory_format=torch.channels_last)
    print(f"model: {model_config.arch} with {model_config.num_classes} classes, dsa={model_config.dsa}, "
          f"deep_supervision={model_config.deep_supervision}, parts={model_config.parts}, "
          f"feature={model_config.feature}, {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, "
          f"on {device}" + (f" x {world_size} processes" if world_size > 1 else ""))
    return model


# Restore --------------------------------------------------------------------------------------------------

@dataclass
class TrainingState:
    """The parts of training that change from step to step, and where the loop starts."""

    train_model: torch.nn.Module
    criterion: torch.nn.Module
    optimizer: torch.optim.Optimizer
    schedule: object
    history: list = field(default_factory=list)
    best: dict = field(default_factory=lambda: {"mAP": -1.0, "epoch": 0})
    start_epoch: int = 0
    start_step: int = 0
    partial: dict = None


def restore(built):
    """The optimiser, schedule and loss for training, continued from the checkpoint when resuming."""
    config, saved = built.config, built.saved
    train_model = built.model
    if distributed.is_distributed():
        train_model = DistributedDataParallel(built.model,
                                              device_ids=[built.device] if built.device.type == "cuda" else None)
    if config.device.compile:
        train_model = torch.compile(train_model)
    optimizer = build_optimizer(built.model, config.train, built.pretrained)
    if saved is not None:
        optimizer.load_state_dict(saved.optimizer)
    schedule = LearningRateSchedule(optimizer, config.train)
    state = TrainingState(train_model, build_criterion(config.train), optimizer, schedule)
    if saved is None:
        return state
    if built.scaler is not None and saved.scaler:
        built.scaler.load_state_dict(saved.scaler)
    state.history, state.best = list(saved.history), dict(saved.best)
    state.start_epoch, state.start_step, state.partial = saved.epoch, saved.step, saved.partial
    torch.set_rng_state(saved.rng["torch"])
    if built.device.type == "cuda" and saved.rng.get("cuda") is not None:
        torch.cuda.set_rng_state(saved.rng["cuda"], built.device)
    print(f"resumed from {config.resume}: epoch {saved.epoch}" + (f", step {saved.step}" if saved.step else ""))
    return state


def snapshot(built, state, epoch, step=0, partial=None):
    """The ``Checkpoint`` of the run at ``epoch`` (and ``step`` inside the next epoch)."""
    device = built.device
    return Checkpoint(
        model_config=built.config.model, model=built.model.state_dict(),
        input_size=(built.config.data.height, built.config.data.width), pretrained=built.pretrained,
        epoch=epoch, step=step, partial=partial, optimizer=state.optimizer.state_dict(),
        scaler=built.scaler.state_dict() if built.scaler else None,
        rng={"torch": torch.get_rng_state(),
             "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None},
        history=state.history, best=state.best, run=built.config.to_dict())


# Fit ------------------------------------------------------------------------------------------------------

def fit(built, state, board=NO_BOARD):
    """The epoch loop: train, evaluate every --eval-freq epochs, save the checkpoints and the epoch files.

    Returns the last evaluation's results when they are of the test split (the final evaluation reuses them).
    """
    config = built.config
    train_loader = data.train_loader(built.dataset.train, config.data, built.rank, built.world_size)
    eval_query, eval_gallery, eval_split = _evaluation_split(built.dataset)
    checkpoint_path = os.path.join(config.logs_dir, "checkpoint.pth.tar")
    last_saved = ((config.resume, _position(state.start_epoch, state.start_step))
                  if built.saved is not None else None)
    last_results = None
    with StopRequest(built.device) as stop:
        for epoch in range(state.start_epoch, config.train.epochs):
            with _naming_the_kept_checkpoint(last_saved):
                stats = _train_epoch(built, state, train_loader, epoch, stop)
            if stats["stopped_at_step"] is not None:
                if built.is_main:
                    checkpoint.write(snapshot(built, state, epoch, stats["stopped_at_step"], stats), checkpoint_path)
                distributed.barrier()
                raise _interrupted(stop, f"during epoch {epoch + 1} after step {stats['stopped_at_step']}",
                                   checkpoint_path, config.command)
            state.start_step, state.partial = 0, None
            row = _epoch_row(built, state, epoch, stats)
            board.add_epoch(row, state.optimizer.param_groups)
            if (epoch + 1) % config.train.eval_freq == 0 or epoch + 1 == config.train.epochs:
                with _naming_the_kept_checkpoint((checkpoint_path, _position(epoch + 1, 0))), \
                        _keeping_the_epoch(built, state, row, checkpoint_path):
                    last_results = evaluator.evaluate(built.model, eval_query, eval_gallery, config.eval,
                                                      built.device, built.autocast_dtype, config.device.channels_last,
                                                      show_progress=built.is_main)
                row.update(eval_split=eval_split, rank1=last_results["rank1"], mAP=last_results["mAP"])
                board.add_evaluation(epoch + 1, last_results, config.data.dataset, eval_split)
            _end_epoch(built, state, row, checkpoint_path)
            last_saved = (checkpoint_path, _position(epoch + 1, 0))
            if stop:
                raise _interrupted(stop, f"after epoch {epoch + 1}", checkpoint_path, config.command)
    if state.best["epoch"]:
        print(f"best {eval_split} mAP {state.best['mAP']:.1%} at epoch {state.best['epoch']} (model_best.pth.tar)")
    return last_results if eval_split == "test" else None


def _evaluation_split(dataset):
    """(query, gallery, name) evaluated during training: the validation split when there is one, else test."""
    if dataset.val_query:
        return dataset.val_query, dataset.val_gallery, "val"
    return dataset.query, dataset.gallery, "test"


def _train_epoch(built, state, train_loader, epoch, stop):
    data.start_epoch(train_loader, epoch, state.start_step)
    stats = train_one_epoch(state.train_model, state.criterion, state.optimizer, train_loader, built.device, epoch,
                            built.scaler, built.autocast_dtype, built.config.device.channels_last, stop,
                            state.start_step, built.config.train.print_freq, show_progress=built.is_main,
                            schedule=state.schedule)
    return _merge(state.partial, stats)


def _epoch_row(built, state, epoch, stats):
    """The epoch's metrics.csv row (loss, loss terms and accuracy averaged over the processes)."""
    names = list(stats["terms"])
    means = distributed.mean_over_processes([stats["loss"], stats["accuracy"], *stats["terms"].values()],
                                            built.device)
    stats["loss"], stats["accuracy"], stats["terms"] = means[0], means[1], dict(zip(names, means[2:]))
    return {"epoch": epoch + 1, "loss": stats["loss"], **stats["terms"], "accuracy": stats["accuracy"],
            "lr": state.optimizer.param_groups[1]["lr"], "seconds": stats["seconds"],
            "images_per_second": stats["images"] * built.world_size / max(stats["seconds"], 1e-9)}


def _end_epoch(built, state, row, checkpoint_path):
    """Record the epoch: history, best model, checkpoint, metrics.csv and curves.png."""
    state.history.append(row)
    is_best = row.get("mAP") is not None and row["mAP"] > state.best["mAP"]
    if is_best:
        state.best = {"mAP": row["mAP"], "epoch": row["epoch"]}
    print(_epoch_line(row, built.config.train.epochs, state.optimizer))
    if built.is_main:
        saved = snapshot(built, state, row["epoch"])
        checkpoint.write(saved, checkpoint_path)
        if is_best:
            checkpoint.write(saved, os.path.join(built.config.logs_dir, "model_best.pth.tar"))
        run_files.write_epoch_files(built.config.logs_dir, state.history)
    distributed.barrier()


def _position(epoch, step):
    return f"epoch {epoch}, step {step}" if step else f"end of epoch {epoch}"


@contextlib.contextmanager
def _keeping_the_epoch(built, state, row, checkpoint_path):
    """When the evaluation after an epoch fails, save the trained epoch (without metrics) before the error."""
    try:
        yield
    except BaseException:
        if built.is_main:
            state.history.append(row)
            checkpoint.write(snapshot(built, state, row["epoch"]), checkpoint_path)
        raise


@contextlib.contextmanager
def _naming_the_kept_checkpoint(last_saved):
    """Add to an error raised while training or evaluating (an unreadable image, a diverged loss, a loader worker
    killed for lack of memory) which checkpoint is kept."""
    try:
        try:
            yield
        except RuntimeError as error:
            if not str(error).startswith("DataLoader worker"):
                raise
            causes = [str(cause).strip() for cause in _chain(error)]
            reason = next((cause for cause in causes if "killed by signal" in cause), causes[0])
            raise UsageError(f"A data-loading worker process was killed ({reason}), most likely by the system for "
                             f"lack of memory: lower -j/--workers, or leave out --cache-images.") from None
    except UsageError as error:
        if last_saved is None:
            raise UsageError(f"{error} No checkpoint had been saved yet.") from None
        path, position = last_saved
        raise UsageError(f"{error} The last checkpoint, {path} ({position}), is intact.") from None


def _chain(error):
    """``error`` and the errors it was raised while handling."""
    while error is not None:
        yield error
        error = error.__context__


def _interrupted(stop, when, checkpoint_path, command):
    """The RunInterrupted for a SIGINT/SIGTERM, with the command (``command``: the run's argv) that resumes from
    ``checkpoint_path``."""
    launcher = [sys.executable]
    arguments = _without_resume(command)
    if distributed.is_distributed():
        launcher = ["torchrun", f"--nproc_per_node={os.environ.get('LOCAL_WORLD_SIZE', 1)}"]
        arguments = [_torchrun_safe(argument) for argument in arguments]
    resume = shlex.join([*launcher, *arguments, "--resume", checkpoint_path])
    return RunInterrupted(f"Stopped by {stop.signal_name} {when}; the checkpoint {checkpoint_path} holds that "
                          f"point. Resume with:\n  {resume}",
                          exit_code=128 + signal.Signals[stop.signal_name].value)


def _torchrun_safe(argument):
    """``--log`` spelled ``--logs-dir``: torchrun's parser reads ``--log`` as an ambiguous option of its own."""
    if argument == "--log":
        return "--logs-dir"
    return "--logs-dir=" + argument[len("--log="):] if argument.startswith("--log=") else argument


def _without_resume(argv):
    """``argv`` without its --resume options, so that the printed resume command has exactly one."""
    kept, skip = [], False
    for argument in argv:
        if skip:
            skip = False
        elif argument == "--resume":
            skip = True
        elif not argument.startswith("--resume="):
            kept.append(argument)
    return kept


def _merge(partial, stats):
    """Combine the figures of an epoch's part run before an interruption with those of the rest."""
    if not partial:
        return stats
    steps_before, steps_now = partial["steps"], stats["steps"]
    total = max(steps_before + steps_now, 1)
    merged = dict(stats)
    for key in ("loss", "accuracy"):
        merged[key] = (partial[key] * steps_before + stats[key] * steps_now) / total
    merged["terms"] = {name: (partial["terms"].get(name, 0.0) * steps_before + value * steps_now) / total
                       for name, value in stats["terms"].items()}
    for key in ("images", "seconds", "steps"):
        merged[key] = partial[key] + stats[key]
    return merged


def _epoch_line(row, epochs, optimizer):
    lrs = " / ".join(f"{group['lr']:.4g}" for group in optimizer.param_groups)
    line = (f"Epoch {row['epoch']}/{epochs}  loss {row['loss']:.4f}  acc {row['accuracy']:.1%}  "
            f"lr {lrs}  {row['seconds']:.1f} s  {row['images_per_second']:.1f} img/s")
    if row.get("mAP") is not None:
        line += f"  | {row['eval_split']} rank-1 {row['rank1']:.1%}  mAP {row['mAP']:.1%}"
    return line


# Final evaluation -----------------------------------------------------------------------------------------

def final_evaluation(built, epochs, results=None, board=NO_BOARD):
    """Test-split metrics: printed as the original's table, saved to results.json and each valid query's to
    per_query.csv (and rank lists); then those of every --test-dataset, as extra sections of results.json and
    per_query-<name>.csv files.

    ``epochs`` is the number of epochs the evaluated model was trained for; ``results`` are reused when the
    last training epoch already evaluated the test split.
    """
    config, dataset = built.config, built.dataset
    if results is None:
        results = _evaluate(built, dataset)
        board.add_evaluation(epochs, results, config.data.dataset)
    others = [(name, other, _evaluate(built, other)) for name, other in built.test_datasets]
    if not built.is_main:
        return
    _print_results(config.data.dataset, dataset, results)
    record = evaluator.results_record(results, config.data.dataset, config.model, epochs, config.to_dict())
    record["per_query"] = "per_query.csv"
    per_query_files = [("per_query.csv", dataset, results)]
    for position, (name, other, other_results) in enumerate(others):
        repeat = sum(earlier == name for earlier, _, _ in others[:position])
        file_name = f"per_query-{name}-{repeat + 1}.csv" if repeat else f"per_query-{name}.csv"
        per_query_files.append((file_name, other, other_results))
        record.setdefault("other_datasets", []).append(
            {"dataset": name, "root": other.root, **{key: other_results[key] for key in evaluator.HEADLINE_KEYS},
             "per_query": file_name})
    for name, other, other_results in others:
        _print_results(name, other, other_results)
        board.add_evaluation(epochs, other_results, name)
    try:
        for file_name, split, split_results in per_query_files:
            path = os.path.join(config.logs_dir, file_name)
            evaluator.write_per_query(path, split.query, split_results["per_query"], split.root)
        path = os.path.join(config.logs_dir, "results.json")
        evaluator.write_results(path, record)
    except OSError as error:
        message = f"Cannot write {path}: {error.strerror or error}; the metrics are printed above."
        raise UsageError(message) from None
    print(f"results written to {path}, each query's to {', '.join(name for name, _, _ in per_query_files)}")
    if config.eval.visrank:
        folder = os.path.join(config.logs_dir, "visrank")
        figures.save_rank_lists(results["distances"], dataset.query, dataset.gallery, folder,
                                topk=config.eval.visrank)
        print(f"rank lists written to {folder}")


def _evaluate(built, dataset):
    return evaluator.evaluate(built.model, dataset.query, dataset.gallery, built.config.eval, built.device,
                              built.autocast_dtype, built.config.device.channels_last, show_progress=built.is_main)


def _print_results(name, dataset, results):
    print(f"Test on {name} ({len(dataset.query)} queries, {len(dataset.gallery)} gallery images):")
    print(evaluator.format_table(results))
