"""benchmarks/eval_speed.py on a tiny problem: it runs each part in its own process and prints one JSON object."""
import json

import numpy as np
import pytest
import torch

from benchmarks import eval_speed
from reid import metrics


def test_eval_speed_prints_its_figures(capsys):
    report = eval_speed.main(["--preset", "msmt17", "--queries", "60", "--gallery", "400", "--dim", "48",
                              "--rerank", "--dtype", "float16"])
    assert json.loads(capsys.readouterr().out) == report
    assert (report["queries"], report["gallery"], report["cameras"], report["dim"]) == (60, 400, 15, 48)
    for part in ("distances", "evaluation", "rerank"):
        figures = report[part]
        assert figures["peak_rss_mib"] >= figures["rss_before_mib"] > 0, part
        assert figures["seconds"] >= 0, part
    assert report["evaluation"]["seconds"] >= report["evaluation"]["distance_seconds"]
    assert report["rerank"]["seconds"] >= report["rerank"]["rerank_seconds"] > 0
    for part in ("evaluation", "rerank"):
        assert 0 < report[part]["mAP"] <= report[part]["rank1"] <= 1
        assert report[part]["ranking_seconds"] >= 0


def test_generated_features_follow_the_preset():
    args = eval_speed.parse_args(["--preset", "market", "--queries", "337", "--gallery", "1591", "--dim", "40"])
    sizes = eval_speed.problem_sizes(args)
    assert (sizes["ids"], sizes["distractors"]) == (75, 280)
    query, gallery, q_pids, g_pids, q_camids, g_camids = eval_speed.make_problem(sizes, 40, "float32", seed=0)
    assert query.shape == (337, 40) and gallery.shape == (1591, 40)
    torch.testing.assert_close(gallery.norm(dim=1), torch.ones(1591))
    assert np.sum(g_pids == 0) == 280 and set(np.unique(q_pids)) <= set(np.unique(g_pids))
    again = eval_speed.make_problem(sizes, 40, "float32", seed=0)[1]
    assert torch.equal(gallery, again)
    result = metrics.retrieval_metrics(query, gallery, q_pids, g_pids, q_camids, g_camids)
    assert 0.5 < result["mAP"] < result["rank1"] < 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without a GPU")
def test_eval_speed_refuses_cuda_without_a_gpu(capsys):
    with pytest.raises(SystemExit):
        eval_speed.main(["--device", "cuda"])
    assert "no CUDA GPU is visible" in capsys.readouterr().err
