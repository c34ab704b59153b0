"""Paired comparisons of two runs, or of two groups of seed runs, from their per-query results.

``paired_difference(runs_a, runs_b)`` gives B − A in mAP and rank-1 with a bootstrap confidence interval;
``python -m reid.report --compare A B`` prints it. The method, and what the interval does and does not say:
docs/statistics.md.

A run is a ``main.py --logs-dir`` folder with ``results.json`` (its settings and headline metrics) and
``per_query.csv`` (``query,pid,camid,ap,first_match_rank,inp``: one row per valid query). This module also
holds what ``reid.report`` shares with it: the results.json format check and which settings make two runs
repeats of one experiment (``settings_key``).
"""
import collections
import copy
import csv
import json
import os
import shlex
from dataclasses import dataclass

import numpy as np
from scipy import stats

from .errors import UsageError

# The newest results.json format this code reads. Files without a "format" key (format 1 with argparse "args",
# format 2 with "config") are read as they always were.
RESULTS_FORMAT = 2
PER_QUERY_FILE = "per_query.csv"
PER_QUERY_COLUMNS = ("query", "pid", "camid", "ap", "first_match_rank")
METRICS = ("mAP", "rank1")
# results.json's mAP and rank-1 against the means of per_query.csv: a larger gap means the two files come from
# different evaluations. Far above float rounding, far below the 0.1 points the report prints.
CONSISTENCY_TOLERANCE = 5e-4
# The description of the evaluated model that results.json keeps next to "config".
MODEL_KEYS = ("dataset", "arch", "epochs", "dsa", "deep_supervision", "parts", "feature", "num_valid_queries")
# Settings that say under which seed, where, how fast or how verbosely a run ran, not what it computed: two runs
# whose settings differ only in these are repeats of one experiment. Speed options that change the arithmetic
# (device.amp, eval.eval_dtype) and device.sync_bn (batch-norm statistics) are not among them.
NOT_COMPARED = ("train.seed", "data.seed", "logs_dir", "resume", "overwrite", "command", "pretrained_path",
                "tensorboard", "data.root", "data.workers", "data.cache_images", "eval.workers", "eval.batch_size",
                "eval.visrank", "train.print_freq", "train.eval_freq", "train.deterministic", "device.device",
                "device.channels_last", "device.compile")
# The ablation switches, in results.json's model description and in its config.
SWITCHES = ("dsa", "deep_supervision", "model.dsa", "model.deep_supervision")
# Per-query differences that vary less than this (a millionth of a percentage point) are one value moved by
# float rounding: there is no spread to resample.
SAME_DIFFERENCE = 1e-8
RESAMPLE_BATCH = 500  # resamples drawn at once: 500 x 3,368 queries is 13 MB of indices


def format_problem(record):
    """Why this results.json cannot be read by this code (a format it does not know), or None."""
    version = record.get("format", RESULTS_FORMAT)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        return f"results.json has format {version!r}, not a format this project writes"
    if version > RESULTS_FORMAT:
        return (f"results.json is of format {version}, written by a newer version of this project than this one "
                f"(format {RESULTS_FORMAT}); update the code to read it")
    return None


def settings_key(record, ignore_switches=False):
    """What two runs must share to be repeats of one experiment (seed runs): the evaluated model's description
    and the run's settings, without ``NOT_COMPARED`` (and the ablation switches with ``ignore_switches``), as a
    string; None for a results.json without settings (written before Nov 2026)."""
    if not isinstance(record.get("config"), dict):
        return None
    settings = copy.deepcopy(record["config"])
    model = {key: record.get(key) for key in MODEL_KEYS}
    for path in NOT_COMPARED + (SWITCHES if ignore_switches else ()):
        section, _, name = path.rpartition(".")
        holder = settings.get(section) if section else model if name in model else settings
        if isinstance(holder, dict):
            holder.pop(name, None)
    if isinstance(settings.get("test_datasets"), list):  # [name, root] pairs: the roots are where, not what
        settings["test_datasets"] = [entry[0] if isinstance(entry, list) and entry else entry
                                     for entry in settings["test_datasets"]]
    return json.dumps([model, settings], sort_keys=True, default=repr)


def run_seed(record):
    """The --seed of the run that wrote ``record``, or None when its results.json does not say."""
    train = record.get("config", {}).get("train") if isinstance(record.get("config"), dict) else None
    return train.get("seed") if isinstance(train, dict) else None


@dataclass
class RunResults:
    """One run's per-query results, in its per_query.csv's order."""

    folder: str
    record: dict
    queries: list
    pids: np.ndarray
    camids: np.ndarray
    ap: np.ndarray
    rank1: np.ndarray  # 1.0 where the first correct match is ranked first, else 0.0


def read_record(folder):
    """The results.json of the run ``folder`` as a dict with mAP and rank1; UsageError otherwise."""
    path = os.path.join(folder, "results.json")
    try:
        with open(path, encoding="utf-8") as handle:
            record = json.load(handle)
    except FileNotFoundError:
        raise UsageError(f"{folder} is not a finished run: it has no results.json. Give the --logs-dir of a "
                         f"finished main.py run.") from None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as error:
        raise UsageError(f"{path} cannot be read as results ({error}); give a results.json that main.py "
                         f"wrote.") from None
    if not isinstance(record, dict):
        raise UsageError(f"{path} is not a JSON object; give a results.json that main.py wrote.")
    problem = format_problem(record)
    if problem:
        raise UsageError(f"{path}: {problem}.")
    for key in METRICS:
        value = record.get(key)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= 1:
            raise UsageError(f"{path} has no {key} as a fraction in [0, 1] (it has {value!r}); give a "
                             f"results.json that main.py wrote.")
    return record


def read_per_query(path):
    """``(queries, pids, camids, ap, first_match_rank)`` of a per_query.csv; UsageError naming the file and
    line when it is not one. Read here rather than with ``reid.evaluator.read_per_query``, which imports
    PyTorch: the report and the comparisons start in a fraction of the time without it."""
    queries, numbers = [], []
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing = [column for column in PER_QUERY_COLUMNS if column not in (reader.fieldnames or ())]
            if missing:
                raise UsageError(f"{path} lacks the column(s) {', '.join(missing)}: a per_query.csv starts with "
                                 f"the header query,pid,camid,ap,first_match_rank,inp.")
            for line, row in enumerate(reader, 2):
                queries.append(row["query"])
                numbers.append(_per_query_numbers(path, line, row))
    except OSError as error:
        raise UsageError(f"Cannot read {path}: {error.strerror or error}.") from None
    except (UnicodeDecodeError, csv.Error) as error:
        raise UsageError(f"{path} is not a per_query.csv that main.py wrote ({error}).") from None
    if not queries:
        raise UsageError(f"{path} has no query rows; a per_query.csv has one row per valid query.")
    repeated = [query for query, count in collections.Counter(queries).items() if count > 1]
    if repeated:
        raise UsageError(f"{path} lists the query {repeated[0]} more than once; each query has one row.")
    pids, camids, ap, ranks = (np.array(column) for column in zip(*numbers))
    return queries, pids, camids, ap, ranks


def _per_query_numbers(path, line, row):
    try:
        pid, camid, rank = int(row["pid"]), int(row["camid"]), int(row["first_match_rank"])
        ap = float(row["ap"])
    except (TypeError, ValueError):
        raise UsageError(f"{path} line {line}: pid, camid and first_match_rank must be whole numbers and ap a "
                         f"number, got {row}.") from None
    if not 0 <= ap <= 1 or rank < 1:
        raise UsageError(f"{path} line {line}: ap must be in [0, 1] and first_match_rank at least 1, got ap "
                         f"{row['ap']} and first_match_rank {row['first_match_rank']}.")
    return pid, camid, ap, rank


def load_run(folder):
    """A run's results.json and per_query.csv, checked against each other; UsageError naming what is wrong."""
    record = read_record(folder)
    name = record.get("per_query") if isinstance(record.get("per_query"), str) else PER_QUERY_FILE
    path = os.path.join(folder, name)
    if not os.path.exists(path):
        raise UsageError(f"{folder} has no {name}: it was evaluated before main.py saved per-query results. "
                         f"{reevaluation_advice(folder, record)}")
    queries, pids, camids, ap, ranks = read_per_query(path)
    run = RunResults(folder, record, queries, pids, camids, ap, (ranks == 1).astype(float))
    for key, values in (("mAP", run.ap), ("rank1", run.rank1)):
        if abs(values.mean() - record[key]) > CONSISTENCY_TOLERANCE:
            raise UsageError(f"{path} does not match {os.path.join(folder, 'results.json')}: its queries give "
                             f"{key} {values.mean():.4f}, results.json says {record[key]:.4f}, so the two come "
                             f"from different evaluations. {reevaluation_advice(folder, record)}")
    return run


def reevaluation_advice(folder, record):
    """How to write a run's per_query.csv (and results.json) again, into its own folder.

    ``main.py --evaluate --resume RUN/checkpoint.pth.tar --logs-dir RUN`` is refused there (it would write a
    new run's files over this one's); the run's own command with ``--resume`` evaluates a finished run again
    and keeps its settings, seed included (``--logs-dir`` repeated: the run may have been moved since).
    """
    resume = (f"--resume {shlex.quote(os.path.join(folder, 'checkpoint.pth.tar'))} --logs-dir "
              f"{shlex.quote(folder)}")
    command = record.get("config", {}).get("command") if isinstance(record.get("config"), dict) else None
    if isinstance(command, list) and command and all(isinstance(part, str) for part in command):
        again = f"python {shlex.join(command)} {resume}"
        return (f"Evaluate it again with its own command and {resume} (a finished run is evaluated, not "
                f"trained, and keeps its settings): {again}")
    return (f"Evaluate it again by running the main.py command that trained it (the first line of its log.txt) "
            f"with {resume}: a finished run is evaluated, not trained, and keeps its settings.")


def load_side(folders, side):
    """The runs of one side (``side``: "A" or "B"): one run, or seed runs of one experiment."""
    if not folders:
        raise UsageError(f"Side {side} of the comparison has no run; give a run folder or its seed runs.")
    absolute = [os.path.abspath(folder) for folder in folders]
    repeated = sorted({folder for folder in folders if absolute.count(os.path.abspath(folder)) > 1})
    if repeated:
        raise UsageError(f"Side {side} names {repeated[0]} more than once; give each seed run once.")
    runs = [load_run(folder) for folder in folders]
    keys = [settings_key(run.record) for run in runs]
    known = [(key, run.folder) for key, run in zip(keys, runs) if key is not None]
    other = next((folder for key, folder in known if key != known[0][0]), None)
    if other:
        raise UsageError(f"Side {side} mixes experiments: {known[0][1]} and {other} differ in more than "
                         f"their seed. Give the seed runs of one setting on each side (docs/statistics.md lists "
                         f"the settings that may differ).")
    return runs


def aligned(runs):
    """Each run's (ap, rank1) in the query order of ``runs[0]``: two arrays of shape (runs, queries). UsageError
    naming two folders when the runs were not evaluated on the same queries of the same identities."""
    reference = runs[0]
    reference_queries = set(reference.queries)
    ap, rank1 = [], []
    for run in runs:
        position = {query: index for index, query in enumerate(run.queries)}
        if position.keys() != reference_queries:
            missing = [(query, reference.folder) for query in reference.queries if query not in position]
            extra = [(query, run.folder) for query in run.queries if query not in reference_queries]
            query, holder = (missing or extra)[0]
            raise UsageError(f"{reference.folder} and {run.folder} were not evaluated on the same test set: they "
                             f"have {len(reference.queries)} and {len(run.queries)} queries, and {query} is a query "
                             f"of {holder} only. Compare runs evaluated on the same dataset and split.")
        order = np.array([position[query] for query in reference.queries])
        for what, ours, theirs in (("pid", reference.pids, run.pids[order]),
                                   ("camid", reference.camids, run.camids[order])):
            differs = np.flatnonzero(ours != theirs)
            if differs.size:
                first = differs[0]
                raise UsageError(f"{reference.folder} and {run.folder} were not evaluated on the same test set: "
                                 f"the query {reference.queries[first]} has {what} {ours[first]} in one and "
                                 f"{theirs[first]} in the other. Compare runs evaluated on the same dataset and "
                                 f"split.")
        ap.append(run.ap[order])
        rank1.append(run.rank1[order])
    return np.stack(ap), np.stack(rank1)


def paired_difference(runs_a, runs_b, resamples=10000, seed=0, confidence=0.95):
    """B − A in mAP and rank-1, as fractions, with a ``confidence`` bootstrap interval from per-query results.

    ``runs_a`` and ``runs_b`` are lists of run folders: one run, or the seed runs of one experiment (runs
    whose settings differ only in ``NOT_COMPARED``). Queries are resampled in pairs: the same resampled queries
    for every run of both sides. One run against one run: scipy's paired BCa interval. With several seeds on
    a side: a two-stage bootstrap that also resamples each side's seeds, and its percentile interval. Every
    interval is reproducible from ``seed``. UsageError when a run lacks per_query.csv, when the runs were not
    evaluated on the same queries, or when a side mixes experiments. The method: docs/statistics.md.

    Returns ``{"a": folders, "b": folders, "num_queries": N, "seeds_a": k, "seeds_b": m, "resamples": R,
    "confidence": c, "method": ..., "mAP": {...}, "rank1": {...}}``, each metric ``{"a": mean of A, "b": mean
    of B, "a_runs": [per run], "b_runs": [...], "difference": B − A, "low": ..., "high": ...,
    "excludes_zero": bool}``.
    """
    check_bootstrap_settings(resamples, seed, confidence)
    side_a, side_b = load_side(list(runs_a), "A"), load_side(list(runs_b), "B")
    ap, rank1 = aligned(side_a + side_b)
    k = len(side_a)
    values = {"mAP": (ap[:k], ap[k:]), "rank1": (rank1[:k], rank1[k:])}
    if len(side_a) == len(side_b) == 1:
        method = "paired BCa"
        intervals = {metric: pair_interval(a[0], b[0], resamples, seed, confidence)
                     for metric, (a, b) in values.items()}
    else:
        method = "two-stage percentile"
        intervals = two_stage_intervals(values, resamples, seed, confidence)
    result = {"a": [run.folder for run in side_a], "b": [run.folder for run in side_b], "num_queries": ap.shape[1],
              "seeds_a": len(side_a), "seeds_b": len(side_b), "resamples": resamples, "confidence": confidence,
              "method": method}
    for metric, (a, b) in values.items():
        low, high = intervals[metric]
        result[metric] = {"a": float(a.mean()), "b": float(b.mean()), "a_runs": a.mean(axis=1).tolist(),
                          "b_runs": b.mean(axis=1).tolist(), "difference": float(b.mean() - a.mean()),
                          "low": low, "high": high, "excludes_zero": bool(low > 0 or high < 0)}
    return result


def check_bootstrap_settings(resamples, seed, confidence=0.95):
    """UsageError for a number of resamples, a seed or a confidence level the bootstrap cannot use."""
    if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < 100:
        raise UsageError(f"--resamples must be a whole number of at least 100, got {resamples!r}.")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise UsageError(f"--bootstrap-seed must be a whole number, 0 or more, got {seed!r}.")
    if not isinstance(confidence, float) or not 0 < confidence < 1:
        raise UsageError(f"The confidence level must be between 0 and 1 (0.95 for a 95 % interval), got "
                         f"{confidence!r}.")


def pair_interval(a, b, resamples, seed, confidence):
    """(low, high) of B − A for one run on each side, from the per-query values ``a`` and ``b``: scipy's BCa
    interval of the mean per-query difference.

    Resampling the differences b − a is the paired bootstrap (``scipy.stats.bootstrap((a, b), ...,
    paired=True)`` draws the same query indices from the same generator) at half the cost. BCa corrects
    the percentile interval for the bias and skew of the resampled mean: per-query AP differences pile up
    near 0 with long tails. When every query moves by the same amount there is nothing to resample and BCa is
    undefined: the interval is that one value.
    """
    differences = b - a
    if np.ptp(differences) <= SAME_DIFFERENCE:
        return float(differences.mean()), float(differences.mean())
    result = stats.bootstrap((differences,), np.mean, vectorized=True, n_resamples=resamples,
                             confidence_level=confidence, method="BCa", batch=RESAMPLE_BATCH,
                             random_state=np.random.default_rng(seed))
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def two_stage_intervals(values, resamples, seed, confidence):
    """{metric: (low, high)} of B − A for seed groups, ``values``: {metric: (A's runs x queries, B's)}.

    Each resample draws the queries with replacement (the same ones for every run and metric) and, on each
    side separately, as many seeds as it has, with replacement; its statistic is the mean over the drawn seeds
    of B's mean over the drawn queries, minus the same for A. The interval is the bootstrap distribution's
    percentile interval.
    """
    metrics = list(values)
    k, m = (len(values[metrics[0]][side]) for side in (0, 1))
    # columns: (run, metric) for A's runs, then B's; rows: queries
    table = np.stack([np.concatenate([values[metric][0], values[metric][1]]) for metric in metrics], axis=-1)
    num_runs, num_queries, _ = table.shape
    columns = table.transpose(1, 0, 2).reshape(num_queries, -1)
    rng = np.random.default_rng(seed)
    draws = []
    for start in range(0, resamples, RESAMPLE_BATCH):
        size = min(RESAMPLE_BATCH, resamples - start)
        picks = rng.integers(0, num_queries, (size, num_queries)) + num_queries * np.arange(size)[:, None]
        counts = np.bincount(picks.ravel(), minlength=size * num_queries).reshape(size, num_queries)
        means = (counts @ columns / num_queries).reshape(size, num_runs, len(metrics))
        seeds_a = rng.integers(0, k, (size, k, 1))
        seeds_b = k + rng.integers(0, m, (size, m, 1))
        draws.append(np.take_along_axis(means, seeds_b, axis=1).mean(axis=1)
                     - np.take_along_axis(means, seeds_a, axis=1).mean(axis=1))
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(np.concatenate(draws), [tail, 100 - tail], axis=0)
    return {metric: (float(low[index]), float(high[index])) for index, metric in enumerate(metrics)}
