"""The ablation table from finished runs: ``python -m reid.report LOGDIR [LOGDIR ...] [--csv] [--out FILE]``.

Each LOGDIR is a run folder (``main.py --logs-dir``), a ``results.json`` in one, or a parent folder whose
sub-folders are runs (``logs/ablation-market``). Rank-k, mAP and mINP are printed in percent with one decimal,
as papers print them. Runs with results come first, grouped by training recipe, then by dataset, and ordered
as the paper's ablation (PCB baseline, +DSA, +DS, full); a run evaluated on other datasets as well gets a row
for each below its own. Runs without a usable ``results.json`` follow, each saying what is missing. In
Markdown, runs of several recipes give one table per recipe. A ``results.json`` of a format newer than this
code reads is not read: its row says so.

Seed runs share a row. Runs whose settings differ only in the seed, or in where, how fast or how verbosely
they ran (``reid.compare.NOT_COMPARED``: ``--seed``, ``--logs-dir``, ``--data-dir``, ``-j``, ``--resume``,
``--device``, ``--channels-last``, ``--compile``, ``--deterministic``, ``--print-freq``, ``--eval-freq``,
``--cache-images``, ``--visrank``, ``--pretrained-path`` and the recorded command line), are one experiment:
its row is named after the runs' common name with their seeds ("baseline (seeds 1,2,3)"), its ``seeds``
column counts them, and each metric reads ``mean ± std`` (sample standard deviation, ddof 1). A single run
keeps plain numbers. Runs written before results.json recorded the settings (Nov 2026), and evaluations of
a checkpoint (``--evaluate``, whose settings are the evaluating command's), always get a row each. In CSV,
each metric has a column for the mean and one for the std (empty for a single run).

``--versus-baseline`` adds each row's difference from the PCB baseline row with the same settings but the
ablation switches, in mAP and rank-1 (percentage points, row − baseline), with its 95 % bootstrap interval
(``reid.compare.paired_difference``; it needs the runs' per_query.csv).

``--compare A B`` prints B − A in mAP and rank-1 with its bootstrap interval instead of a table; A and B are
each a run folder, or a folder or quoted glob of the seed runs of one experiment. The method:
docs/statistics.md.

Exit status: 0 when at least one run has results (for --compare: when the comparison is printed), 1 when none
has, 2 on usage errors.
"""
import argparse
import csv
import glob
import io
import json
import math
import os
import re
import statistics
import sys
from dataclasses import dataclass, field

from . import compare, recipes
from .config import RunConfig
from .errors import UsageError

COLUMNS = ("run", "dataset", "switches", "epochs", "seeds", "rank-1", "rank-5", "rank-10", "mAP", "mINP")
METRIC_KEYS = ("rank1", "rank5", "rank10", "mAP", "mINP")
METRIC_COLUMNS = dict(zip(METRIC_KEYS, COLUMNS[-len(METRIC_KEYS):]))
VERSUS_KEYS = ("mAP", "rank1")  # the metrics --versus-baseline and --compare give differences of
REQUIRED_KEYS = ("dataset", "epochs", "dsa", "deep_supervision") + METRIC_KEYS
RUN_FILES = ("results.json", "metrics.csv", "log.txt", "checkpoint.pth.tar")
# What main.py writes into a run folder: --out may never overwrite one of these.
RUN_OUTPUTS = RUN_FILES + ("model_best.pth.tar", "curves.png", compare.PER_QUERY_FILE)
MAX_RESULTS_BYTES = 16 * 2 ** 20  # a results.json is a few kB; anything this large is not one
DEFAULT_PARTS, DEFAULT_FEATURE, DEFAULT_RECIPE = 6, "parts", "paper"
# (dsa, deep_supervision) -> the row's name, in the order of the paper's ablation table.
ABLATION_ROWS = {(False, False): "PCB baseline", (True, False): "+DSA", (False, True): "+DS",
                 (True, True): "DSA+DS (full)"}
ABLATION_ORDER = list(ABLATION_ROWS)
BASELINE = (False, False)
# Training options the switches column names when they differ from the run's recipe (reid.recipes.FLAGS keys);
# the learning rate, schedule length and batch composition are left to the run's log, as --step-size always was.
SHOWN_OPTIONS = ("train.optimizer", "train.lr_schedule", "train.warmup_epochs", "train.label_smoothing",
                 "train.triplet_weight", "train.margin", "model.bnneck")


@dataclass
class Row:
    """A line of the table: a run, the seed runs of one experiment, or a run without results (then
    ``switches`` says what is missing and ``values`` is empty)."""

    run: str
    dataset: str = ""
    switches: str = ""
    epochs: str = ""
    values: dict = field(default_factory=dict)  # METRIC_KEYS -> one fraction per run
    versus: dict = None  # VERSUS_KEYS -> paired_difference's entry; or a str: "baseline", why there is none


def get_args_parser():
    parser = argparse.ArgumentParser(prog="python -m reid.report", description=__doc__.split("\n")[0])
    parser.add_argument("logdirs", nargs="+", metavar="LOGDIR",
                        help="run folder, its results.json, or a folder of run folders (globs are expanded); "
                             "with --compare: A and B")
    parser.add_argument("--csv", action="store_true", help="print CSV instead of a Markdown table")
    parser.add_argument("--out", metavar="FILE", help="also write the table to FILE (never one of a run's files)")
    parser.add_argument("--versus-baseline", action="store_true",
                        help="add each row's mAP and rank-1 difference from its PCB baseline row, with a 95%% "
                             "bootstrap interval (needs per_query.csv)")
    parser.add_argument("--compare", action="store_true",
                        help="print B - A in mAP and rank-1 with a 95%% bootstrap interval, for LOGDIRs A and B: "
                             "each a run, or a folder or quoted glob of one experiment's seed runs")
    parser.add_argument("--resamples", type=int, default=10000,
                        help="bootstrap resamples of --compare and --versus-baseline (default 10000)")
    parser.add_argument("--bootstrap-seed", type=int, default=0,
                        help="seed of the bootstrap's random draws (default 0): the same seed, the same interval")
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
    problem = compare.format_problem(record)
    if problem:
        return None, problem
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


def points(fraction):
    """A difference in percentage points, signed, with two decimals: intervals of a few tenths stay legible."""
    return f"{100 * fraction:+.2f}"


def other_dataset_rows(records, name, switches):
    """A row per entry of the runs' "other_datasets" (the same models evaluated on another dataset), named
    "NAME -> DATASET"; an entry that cannot be shown says why instead. ``records``: one run, or seed runs."""
    lists = [record.get("other_datasets") or [] for record in records]
    if not all(isinstance(entries, list) for entries in lists):
        return [Row(f"{name} -> ?", "", "results.json: other_datasets is not a list")]
    if len({len(entries) for entries in lists}) > 1:
        return [Row(f"{name} -> ?", "", "results.json: the seed runs were evaluated on different other datasets")]
    rows = []
    for number, entries in enumerate(zip(*lists), 1):
        problem = next(filter(None, map(other_dataset_problem, entries)), None)
        datasets = {str(entry["dataset"]) for entry in entries} if not problem else set()
        if problem or len(datasets) > 1:
            rows.append(Row(f"{name} -> ?", "", f"results.json: other dataset {number} "
                                                f"{problem or 'differs between the seed runs'}"))
        else:
            dataset = datasets.pop()
            rows.append(Row(f"{name} -> {dataset}", dataset, switches, str(records[0]["epochs"]),
                            {key: [entry[key] for entry in entries] for key in METRIC_KEYS}))
    return rows


def other_dataset_problem(entry):
    if not isinstance(entry, dict):
        return "is not a JSON object"
    missing = [key for key in ("dataset",) + METRIC_KEYS if key not in entry]
    return f"lacks {', '.join(missing)}" if missing else metrics_problem(entry)


def seed_groups(runs):
    """``runs`` (folder, name, record) as the seed runs of each experiment, in order of first appearance, each
    group ordered by seed. A run whose results.json has no settings, or of an evaluation only, stays alone."""
    groups, by_key = [], {}
    for run in runs:
        record = run[2]
        key = compare.settings_key(record)
        if key is None or record["config"].get("evaluate"):
            groups.append([run])
        elif key in by_key:
            by_key[key].append(run)
        else:
            by_key[key] = [run]
            groups.append(by_key[key])
    return [sorted(group, key=lambda run: seed_order(compare.run_seed(run[2]))) for group in groups]


def seed_order(seed):
    return (0, seed) if isinstance(seed, int) else (1, 0)


def group_name(names, seeds):
    """The name of a seed group: its runs' common name ("baseline-seed1", "baseline-seed2" -> "baseline"), or
    their names when they have none, then the seeds: "baseline (seeds 1,2)"."""
    common = re.sub(r"[-_. ]*(seed)?[-_. ]*\d*$", "", os.path.commonprefix(names))
    label = common if common and not common.endswith("/") else ", ".join(names)
    return f"{label} (seeds {','.join('?' if seed is None else str(seed) for seed in seeds)})"


@dataclass
class Experiment:
    """A run with results, or the seed runs of one experiment, and its rows: its own, then its other datasets'."""

    recipe: str
    dataset: str
    switch: tuple  # (dsa, deep_supervision)
    folders: list
    record: dict  # the results.json of its first run
    rows: list


def report_rows(folders):
    """``(recipe, rows)`` groups in report order (recipe None: runs without results), how many runs have
    results, and the experiments behind the rows. Each row is a ``Row``: one per run, or per group of seed
    runs; the rows of a run's other datasets follow it."""
    runs, unfinished, order = [], [], {"recipes": [], "datasets": []}
    for folder, name in zip(folders, run_names(folders)):
        record, problem = read_results(folder)
        if record is None:
            unfinished.append(Row(name, "", problem))
        else:
            runs.append((folder, name, record))
    experiments = []
    for group in seed_groups(runs):
        group_folders, names, records = (list(column) for column in zip(*group))
        record = records[0]
        recipe, dataset = run_recipe(run_settings(record)), str(record["dataset"])
        for kind, value in (("recipes", recipe), ("datasets", dataset)):
            if value not in order[kind]:
                order[kind].append(value)
        name = names[0] if len(group) == 1 else group_name(names, [compare.run_seed(r) for r in records])
        switches = describe_switches(record)
        row = Row(name, dataset, switches, str(record["epochs"]), {key: [r[key] for r in records]
                                                                  for key in METRIC_KEYS})
        switch = (bool(record["dsa"]), bool(record["deep_supervision"]))
        experiments.append(Experiment(recipe, dataset, switch, group_folders, record,
                                      [row, *other_dataset_rows(records, name, switches)]))
    experiments.sort(key=lambda experiment: (order["recipes"].index(experiment.recipe),
                                             order["datasets"].index(experiment.dataset),
                                             ABLATION_ORDER.index(experiment.switch)))
    groups = [(recipe, [row for experiment in experiments if experiment.recipe == recipe
                        for row in experiment.rows]) for recipe in order["recipes"]]
    if unfinished:
        groups.append((None, unfinished))
    return groups, len(runs), experiments


def add_baseline_differences(experiments, resamples, seed):
    """Fill ``versus`` of each experiment's row with its difference from the PCB baseline row of the same
    recipe, dataset and settings but the ablation switches; why there is none goes to stderr."""
    for experiment in experiments:
        row = experiment.rows[0]
        if experiment.switch == BASELINE:
            row.versus = "baseline"
            continue
        baseline = find_baseline(experiments, experiment)
        if baseline is None:
            row.versus = "no baseline"
            continue
        try:
            result = compare.paired_difference(baseline.folders, experiment.folders, resamples=resamples,
                                               seed=seed)
        except UsageError as error:
            print(f"{row.run}: no difference from the baseline: {error}", file=sys.stderr)
            row.versus = "n/a"
            continue
        row.versus = {key: result[key] for key in VERSUS_KEYS}


def find_baseline(experiments, experiment):
    """The baseline of ``experiment``: the PCB baseline experiment of its recipe and dataset with its settings
    but the ablation switches; for runs without recorded settings, the only baseline of that recipe and
    dataset. None when there is no such experiment, or several."""
    key = compare.settings_key(experiment.record, ignore_switches=True)
    candidates = [other for other in experiments if other.switch == BASELINE
                  and (other.recipe, other.dataset) == (experiment.recipe, experiment.dataset)]
    if key is not None:
        candidates = [other for other in candidates
                      if compare.settings_key(other.record, ignore_switches=True) == key]
    return candidates[0] if len(candidates) == 1 else None


def metric_cell(values):
    """One run: its value in percent; seed runs: "mean ± std" (sample std)."""
    if len(values) == 1:
        return percent(values[0])
    return f"{percent(statistics.mean(values))} ± {percent(statistics.stdev(values))}"


def versus_cell(versus, key):
    if versus is None:
        return ""
    if isinstance(versus, str):
        return versus
    entry = versus[key]
    return f"{points(entry['difference'])} [{points(entry['low'])}, {points(entry['high'])}]"


def markdown_cells(row, versus):
    cells = [row.run, row.dataset, row.switches, row.epochs, str(len(row.values["rank1"])) if row.values else ""]
    cells += [metric_cell(row.values[key]) if row.values else "" for key in METRIC_KEYS]
    return cells + ([versus_cell(row.versus, key) for key in VERSUS_KEYS] if versus else [])


def markdown_columns(versus):
    return list(COLUMNS) + ([f"{METRIC_COLUMNS[key]} vs baseline" for key in VERSUS_KEYS] if versus else [])


def format_markdown(groups, versus=False):
    """Markdown: one table, or with several recipes one table per recipe, each under its name (runs without
    results in the last table)."""
    if len([recipe for recipe, _ in groups if recipe is not None]) <= 1:
        return markdown_table([row for _, rows in groups for row in rows], versus)
    sections = [f"**{recipe} recipe**\n\n" + markdown_table(rows, versus) if recipe else
                "**runs without results**\n\n" + markdown_table(rows, versus) for recipe, rows in groups]
    return "\n".join(sections)


def markdown_table(rows, versus=False):
    """A Markdown table padded to line up in a terminal; the number columns are right-aligned."""
    header = markdown_columns(versus)
    return text_table(header, [markdown_cells(row, versus) for row in rows], first_right=COLUMNS.index("epochs"))


def text_table(header, rows, first_right):
    """A Markdown table of strings, padded; the columns from ``first_right`` on are right-aligned."""
    rows = [[cell.replace("|", "\\|") for cell in row] for row in rows]
    widths = [max(len(row[index]) for row in [header, *rows]) for index in range(len(header))]
    right_aligned = [index >= first_right for index in range(len(header))]

    def line(cells):
        padded = (cell.rjust(width) if right else cell.ljust(width)
                  for cell, width, right in zip(cells, widths, right_aligned))
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join("-" * (width + 1) + ":" if right else "-" * (width + 2)
                          for width, right in zip(widths, right_aligned)) + "|"
    return "\n".join([line(header), rule, *(line(row) for row in rows)]) + "\n"


def csv_columns(versus):
    columns = list(COLUMNS[:COLUMNS.index("seeds") + 1])
    for key in METRIC_KEYS:
        columns += [METRIC_COLUMNS[key], f"{METRIC_COLUMNS[key]} std"]
    for key in VERSUS_KEYS if versus else ():
        name = f"{METRIC_COLUMNS[key]} vs baseline"
        columns += [name, f"{name} low", f"{name} high"]
    return columns


def csv_cells(row, versus):
    """The row in CSV: each metric's mean and std (empty for a single run) in separate columns; with
    ``versus``, the difference from the baseline and its interval in three (or the reason there is none)."""
    cells = [row.run, row.dataset, row.switches, row.epochs, str(len(row.values["rank1"])) if row.values else ""]
    for key in METRIC_KEYS:
        values = row.values.get(key, [])
        cells += [percent(statistics.mean(values)) if values else "",
                  percent(statistics.stdev(values)) if len(values) > 1 else ""]
    for key in VERSUS_KEYS if versus else ():
        if isinstance(row.versus, dict):
            entry = row.versus[key]
            cells += [points(entry["difference"]), points(entry["low"]), points(entry["high"])]
        else:
            cells += [row.versus or "", "", ""]
    return cells


def format_csv(groups, versus=False):
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(csv_columns(versus))
    writer.writerows(csv_cells(row, versus) for _, rows in groups for row in rows)
    return buffer.getvalue()


def side_folders(argument, side):
    """The run folders of one side of --compare: a run, or a folder or glob of seed runs."""
    folders, not_runs = find_run_folders([argument])
    if not_runs or not all(os.path.isdir(folder) for folder in folders):
        raise UsageError(f"--compare {side} {argument}: not a run folder. Give a run folder, or a folder or quoted "
                         f"glob of one experiment's seed runs.")
    return folders


def format_comparison(result, names, as_csv):
    """--compare's output: which runs are A and B, then for mAP and rank-1 A, B, B − A and its interval."""
    level = f"{100 * result['confidence']:g} %"
    if as_csv:
        header = ["metric", "A", "B", "A seeds", "B seeds", "A mean", "B mean", "B − A", "low", "high",
                  "excludes 0"]
        rows = [[METRIC_COLUMNS[key], *names, str(result["seeds_a"]), str(result["seeds_b"]),
                 percent(result[key]["a"]), percent(result[key]["b"]), points(result[key]["difference"]),
                 points(result[key]["low"]), points(result[key]["high"]), yes_no(result[key]["excludes_zero"])]
                for key in VERSUS_KEYS]
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerows([header, *rows])
        return buffer.getvalue()
    header = ["metric", "A", "B", "B − A", f"{level} interval", "excludes 0"]
    rows = [[METRIC_COLUMNS[key], metric_cell(result[key]["a_runs"]), metric_cell(result[key]["b_runs"]),
             points(result[key]["difference"]), f"[{points(result[key]['low'])}, {points(result[key]['high'])}]",
             yes_no(result[key]["excludes_zero"])] for key in VERSUS_KEYS]
    if result["method"] == "paired BCa":
        how = f"paired bootstrap of the queries (BCa), {result['resamples']:,} resamples"
    else:
        how = (f"two-stage bootstrap of the queries (paired) and of each side's seed runs "
               f"({result['seeds_a']} and {result['seeds_b']}), percentile, {result['resamples']:,} resamples")
    lines = [f"A: {names[0]}", f"B: {names[1]}",
             f"B − A in percentage points over the same {result['num_queries']:,} queries; {level} interval: {how}.",
             "", text_table(header, rows, first_right=1)]
    return "\n".join(lines)


def yes_no(flag):
    return "yes" if flag else "no"


def run_comparison(args):
    """--compare: B − A of the two LOGDIRs, as text."""
    if args.versus_baseline:
        raise UsageError("--versus-baseline adds columns to the table; --compare prints one comparison, B - A, "
                         "instead of a table. Use one or the other.")
    if len(args.logdirs) != 2:
        raise UsageError(f"--compare takes two LOGDIRs, A and B, got {len(args.logdirs)}: "
                         f"{' '.join(args.logdirs)}. Quote a glob of seed runs ('logs/x/full-seed*') so that "
                         f"the shell does not expand it into several.")
    sides = [side_folders(argument, side) for argument, side in zip(args.logdirs, "AB")]
    result = compare.paired_difference(sides[0], sides[1], resamples=args.resamples, seed=args.bootstrap_seed)
    names = run_names(sides[0] + sides[1])
    side_names = []
    for folders, start in ((sides[0], 0), (sides[1], len(sides[0]))):
        own = names[start:start + len(folders)]
        seeds = [compare.run_seed(compare.read_record(folder)) for folder in folders]
        side_names.append(own[0] if len(own) == 1 else group_name(own, seeds))
    return format_comparison(result, side_names, args.csv)


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
        compare.check_bootstrap_settings(args.resamples, args.bootstrap_seed)
        if args.compare:
            text, finished = run_comparison(args), True
        else:
            text, finished = report_table(args)
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


def report_table(args):
    """The table of the LOGDIRs, as text, and how many runs have results."""
    folders, not_runs = find_run_folders(args.logdirs)
    for path in not_runs:
        print(f"skipped {path}: a file, not a run folder", file=sys.stderr)
    if not folders:
        raise UsageError(f"None of {' '.join(args.logdirs)} is a run folder: give the --logs-dir of "
                         f"main.py runs, or a folder that holds them.")
    groups, finished, experiments = report_rows(folders)
    if args.versus_baseline:
        add_baseline_differences(experiments, args.resamples, args.bootstrap_seed)
    text = format_csv(groups, args.versus_baseline) if args.csv else format_markdown(groups, args.versus_baseline)
    return text, finished


if __name__ == "__main__":
    sys.exit(main())
