"""reid.compare: paired differences of runs and seed groups, on run folders written by the tests."""
import json
import os
import warnings

import numpy as np
import pytest
from scipy import stats

from reid import compare
from reid.config import RunConfig
from reid.errors import UsageError


def write_run(folder, ap, ranks=None, seed=1, queries=None, pids=None, record=None, **model):
    """A finished run: per_query.csv with these APs and first-match ranks (rank 1 where AP >= 0.5 by default),
    query i of identity i (camera from the identity), and a results.json whose mAP and rank-1 are their means
    and whose config has ``--seed seed``."""
    ap = np.asarray(ap, dtype=float)
    ranks = np.where(ap >= 0.5, 1, 3) if ranks is None else np.asarray(ranks)
    queries = queries or [f"query/{index:04d}_c{index % 6 + 1}s1_000025_01.jpg" for index in range(len(ap))]
    pids = list(range(len(ap))) if pids is None else pids
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "per_query.csv"), "w") as handle:
        handle.write("query,pid,camid,ap,first_match_rank,inp\n")
        handle.writelines(f"{query},{pid},{pid % 6 + 1},{float(value)!r},{rank},0.5\n"
                          for query, pid, value, rank in zip(queries, pids, ap, ranks))
    config = RunConfig().to_dict()
    config["train"]["seed"] = config["data"]["seed"] = seed
    config["model"].update(model)
    config.update(logs_dir=str(folder), command=["main.py", "-d", "market", "--seed", str(seed), "--logs-dir",
                                                 str(folder)])
    results = {"dataset": "market", "epochs": 50, "rank1": float(np.mean(ranks == 1)), "mAP": float(ap.mean()),
               "num_valid_queries": len(ap), "dsa": True, "deep_supervision": True, "config": config,
               "per_query": "per_query.csv", **(record or {})}
    with open(os.path.join(folder, "results.json"), "w") as handle:
        json.dump(results, handle)
    return str(folder)


@pytest.fixture
def aps():
    return np.random.default_rng(0).uniform(0.05, 0.95, 400)


def test_a_run_against_itself_differs_by_zero_with_a_zero_width_interval(tmp_path, aps):
    run = write_run(tmp_path / "run", aps)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = compare.paired_difference([run], [run])
    for metric in ("mAP", "rank1"):
        assert result[metric]["difference"] == 0 and result[metric]["low"] == result[metric]["high"] == 0
        assert result[metric]["excludes_zero"] is False
    assert (result["num_queries"], result["seeds_a"], result["seeds_b"]) == (400, 1, 1)
    assert result["a"] == result["b"] == [run]


def test_shifted_aps_give_that_difference_with_an_interval_covering_it(tmp_path, aps):
    shifted = aps.copy()
    shifted[:100] = np.minimum(shifted[:100] + 0.2, 1.0)
    ranks = np.where(aps >= 0.5, 1, 3)
    better_ranks = ranks.copy()
    better_ranks[:60] = 1
    a = write_run(tmp_path / "a", aps, ranks)
    b = write_run(tmp_path / "b", shifted, better_ranks)
    result = compare.paired_difference([a], [b])
    expected = {"mAP": (shifted - aps).mean(), "rank1": np.mean(better_ranks == 1) - np.mean(ranks == 1)}
    for metric, difference in expected.items():
        entry = result[metric]
        assert difference > 0.01
        assert entry["difference"] == pytest.approx(difference)
        assert entry["low"] < difference < entry["high"] and entry["low"] > 0 and entry["excludes_zero"]
    assert result["mAP"]["a"] == pytest.approx(aps.mean()) and result["mAP"]["b"] == pytest.approx(shifted.mean())
    reverse = compare.paired_difference([b], [a])
    assert reverse["mAP"]["difference"] == pytest.approx(-expected["mAP"]) and reverse["mAP"]["high"] < 0


def test_noise_without_a_shift_gives_an_interval_that_includes_zero(tmp_path, aps):
    noisy = aps + np.random.default_rng(1).normal(0, 0.05, aps.size)
    noisy = np.clip(noisy, 0, 1)
    result = compare.paired_difference([write_run(tmp_path / "a", aps)], [write_run(tmp_path / "b", noisy)])
    assert result["mAP"]["low"] < 0 < result["mAP"]["high"] and not result["mAP"]["excludes_zero"]


def test_every_query_moved_by_the_same_amount_gives_that_amount_exactly(tmp_path, aps):
    result = compare.paired_difference([write_run(tmp_path / "a", aps * 0.5)],
                                       [write_run(tmp_path / "b", aps * 0.5 + 0.25, np.ones(400, int))])
    assert result["mAP"]["low"] == pytest.approx(0.25) and result["mAP"]["high"] == pytest.approx(0.25)
    assert result["mAP"]["excludes_zero"]


def test_the_single_pair_interval_is_scipys_paired_bca_bootstrap(aps):
    other = np.clip(aps + np.random.default_rng(2).normal(0.02, 0.1, aps.size), 0, 1)
    low, high = compare.pair_interval(aps, other, 2000, 7, 0.9)
    expected = stats.bootstrap((aps, other), lambda a, b, axis: b.mean(axis) - a.mean(axis), paired=True,
                               vectorized=True, n_resamples=2000, confidence_level=0.9, method="BCa",
                               random_state=np.random.default_rng(7)).confidence_interval
    assert (low, high) == pytest.approx((expected.low, expected.high), abs=1e-12)


def test_the_single_pair_interval_covers_the_true_difference_about_95_percent_of_the_time():
    """200 draws of 200 queries whose true mean AP difference is 0.03; a binomial(200, 0.95) count lies in
    [176, 198] with probability above 0.99. An unpaired bootstrap would cover almost always."""
    rng = np.random.default_rng(3)
    covered = 0
    for repetition in range(200):
        a = rng.uniform(0.25, 0.75, 200)
        b = a + 0.03 + rng.uniform(-0.2, 0.2, 200)
        low, high = compare.pair_interval(a, b, 1000, repetition, 0.95)
        covered += low <= 0.03 <= high
    assert 0.88 <= covered / 200 <= 0.99


def test_the_two_stage_interval_covers_the_true_difference_about_95_percent_of_the_time():
    """Three seeds a side: per-query noise, a training-seed effect (sd 0.01) and a true difference of 0.03.
    Resampling the queries alone would cover about 75 % of the time here."""
    rng = np.random.default_rng(4)
    covered = 0
    for repetition in range(200):
        queries = rng.uniform(0.3, 0.7, 200)
        a = queries + rng.normal(0, 0.01, (3, 1)) + rng.normal(0, 0.1, (3, 200))
        b = queries + 0.03 + rng.normal(0, 0.01, (3, 1)) + rng.normal(0, 0.1, (3, 200))
        low, high = compare.two_stage_intervals({"mAP": (a, b)}, 1000, repetition, 0.95)["mAP"]
        covered += low <= 0.03 <= high
    assert 0.88 <= covered / 200 <= 0.99


def seed_groups(tmp_path, aps, shift=0.05, seeds=(1, 2, 3)):
    rng = np.random.default_rng(5)
    groups = {"a": [], "b": []}
    for side, side_shift in (("a", 0.0), ("b", shift)):
        for seed in seeds:
            values = np.clip(aps + side_shift + rng.normal(0, 0.05, aps.size), 0, 1)
            groups[side].append(write_run(tmp_path / f"{side}-seed{seed}", values, seed=seed))
    return groups


def test_groups_of_seeds_resample_queries_and_seeds(tmp_path, aps):
    groups = seed_groups(tmp_path, aps)
    result = compare.paired_difference(groups["a"], groups["b"], resamples=2000)
    assert (result["seeds_a"], result["seeds_b"], result["method"]) == (3, 3, "two-stage percentile")
    per_run = {side: [json.load(open(os.path.join(run, "results.json")))["mAP"] for run in groups[side]]
               for side in "ab"}
    assert result["mAP"]["a_runs"] == pytest.approx(per_run["a"])
    assert result["mAP"]["difference"] == pytest.approx(np.mean(per_run["b"]) - np.mean(per_run["a"]))
    assert result["mAP"]["low"] < 0.05 < result["mAP"]["high"] and result["mAP"]["excludes_zero"]
    assert compare.paired_difference(groups["a"], groups["b"], resamples=2000) == result
    other_seed = compare.paired_difference(groups["a"], groups["b"], resamples=2000, seed=1)
    assert other_seed["mAP"]["low"] != result["mAP"]["low"]
    assert compare.paired_difference(groups["a"][:1], groups["b"][:1], resamples=2000)["method"] == "paired BCa"


def test_a_group_against_itself_has_difference_zero_and_an_interval_from_seed_spread(tmp_path, aps):
    group = seed_groups(tmp_path, aps)["a"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = compare.paired_difference(group, group, resamples=1000)
    assert result["mAP"]["difference"] == pytest.approx(0, abs=1e-15)
    assert result["mAP"]["low"] < 0 < result["mAP"]["high"] and not result["mAP"]["excludes_zero"]


def test_query_order_does_not_matter(tmp_path, aps):
    other = np.clip(aps + np.random.default_rng(6).normal(0.03, 0.1, aps.size), 0, 1)
    a = write_run(tmp_path / "a", aps)
    b = write_run(tmp_path / "b", other)
    order = np.random.default_rng(7).permutation(aps.size)
    queries = [f"query/{index:04d}_c{index % 6 + 1}s1_000025_01.jpg" for index in range(aps.size)]
    shuffled = write_run(tmp_path / "shuffled", other[order], queries=[queries[i] for i in order],
                         pids=[int(i) for i in order])
    assert compare.paired_difference([a], [shuffled]) == {**compare.paired_difference([a], [b]),
                                                           "b": [shuffled]}


def test_runs_on_different_test_sets_are_refused_naming_both(tmp_path, aps):
    a = write_run(tmp_path / "a", aps)
    fewer = write_run(tmp_path / "fewer", aps[:-1])
    with pytest.raises(UsageError, match="not evaluated on the same test set") as error:
        compare.paired_difference([a], [fewer])
    assert a in str(error.value) and fewer in str(error.value) and "0399" in str(error.value)
    renamed = write_run(tmp_path / "renamed", aps, queries=[f"q{index}.jpg" for index in range(aps.size)])
    with pytest.raises(UsageError, match="not evaluated on the same test set"):
        compare.paired_difference([a], [renamed])
    other_pids = write_run(tmp_path / "pids", aps, pids=[pid + 1 for pid in range(aps.size)])
    with pytest.raises(UsageError, match="has pid 0 in one and 1 in the other"):
        compare.paired_difference([a], [other_pids])


def test_a_run_without_per_query_csv_is_named_with_the_command_that_writes_it(tmp_path, aps):
    a = write_run(tmp_path / "a", aps)
    b = write_run(tmp_path / "b", aps)
    os.remove(os.path.join(b, "per_query.csv"))
    with pytest.raises(UsageError) as error:
        compare.paired_difference([a], [b])
    message = str(error.value)
    assert message.startswith(f"{b} has no per_query.csv")
    assert message.endswith(f"python main.py -d market --seed 1 --logs-dir {b} --resume {b}/checkpoint.pth.tar "
                            f"--logs-dir {b}")
    record = json.load(open(os.path.join(b, "results.json")))
    del record["config"]
    json.dump(record, open(os.path.join(b, "results.json"), "w"))
    with pytest.raises(UsageError, match=f"the main.py command that trained it .* with --resume {b}/checkpoint"):
        compare.paired_difference([a], [b])


def test_a_side_mixing_experiments_is_refused(tmp_path, aps):
    baseline = write_run(tmp_path / "baseline", aps, dsa=False, deep_supervision=False)
    full = write_run(tmp_path / "full", aps, seed=2)
    with pytest.raises(UsageError, match=f"Side A mixes experiments: {baseline} and {full} differ in more than"):
        compare.paired_difference([baseline, full], [full])
    with pytest.raises(UsageError, match="names .* more than once"):
        compare.paired_difference([full, full], [full])
    with pytest.raises(UsageError, match="Side B of the comparison has no run"):
        compare.paired_difference([full], [])


def test_settings_key_ignores_the_seed_and_where_a_run_ran_but_not_what_it_computed(tmp_path, aps):
    def key(**changes):
        record = json.load(open(write_run(tmp_path / "run", aps) + "/results.json"))
        for path, value in changes.items():
            section, _, name = path.rpartition("__")
            (record["config"][section] if section else record["config"])[name] = value
        return compare.settings_key(record)

    same = key()
    assert key(train__seed=5, data__seed=5, logs_dir="x", data__root="/elsewhere", data__workers=0,
               device__device="cpu", train__print_freq=1, command=["other"]) == same
    for changes in ({"train__lr": 0.01}, {"device__amp": True}, {"eval__flip_test": True}, {"model__dsa": False}):
        assert key(**changes) != same
    assert compare.settings_key({"mAP": 0.5}) is None


def test_per_query_results_that_disagree_with_results_json_are_refused(tmp_path, aps):
    a = write_run(tmp_path / "a", aps)
    b = write_run(tmp_path / "b", aps, record={"mAP": float(aps.mean()) + 0.01})
    with pytest.raises(UsageError, match=f"per_query.csv does not match {b}/results.json: its queries give mAP"):
        compare.paired_difference([a], [b])


@pytest.mark.parametrize("version, accepted", [(None, True), (1, True), (2, True), (3, False), ("2", False)])
def test_results_json_formats(tmp_path, aps, version, accepted):
    a = write_run(tmp_path / "a", aps, record={} if version is None else {"format": version})
    if accepted:
        assert compare.paired_difference([a], [a])["mAP"]["difference"] == 0
    else:
        with pytest.raises(UsageError, match=f"{a}/results.json: results.json (is of|has) format"):
            compare.paired_difference([a], [a])


@pytest.mark.parametrize("content, problem", [
    ("query,pid,ap\nq.jpg,1,0.5\n", "lacks the column(s) camid, first_match_rank"),
    ("query,pid,camid,ap,first_match_rank,inp\n", "has no query rows"),
    ("query,pid,camid,ap,first_match_rank,inp\nq.jpg,1,1,high,1,0.5\n", "line 2: pid, camid and first_match_rank"),
    ("query,pid,camid,ap,first_match_rank,inp\nq.jpg,1,1,1.5,1,0.5\n", "line 2: ap must be in [0, 1]"),
    ("query,pid,camid,ap,first_match_rank,inp\nq.jpg,1,1,0.5,0,0.5\n", "first_match_rank at least 1"),
    ("query,pid,camid,ap,first_match_rank,inp\nq.jpg,1,1,0.5,1,0.5\nq.jpg,1,2,0.5,1,0.5\n",
     "lists the query q.jpg more than once"),
], ids=["columns", "empty", "not a number", "ap above 1", "rank 0", "duplicate"])
def test_a_malformed_per_query_csv_is_refused_naming_the_file(tmp_path, aps, content, problem):
    run = write_run(tmp_path / "run", aps)
    with open(os.path.join(run, "per_query.csv"), "w") as handle:
        handle.write(content)
    with pytest.raises(UsageError) as error:
        compare.paired_difference([run], [run])
    assert str(error.value).startswith(os.path.join(run, "per_query.csv")) and problem in str(error.value)


@pytest.mark.parametrize("options, flag", [({"resamples": 10}, "--resamples"), ({"resamples": 1.5}, "--resamples"),
                                           ({"seed": -1}, "--bootstrap-seed"), ({"confidence": 95}, "confidence")])
def test_bad_bootstrap_settings_are_refused(tmp_path, aps, options, flag):
    run = write_run(tmp_path / "run", aps)
    with pytest.raises(UsageError, match=flag):
        compare.paired_difference([run], [run], **options)


def test_reads_the_per_query_csv_that_the_evaluator_writes(tmp_path):
    from reid import evaluator  # imports PyTorch: only this test needs it

    items = [(str(tmp_path / "data" / "query" / f"000{pid}_c{pid}s1_000025_01.jpg"), pid, pid) for pid in (1, 2, 3)]
    per_query = {"query_index": np.array([0, 2]), "ap": np.array([0.25, 1 / 3]),
                 "first_match_rank": np.array([4, 1]), "inp": np.array([0.1, 0.2])}
    evaluator.write_per_query(tmp_path / "per_query.csv", items, per_query, tmp_path / "data")
    queries, pids, camids, ap, ranks = compare.read_per_query(tmp_path / "per_query.csv")
    assert queries == ["query/0001_c1s1_000025_01.jpg", "query/0003_c3s1_000025_01.jpg"]
    assert pids.tolist() == camids.tolist() == [1, 3] and ranks.tolist() == [4, 1]
    assert ap.tolist() == [0.25, 1 / 3]
