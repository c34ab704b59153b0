"""Train and evaluate the DSP person re-identification model.

    python main.py -d market -b 48 -j 4 --epochs 50 --log logs/market/ --combine-trainval --step-size 40 \
        --data-dir Market-1501
"""
import argparse
import sys

from reid import datasets, models
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

    logging = parser.add_argument_group("logging")
    logging.add_argument("--resume", default=None, metavar="PATH", help="checkpoint to resume or evaluate")
    logging.add_argument("--print-freq", type=int, default=10, help="progress-bar update every N steps")
    logging.add_argument("--logs-dir", "--log", dest="logs_dir", default="logs", metavar="PATH")
    return parser


def check_args(args):
    """Refuse impossible flag values before anything runs."""
    positive = {"-b/--batch-size": args.batch_size, "--height": args.height, "--width": args.width,
                "--features": args.features, "--parts": args.parts, "--print-freq": args.print_freq,
                "--eval-freq": args.eval_freq}
    for flag, value in positive.items():
        if value is not None and value < 1:
            raise UsageError(f"{flag} must be at least 1, got {value}.")
    for flag, value in {"-j/--workers": args.workers, "--epochs": args.epochs, "--step-size": args.step_size,
                        "--num-instances": args.num_instances, "--num-val": args.num_val}.items():
        if value < 0:
            raise UsageError(f"{flag} must be 0 or more, got {value}.")
    if not 0 <= args.dropout < 1 or not 0 <= args.random_erasing <= 1:
        raise UsageError("--dropout must be in [0, 1) and --random-erasing in [0, 1].")
    if args.lr <= 0:
        raise UsageError(f"--lr must be positive, got {args.lr}.")
    if args.height is not None and args.height // 16 < args.parts:
        raise UsageError(f"--height {args.height} is too small for --parts {args.parts}: layer4 is 1/16 of the "
                         f"input height, so it needs at least {16 * args.parts} pixels for one row per stripe.")
    if args.width is not None and args.width < 16:
        raise UsageError(f"--width {args.width} is too small: the network needs at least 16 pixels.")
    if args.evaluate and not args.resume:
        raise UsageError("--evaluate needs --resume CHECKPOINT (the model to evaluate).")
    if args.arch not in models.names():
        raise UsageError(f"Unknown architecture {args.arch!r} (-a/--arch); choose one of: "
                         f"{', '.join(models.names())}.")
    datasets.canonical_name(args.dataset)


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    try:
        check_args(args)
        from reid import experiment
        experiment.run(args)
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
