"""The ablation table from finished runs: ``python -m reid.report LOGDIR [LOGDIR ...] [--csv] [--out FILE]``.

Each LOGDIR is a run folder (``main.py --logs-dir``), a ``results.json`` in one, or a parent folder whose
sub-folders are runs (``logs/ablation-market``). Rank-k, mAP and mINP are printed in percent with one decimal,
as papers print them. Runs with results come first, grouped by training recipe, then by dataset, and ordered
as the paper's ablation (PCB baseline, +DSA, +DS, full); a run evaluated on other datasets as well gets a row
for each below its own. Runs without a usable ``results.json`` follow, each saying what is missing. In
Markdown, runs of several recipes give one table per recipe.

Exit status: 0 when at least one run has results, 1 when none has, 2 on usage errors.
"""
import argparse
import csv
import glob
import io
import json
import math
import os
import sys

from . import recipes
from .config import RunConfig
from .errors import UsageError

COLUMNS = ("run", "dataset", "switches", "epochs", "rank-1", "rank-5", "rank-10", "mAP", "mINP")
METRIC_KEYS = ("rank1", "rank5", "rank10", "mAP", "mINP")
REQUIRED_KEYS = ("dataset", "epochs", "dsa", "deep_supervision") + METRIC_KEYS
RUN_FILES = ("results.json", "metrics.csv", "log.txt", "checkpoint.pth.tar")
# What main.py writes into a run folder: --out may never overwrite one of these.
RUN_OUTPUTS = RUN_FILES + ("model_best.pth.tar", "curves.png")
MAX_RESULTS_BYTES = 16 * 2 ** 20  # a results.json is a few kB; anything this large is not one
DEFAULT_PARTS, DEFAULT_FEATURE, DEFAULT_RECIPE = 6, "parts", "paper"
# (dsa, deep_supervision) -> the row's name, in the order of the paper's ablation table.
ABLATION_ROWS = {(False, False): "PCB baseline", (True, False): "+DSA", (False, True): "+DS",
                 (True, True): "DSA+DS (full)"}
ABLATION_ORDER = list(ABLATION_ROWS)
# Training options the switches column names when they differ from the run's recipe (reid.recipes.FLAGS keys);
# the learning rate, schedule length and batch composition are left to the run's log, as --step-size always was.
SHOWN_OPTIONS = ("train.optimizer", "train.lr_schedule", "train.warmup_epochs", "train.label_smoothing",
                 "train.triplet_weight", "train.margin", "model.bnneck")


def get_args_parser():
    parser = argparse.ArgumentParser(prog="python -m reid.report", description=__doc__.split("\n")[0])
    parser.add_argument("logdirs", nargs="+", metavar="LOGDIR",
                        help="run folder, its results.json, or a folder of run folders (globs are expanded)")
    parser.add_argument("--csv", action="store_true", help="print CSV instead of a Markdown table")
    parser.add_argument("--out", metavar="FILE", help="also write the table to FILE (never one of a run's files)")
    return parser


def looks_like_run(folder):
    return any(os.path.exists(os.path.join(folder, name)) for name in RUN_FILES)


def find_run_folders(arguments):
    """The run folders named by the command line, and the files among its arguments that are not runs.

    A quoted glob is expanded here as the shell would have. A folder that is not a run itself but has run
    sub-folders stands for those sub-folders. Folders that do not exist are kept: their row says so.
    """
    paths = []
    for argument in arguments:
        is_pattern = not os.path.exists(argument) and any(char in argument for char in "*?[")
        matches = sorted(glob.glob(argument)) if is_pattern else []
        paths.extend(matches or [argument])
    folders, not_runs = [], []
    for path in paths:
        if os.path.isfile(path):
            if os.path.basename(path) == "results.json":
                folders.append(os.path.dirname(path) or ".")
            else:
                not_runs.append(path)
        elif os.path.isdir(path) and not looks_like_run(path):
            runs = [os.path.join(path, name) for name in sorted(os.listdir(path))
                    if os.path.isdir(os.path.join(path, name)) and looks_like_run(os.path.join(path, name))]
            folders.extend(runs or [path])
        else:
            folders.append(path)
    seen, unique = set(), []
    for folder in folders:
        if os.path.abspath(folder) not in seen:
            seen.add(os.path.abspath(folder))
            unique.append(folder)
    return unique, not_runs


def run_names(folders):
    """Each folder's name, or its path relative to the folders' common parent when they have several parents."""
    absolute = [os.path.abspath(folder) for folder in folders]
    try:
        parent = os.path.commonpath([os.path.dirname(path) for path in absolute])
    except ValueError:
        return list(folders)
    return [os.path.relpath(path, parent) for path in absolute]


def read_results(folder):
    """``(record, None)`` for a usable results.json, else ``(None, what is missing)``."""
    if not os.path.isdir(folder):
        return None, "folder missing"
    path = os.path.join(folder, "results.json")
    if not os.path.exists(path):
        return None, f"no results.json ({training_progress(folder)})"
    record, problem = parse_results_file(path)
    if problem:
        return None, problem
    if not isinstance(record, dict):
        return None, "results.json is not a JSON object"
    missing = [key for key in REQUIRED_KEYS if key not in record]
    if missing:
        return None, f"results.json lacks {', '.join(missing)}"
    problem = metrics_problem(record) or epochs_problem(record["epochs"])
    return (None, f"results.json: {problem}") if problem else (record, None)


def parse_results_file(path):
    """``(parsed JSON, None)``, or ``(None, why not)`` for a file that cannot be a results.json: unreadable,
    too large, not UTF-8, malformed, nested too deeply, or holding an integer too long to convert."""
    try:
        if os.path.getsize(path) > MAX_RESULTS_BYTES:
            return None, f"results.json is {os.path.getsize(path):,} bytes, far more than results hold"
        with open(path, "rb") as handle:
            text = handle.read().decode("utf-8")
        return json.loads(text), None
    except OSError as error:
        return None, f"results.json unreadable ({error.strerror or error})"
    except UnicodeDecodeError:
        return None, "results.json is not UTF-8 text"
    except json.JSONDecodeError as error:
        return None, f"results.json is not valid JSON ({error})"
    except ValueError:
        return None, "results.json holds a number too long to read"
    except RecursionError:
        return None, "results.json is nested too deeply to be results"


def metrics_problem(record, keys=METRIC_KEYS):
    """What is wrong with the metrics of ``record`` (fractions in [0, 1]), or None."""
    not_numbers = [key for key in keys if not is_number(record[key])]
    if not_numbers:
        return f"{', '.join(not_numbers)} not a number"
    not_fractions = [key for key in keys if not is_fraction(record[key])]
    if not_fractions:
        return f"{', '.join(not_fractions)} not a fraction in [0, 1]"
    return None


def epochs_problem(epochs):
    if isinstance(epochs, int) and not isinstance(epochs, bool) and 0 <= epochs < 10 ** 9:
        return None
    return "epochs is not a number of epochs"


def training_progress(folder):
    """Why a run may have no results yet, from its metrics.csv (one row per finished epoch)."""
    path = os.path.join(folder, "metrics.csv")
    if not os.path.exists(path):
        return "no metrics.csv either: not started, or stopped before its first epoch"
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            epochs = [row.get("epoch") for row in csv.DictReader(handle)]
    except (OSError, UnicodeDecodeError, csv.Error):
        return "metrics.csv unreadable"
    if not epochs:
        return "still training? metrics.csv has no epoch yet"
    return f"still training? last epoch in metrics.csv: {epochs[-1]}"


def is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_fraction(value):
    """A metric as results.json stores it: in [0, 1]. Integers far too large for a float count as no fraction."""
    try:
        return math.isfinite(value) and 0 <= value <= 1
    except OverflowError:
        return False


def run_settings(record):
    """The settings of the run that wrote ``record``, as ``RunConfig.to_dict()`` gives them: its "config"
    (results.json since Nov 2026), or its argparse "args" in the form ``reid.recipes`` reads for old runs."""
    if isinstance(record.get("config"), dict):
        return record["config"]
    return {"format_1_args": record["args"] if isinstance(record.get("args"), dict) else {}}


def evaluation_switches(settings):
    """(re-ranked, flip test) of a run's settings."""
    evaluation = settings.get("eval") if isinstance(settings.get("eval"), dict) else settings.get("format_1_args")
    evaluation = evaluation if isinstance(evaluation, dict) else {}
    return bool(evaluation.get("rerank")), bool(evaluation.get("flip_test"))


def recipe_notes(settings):
    """The recipe when it is not "paper", with the training options of ``SHOWN_OPTIONS`` that depart from its
    presets: ["strong recipe (--warmup-epochs 1)"]; for the paper recipe just the departures, as flags."""
    recipe = run_recipe(settings)
    preset = recipes.PRESETS.get(recipe, {})
    departures = [as_flag(recipes.FLAGS[path], setting(settings, path)) for path in SHOWN_OPTIONS
                  if setting(settings, path) != preset.get(path, setting({}, path))]
    if recipe == DEFAULT_RECIPE:
        return departures
    return [f"{recipe} recipe" + (f" ({', '.join(departures)})" if departures else "")]


def run_recipe(settings):
    return str(recipes.recipe_of(settings))


def setting(settings, path):
    """The value of ``path`` ("train.warmup_epochs") in a run's settings, RunConfig's default when absent."""
    section, name = path.split(".")
    values = settings.get(section)
    default = getattr(getattr(RunConfig(), section), name)
    return values.get(name, default) if isinstance(values, dict) else default


def as_flag(flag, value):
    if isinstance(value, bool):
        return flag if value else f"--no-{flag[2:]}"
    return f"{flag} {value}"


def describe_switches(record):
    """The ablation row ("PCB baseline", "+DSA", "+DS", "DSA+DS (full)") and whatever else changes the numbers:
    the recipe and its departures, a non-default part count or feature, re-ranking, flip test."""
    settings = run_settings(record)
    notes = [ABLATION_ROWS[bool(record["dsa"]), bool(record["deep_supervision"])], *recipe_notes(settings)]
    if record.get("parts", DEFAULT_PARTS) != DEFAULT_PARTS:
        notes.append(f"{record['parts']} parts")
    if record.get("feature", DEFAULT_FEATURE) != DEFAULT_FEATURE:
        notes.append(f"{record['feature']} feature")
    rerank, flip_test = evaluation_switches(settings)
    notes += ["re-ranked"] * rerank + ["flip test"] * flip_test
    return ", ".join(notes)


def percent(fraction):
    return f"{100 * fraction:.1f}"


def other_dataset_rows(record, name, switches):
    """A row per entry of the run's "other_datasets" (the same model evaluated on another dataset), named
    "NAME -> DATASET"; an entry that cannot be shown says why instead."""
    entries = record.get("other_datasets") or []
    if not isinstance(entries, list):
        return [(f"{name} -> ?", "", "results.json: other_datasets is not a list", "", "", "", "", "", "")]
    rows = []
    for number, entry in enumerate(entries, 1):
        problem = other_dataset_problem(entry)
        if problem:
            rows.append((f"{name} -> ?", "", f"results.json: other dataset {number} {problem}",
                         "", "", "", "", "", ""))
        else:
            dataset = str(entry["dataset"])
            rows.append((f"{name} -> {dataset}", dataset, switches, str(record["epochs"]),
                         *(percent(entry[key]) for key in METRIC_KEYS)))
    return rows


def other_dataset_problem(entry):
    if not isinstance(entry, dict):
        return "is not a JSON object"
    missing = [key for key in ("dataset",) + METRIC_KEYS if key not in entry]
    return f"lacks {', '.join(missing)}" if missing else metrics_problem(entry)


def report_rows(folders):
    """``(recipe, rows)`` groups in report order (recipe None: runs without results) and how many runs have
    results. Each row is a tuple of strings (see COLUMNS)."""
    finished, unfinished, order = [], [], {"recipes": [], "datasets": []}
    for folder, name in zip(folders, run_names(folders)):
        record, problem = read_results(folder)
        if record is None:
            unfinished.append((name, "", problem, "", "", "", "", "", ""))
            continue
        recipe, dataset = run_recipe(run_settings(record)), str(record["dataset"])
        for kind, value in (("recipes", recipe), ("datasets", dataset)):
            if value not in order[kind]:
                order[kind].append(value)
        switches = describe_switches(record)
        row = (name, dataset, switches, str(record["epochs"]), *(percent(record[key]) for key in METRIC_KEYS))
        ablation = ABLATION_ORDER.index((bool(record["dsa"]), bool(record["deep_supervision"])))
        finished.append((recipe, dataset, ablation, [row, *other_dataset_rows(record, name, switches)]))
    finished.sort(key=lambda run: (order["recipes"].index(run[0]), order["datasets"].index(run[1]), run[2]))
    groups = [(recipe, [row for run in finished if run[0] == recipe for row in run[3]])
              for recipe in order["recipes"]]
    if unfinished:
        groups.append((None, unfinished))
    return groups, len(finished)


def format_markdown(groups):
    """Markdown: one table, or with several recipes one table per recipe, each under its name (runs without
    results in the last table)."""
    if len([recipe for recipe, _ in groups if recipe is not None]) <= 1:
        return markdown_table([row for _, rows in groups for row in rows])
    sections = [f"**{recipe} recipe**\n\n" + markdown_table(rows) if recipe else
                "**runs without results**\n\n" + markdown_table(rows) for recipe, rows in groups]
    return "\n".join(sections)


def markdown_table(rows):
    """A Markdown table padded to line up in a terminal; the number columns are right-aligned."""
    rows = [tuple(cell.replace("|", "\\|") for cell in row) for row in rows]
    widths = [max(len(row[index]) for row in [COLUMNS, *rows]) for index in range(len(COLUMNS))]
    right_aligned = [index >= COLUMNS.index("epochs") for index in range(len(COLUMNS))]

    def line(cells):
        padded = (cell.rjust(width) if right else cell.ljust(width)
                  for cell, width, right in zip(cells, widths, right_aligned))
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join("-" * (width + 1) + ":" if right else "-" * (width + 2)
                          for width, right in zip(widths, right_aligned)) + "|"
    return "\n".join([line(COLUMNS), rule, *(line(row) for row in rows)]) + "\n"


def format_csv(groups):
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    writer.writerows(row for _, rows in groups for row in rows)
    return buffer.getvalue()


def check_out_path(path):
    """Refuse an --out that would overwrite a file main.py writes into a run folder (results.json, a
    checkpoint, ...), also through a symbolic link."""
    names = {os.path.basename(path), os.path.basename(os.path.realpath(path))}
    clash = sorted(names & set(RUN_OUTPUTS))
    if clash:
        raise UsageError(f"--out {path}: {clash[0]} is the name of a file main.py writes into a run folder, and "
                         f"the report never overwrites a run's files. Write the table to another file, such as "
                         f"table.md or table.csv.")


def write_table(path, text):
    try:
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text)
    except OSError as error:
        raise UsageError(f"--out {path}: cannot write the table there ({error.strerror or error}).") from None


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    try:
        if args.out:
            check_out_path(args.out)
        folders, not_runs = find_run_folders(args.logdirs)
        for path in not_runs:
            print(f"skipped {path}: a file, not a run folder", file=sys.stderr)
        if not folders:
            raise UsageError(f"None of {' '.join(args.logdirs)} is a run folder: give the --logs-dir of "
                             f"main.py runs, or a folder that holds them.")
        groups, finished = report_rows(folders)
        text = format_csv(groups) if args.csv else format_markdown(groups)
        if args.out:
            write_table(args.out, text)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(text, end="")
    if not finished:
        print("no results yet: no run has a usable results.json (each row says what is missing)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
