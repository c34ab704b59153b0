"""The benchmark scripts run and print one JSON object with their figures."""
import json

import pytest

from benchmarks import train_speed


def test_train_speed_prints_its_figures(capsys):
    train_speed.main(["-a", "resnet18", "--height", "64", "--width", "32", "-b", "4", "--steps", "2", "--warmup", "1",
                      "--device", "cpu", "--workers", "1", "--pipeline-ids", "2", "--pipeline-epochs", "0"])
    result = json.loads(capsys.readouterr().out)
    for key in ("dsp_images_per_second", "plain_images_per_second", "step_time_ratio", "dsa_seconds",
                "dsa_share_of_dsp_step", "loader_images_per_second",
                "pipeline_images_per_second", "cached_loader_images_per_second", "cached_pipeline_images_per_second",
                "cache_mib", "peak_rss_mib"):
        assert result[key] > 0, key
    assert result["variant"] == "fp32" and list(result["variants"]) == ["fp32"]
    assert result["step_time_ratio"] == pytest.approx(result["dsp_step_seconds"] / result["plain_step_seconds"],
                                                      rel=0.01)


def test_train_speed_refuses_cuda_variants_on_cpu(capsys):
    with pytest.raises(SystemExit):
        train_speed.main(["--device", "cpu", "--variants", "amp"])
    assert "measured on CUDA only" in capsys.readouterr().err


def test_a_failing_run_reports_its_error_and_the_rest_goes_on(capsys, monkeypatch):
    def broken_step(run):
        raise RuntimeError("compiled backward failed")

    monkeypatch.setattr(train_speed.TrainingRun, "step", broken_step)
    train_speed.main(["-a", "resnet18", "--height", "64", "--width", "32", "-b", "4", "--steps", "1", "--warmup", "0",
                      "--device", "cpu", "--workers", "0", "--pipeline-ids", "2", "--pipeline-epochs", "0"])
    result = json.loads(capsys.readouterr().out)
    assert result["variants"]["fp32"] == {"dsp_error": "RuntimeError: compiled backward failed",
                                          "plain_error": "RuntimeError: compiled backward failed"}
    assert result["pipeline_images_per_second"] > 0


def test_a_failing_dsa_timing_reports_its_error_and_keeps_the_step_figures(capsys, monkeypatch):
    def broken_timing(run, variant, args):
        raise RuntimeError("compiled block failed")

    monkeypatch.setattr(train_speed, "time_dsa_blocks", broken_timing)
    train_speed.main(["-a", "resnet18", "--height", "64", "--width", "32", "-b", "4", "--steps", "1", "--warmup", "0",
                      "--device", "cpu", "--workers", "0", "--pipeline-ids", "2", "--pipeline-epochs", "0"])
    figures = json.loads(capsys.readouterr().out)["variants"]["fp32"]
    assert figures["dsa_error"] == "RuntimeError: compiled block failed"
    assert figures["step_time_ratio"] > 0 and "dsa_seconds" not in figures
