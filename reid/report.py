"""The ablation table from finished runs: ``python -m reid.report LOGDIR [LOGDIR ...] [--csv] [--out FILE]``.

Each LOGDIR is a run folder (``main.py --logs-dir``), a ``results.json`` in one, or a parent folder whose
sub-folders are runs (``logs/ablation-market``). Rank-k, mAP and mINP are printed in percent with one decimal,
as papers print them. Runs with results come first, grouped by dataset and ordered as the paper's ablation
(PCB baseline, +DSA, +DS, full); runs without a usable ``results.json`` follow, each saying what is missing.

Exit status: 0 when at least one run has results, 1 when none has, 2 on usage errors.
"""
import argparse
import csv
import glob
import io
import json
import os
import sys

from .errors import UsageError

COLUMNS = ("run", "dataset", "switches", "epochs", "rank-1", "rank-5", "rank-10", "mAP", "mINP")
METRIC_KEYS = ("rank1", "rank5", "rank10", "mAP", "mINP")
REQUIRED_KEYS = ("dataset", "epochs", "dsa", "deep_supervision") + METRIC_KEYS
RUN_FILES = ("results.json", "metrics.csv", "log.txt", "checkpoint.pth.tar")
DEFAULT_PARTS, DEFAULT_FEATURE = 6, "parts"
# (dsa, deep_supervision) -> the row's name, in the order of the paper's ablation table.
ABLATION_ROWS = {(False, False): "PCB baseline", (True, False): "+DSA", (False, True): "+DS",
                 (True, True): "DSA+DS (full)"}
ABLATION_ORDER = list(ABLATION_ROWS)


def get_args_parser():
    parser = argparse.ArgumentParser(prog="python -m reid.report", description=__doc__.split("\n")[0])
    parser.add_argument("logdirs", nargs="+", metavar="LOGDIR",
                        help="run folder, its results.json, or a folder of run folders (globs are expanded)")
    parser.add_argument("--csv", action="store_true", help="print CSV instead of a Markdown table")
    parser.add_argument("--out", metavar="FILE", help="also write the table to FILE")
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
    try:
        with open(path, encoding="utf-8") as handle:
            record = json.load(handle)
    except OSError as error:
        return None, f"results.json unreadable ({error.strerror or error})"
    except ValueError as error:
        return None, f"results.json is not valid JSON ({error})"
    if not isinstance(record, dict):
        return None, "results.json is not a JSON object"
    missing = [key for key in REQUIRED_KEYS if key not in record]
    if missing:
        return None, f"results.json lacks {', '.join(missing)}"
    not_numbers = [key for key in METRIC_KEYS if not is_number(record[key])]
    if not_numbers:
        return None, f"results.json: {', '.join(not_numbers)} not a number"
    return record, None


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


def describe_switches(record):
    """The ablation row ("PCB baseline", "+DSA", "+DS", "DSA+DS (full)") and whatever else changes the numbers."""
    notes = [ABLATION_ROWS[bool(record["dsa"]), bool(record["deep_supervision"])]]
    if record.get("parts", DEFAULT_PARTS) != DEFAULT_PARTS:
        notes.append(f"{record['parts']} parts")
    if record.get("feature", DEFAULT_FEATURE) != DEFAULT_FEATURE:
        notes.append(f"{record['feature']} feature")
    run_args = record.get("args") if isinstance(record.get("args"), dict) else {}
    if run_args.get("rerank"):
        notes.append("re-ranked")
    if run_args.get("flip_test"):
        notes.append("flip test")
    return ", ".join(notes)


def percent(fraction):
    return f"{100 * fraction:.1f}"


def table_rows(folders):
    """One row of strings per run (see COLUMNS), in report order, and how many runs have results."""
    finished, unfinished, datasets = [], [], []
    for folder, name in zip(folders, run_names(folders)):
        record, problem = read_results(folder)
        if record is None:
            unfinished.append((name, "", problem, "", "", "", "", "", ""))
            continue
        if record["dataset"] not in datasets:
            datasets.append(record["dataset"])
        ablation = (bool(record["dsa"]), bool(record["deep_supervision"]))
        row = (name, str(record["dataset"]), describe_switches(record), str(record["epochs"]),
               *(percent(record[key]) for key in METRIC_KEYS))
        finished.append(((datasets.index(record["dataset"]), ABLATION_ORDER.index(ablation)), row))
    finished.sort(key=lambda keyed_row: keyed_row[0])
    return [row for _, row in finished] + unfinished, len(finished)


def format_markdown(rows):
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


def format_csv(rows):
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    writer.writerows(rows)
    return buffer.getvalue()


def write_table(path, text):
    try:
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text)
    except OSError as error:
        raise UsageError(f"--out {path}: cannot write the table there ({error.strerror or error}).") from None


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    try:
        folders, not_runs = find_run_folders(args.logdirs)
        for path in not_runs:
            print(f"skipped {path}: a file, not a run folder", file=sys.stderr)
        if not folders:
            raise UsageError(f"None of {' '.join(args.logdirs)} is a run folder: give the --logs-dir of "
                             f"main.py runs, or a folder that holds them.")
        rows, finished = table_rows(folders)
        text = format_csv(rows) if args.csv else format_markdown(rows)
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
