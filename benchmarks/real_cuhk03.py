"""The DSP ablation on real pedestrians: the CUHK03 detected crops, one folder of ``PPPP_II.jpg`` files (II 00-04
from camera 1, 05-09 from camera 2), split by identity parity; one JSON object per run, then a summary.

    .venv/bin/python -m benchmarks.real_cuhk03 --data DIR --out logs/real-cuhk03
    .venv/bin/python -m benchmarks.real_cuhk03 --data DIR --out logs/real-cuhk03 --rows baseline full --seeds 1 2 3
    .venv/bin/python -m benchmarks.real_cuhk03 --data DIR --out logs/real-cuhk03 --dry-run

Each run is main.py's own (``main.main`` in this process), reading DIR as ``-d custom --split parity`` (even
identities train, odd ones test; docs/datasets.md), into ``--out/<row>-seed<N>/``. The rows are the paper's
ablation: ``baseline`` (--no-dsa --no-deep-supervision), ``dsa`` (--no-deep-supervision), ``ds`` (--no-dsa) and
``full``. A recipe is a named set of main.py flags (``RECIPES``); ``--epochs`` overrides its length and
``--main-args`` appends any main.py flags (the last occurrence of a flag wins). The test split is evaluated once,
after the last epoch.

It resumes: a run whose folder holds results.json is not trained again, and one that holds only
checkpoint.pth.tar (interrupted) continues from it. Runs go seed by seed, so that an interrupted benchmark
already has paired runs of every row.

Standard output holds only JSON lines (main.py's own output goes to standard error): one per run with row,
seed, rank1, mAP and mINP (fractions, from its results.json), train_seconds (the epochs' seconds in
metrics.csv) and images_per_second (training images over those seconds); then one summary line with each row's
mean and standard deviation, and each row's paired difference from the baseline (row minus baseline, over the
runs of the same seeds, from their per-query results) with its bootstrap interval, from
``reid.compare.paired_difference``.
"""
import argparse
import contextlib
import csv
import json
import os
import shlex
import statistics
import sys

import main as dsp_main
from reid import compare
from reid.errors import UsageError

DATA_FLAGS = {"-d": "custom", "--name-pattern": r"^(?P<pid>\d+)_(?P<index>\d+)\.jpg$",
              "--camera-ranges": "0-4,5-9", "--split": "parity"}
ROWS = {"baseline": ["--no-dsa", "--no-deep-supervision"], "dsa": ["--no-deep-supervision"], "ds": ["--no-dsa"],
        "full": []}
# main.py flags of each recipe: True for a switch, a list for a flag with several values. cpu-real-strong, the
# default, won the search of 2026-12-05 (docs/results.md): the best CUHK03 mAP of the candidates measured within
# about 15 minutes of training on a 2-core CPU (13 epochs at 96x48, about 55 s each with its P x K batches).
# cpu-real, the plain recipe, was set from a time budget before that search (8 epochs of about 70 s).
RECIPES = {
    "cpu-real": {"-a": "resnet18", "--no-pretrained": True, "--height": 96, "--width": 48, "-b": 32, "-j": 2,
                 "--epochs": 8, "--warmup-epochs": 1, "--lr-schedule": "cosine", "--label-smoothing": 0.1,
                 "--lr": 0.05, "--combine-trainval": True, "--flip-test": True},
    "cpu-real-strong": {"-a": "resnet18", "--no-pretrained": True, "--height": 96, "--width": 48, "-b": 32,
                        "-j": 2, "--recipe": "strong", "--epochs": 13, "--milestones": [10], "--warmup-epochs": 1,
                        "--combine-trainval": True, "--flip-test": True},
}
DEFAULT_RECIPE = "cpu-real-strong"
METRICS = ("rank1", "mAP", "mINP")
COMPARED = ("mAP", "rank1")
RESAMPLES, CONFIDENCE = 10000, 0.95


def flag_arguments(flags):
    """The argv of a ``{flag: value}`` dict: a switch for True, every value of a list, else the value."""
    argv = []
    for flag, value in flags.items():
        if value is True:
            argv.append(flag)
        elif isinstance(value, list):
            argv += [flag, *map(str, value)]
        else:
            argv += [flag, str(value)]
    return argv


def run_folder(out, row, seed):
    return os.path.join(out, f"{row}-seed{seed}")


def run_arguments(args, row, seed):
    """main.py's arguments for one run; with ``--resume`` when its folder holds an interrupted run."""
    recipe = dict(RECIPES[args.recipe])
    if args.epochs is not None:
        recipe["--epochs"] = args.epochs
    folder = run_folder(args.out, row, seed)
    argv = [*flag_arguments(DATA_FLAGS), "--data-dir", args.data, *flag_arguments(recipe), *ROWS[row],
            "--seed", str(seed), "--eval-freq", str(recipe["--epochs"]), "--logs-dir", folder,
            *shlex.split(args.main_args)]
    checkpoint = os.path.join(folder, "checkpoint.pth.tar")
    if os.path.isfile(checkpoint):
        argv += ["--resume", checkpoint]
    return argv


def is_finished(folder):
    return os.path.isfile(os.path.join(folder, "results.json"))


def train(argv):
    """One main.py run in this process, its output sent to standard error; its exit status.

    ``main.main`` records ``sys.argv[0]`` as the program of the run's command (in log.txt, the checkpoints and
    the command it prints to resume an interrupted run), so that is main.py for the time of the run.
    """
    program = sys.argv[0]
    sys.argv[0] = os.path.relpath(dsp_main.__file__)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            return dsp_main.main(argv)
    finally:
        sys.argv[0] = program


def run_record(folder, row, seed):
    """The JSON record of a finished run, from its results.json and metrics.csv."""
    with open(os.path.join(folder, "results.json")) as handle:
        results = json.load(handle)
    with open(os.path.join(folder, "metrics.csv"), newline="") as handle:
        epochs = list(csv.DictReader(handle))
    seconds = sum(float(epoch["seconds"]) for epoch in epochs)
    images = sum(float(epoch["images_per_second"]) * float(epoch["seconds"]) for epoch in epochs)
    return {"row": row, "seed": seed, **{key: results[key] for key in METRICS}, "train_seconds": round(seconds, 1),
            "images_per_second": round(images / seconds, 2) if seconds else None}


def row_statistics(records):
    """Mean and standard deviation (None for a single run) of each metric over a row's runs."""
    figures = {"runs": len(records)}
    for key in METRICS:
        values = [record[key] for record in records]
        figures[f"{key}_mean"] = statistics.fmean(values)
        figures[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else None
    return figures


def summary(args, records):
    """The last JSON line: each row's statistics, and each other row's paired difference from the baseline."""
    by_row = {row: [record for record in records if record["row"] == row] for row in args.rows}
    line = {"summary": True, "recipe": args.recipe, "seeds": args.seeds,
            "rows": {row: row_statistics(rows) for row, rows in by_row.items()}, "differences_from_baseline": {}}
    if "baseline" in args.rows:
        baseline = [run_folder(args.out, "baseline", seed) for seed in args.seeds]
        for row in args.rows:
            if row != "baseline":
                runs = [run_folder(args.out, row, seed) for seed in args.seeds]
                difference = compare.paired_difference(baseline, runs, resamples=RESAMPLES, seed=0,
                                                       confidence=CONFIDENCE)
                line["differences_from_baseline"][row] = {key: difference[key] for key in COMPARED}
    return line


def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="Recipes: " + "; ".join(f"{name}: {shlex.join(flag_arguments(flags))}"
                                                                     for name, flags in RECIPES.items()))
    parser.add_argument("--data", required=True, help="the folder of PPPP_II.jpg crops")
    parser.add_argument("--out", required=True, help="the benchmark's folder: one run folder per row and seed")
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS), help="default: all four")
    parser.add_argument("--seeds", nargs="+", type=int, default=[1], help="one run per row and seed (default: 1)")
    parser.add_argument("--epochs", type=int, default=None, help="override the recipe's --epochs")
    parser.add_argument("--recipe", choices=list(RECIPES), default=DEFAULT_RECIPE)
    parser.add_argument("--main-args", default="", metavar="'FLAGS'",
                        help="more main.py flags for every run, in one quoted string (e.g. '--device cuda --amp')")
    parser.add_argument("--dry-run", action="store_true", help="print the main.py commands; run nothing")
    return parser


def main(argv=None):
    parser = get_args_parser()
    args = parser.parse_args(argv)
    args.rows = list(dict.fromkeys(args.rows))
    args.seeds = list(dict.fromkeys(args.seeds))
    if args.epochs is not None and args.epochs < 1:
        parser.error("--epochs must be at least 1")
    records = []
    for seed in args.seeds:
        for row in args.rows:
            folder = run_folder(args.out, row, seed)
            if is_finished(folder):
                if args.dry_run:
                    print(f"# finished, not trained again: {folder}")
                else:
                    records.append(run_record(folder, row, seed))
                    print(json.dumps(records[-1]), flush=True)
                continue
            run_argv = run_arguments(args, row, seed)
            if args.dry_run:
                print(shlex.join([sys.executable, "main.py", *run_argv]))
                continue
            status = train(run_argv)
            if status != 0:
                sys.exit(f"error: the run {folder} stopped with exit status {status} (its log.txt, and main.py's "
                         f"output above, say why); running the benchmark again resumes it.")
            records.append(run_record(folder, row, seed))
            print(json.dumps(records[-1]), flush=True)
    if not args.dry_run:
        try:
            print(json.dumps(summary(args, records)), flush=True)
        except UsageError as error:
            sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
