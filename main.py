"""Train and evaluate the DSP person re-identification model.

    python main.py -d market -b 48 -j 4 --epochs 50 --log logs/market/ --combine-trainval --step-size 40 \
        --data-dir Market-1501
"""
import argparse
import math
import os
import sys

from reid import datasets, distributed, models, recipes, run_files
from reid.config import DataConfig, DeviceConfig, EvalConfig, ModelConfig, RunConfig, TrainConfig
from reid.errors import RunInterrupted, UsageError


def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = parser.add_argument_group("data")
    data.add_argument("-d", "--dataset", default="market", help=f"one of {', '.join(datasets.names())}")
    data.add_argument("--data-dir", default=None, help="dataset folder (default: data/<dataset>)")
    data.add_argument("-b", "--batch-size", type=int, default=64, help="total batch size over all processes")
    data.add_argument("-j", "--workers", type=int, default=4, help="data-loading worker processes")
    data.add_argument("--height", type=int, default=None,
                      help="input height (default: the size the --resume checkpoint was trained at, else 384)")
    data.add_argument("--width", type=int, default=None,
                      help="input width (default: the size the --resume checkpoint was trained at, else 128)")
    data.add_argument("--combine-trainval", action="store_true",
                      help="train on every training identity (else --num-val are held out for validation)")
    data.add_argument("--num-val", type=int, default=100, help="identities held out for validation")
    data.add_argument("--num-instances", type=int, default=0,
                      help="images per identity in a batch (identity-balanced sampler); 0 shuffles")
    data.add_argument("--random-erasing", type=float, default=0.0, help="probability of random erasing")
    data.add_argument("--cache-images", action="store_true",
                      help="decode every image once and keep it in memory (no JPEG decoding after that)")
    data.add_argument("--cuhk03", choices=("labeled", "detected"), default="labeled",
                      help="which CUHK03-NP boxes -d cuhk03-np uses")
    data.add_argument("--name-pattern", default=None, metavar="REGEX",
                      help="-d custom: a regular expression with named groups pid and camid that file names match")
    data.add_argument("--camera-ranges", default=None, metavar="A-B,C-D",
                      help="-d custom: the camera is the position of the range holding the pattern's index group")
    data.add_argument("--split", choices=datasets.custom.SPLIT_RULES, default=None,
                      help="-d custom: DIR is one folder of every image; even identities train, odd ones test")
    data.add_argument("--test-dataset", action="append", default=[], metavar="NAME[:DIR]",
                      help="also evaluate the final model on this dataset (repeatable); DIR defaults to data/NAME")

    model = parser.add_argument_group("model")
    model.add_argument("-a", "--arch", default="resnet50", help=f"one of {', '.join(models.names())}")
    model.add_argument("--features", type=int, default=256, help="channels of the reduced part features")
    model.add_argument("--dropout", type=float, default=0.5)
    model.add_argument("--parts", type=int, default=6, help="horizontal stripes of the PCB head")
    model.add_argument("--no-dsa", action="store_true", help="ablation: no DSA blocks")
    model.add_argument("--no-deep-supervision", action="store_true", help="ablation: no L1..L3 heads")
    model.add_argument("--feature", choices=models.FEATURES, default="parts",
                       help="retrieval feature: 6x2048 stripes, 6x256 reduced stripes, or global")
    model.add_argument("--no-pretrained", action="store_true", help="train the backbone from scratch")
    model.add_argument("--pretrained-path", default=None, help="ImageNet ResNet weights file (state_dict)")

    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--lr", type=float, default=0.1, help="learning rate of new layers (backbone x0.1)")
    optim.add_argument("--momentum", type=float, default=0.9)
    optim.add_argument("--weight-decay", type=float, default=5e-4)
    optim.add_argument("--epochs", type=int, default=60)
    optim.add_argument("--step-size", type=int, default=40, help="lr x0.1 every N epochs")
    optim.add_argument("--part-weight", type=float, default=1.0, help="loss weight of P1..Pn")
    optim.add_argument("--ds-weight", type=float, default=1.0, help="loss weight of L1..L3")
    optim.add_argument("--recipe", choices=recipes.RECIPES, default="paper",
                       help="preset of the flags below: the paper's training, or the strong (BoT) baseline's")
    optim.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd")
    optim.add_argument("--lr-schedule", choices=("step", "cosine"), default="step")
    optim.add_argument("--milestones", type=int, nargs="+", default=[], metavar="EPOCH",
                       help="lr x0.1 at these epochs (instead of every --step-size)")
    optim.add_argument("--warmup-epochs", type=int, default=0, help="linear lr warm-up, per step")
    optim.add_argument("--label-smoothing", type=float, default=0.0, metavar="EPS")
    optim.add_argument("--triplet-weight", type=float, default=0.0, metavar="W",
                       help="batch-hard triplet loss on the retrieval feature (needs --num-instances)")
    optim.add_argument("--margin", type=float, default=0.3, help="triplet margin (0: soft margin)")
    optim.add_argument("--bnneck", action=argparse.BooleanOptionalAction, default=False,
                       help="BNNeck on the part and global heads")
    optim.add_argument("--seed", type=int, default=1)
    optim.add_argument("--deterministic", action="store_true", help="reproducible runs (slower)")

    speed = parser.add_argument_group("speed (CUDA)")
    speed.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    speed.add_argument("--amp", action="store_true", help="mixed precision: bf16, or fp16 with loss scaling")
    speed.add_argument("--channels-last", action="store_true")
    speed.add_argument("--compile", action="store_true", help="torch.compile the model")
    speed.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm under torchrun")

    evaluation = parser.add_argument_group("evaluation")
    evaluation.add_argument("--evaluate", action="store_true", help="only evaluate (with --resume)")
    evaluation.add_argument("--eval-freq", type=int, default=5, help="evaluate every N epochs (and the last)")
    evaluation.add_argument("--metric", choices=("euclidean", "cosine"), default="euclidean")
    evaluation.add_argument("--rerank", action="store_true", help="k-reciprocal re-ranking")
    evaluation.add_argument("--flip-test", action="store_true", help="average features with mirrored images")
    evaluation.add_argument("--visrank", type=int, default=0, metavar="K",
                            help="save rank-list figures with the top K gallery matches")
    evaluation.add_argument("--eval-dtype", choices=("float32", "float16"), default="float32",
                            help="keep the extracted features in this precision (float16 halves their memory)")

    logging = parser.add_argument_group("logging")
    logging.add_argument("--resume", default=None, metavar="PATH", help="checkpoint to resume or evaluate")
    logging.add_argument("--print-freq", type=int, default=10,
                         help="progress update every N steps (a line each when stderr is not a terminal)")
    logging.add_argument("--logs-dir", "--log", dest="logs_dir", default="logs", metavar="PATH",
                         help="run folder (under torchrun write --logs-dir: torchrun takes --log for its own)")
    logging.add_argument("--overwrite", action="store_true",
                         help="start a new run in a --logs-dir that holds an earlier run, replacing its files")
    logging.add_argument("--rerun", default=None, metavar="RUN_DIR",
                         help="start a new run with the settings recorded in the run folder RUN_DIR; the flags "
                              "given here override them (give the new run its own --logs-dir)")
    logging.add_argument("--no-tensorboard", action="store_true",
                         help="write no TensorBoard event files into the run folder")
    return parser


MAX_SIDE = 4096
MAX_SEED = 2**32


def check_args(args):
    """Refuse impossible flag values before anything runs."""
    positive = {"-b/--batch-size": args.batch_size, "--height": args.height, "--width": args.width,
                "--features": args.features, "--parts": args.parts, "--print-freq": args.print_freq,
                "--eval-freq": args.eval_freq}
    for flag, value in positive.items():
        if value is not None and value < 1:
            raise UsageError(f"{flag} must be at least 1, got {value}.")
    for flag, value in {"-j/--workers": args.workers, "--epochs": args.epochs, "--step-size": args.step_size,
                        "--num-instances": args.num_instances, "--num-val": args.num_val,
                        "--visrank": args.visrank}.items():
        if value < 0:
            raise UsageError(f"{flag} must be 0 or more, got {value}.")
    if args.batch_size < 2 and not args.evaluate:
        raise UsageError(f"-b/--batch-size must be at least 2 for training (batch norm needs two images per "
                         f"batch), got {args.batch_size}.")
    _check_numbers(args)
    if args.height is not None and args.height // 16 < args.parts:
        raise UsageError(f"--height {args.height} is too small for --parts {args.parts}: layer4 is 1/16 of the "
                         f"input height, so it needs at least {16 * args.parts} pixels for one row per stripe.")
    if args.width is not None and args.width < 16:
        raise UsageError(f"--width {args.width} is too small: the network needs at least 16 pixels.")
    for flag, value in (("--height", args.height), ("--width", args.width)):
        if value is not None and value > MAX_SIDE:
            raise UsageError(f"{flag} {value} is larger than {MAX_SIDE} pixels; person crops are resized to a "
                             f"few hundred pixels (the paper uses 384x128).")
    if args.evaluate and not args.resume:
        raise UsageError("--evaluate needs --resume CHECKPOINT (the model to evaluate).")
    if args.arch not in models.names():
        raise UsageError(f"Unknown architecture {args.arch!r} (-a/--arch); choose one of: "
                         f"{', '.join(models.names())}.")
    distributed.parse_device(args.device, "--device")
    names = [datasets.canonical_name(args.dataset)]
    names += [datasets.parse_test_dataset(spec)[0] for spec in args.test_dataset]
    if args.name_pattern is not None and "custom" not in names:
        raise UsageError("--name-pattern reads the file names of -d custom (or a custom --test-dataset); the other "
                         "datasets have their own naming schemes.")
    for flag, value in (("--camera-ranges", args.camera_ranges), ("--split", args.split)):
        if value is not None and "custom" not in names:
            raise UsageError(f"{flag} applies to -d custom (or a custom --test-dataset); the other datasets come "
                             f"with their cameras and splits.")


def _check_numbers(args):
    """Learning rate, momentum, weight decay, loss weights, dropout and seed in their ranges (and finite)."""
    finite = {"--lr": args.lr, "--momentum": args.momentum, "--weight-decay": args.weight_decay,
              "--part-weight": args.part_weight, "--ds-weight": args.ds_weight}
    for flag, value in finite.items():
        if not math.isfinite(value) or value < 0:
            raise UsageError(f"{flag} must be a finite number, 0 or more, got {value}.")
    if args.lr <= 0:
        raise UsageError(f"--lr must be positive, got {args.lr}.")
    if not 0 <= args.dropout < 1 or not 0 <= args.random_erasing <= 1:
        raise UsageError("--dropout must be in [0, 1) and --random-erasing in [0, 1].")
    if not 0 <= args.seed < MAX_SEED:
        raise UsageError(f"--seed must be in [0, 2**32), got {args.seed}.")


def run_config(args, argv):
    """The ``RunConfig`` of parsed flags (``argv``: the command line, recorded in the log)."""
    dataset = datasets.canonical_name(args.dataset)
    size = dict(height=args.height, width=args.width)
    return RunConfig(
        data=DataConfig(dataset=args.dataset, root=args.data_dir or os.path.join("data", dataset),
                        batch_size=args.batch_size, workers=args.workers, **size,
                        combine_trainval=args.combine_trainval, num_val=args.num_val,
                        num_instances=args.num_instances, random_erasing=args.random_erasing,
                        cache_images=args.cache_images, seed=args.seed, cuhk03=args.cuhk03,
                        name_pattern=args.name_pattern, camera_ranges=args.camera_ranges, split=args.split),
        model=ModelConfig(arch=args.arch, num_classes=0, num_features=args.features, dropout=args.dropout,
                          dsa=not args.no_dsa, deep_supervision=not args.no_deep_supervision, parts=args.parts,
                          feature=args.feature, bnneck=args.bnneck),
        train=TrainConfig(lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay, epochs=args.epochs,
                          step_size=args.step_size, part_weight=args.part_weight, ds_weight=args.ds_weight,
                          seed=args.seed, deterministic=args.deterministic, print_freq=args.print_freq,
                          eval_freq=args.eval_freq, milestones=args.milestones, optimizer=args.optimizer,
                          lr_schedule=args.lr_schedule, warmup_epochs=args.warmup_epochs,
                          label_smoothing=args.label_smoothing, triplet_weight=args.triplet_weight,
                          margin=args.margin),
        eval=EvalConfig(batch_size=args.batch_size, workers=args.workers, **size, metric=args.metric,
                        rerank=args.rerank, flip_test=args.flip_test, visrank=args.visrank,
                        eval_dtype=args.eval_dtype),
        device=DeviceConfig(device=args.device, amp=args.amp, channels_last=args.channels_last,
                            compile=args.compile, sync_bn=args.sync_bn),
        pretrained=not args.no_pretrained, pretrained_path=args.pretrained_path, resume=args.resume,
        evaluate=args.evaluate, logs_dir=args.logs_dir, overwrite=args.overwrite, tensorboard=not args.no_tensorboard,
        test_datasets=[list(datasets.parse_test_dataset(spec)) for spec in args.test_dataset], command=list(argv))


def explicit_dests(arguments):
    """The argparse destinations given on the command line (parsed again with every default suppressed)."""
    parser = get_args_parser()
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(arguments)))


NOT_REPEATED = ("rerun", "overwrite")  # never taken from a recorded run: a re-run means them only when given again


def rerun_args(folder, arguments, explicit):
    """``(args, explicit, source)`` for ``arguments`` (whose destinations are ``explicit``) over the settings
    recorded in the run folder ``folder`` (--rerun; ``source``: the file they were read from).

    The recorded flags become the parser's defaults and ``arguments`` are parsed again, so every flag given wins.
    A recorded --resume of a checkpoint in ``folder`` (that run continuing itself) is left out: the new run starts
    from scratch. A new run into ``folder`` itself is refused unless --resume is given (continuing that run).
    """
    source, settings = run_files.read_run_settings(folder)
    if "command" in settings:
        recorded, recorded_explicit = _parse_recorded_command(settings["command"][1:], source)
    else:
        recorded, recorded_explicit = settings["args"], set(settings.get("explicit", []))
    parser = get_args_parser()
    defaults = _recorded_defaults(parser, recorded, source)
    if run_files.continues(folder, defaults.get("resume")):
        defaults["resume"] = None
    parser.set_defaults(**{name: value for name, value in defaults.items() if name not in explicit})
    args = parser.parse_args(arguments)
    if os.path.realpath(args.logs_dir) == os.path.realpath(folder) and "resume" not in explicit:
        raise UsageError(f"--rerun {folder} would start the new run in {folder} itself (its recorded --logs-dir), "
                         f"replacing the run it repeats: give the new run its own --logs-dir, such as --logs-dir "
                         f"{os.path.normpath(folder)}-rerun. To continue that run instead, add --resume "
                         f"{os.path.join(folder, 'checkpoint.pth.tar')}.")
    return args, {name for name in recorded_explicit if isinstance(name, str)} | explicit, source


def _parse_recorded_command(arguments, source):
    """(flags by destination, destinations given) of a command line recorded by a run from before run.json."""
    def refuse(message):
        raise UsageError(f"The command recorded in {source} (--rerun) does not parse with this main.py: {message}.")

    parser, given = get_args_parser(), get_args_parser()
    for action in given._actions:
        action.default = argparse.SUPPRESS
    parser.error = given.error = refuse
    args = parser.parse_known_args(arguments)[0]
    if args.rerun:
        refuse(f"it repeats the run in {args.rerun} (--rerun), and the run.json that held the settings it took from "
               f"there is missing; re-run {args.rerun} instead")
    return vars(args), set(vars(given.parse_known_args(arguments)[0]))


def _recorded_defaults(parser, recorded, source):
    """The recorded values of the flags this parser knows (flags removed since are left out), each checked to be a
    value its flag takes."""
    if not isinstance(recorded, dict):
        raise UsageError(f"{source} (--rerun) records its flags as a JSON {type(recorded).__name__}, not an object.")
    defaults = {}
    for action in parser._actions:
        if action.dest not in recorded or action.dest in NOT_REPEATED or action.dest == "help":
            continue
        value = recorded[action.dest]
        if not _takes(action, value):
            raise UsageError(f"{source} (--rerun) records {action.option_strings[0]} as {value!r}, which that flag "
                             f"does not take; expected the record main.py writes into its --logs-dir, unedited.")
        defaults[action.dest] = float(value) if action.type is float and value is not None else value
    return defaults


def _takes(action, value):
    """Whether ``value`` (read from JSON) is a value of the argparse ``action``."""
    if action.nargs == 0:
        return isinstance(value, bool)
    if value is None:
        return action.default is None
    if action.nargs in ("+", "*") or isinstance(action.default, list):
        return isinstance(value, list) and all(_takes_one(action, item) for item in value)
    return _takes_one(action, value)


def _takes_one(action, value):
    kind = {int: int, float: (int, float)}.get(action.type, str)
    return isinstance(value, kind) and not isinstance(value, bool) and (not action.choices or value in action.choices)


def main(argv=None):
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")  # paths with bytes that are not UTF-8
    argv = sys.argv if argv is None else [sys.argv[0], *argv]
    args = get_args_parser().parse_args(argv[1:])
    try:
        explicit = explicit_dests(argv[1:])
        record = {}
        if args.rerun:
            args, explicit, record["settings_from"] = rerun_args(args.rerun, argv[1:], explicit)
        check_args(args)
        from reid import experiment
        config = recipes.apply(args.recipe, run_config(args, argv), explicit)
        recipes.validate(config)
        record.update(args=vars(args), explicit=sorted(explicit))
        experiment.run(config, record, recipes.ineffective(config, explicit))
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except RunInterrupted as stop:
        print(stop, file=sys.stderr)
        return stop.exit_code
    except KeyboardInterrupt:
        print("Interrupted. The checkpoints already in the logs folder are intact; resume from one with --resume.",
              file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
