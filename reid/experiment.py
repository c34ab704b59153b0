"""One run of ``main.py``: data, model, resume, the epoch loop, evaluation and every file in --logs-dir.

Files written (by the main process only): ``log.txt`` (a copy of stdout), ``metrics.csv`` and ``curves.png``
(one row / point per epoch), ``checkpoint.pth.tar`` (every epoch), ``model_best.pth.tar`` (best evaluated
mAP), ``results.json`` (the final test metrics).
"""
import contextlib
import csv
import os
import shlex
import signal
import sys
import traceback

import torch
from torch.nn.parallel import DistributedDataParallel

from . import checkpoint, data, datasets, distributed, evaluator, models, visualize
from .errors import RunInterrupted, UsageError
from .losses import DeepSupervisionLoss
from .trainer import StopRequest, build_optimizer, build_scheduler, mixed_precision, train_one_epoch

METRICS_COLUMNS = ("epoch", "loss", "accuracy", "lr", "seconds", "images_per_second", "eval_split", "rank1",
                   "mAP")


class _Tee:
    """Write to the terminal and to ``log.txt`` at once.

    When ``log.txt`` cannot be written any more (a full disk), the run says so once and goes on with the
    terminal only: the log is a copy, and losing it must not stop training or lose the next checkpoint.
    """

    def __init__(self, stream, log):
        self.stream, self.log = stream, log

    def write(self, text):
        self.stream.write(text)
        self._to_log("write", text)

    def flush(self):
        self.stream.flush()
        self._to_log("flush")

    def _to_log(self, method, *arguments):
        if self.log is None:
            return
        try:
            getattr(self.log, method)(*arguments)
        except OSError as error:
            log, self.log = self.log, None
            with contextlib.suppress(OSError):
                log.close()
            self.stream.write(f"\nwarning: cannot write to {log.name} ({error.strerror or error}); the output "
                              f"goes to the terminal only from here on.\n")

    def isatty(self):
        return self.stream.isatty()


def run(args):
    rank, world_size, device = distributed.init_from_environment(args.device)
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(distributed.peers_alive())
            if rank == 0:
                log = stack.enter_context(open(_prepare_logs_dir(args.logs_dir), "a", buffering=1))
                stack.enter_context(contextlib.redirect_stdout(_Tee(sys.stdout, log)))
            else:
                stack.enter_context(contextlib.redirect_stdout(stack.enter_context(open(os.devnull, "w"))))
            _run(args, rank, world_size, device)
    except UsageError as error:
        _release_frames(error)
        raise


def _release_frames(error):
    """Clear the locals of the frames an error (and the errors it replaced) went through.

    A DataLoader re-raising a worker's error keeps itself in a reference cycle with the error; its worker
    processes would then be shut down only at some later garbage collection, stalling for seconds there.
    """
    while error is not None:
        traceback.clear_frames(error.__traceback__)
        error = error.__context__


def _prepare_logs_dir(path):
    """Create --logs-dir and return the path of its log.txt; a clear error when it cannot be written."""
    try:
        os.makedirs(path, exist_ok=True)
        log_path = os.path.join(path, "log.txt")
        with open(log_path, "a"):
            pass
    except OSError as error:
        raise UsageError(f"Cannot write to the logs folder {path} (--logs-dir/--log): "
                         f"{error.strerror or error}. Choose a folder you can write to.") from None
    return log_path


def _speed_settings(args, device):
    """Resolve --amp/--channels-last/--compile for the device: CUDA-only options are noted and ignored on CPU."""
    if device.type != "cuda":
        ignored = [flag for flag, on in (("--amp", args.amp), ("--channels-last", args.channels_last),
                                         ("--compile", args.compile), ("--sync-bn", args.sync_bn)) if on]
        if ignored:
            print(f"note: {', '.join(ignored)} only apply on CUDA; ignored on {device.type}.")
        args.amp = args.channels_last = args.compile = args.sync_bn = False
        return None, None
    if not args.amp:
        return None, None
    return mixed_precision(device)


def _seed(args, device):
    torch.manual_seed(args.seed)
    if args.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def _model_settings(args, saved, num_classes):
    """The arch and switches to build: from the flags, or from the checkpoint being resumed."""
    arch = args.arch
    options = dict(num_features=args.features, dropout=args.dropout, dsa=not args.no_dsa,
                   deep_supervision=not args.no_deep_supervision, parts=args.parts, feature=args.feature)
    if saved is None:
        return arch, options, num_classes
    try:
        saved_arch, saved_options = saved["arch"], dict(saved["model_options"])
        saved_classes = saved_options.pop("num_classes")
    except (KeyError, TypeError):
        raise UsageError(f"{args.resume} is not a checkpoint written by this project's main.py (it lacks "
                         f"'arch' or 'model_options').") from None
    if saved_classes != num_classes and not args.evaluate:
        raise UsageError(
            f"The checkpoint {args.resume} was trained on {saved_classes} identities, but the training split of "
            f"{args.dataset} at {args.data_dir} has {num_classes}: it cannot continue training here. Resume it "
            f"on the dataset it was trained on (with the same --combine-trainval / --num-val), or use "
            f"--evaluate to test it on this dataset.")
    saved_options["feature"] = args.feature
    differences = [f"{k}={saved_options[k]}" for k in saved_options if saved_options[k] != options.get(k)]
    if saved_arch != arch:
        differences.insert(0, f"arch={saved_arch}")
    if differences:
        print(f"note: using the checkpoint's model settings: {', '.join(differences)}")
    return saved_arch, saved_options, saved_classes


def _load_dataset(args, is_main):
    root = args.data_dir or os.path.join("data", datasets.canonical_name(args.dataset))
    if is_main:
        dataset = datasets.create(args.dataset, root, combine_trainval=args.combine_trainval,
                                  num_val=args.num_val, verbose=True)
    distributed.barrier()
    if not is_main:
        dataset = datasets.create(args.dataset, root, combine_trainval=args.combine_trainval,
                                  num_val=args.num_val, verbose=False)
    args.data_dir = root
    return dataset


def _run(args, rank, world_size, device):
    is_main = rank == 0
    if args.batch_size % world_size:
        raise UsageError(f"-b/--batch-size {args.batch_size} must be divisible by the {world_size} processes.")
    print(f"command: {shlex.join(sys.argv)}")
    autocast_dtype, scaler = _speed_settings(args, device)
    _seed(args, device)
    dataset = _load_dataset(args, is_main)
    saved = checkpoint.load(args.resume) if args.resume else None
    trained_size = checkpoint.trained_input_size(saved) if saved is not None else None
    args.height, args.width = data.input_size(args.height, args.width, [trained_size])
    if trained_size is not None and (args.height, args.width) != trained_size:
        print(f"note: input size {args.height}x{args.width} from --height/--width; the checkpoint was trained at "
              f"{trained_size[0]}x{trained_size[1]}")
    arch, options, num_classes = _model_settings(args, saved, dataset.num_train_ids)
    pretrained = saved is None and (args.pretrained_path is not None or not args.no_pretrained)
    model = models.create(arch, num_classes, pretrained=pretrained,
                          pretrained_path=args.pretrained_path if saved is None else None, **options)
    if saved is not None:
        models.load_model_state(model, saved["model"], args.resume)
    if distributed.is_distributed() and args.sync_bn:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    print(f"model: {arch} with {num_classes} classes, dsa={options['dsa']}, deep_supervision="
          f"{options['deep_supervision']}, parts={options['parts']}, feature={options['feature']}, "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, on {device}"
          + (f" x {world_size} processes" if world_size > 1 else ""))
    model_record = {"arch": arch, **options}
    trained_epochs = saved["epoch"] if saved is not None else 0

    finished = saved is not None and trained_epochs >= args.epochs and not saved.get("step")
    if args.evaluate or args.epochs == 0 or finished:
        _final_evaluation(model, dataset, args, device, autocast_dtype, model_record, trained_epochs, is_main)
        return

    train_model = model
    if distributed.is_distributed():
        train_model = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    if args.compile:
        train_model = torch.compile(train_model)
    criterion = DeepSupervisionLoss(part_weight=args.part_weight, ds_weight=args.ds_weight)
    optimizer = build_optimizer(model, args.lr, args.momentum, args.weight_decay,
                                backbone_lr_mult=0.1 if pretrained or (saved or {}).get("pretrained") else 1.0)
    scheduler = build_scheduler(optimizer, args.step_size)
    history, best = [], {"mAP": -1.0, "epoch": 0}
    start_epoch, start_step, partial = 0, 0, None
    if saved is not None:
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        if scaler is not None and saved.get("scaler"):
            scaler.load_state_dict(saved["scaler"])
        history, best = list(saved["history"]), dict(saved["best"])
        start_epoch, start_step, partial = saved["epoch"], saved.get("step", 0), saved.get("partial")
        torch.set_rng_state(saved["rng"]["torch"])
        if device.type == "cuda" and saved["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(saved["rng"]["cuda"], device)
        print(f"resumed from {args.resume}: epoch {start_epoch}" + (f", step {start_step}" if start_step else ""))

    train_loader = data.train_loader(dataset.train, args, rank, world_size, cache=args.cache_images)
    eval_query, eval_gallery, eval_split = ((dataset.val_query, dataset.val_gallery, "val")
                                            if dataset.val_query else (dataset.query, dataset.gallery, "test"))
    state = {"pretrained": pretrained or bool((saved or {}).get("pretrained")), "args": vars(args),
             "arch": arch, "model_options": {"num_classes": num_classes, **options}}

    def snapshot(epoch, step=0, partial=None):
        return {**state, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler else None,
                "epoch": epoch, "step": step, "partial": partial, "history": history, "best": best,
                "rng": {"torch": torch.get_rng_state(),
                        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}}

    checkpoint_path = os.path.join(args.logs_dir, "checkpoint.pth.tar")
    last_saved = (args.resume, _position(start_epoch, start_step)) if saved is not None else None
    last_results = None
    with StopRequest(device) as stop:
        for epoch in range(start_epoch, args.epochs):
            with _naming_the_kept_checkpoint(last_saved):
                data.start_epoch(train_loader, epoch, start_step)
                stats = _merge(partial, train_one_epoch(train_model, criterion, optimizer, train_loader, device,
                                                        epoch, args, scaler, autocast_dtype, stop, start_step,
                                                        show_progress=is_main))
            if stats["stopped_at_step"] is not None:
                if is_main:
                    checkpoint.save(snapshot(epoch, stats["stopped_at_step"], stats), checkpoint_path)
                distributed.barrier()
                raise _interrupted(stop, f"during epoch {epoch + 1} after step {stats['stopped_at_step']}",
                                   checkpoint_path)
            start_step, partial = 0, None
            stats["loss"], stats["accuracy"] = distributed.mean_over_processes([stats["loss"], stats["accuracy"]],
                                                                               device)
            scheduler.step()
            row = {"epoch": epoch + 1, "loss": stats["loss"], "accuracy": stats["accuracy"],
                   "lr": optimizer.param_groups[1]["lr"], "seconds": stats["seconds"],
                   "images_per_second": stats["images"] * world_size / max(stats["seconds"], 1e-9)}
            last_epoch = epoch + 1 == args.epochs
            if (epoch + 1) % args.eval_freq == 0 or last_epoch:
                with _naming_the_kept_checkpoint(last_saved):
                    last_results = evaluator.evaluate(model, eval_query, eval_gallery, args, device,
                                                      autocast_dtype, show_progress=is_main)
                row.update(eval_split=eval_split, rank1=last_results["rank1"], mAP=last_results["mAP"])
            history.append(row)
            is_best = row.get("mAP") is not None and row["mAP"] > best["mAP"]
            if is_best:
                best = {"mAP": row["mAP"], "epoch": epoch + 1}
            print(_epoch_line(row, args.epochs, optimizer))
            if is_main:
                state_now = snapshot(epoch + 1)
                checkpoint.save(state_now, checkpoint_path)
                if is_best:
                    checkpoint.save(state_now, os.path.join(args.logs_dir, "model_best.pth.tar"))
                _write_epoch_files(args.logs_dir, history)
            distributed.barrier()
            last_saved = (checkpoint_path, _position(epoch + 1, 0))
            if stop:
                raise _interrupted(stop, f"after epoch {epoch + 1}", checkpoint_path)
    if best["epoch"]:
        print(f"best {eval_split} mAP {best['mAP']:.1%} at epoch {best['epoch']} (model_best.pth.tar)")
    reuse = last_results if eval_split == "test" else None
    _final_evaluation(model, dataset, args, device, autocast_dtype, model_record, args.epochs, is_main, reuse)


def _position(epoch, step):
    return f"epoch {epoch}, step {step}" if step else f"end of epoch {epoch}"


@contextlib.contextmanager
def _naming_the_kept_checkpoint(last_saved):
    """Add to an error raised while training (an unreadable image, a diverged loss) which checkpoint is kept."""
    try:
        yield
    except UsageError as error:
        if last_saved is None:
            raise UsageError(f"{error} No checkpoint had been saved yet.") from None
        path, position = last_saved
        raise UsageError(f"{error} The last checkpoint, {path} ({position}), is intact.") from None


def _interrupted(stop, when, checkpoint_path):
    """The RunInterrupted for a SIGINT/SIGTERM, with the command that resumes from ``checkpoint_path``."""
    launcher = [sys.executable]
    if distributed.is_distributed():
        launcher = ["torchrun", f"--nproc_per_node={os.environ.get('LOCAL_WORLD_SIZE', 1)}"]
    command = shlex.join([*launcher, *_without_resume(sys.argv), "--resume", checkpoint_path])
    return RunInterrupted(f"Stopped by {stop.signal_name} {when}; the checkpoint {checkpoint_path} holds that "
                          f"point. Resume with:\n  {command}",
                          exit_code=128 + signal.Signals[stop.signal_name].value)


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


def _write_epoch_files(logs_dir, history):
    """metrics.csv and curves.png; a full disk or a vanished folder gives a clear error (after the checkpoint)."""
    path = os.path.join(logs_dir, "metrics.csv")
    try:
        _write_metrics(path, history)
        path = os.path.join(logs_dir, "curves.png")
        visualize.plot_curves(history, path)
    except OSError as error:
        raise UsageError(f"Cannot write {path}: {error.strerror or error}. The checkpoint of this epoch was "
                         f"saved before it; free some space and resume from it.") from None


def _write_metrics(path, history):
    temporary = f"{path}.tmp"
    with open(temporary, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=METRICS_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in history:
            writer.writerow({key: row.get(key, "") for key in METRICS_COLUMNS})
    os.replace(temporary, path)


def _final_evaluation(model, dataset, args, device, autocast_dtype, model_record, epochs, is_main, results=None):
    """Test-split metrics: printed as the original's table, saved to results.json (and rank lists)."""
    if results is None:
        results = evaluator.evaluate(model, dataset.query, dataset.gallery, args, device, autocast_dtype,
                                     show_progress=is_main)
    if not is_main:
        return
    print(f"Test on {args.dataset} ({len(dataset.query)} queries, {len(dataset.gallery)} gallery images):")
    print(evaluator.format_table(results))
    path = os.path.join(args.logs_dir, "results.json")
    try:
        evaluator.write_results(path, results, args, model_record, epochs)
    except OSError as error:
        message = f"Cannot write {path}: {error.strerror or error}; the metrics are printed above."
        raise UsageError(message) from None
    print(f"results written to {path}")
    if args.visrank:
        folder = os.path.join(args.logs_dir, "visrank")
        visualize.save_rank_lists(results["distances"], dataset.query, dataset.gallery, folder, topk=args.visrank)
        print(f"rank lists written to {folder}")
