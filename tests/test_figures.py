"""Figures: training curves, rank lists, correlation figures."""
import os

import numpy as np
import pytest
import torch
from torchvision.io import write_png

from matplotlib.axes import Axes

from reid import figures, images, maps
from reid.errors import UsageError

torch.set_num_threads(2)


def test_plot_curves_still_writes_its_figure(tmp_path):
    history = [{"epoch": 1, "loss": 2.0}, {"epoch": 2, "loss": 1.5, "rank1": 0.5, "mAP": 0.3, "eval_split": "val"}]
    figures.plot_curves(history, str(tmp_path / "curves.png"))
    assert (tmp_path / "curves.png").stat().st_size > 0


def test_identical_positions_correlate_fully():
    vector = np.random.default_rng(0).normal(size=(32, 1, 1))
    feature_map = np.broadcast_to(vector, (32, 4, 5))
    correlation = maps.spatial_correlation(feature_map)
    assert correlation.shape == (20, 20)
    assert figures.average_correlation(correlation) == pytest.approx(1.0)


def test_independent_positions_are_uncorrelated_on_average():
    feature_map = np.random.default_rng(0).normal(size=(2048, 16, 16))
    assert abs(figures.average_correlation(maps.spatial_correlation(feature_map))) < 0.01


def test_rank_list_skips_same_identity_same_camera():
    distances = np.array([0.1, 0.2, 0.3, 0.4, 0.5])
    pids, camids = np.array([7, 7, 3, 7, 4]), np.array([1, 2, 1, 1, 1])
    assert figures.rank_list(distances, 7, 1, pids, camids, topk=3).tolist() == [1, 2, 4]


def test_save_rank_lists_writes_one_figure_per_sampled_query(gradient_image, tmp_path):
    paths = []
    for index in range(6):
        path = str(tmp_path / f"{index:04d}_c{index % 2}.png")
        write_png(gradient_image(16, 8), path)
        paths.append(path)
    query = [(paths[i], i, 0) for i in range(3)]
    gallery = [(paths[i], i % 3, 1) for i in range(6)]
    distances = torch.rand(3, 6, generator=torch.Generator().manual_seed(0))
    written = figures.save_rank_lists(distances, query, gallery, str(tmp_path / "visrank"), topk=4,
                                        num_queries=2)
    assert len(written) == 2 and sorted(os.listdir(tmp_path / "visrank")) == sorted(map(os.path.basename, written))
    again = figures.save_rank_lists(distances.numpy(), query, gallery, str(tmp_path / "again"), topk=4,
                                      num_queries=2)
    assert list(map(os.path.basename, again)) == list(map(os.path.basename, written))
    everything = figures.save_rank_lists(distances, query, gallery, str(tmp_path / "all"), topk=10)
    assert len(everything) == 3
    with pytest.raises(UsageError, match="--visrank"):
        figures.save_rank_lists(distances, query, gallery, str(tmp_path / "none"), topk=0)


def test_the_correlation_figure_is_titled_with_the_avg_corr_line(gradient_image, monkeypatch):
    drawn = []
    monkeypatch.setattr(figures, "_save", lambda figure, path, dpi: drawn.append(figure))
    same = maps.spatial_correlation(np.broadcast_to(np.arange(6.0)[:, None, None], (6, 2, 3)))
    mixed = maps.spatial_correlation(np.random.default_rng(5).normal(size=(16, 3, 2)))
    assert figures.correlation_title(same) == "Avg.Corr : 1.000"
    assert figures.correlation_title(mixed) == f"Avg.Corr : {np.mean(mixed):.3f}"
    figures.plot_correlation(same, "unused.png")
    image = gradient_image(12, 6).permute(1, 2, 0).numpy()
    figures.plot_comparison(image, [("baseline", np.ones((6, 3, 2)), same), ("DSP", np.ones((6, 3, 2)), mixed)],
                              "unused.png", "title")
    titles = [[axis.get_title() for axis in figure.findobj(Axes)] for figure in drawn]
    assert "Avg.Corr : 1.000" in titles[0]
    assert [title for title in titles[1] if title.startswith("Avg.Corr")] == [
        "Avg.Corr : 1.000", figures.correlation_title(mixed)]




def test_a_figure_too_large_for_its_dpi_is_refused_before_it_is_drawn(tmp_path, monkeypatch):
    """A figure is refused from its size before matplotlib allocates its canvas; a file already at its path is
    left as it was."""
    path = tmp_path / "same_corr.png"
    path.write_bytes(b"an earlier figure")
    correlation = maps.spatial_correlation(np.random.default_rng(0).normal(size=(8, 3, 2)))
    with pytest.raises(UsageError) as refused:
        figures.plot_correlation(correlation, str(path), dpi=100000)
    assert str(refused.value) == (f"The figure {path} would be 600,000x540,000 pixels at 100000 dpi, more than the "
                                  f"65,535 pixels a side a figure may have; lower --dpi (this figure allows at most "
                                  f"10922 dpi).")
    monkeypatch.setattr(images, "available_memory", lambda: 2**30)
    with pytest.raises(UsageError) as refused:
        figures.plot_correlation(correlation, str(path), dpi=3000)
    assert str(refused.value) == (f"Drawing the figure {path} (18,000x16,200 pixels at 3000 dpi) needs about 8.7 GiB "
                                  f"of memory, but only 1.0 GiB is available; lower --dpi.")
    assert path.read_bytes() == b"an earlier figure"
    figures.plot_correlation(correlation, str(path), dpi=50)
    assert path.read_bytes().startswith(b"\x89PNG")


def test_display_name_shows_bytes_that_are_not_utf8_as_the_replacement_character(tmp_path):
    name = os.fsdecode(b"caf\xe9_\xff.png")
    assert figures.display_name(name) == "caf\ufffd_\ufffd.png"
    assert figures.display_name(b"/data/caf\xe9.png") == "/data/caf\ufffd.png"
    assert figures.display_name(tmp_path / "plain.png") == str(tmp_path / "plain.png")
    image = np.zeros((12, 6, 3), np.uint8)
    path = tmp_path / name
    figures.plot_cam(image, np.zeros((3, 2)), {"dsa1": np.zeros((3, 2))}, str(path), f"{name}: title")
    assert os.path.isfile(os.path.join(os.fsencode(tmp_path), b"caf\xe9_\xff.png"))
