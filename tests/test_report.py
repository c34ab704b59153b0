"""reid.report: the ablation table from fabricated run folders, and ablation.mk's dry run."""
import csv
import io
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from reid import compare, recipes, report
from reid.config import RunConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_results(folder, dsa=True, deep_supervision=True, **overrides):
    record = {"dataset": "market", "arch": "resnet50", "epochs": 50, "rank1": 0.9312, "rank5": 0.975,
              "rank10": 0.9851, "mAP": 0.8, "mINP": 0.4549, "num_valid_queries": 3368, "dsa": dsa,
              "deep_supervision": deep_supervision, "parts": 6, "feature": "parts", "cmc_views": {},
              "args": {"dataset": "market", "rerank": False, "flip_test": False}}
    record.update(overrides)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "results.json"), "w") as handle:
        json.dump(record, handle)


def write_file(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def write_metrics(folder, epochs):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "metrics.csv"), "w") as handle:
        handle.write("epoch,loss,accuracy\n")
        handle.writelines(f"{epoch},1.0,0.5\n" for epoch in range(1, epochs + 1))


@pytest.fixture
def ablation(tmp_path):
    """logs/ablation-market with a full run, a baseline, one still training and one with broken JSON."""
    parent = tmp_path / "logs" / "ablation-market"
    write_results(parent / "full")
    write_results(parent / "baseline", dsa=False, deep_supervision=False, rank1=0.871, mAP=0.6849)
    write_metrics(parent / "dsa", epochs=12)
    write_file(parent / "ds" / "results.json", '{"dataset": "market", "rank1": ')
    return parent


def run_report(capsys, *argv):
    status = report.main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def markdown_rows(text):
    """The table's body rows, as lists of stripped cells."""
    lines = text.strip().splitlines()
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]


def test_markdown_table_orders_rows_as_the_ablation_and_lists_unfinished_runs_last(ablation, capsys):
    status, out, _ = run_report(capsys, ablation)
    assert status == 0
    header, rule = out.splitlines()[:2]
    assert [cell.strip() for cell in header.strip("|").split("|")] == list(report.COLUMNS)
    assert rule.endswith("---:|")
    rows = markdown_rows(out)
    assert [row[0] for row in rows] == ["baseline", "full", "ds", "dsa"]
    assert rows[0] == ["baseline", "market", "PCB baseline", "50", "1", "87.1", "97.5", "98.5", "68.5", "45.5"]
    assert rows[1] == ["full", "market", "DSA+DS (full)", "50", "1", "93.1", "97.5", "98.5", "80.0", "45.5"]
    assert rows[2][2].startswith("results.json is not valid JSON")
    assert rows[3][2] == "no results.json (still training? last epoch in metrics.csv: 12)"
    assert rows[3][3:] == [""] * 7


def test_rows_are_grouped_by_dataset_and_named_relative_to_their_common_parent(tmp_path, capsys):
    write_results(tmp_path / "duke" / "full", dataset="duke")
    write_results(tmp_path / "market" / "full")
    write_results(tmp_path / "duke" / "dsa", dataset="duke", deep_supervision=False)
    status, out, _ = run_report(capsys, tmp_path / "duke" / "full", tmp_path / "market" / "full",
                                tmp_path / "duke" / "dsa")
    assert status == 0
    assert [row[:3] for row in markdown_rows(out)] == [["duke/dsa", "duke", "+DSA"],
                                                       ["duke/full", "duke", "DSA+DS (full)"],
                                                       ["market/full", "market", "DSA+DS (full)"]]


@pytest.mark.parametrize("changes, expected", [
    ({"dsa": False, "deep_supervision": False}, "PCB baseline"),
    ({"dsa": True, "deep_supervision": False}, "+DSA"),
    ({"dsa": False, "deep_supervision": True}, "+DS"),
    ({"dsa": True, "deep_supervision": True}, "DSA+DS (full)"),
    ({"dsa": False, "deep_supervision": True, "parts": 4, "feature": "reduced",
      "args": {"rerank": True, "flip_test": True}}, "+DS, 4 parts, reduced feature, re-ranked, flip test"),
    ({"dsa": True, "deep_supervision": True, "args": None}, "DSA+DS (full)"),
])
def test_switches_name_the_ablation_row_and_note_what_is_not_default(changes, expected):
    record = {"parts": 6, "feature": "parts", "args": {"rerank": False}, **changes}
    assert report.describe_switches(record) == expected


def test_csv_output_parses_with_the_csv_module(ablation, capsys):
    status, out, _ = run_report(capsys, ablation, "--csv")
    assert status == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert list(rows[0]) == ["run", "dataset", "switches", "epochs", "seeds", "rank-1", "rank-1 std", "rank-5",
                             "rank-5 std", "rank-10", "rank-10 std", "mAP", "mAP std", "mINP", "mINP std"]
    assert [row["run"] for row in rows] == ["baseline", "full", "ds", "dsa"]
    assert rows[1]["switches"] == "DSA+DS (full)" and rows[1]["rank-1"] == "93.1" and rows[1]["mAP"] == "80.0"
    assert rows[1]["seeds"] == "1" and rows[1]["rank-1 std"] == ""
    assert rows[3]["switches"] == "no results.json (still training? last epoch in metrics.csv: 12)"
    assert rows[3]["rank-1"] == ""


@pytest.mark.parametrize("make_run, problem", [
    (lambda folder: None, "folder missing"),
    (lambda folder: folder.mkdir(),
     "no results.json (no metrics.csv either: not started, or stopped before its first epoch)"),
    (lambda folder: write_metrics(folder, epochs=0), "no results.json (still training? metrics.csv has no epoch yet)"),
    (lambda folder: write_file(folder / "results.json", "[1, 2]"), "results.json is not a JSON object"),
    (lambda folder: write_results(folder, rank5="97%"), "results.json: rank5 not a number"),
])
def test_a_run_without_usable_results_gets_a_row_saying_what_is_missing(tmp_path, capsys, make_run, problem):
    make_run(tmp_path / "run")
    status, out, err = run_report(capsys, tmp_path / "run")
    assert status == 1
    assert markdown_rows(out) == [["run", "", problem, "", "", "", "", "", "", ""]]
    assert "no results yet" in err


def test_missing_keys_are_named(tmp_path, capsys):
    write_results(tmp_path / "old")
    record = json.loads((tmp_path / "old" / "results.json").read_text())
    del record["mINP"], record["dsa"]
    (tmp_path / "old" / "results.json").write_text(json.dumps(record))
    _, out, _ = run_report(capsys, tmp_path / "old")
    assert markdown_rows(out)[0][2] == "results.json lacks dsa, mINP"


def test_a_glob_expanded_list_skips_files_and_accepts_results_json_paths(ablation, capsys):
    (ablation / "table.md").write_text("old table\n")
    arguments = sorted(str(path) for path in ablation.iterdir())
    status, out, err = run_report(capsys, *arguments, ablation / "full" / "results.json")
    assert status == 0
    assert [row[0] for row in markdown_rows(out)] == ["baseline", "full", "ds", "dsa"]
    assert "table.md: a file, not a run folder" in err


def test_a_quoted_glob_is_expanded(ablation, capsys):
    _, out, _ = run_report(capsys, f"{ablation}/*")
    assert [row[0] for row in markdown_rows(out)] == ["baseline", "full", "ds", "dsa"]


def test_out_writes_the_printed_table(ablation, capsys):
    out_file = ablation / "table.md"
    status, out, _ = run_report(capsys, ablation, "--out", out_file)
    assert status == 0
    assert out_file.read_text() == out


def test_usage_errors_exit_2_without_a_traceback(ablation, tmp_path, capsys):
    status, out, err = run_report(capsys, ablation, "--out", tmp_path / "no-such-folder" / "table.md")
    assert status == 2 and out == ""
    assert err.startswith("error: --out ") and "Traceback" not in err
    (tmp_path / "notes.txt").write_text("")
    status, _, err = run_report(capsys, tmp_path / "notes.txt")
    assert status == 2 and "is a run folder" in err
    with pytest.raises(SystemExit) as stop:
        report.main([])
    assert stop.value.code == 2


def config_record(recipe="paper", train=None, model=None, rerank=False, flip_test=False):
    """The "config" of a results.json written since Nov 2026: ``RunConfig.to_dict()`` with these changes."""
    config = RunConfig().to_dict()
    config["train"].update(recipe=recipe, **(train or {}))
    config["model"].update(model or {})
    config["eval"].update(rerank=rerank, flip_test=flip_test)
    return config


def strong_preset(**changes):
    """The training settings the strong recipe gives, with ``changes``."""
    preset = {path.split(".")[1]: value for path, value in recipes.PRESETS["strong"].items()
              if path.startswith("train.")}
    return {**preset, **changes}


@pytest.mark.parametrize("config, expected", [
    (config_record(), "DSA+DS (full)"),
    (config_record(rerank=True, flip_test=True), "DSA+DS (full), re-ranked, flip test"),
    (config_record("strong", strong_preset(), {"bnneck": True}), "DSA+DS (full), strong recipe"),
    (config_record("strong", strong_preset(warmup_epochs=1, label_smoothing=0.0), {"bnneck": True}, flip_test=True),
     "DSA+DS (full), strong recipe (--warmup-epochs 1, --label-smoothing 0.0), flip test"),
    (config_record("strong", strong_preset(), {"bnneck": False}), "DSA+DS (full), strong recipe (--no-bnneck)"),
    (config_record(train={"optimizer": "adam", "lr_schedule": "cosine", "triplet_weight": 1.0, "margin": 0.0}),
     "DSA+DS (full), --optimizer adam, --lr-schedule cosine, --triplet-weight 1.0, --margin 0.0"),
    (config_record(train={"lr": 0.05, "epochs": 12, "step_size": 8}), "DSA+DS (full)"),
], ids=["paper", "eval switches", "strong", "strong with changes", "strong without bnneck", "paper with changes",
        "ordinary hyper-parameters"])
def test_the_switches_of_a_run_with_a_config_name_its_recipe_and_what_departs_from_it(config, expected):
    record = {"dsa": True, "deep_supervision": True, "parts": 6, "feature": "parts", "config": config}
    assert report.describe_switches(record) == expected


def test_runs_of_two_recipes_give_a_paper_table_and_a_strong_table(tmp_path, capsys):
    """``make ablation-synthetic RECIPE=strong`` reports logs/ablation-synthetic and its -strong twin together."""
    for folder, recipe in (("ablation-synthetic", "paper"), ("ablation-synthetic-strong", "strong")):
        config = config_record(recipe, strong_preset() if recipe == "strong" else {},
                               {"bnneck": recipe == "strong"})
        for row, (dsa, ds) in (("full", (True, True)), ("baseline", (False, False))):
            write_results(tmp_path / folder / row, dsa=dsa, deep_supervision=ds, dataset="synthetic",
                          config=config, rank1=0.9 if recipe == "strong" else 0.8)
    write_metrics(tmp_path / "ablation-synthetic-strong" / "dsa", epochs=3)
    status, out, _ = run_report(capsys, tmp_path / "ablation-synthetic", tmp_path / "ablation-synthetic-strong")
    assert status == 0
    sections = out.split("\n\n")
    assert sections[0] == "**paper recipe**" and sections[2] == "**strong recipe**"
    assert sections[4] == "**runs without results**"
    assert [row[:3] for row in markdown_rows(sections[1])] == [
        ["ablation-synthetic/baseline", "synthetic", "PCB baseline"],
        ["ablation-synthetic/full", "synthetic", "DSA+DS (full)"]]
    assert [row[:3] for row in markdown_rows(sections[3])] == [
        ["ablation-synthetic-strong/baseline", "synthetic", "PCB baseline, strong recipe"],
        ["ablation-synthetic-strong/full", "synthetic", "DSA+DS (full), strong recipe"]]
    assert markdown_rows(sections[5])[0][0] == "ablation-synthetic-strong/dsa"
    status, out, _ = run_report(capsys, tmp_path / "ablation-synthetic", tmp_path / "ablation-synthetic-strong",
                                "--csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [row["rank-1"] for row in rows] == ["80.0", "80.0", "90.0", "90.0", ""]


def test_a_run_evaluated_on_other_datasets_gets_a_row_for_each_below_its_own(tmp_path, capsys):
    other = {"dataset": "msmt17", "root": "/data/MSMT17", "rank1": 0.412, "rank5": 0.55, "rank10": 0.6,
             "mAP": 0.151, "mINP": 0.02, "num_valid_queries": 11659}
    write_results(tmp_path / "market" / "full", other_datasets=[other, {**other, "dataset": "duke", "mAP": 2.5}])
    write_results(tmp_path / "market" / "baseline", dsa=False, deep_supervision=False)
    _, out, _ = run_report(capsys, tmp_path / "market")
    rows = markdown_rows(out)
    assert [row[0] for row in rows] == ["baseline", "full", "full -> msmt17", "full -> ?"]
    assert rows[2] == ["full -> msmt17", "msmt17", "DSA+DS (full)", "50", "1", "41.2", "55.0", "60.0", "15.1",
                       "2.0"]
    assert rows[3][2] == "results.json: other dataset 2 mAP not a fraction in [0, 1]"


@pytest.mark.parametrize("content, problem", [
    ('{"rank1": 1e999}', "rank1 not a fraction in [0, 1]"),
    ('{"rank1": ' + "9" * 400 + "}", "rank1 not a fraction in [0, 1]"),
    ('{"rank1": NaN}', "rank1 not a fraction in [0, 1]"),
    ('{"rank1": -0.5}', "rank1 not a fraction in [0, 1]"),
    ('{"epochs": 1e999}', "epochs is not a number of epochs"),
    ('{"epochs": ' + "9" * 5000 + "}", "results.json holds a number too long to read"),
    ("[" * 100_000 + "]" * 100_000, "results.json is nested too deeply to be results"),
    ('{"extra": ' + "[" * 100_000 + "]" * 100_000 + "}", "results.json is nested too deeply to be results"),
], ids=["float overflow", "huge integer", "NaN", "negative", "huge epochs", "integer too long", "nested list",
        "nested value"])
def test_numbers_too_large_and_absurd_nesting_give_a_row_saying_so(tmp_path, capsys, content, problem):
    write_results(tmp_path / "run")
    record = (tmp_path / "run" / "results.json").read_text()
    patched = record[:-1] + ", " + content[1:] if content.startswith("{") else content
    (tmp_path / "run" / "results.json").write_text(patched)
    status, out, err = run_report(capsys, tmp_path / "run")
    assert status == 1 and "Traceback" not in err
    row = markdown_rows(out)[0]
    assert row[2] in (problem, f"results.json: {problem}")
    assert "set_int_max_str_digits" not in out


def test_a_huge_or_binary_results_file_is_not_read_as_results(tmp_path, capsys, monkeypatch):
    write_results(tmp_path / "binary")
    (tmp_path / "binary" / "results.json").write_bytes(b"\xff\xfe{\x00")
    write_results(tmp_path / "huge")
    monkeypatch.setattr(report, "MAX_RESULTS_BYTES", 100)
    size = os.path.getsize(tmp_path / "huge" / "results.json")
    _, out, _ = run_report(capsys, tmp_path / "binary", tmp_path / "huge")
    assert [row[2] for row in markdown_rows(out)] == ["results.json is not UTF-8 text",
                                                       f"results.json is {size:,} bytes, far more than results hold"]


@pytest.mark.parametrize("target", ["results.json", "metrics.csv", "checkpoint.pth.tar", "model_best.pth.tar"])
def test_out_never_overwrites_a_runs_own_files(ablation, capsys, target):
    path = ablation / "full" / target
    if not path.exists():
        path.write_text("the run's own file\n")
    before = path.read_bytes()
    status, out, err = run_report(capsys, ablation, "--out", path)
    assert status == 2 and out == ""
    assert err.startswith(f"error: --out {path}: {target} is the name of a file main.py writes into a run folder")
    assert "\n" not in err.strip() and path.read_bytes() == before


def test_out_through_a_link_to_a_runs_results_is_refused(ablation, capsys):
    link = ablation / "table.md"
    link.symlink_to(ablation / "full" / "results.json")
    before = (ablation / "full" / "results.json").read_bytes()
    status, _, err = run_report(capsys, ablation, "--out", link)
    assert status == 2 and "results.json is the name of a file main.py writes" in err
    assert (ablation / "full" / "results.json").read_bytes() == before


def test_runs_as_a_module(ablation):
    result = subprocess.run([sys.executable, "-m", "reid.report", str(ablation), "--csv"], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("run,dataset,switches,epochs,seeds,rank-1,rank-1 std")


def write_seed_run(folder, seed=1, dsa=True, deep_supervision=True, aps=None, train=None, **overrides):
    """A run with recorded settings (``--seed seed``, ``train`` changes) and a per_query.csv of ``aps``, query i
    of identity i; its results.json's mAP and rank-1 follow from them (rank 1 where the AP is at least 0.5)."""
    aps = np.asarray([0.2, 0.4, 0.6, 0.8] if aps is None else aps, dtype=float)
    config = config_record(train={"seed": seed, **(train or {})},
                           model={"dsa": dsa, "deep_supervision": deep_supervision})
    config.update(data={**config["data"], "seed": seed}, logs_dir=str(folder))
    metrics = {"mAP": float(aps.mean()), "rank1": float(np.mean(aps >= 0.5)), "num_valid_queries": len(aps)}
    write_results(folder, dsa=dsa, deep_supervision=deep_supervision, config=config, **{**metrics, **overrides})
    with open(os.path.join(folder, "per_query.csv"), "w") as handle:
        handle.write("query,pid,camid,ap,first_match_rank,inp\n")
        handle.writelines(f"query/{pid:04d}_c1s1_000025_01.jpg,{pid},1,{float(ap)!r},{1 if ap >= 0.5 else 2},0.5\n"
                          for pid, ap in enumerate(aps))


def test_seed_runs_share_a_row_with_mean_and_std_and_a_single_run_stays_plain(tmp_path, capsys):
    for seed, rank1 in ((1, 0.90), (2, 0.92), (3, 0.97)):
        write_seed_run(tmp_path / "ablation" / f"full-seed{seed}", seed, rank1=rank1)
    write_seed_run(tmp_path / "ablation" / "baseline", dsa=False, deep_supervision=False, rank1=0.8)
    write_seed_run(tmp_path / "ablation" / "full-lr", train={"lr": 0.01}, rank1=0.5)
    status, out, _ = run_report(capsys, tmp_path / "ablation")
    assert status == 0
    rows = markdown_rows(out)
    assert [row[:5] for row in rows] == [["baseline", "market", "PCB baseline", "50", "1"],
                                         ["full-lr", "market", "DSA+DS (full)", "50", "1"],
                                         ["full (seeds 1,2,3)", "market", "DSA+DS (full)", "50", "3"]]
    assert rows[0][5] == "80.0" and rows[1][5] == "50.0"
    assert rows[2][5] == "93.0 ± 3.6"  # mean 0.93, sample std 0.036
    assert rows[2][8] == "50.0 ± 0.0"
    status, out, _ = run_report(capsys, tmp_path / "ablation", "--csv")
    grouped = list(csv.DictReader(io.StringIO(out)))[2]
    assert (grouped["run"], grouped["seeds"], grouped["rank-1"], grouped["rank-1 std"]) == (
        "full (seeds 1,2,3)", "3", "93.0", "3.6")


@pytest.mark.parametrize("names, seeds, expected", [
    (["baseline-seed1", "baseline-seed2", "baseline-seed10"], [1, 2, 10], "baseline (seeds 1,2,10)"),
    (["run_a", "run_b"], [4, 5], "run (seeds 4,5)"),
    (["one", "two"], [1, None], "one, two (seeds 1,?)"),
    (["market/full-seed1", "duke/full-seed2"], [1, 2], "market/full-seed1, duke/full-seed2 (seeds 1,2)"),
])
def test_a_seed_group_is_named_after_its_runs_common_name(names, seeds, expected):
    assert report.group_name(names, seeds) == expected


def test_runs_without_settings_and_evaluations_are_never_grouped(tmp_path, capsys):
    write_results(tmp_path / "old-1")
    write_results(tmp_path / "old-2")
    evaluation = config_record()
    evaluation["evaluate"] = True
    write_results(tmp_path / "eval-1", config=evaluation)
    write_results(tmp_path / "eval-2", config=evaluation)
    _, out, _ = run_report(capsys, tmp_path)
    assert [(row[0], row[4]) for row in markdown_rows(out)] == [("eval-1", "1"), ("eval-2", "1"), ("old-1", "1"),
                                                                ("old-2", "1")]


def test_seed_runs_evaluated_on_other_datasets_share_those_rows_too(tmp_path, capsys):
    other = {"dataset": "duke", "rank1": 0.4, "rank5": 0.5, "rank10": 0.6, "mAP": 0.2, "mINP": 0.1}
    write_seed_run(tmp_path / "full-seed1", 1, other_datasets=[other])
    write_seed_run(tmp_path / "full-seed2", 2, other_datasets=[{**other, "rank1": 0.5}])
    _, out, _ = run_report(capsys, tmp_path)
    rows = markdown_rows(out)
    assert rows[1][:6] == ["full (seeds 1,2) -> duke", "duke", "DSA+DS (full)", "50", "2", "45.0 ± 7.1"]


@pytest.mark.parametrize("version, problem", [
    (3, "results.json is of format 3, written by a newer version of this project than this one (format 2); "
        "update the code to read it"),
    ("two", "results.json has format 'two', not a format this project writes"),
])
def test_a_results_json_of_an_unknown_format_is_refused(tmp_path, capsys, version, problem):
    strong = config_record("strong", strong_preset(), {"bnneck": True})
    write_results(tmp_path / "future", format=version, config=strong)
    write_results(tmp_path / "today", format=2, config=strong)
    status, out, _ = run_report(capsys, tmp_path)
    assert status == 0
    assert [row[:3] for row in markdown_rows(out)] == [["today", "market", "DSA+DS (full), strong recipe"],
                                                        ["future", "", problem]]


def seed_ablation(root, rows=("baseline", "full"), seeds=(1, 2, 3)):
    """Seed runs of the baseline and full rows; the full model's APs are 0.1 higher on every other query."""
    rng = np.random.default_rng(0)
    aps = rng.uniform(0.1, 0.8, 200)
    for row in rows:
        for seed in seeds:
            values = np.clip(aps + (0.1 * (np.arange(200) % 2) if row == "full" else 0)
                             + rng.normal(0, 0.02, 200), 0, 1)
            write_seed_run(root / f"{row}-seed{seed}", seed, dsa=row in ("full", "dsa"),
                           deep_supervision=row in ("full", "ds"), aps=values)


def test_versus_baseline_gives_each_rows_difference_with_its_interval(tmp_path, capsys):
    seed_ablation(tmp_path / "ablation")
    write_seed_run(tmp_path / "ablation" / "ds-seed1", dsa=False, aps=np.full(200, 0.5), train={"lr": 0.01})
    status, out, err = run_report(capsys, tmp_path / "ablation", "--versus-baseline", "--resamples", "1000")
    assert status == 0 and err == ""
    header = [cell.strip() for cell in out.splitlines()[0].strip("|").split("|")]
    assert header[-2:] == ["mAP vs baseline", "rank-1 vs baseline"]
    rows = markdown_rows(out)
    assert [row[0] for row in rows] == ["baseline (seeds 1,2,3)", "ds-seed1", "full (seeds 1,2,3)"]
    assert rows[0][-2:] == ["baseline", "baseline"] and rows[1][-2:] == ["no baseline", "no baseline"]
    folders = sorted(str(path) for path in (tmp_path / "ablation").glob("*-seed*") if "ds-" not in path.name)
    expected = compare.paired_difference(folders[:3], folders[3:], resamples=1000)["mAP"]
    assert 0.04 < expected["low"] and expected["difference"] < expected["high"] < 0.06
    assert rows[2][-2] == (f"{100 * expected['difference']:+.2f} "
                           f"[{100 * expected['low']:+.2f}, {100 * expected['high']:+.2f}]")
    _, out, _ = run_report(capsys, tmp_path / "ablation", "--versus-baseline", "--resamples", "1000", "--csv")
    full = list(csv.DictReader(io.StringIO(out)))[2]
    assert float(full["mAP vs baseline low"]) == pytest.approx(100 * expected["low"], abs=0.006)


def test_versus_baseline_refuses_bad_bootstrap_settings_before_reading_runs(tmp_path, capsys):
    seed_ablation(tmp_path / "ablation", seeds=(1,))
    status, out, err = run_report(capsys, tmp_path / "ablation", "--versus-baseline", "--bootstrap-seed", "-1")
    assert status == 2 and out == "" and err.startswith("error: --bootstrap-seed must be a whole number, 0 or more")


def test_versus_baseline_without_per_query_results_says_why_on_stderr(tmp_path, capsys):
    seed_ablation(tmp_path / "ablation", seeds=(1,))
    os.remove(tmp_path / "ablation" / "full-seed1" / "per_query.csv")
    status, out, err = run_report(capsys, tmp_path / "ablation", "--versus-baseline")
    assert status == 0
    assert markdown_rows(out)[1][-2:] == ["n/a", "n/a"]
    assert err.startswith(f"full-seed1: no difference from the baseline: {tmp_path / 'ablation' / 'full-seed1'} "
                          f"has no per_query.csv")


def test_compare_prints_b_minus_a_with_its_interval(tmp_path, capsys):
    seed_ablation(tmp_path)
    status, out, err = run_report(capsys, "--compare", f"{tmp_path}/baseline-seed*", f"{tmp_path}/full-seed*",
                                  "--resamples", "1000", "--bootstrap-seed", "3")
    assert status == 0 and err == ""
    folders = sorted(str(path) for path in tmp_path.iterdir())
    expected = compare.paired_difference(folders[:3], folders[3:], resamples=1000, seed=3)
    lines = out.splitlines()
    assert lines[:3] == ["A: baseline (seeds 1,2,3)", "B: full (seeds 1,2,3)",
                         "B − A in percentage points over the same 200 queries; 95 % interval: two-stage bootstrap "
                         "of the queries (paired) and of each side's seed runs (3 and 3), percentile, 1,000 "
                         "resamples."]
    mAP = markdown_rows("\n".join(lines[4:]))[0]
    entry = expected["mAP"]
    assert mAP[3:] == [f"{100 * entry['difference']:+.2f}",
                       f"[{100 * entry['low']:+.2f}, {100 * entry['high']:+.2f}]", "yes"]
    status, out, _ = run_report(capsys, "--compare", tmp_path / "baseline-seed1", tmp_path / "baseline-seed1",
                                "--csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [(row["B − A"], row["low"], row["high"], row["excludes 0"]) for row in rows] == [
        ("+0.00", "+0.00", "+0.00", "no")] * 2


@pytest.mark.parametrize("arguments, message", [
    (["only-one"], "--compare takes two LOGDIRs, A and B, got 1"),
    (["a", "b", "c"], "Quote a glob of seed runs"),
    (["missing", "baseline-seed1"], "--compare A missing: not a run folder"),
    (["baseline-seed1", "future"], "future/results.json: results.json is of format 3"),
    (["baseline-seed1", "full-seed1", "--versus-baseline"], "Use one or the other"),
    (["baseline-seed1", "full-seed1", "--resamples", "50"], "--resamples must be a whole number of at least 100"),
])
def test_compare_refuses_what_it_cannot_compare_with_exit_2(tmp_path, capsys, monkeypatch, arguments, message):
    seed_ablation(tmp_path, seeds=(1,))
    write_seed_run(tmp_path / "future", format=3)
    monkeypatch.chdir(tmp_path)
    status, out, err = run_report(capsys, "--compare", *arguments)
    assert status == 2 and out == ""
    assert err.startswith("error: ") and message in err and "Traceback" not in err


def dry_run(folder, target, *variables):
    """``make -n TARGET`` in ``folder`` with a Makefile that defines what the project's Makefile does."""
    (folder / "Makefile").write_text(
        "PY := .venv/bin/python\nINSTALLED := .venv/.installed\n"
        "SYNTHETIC_ARGS ?= -d synthetic --data-dir data/synthetic -a resnet18 --epochs 15\n"
        "$(INSTALLED):\n\ttouch $@\n"
        f"include {os.path.join(REPO, 'ablation.mk')}\n")
    result = subprocess.run(["make", "-n", target, *variables], cwd=folder, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    return [line for line in result.stdout.splitlines() if "main.py" in line or "reid.report" in line]


needs_make = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


@needs_make
def test_ablation_synthetic_dry_run_trains_the_four_rows_then_reports(tmp_path):
    demo = ".venv/bin/python main.py -d synthetic --data-dir data/synthetic -a resnet18 --epochs 15"
    assert dry_run(tmp_path, "ablation-synthetic") == [
        f"{demo} --no-dsa --no-deep-supervision --logs-dir logs/ablation-synthetic/baseline",
        f"{demo} --no-deep-supervision --logs-dir logs/ablation-synthetic/dsa",
        f"{demo} --no-dsa --logs-dir logs/ablation-synthetic/ds",
        f"{demo} --logs-dir logs/ablation-synthetic/full",
        ".venv/bin/python -m reid.report logs/ablation-synthetic --out logs/ablation-synthetic/table.md",
    ]


@needs_make
def test_ablation_market_dry_run_uses_the_paper_command_and_skips_finished_rows(tmp_path):
    write_results(tmp_path / "logs" / "ablation-market" / "dsa")
    lines = dry_run(tmp_path, "ablation-market", "MARKET_DIR=/data/market", "ABLATION_EXTRA=--amp")
    paper = (".venv/bin/python main.py -d market --data-dir /data/market -b 48 -j 4 --epochs 50 "
             "--combine-trainval --step-size 40")
    assert lines == [
        f"{paper} --no-dsa --no-deep-supervision --amp --logs-dir logs/ablation-market/baseline",
        f"{paper} --no-dsa --amp --logs-dir logs/ablation-market/ds",
        f"{paper} --amp --logs-dir logs/ablation-market/full",
        ".venv/bin/python -m reid.report logs/ablation-market --out logs/ablation-market/table.md",
    ]


@needs_make
def test_ablation_duke_dry_run_reads_duke_dir(tmp_path):
    lines = dry_run(tmp_path, "ablation-duke")
    assert len(lines) == 5
    assert all(" -d duke --data-dir data/DukeMTMC-reID -b 48 " in line for line in lines[:4])
    assert lines[4].endswith("-m reid.report logs/ablation-duke --out logs/ablation-duke/table.md")


@needs_make
def test_ablation_with_seeds_trains_each_row_once_per_seed_and_reports_the_differences(tmp_path):
    demo = ".venv/bin/python main.py -d synthetic --data-dir data/synthetic -a resnet18 --epochs 15"
    lines = dry_run(tmp_path, "ablation-synthetic", "SEEDS=1 2")
    assert lines == [
        *(f"{demo} {switches}--seed {seed} --logs-dir logs/ablation-synthetic/{row}-seed{seed}"
          for row, switches in (("baseline", "--no-dsa --no-deep-supervision "), ("dsa", "--no-deep-supervision "),
                                ("ds", "--no-dsa "), ("full", "")) for seed in (1, 2)),
        ".venv/bin/python -m reid.report logs/ablation-synthetic --versus-baseline "
        "--out logs/ablation-synthetic/table.md",
    ]


@needs_make
def test_make_j2_trains_every_seed_run_after_generating_the_data_once(tmp_path):
    """ablation.mk with a stand-in for the venv's python that logs its arguments and writes the results.json
    a run would: the data are generated once, before any run; every run is made; the report comes last."""
    log = tmp_path / "calls.log"
    fake = tmp_path / "fake-python"
    fake.write_text(f"""#!/bin/sh
echo "$*" >> {log}
case "$*" in
  *reid.datasets.synthetic*) mkdir -p "$3" ;;
  *main.py*) for last; do :; done; sleep 0.2; mkdir -p "$last"; echo '{{}}' > "$last/results.json" ;;
esac
""")
    fake.chmod(0o755)
    (tmp_path / "Makefile").write_text(f"PY := {fake}\nINSTALLED := .installed\n$(INSTALLED):\n\ttouch $@\n"
                                       f"include {os.path.join(REPO, 'ablation.mk')}\n")
    result = subprocess.run(["make", "-j2", "ablation-synthetic", "SEEDS=1 2"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    calls = log.read_text().splitlines()
    assert calls[0] == "-m reid.datasets.synthetic data/synthetic"
    assert len(calls) == 10 and "reid.report" in calls[-1]
    assert sorted(os.listdir(tmp_path / "logs" / "ablation-synthetic")) == [
        f"{row}-seed{seed}" for row in ("baseline", "ds", "dsa", "full") for seed in (1, 2)]
