"""TensorBoard event files: read back with TensorBoard's own reader, they hold metrics.csv's values, every
evaluation and the settings, each epoch once, also after an interrupted run is resumed."""
import csv
import json
import os
import signal

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from tensorboard.backend.event_processing.plugin_event_accumulator import EventAccumulator as PluginAccumulator

import main
from reid import checkpoint, tensorboard_log, trainer
from reid.losses import TERMS

EVENT_FILE_PREFIX = "events.out.tfevents"


def read_events(folder):
    events = EventAccumulator(str(folder))
    events.Reload()
    return events


def scalars(events):
    """{tag: [(step, value), ...]} of every scalar tag."""
    return {tag: [(event.step, event.value) for event in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def settings_texts(folder):
    """[(step, text), ...] of the settings, read as TensorBoard's text plugin does (the reader of the scalars
    keeps text events that a resumed session has replaced)."""
    events = PluginAccumulator(str(folder))
    events.Reload()
    return [(event.step, event.tensor_proto.string_val[0].decode())
            for event in events.Tensors("settings/text_summary")]


def metrics_rows(logs):
    with open(logs / "metrics.csv") as handle:
        return list(csv.DictReader(handle))


def assert_scalars_match_metrics_csv(logs, eval_prefix):
    """Every metrics.csv column of every epoch, under its tag, at the epoch's step, exactly once."""
    by_tag = scalars(read_events(logs))
    rows = metrics_rows(logs)
    columns = {"Loss/total": "loss", "Train/accuracy": "accuracy", "Train/images_per_second": "images_per_second",
               "Train/seconds": "seconds", "LR/new": "lr", f"{eval_prefix}/rank1": "rank1",
               f"{eval_prefix}/mAP": "mAP", **{f"Loss/{term}": term for term in TERMS if rows[0][term]}}
    for tag, column in columns.items():
        assert [step for step, _ in by_tag[tag]] == [int(row["epoch"]) for row in rows], tag
        for (_, value), row in zip(by_tag[tag], rows):
            assert value == pytest.approx(float(row[column]), rel=1e-6), (tag, row["epoch"])
    for tag in ("LR/backbone", f"{eval_prefix}/mINP"):
        assert [step for step, _ in by_tag[tag]] == [int(row["epoch"]) for row in rows], tag
    return by_tag


def test_a_disabled_board_writes_nothing(tmp_path):
    with tensorboard_log.open_board(str(tmp_path), 1, {"command": ["main.py"]}, enabled=False) as board:
        board.add_epoch({"epoch": 1, "loss": 1.0, "accuracy": 0.5, "images_per_second": 9.0, "seconds": 2.0},
                        [{"name": "new", "lr": 0.1}])
        board.add_evaluation(1, {"rank1": 0.5, "mAP": 0.4, "mINP": 0.3}, "market")
    assert os.listdir(tmp_path) == []


def test_settings_text_holds_the_command_and_every_setting(tmp_path):
    settings = {"command": ["main.py", "-d", "market", "--logs-dir", "logs/a b"], "train": {"lr": 0.05}}
    with tensorboard_log.open_board(str(tmp_path), 3, settings):
        pass
    [(step, text)] = settings_texts(tmp_path)
    assert step == 3
    assert "`main.py -d market --logs-dir 'logs/a b'`" in text and '"lr": 0.05' in text


@pytest.mark.slow
def test_a_run_writes_metrics_csv_every_evaluation_and_its_settings(tiny_args, tiny_synthetic, tmp_path):
    """Two epochs evaluated on the validation split, then the test split and a --test-dataset (the synthetic
    dataset has Market-1501's layout and names, so it loads as market too)."""
    logs = tmp_path / "logs"
    argv = tiny_args(tiny_synthetic, logs, "--epochs", "2", "--test-dataset", f"market:{tiny_synthetic}")
    assert main.main(argv) == 0
    by_tag = assert_scalars_match_metrics_csv(logs, "Val")
    results = json.loads((logs / "results.json").read_text())
    [market] = results["other_datasets"]
    for key in ("rank1", "mAP", "mINP"):
        assert by_tag[f"Test/synthetic/{key}"] == [(2, pytest.approx(results[key], rel=1e-6))]
        assert by_tag[f"Test/market/{key}"] == [(2, pytest.approx(market[key], rel=1e-6))]
    [(step, text)] = settings_texts(logs)
    assert step == 1 and f"--test-dataset market:{tiny_synthetic}" in text and '"tensorboard": true' in text


@pytest.mark.slow
def test_a_resumed_run_shows_each_epoch_once(tiny_args, tiny_synthetic, tmp_path, monkeypatch, signal_after):
    """Stopped by SIGTERM after the first step; resumed, and stopped at once (a second Ctrl-C) while saving epoch
    2, after its events were written; resumed again to the end. The event files then hold epoch 2 twice, and
    TensorBoard shows each epoch exactly once, with the values of metrics.csv."""
    logs = tmp_path / "logs"
    path = logs / "checkpoint.pth.tar"
    argv = tiny_args(tiny_synthetic, logs, "--epochs", "2", "--combine-trainval")
    resume = ["--resume", str(path)]
    with monkeypatch.context() as patch:
        signal_after(patch, trainer, "part_accuracy", 1, signal.SIGTERM)
        assert main.main(argv) == 128 + signal.SIGTERM
    assert (checkpoint.load(str(path))["epoch"], checkpoint.load(str(path))["step"]) == (0, 1)

    real_write = checkpoint.write

    def stopped_while_saving_epoch_2(saved, destination):
        if saved.epoch == 2:
            raise KeyboardInterrupt  # what a second signal does: stop at once, saving nothing
        return real_write(saved, destination)

    with monkeypatch.context() as patch:
        patch.setattr(checkpoint, "write", stopped_while_saving_epoch_2)
        assert main.main([*argv, *resume]) == 130
    assert (checkpoint.load(str(path))["epoch"], checkpoint.load(str(path))["step"]) == (1, 0)
    assert main.main([*argv, *resume]) == 0

    assert raw_steps(logs, "Loss/total") == [1, 2, 2]
    by_tag = assert_scalars_match_metrics_csv(logs, "Test/synthetic")
    assert all([step for step, _ in values] == [1, 2] for values in by_tag.values()), by_tag
    assert [step for step, _ in settings_texts(logs)] == [1, 2]


def raw_steps(folder, tag):
    """The steps of ``tag`` in the event files themselves, in file order, purged or not."""
    steps = []
    for name in sorted(name for name in os.listdir(folder) if name.startswith(EVENT_FILE_PREFIX)):
        for event in EventFileLoader(str(folder / name)).Load():
            steps += [event.step for value in event.summary.value if value.tag == tag]
    return steps
