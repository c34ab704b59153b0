import os

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from torchvision.io import write_png

from reid import models, visualize
from reid.errors import UsageError

torch.set_num_threads(2)


def gradient_image(height=24, width=12):
    rows, columns = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    return torch.stack([rows * 10 % 256, columns * 20 % 256, (rows + columns) * 7 % 256]).to(torch.uint8)


def test_plot_curves_still_writes_its_figure(tmp_path):
    history = [{"epoch": 1, "loss": 2.0}, {"epoch": 2, "loss": 1.5, "rank1": 0.5, "mAP": 0.3, "eval_split": "val"}]
    visualize.plot_curves(history, str(tmp_path / "curves.png"))
    assert (tmp_path / "curves.png").stat().st_size > 0


def test_identical_positions_correlate_fully():
    vector = np.random.default_rng(0).normal(size=(32, 1, 1))
    feature_map = np.broadcast_to(vector, (32, 4, 5))
    correlation = visualize.spatial_correlation(feature_map)
    assert correlation.shape == (20, 20)
    assert visualize.average_correlation(correlation) == pytest.approx(1.0)


def test_independent_positions_are_uncorrelated_on_average():
    feature_map = np.random.default_rng(0).normal(size=(2048, 16, 16))
    assert abs(visualize.average_correlation(visualize.spatial_correlation(feature_map))) < 0.01


def test_correlation_matches_numpy_and_sees_opposite_positions():
    feature_map = np.random.default_rng(1).normal(size=(8, 3, 2))
    feature_map[:, 1, 1] = -feature_map[:, 0, 0]
    correlation = visualize.spatial_correlation(feature_map)
    np.testing.assert_allclose(correlation, np.corrcoef(feature_map.reshape(8, -1).T), atol=1e-12)
    assert correlation[0, 3] == pytest.approx(-1.0)


def test_a_constant_position_counts_as_uncorrelated_not_nan():
    feature_map = np.random.default_rng(2).normal(size=(16, 2, 2))
    feature_map[:, 0, 1] = 0.3
    correlation = visualize.spatial_correlation(feature_map)
    assert not np.isnan(correlation).any()
    assert correlation[1, 1] == 1.0
    assert np.all(np.delete(correlation[1], 1) == 0) and np.all(np.delete(correlation[:, 1], 1) == 0)


def test_activation_map_is_normalised_and_a_flat_map_is_zero():
    feature_map = np.random.default_rng(3).normal(size=(4, 6, 3))
    heatmap = visualize.activation_map(feature_map)
    assert heatmap.shape == (6, 3) and heatmap.min() == 0 and heatmap.max() == pytest.approx(1)
    assert np.all(visualize.activation_map(np.ones((4, 6, 3))) == 0)


@pytest.mark.parametrize("layout", ["hwc_uint8", "chw_uint8", "hwc_float01", "chw_float01", "hwc_float255",
                                    "chw_float255"])
def test_every_npy_layout_gives_the_same_tensor(tmp_path, layout):
    image = gradient_image()
    hwc = image.permute(1, 2, 0).numpy()
    arrays = {"hwc_uint8": hwc, "chw_uint8": image.numpy(), "hwc_float01": hwc / 255.0,
              "chw_float01": (image.numpy() / 255.0).astype(np.float32), "hwc_float255": hwc.astype(np.float32),
              "chw_float255": image.numpy().astype(np.float64)}
    path = str(tmp_path / "image.npy")
    np.save(path, arrays[layout])
    loaded = visualize.load_image(path)
    assert loaded.dtype == torch.uint8 and torch.equal(loaded, image)


def test_an_image_file_and_its_npy_conversion_agree(tmp_path):
    image = gradient_image()
    write_png(image, str(tmp_path / "image.png"))
    visualize.save_image_npy(str(tmp_path / "image.png"), str(tmp_path / "image.npy"))
    saved = np.load(tmp_path / "image.npy", allow_pickle=False)
    assert saved.shape == (24, 12, 3) and saved.dtype == np.uint8
    assert torch.equal(visualize.load_image(str(tmp_path / "image.png")), image)
    assert torch.equal(visualize.load_image(str(tmp_path / "image.npy")), image)


@pytest.mark.parametrize("array,message", [
    (np.zeros((24, 12), np.uint8), "shape"),
    (np.zeros((1, 24, 12, 3), np.uint8), "shape"),
    (np.zeros((24, 12, 4), np.uint8), "shape"),
    (np.zeros((24, 12, 3), np.complex64), "dtype"),
    (np.zeros((24, 12, 3), bool), "dtype"),
    (np.zeros((24, 12, 3), np.int64), "dtype"),
    (np.full((24, 12, 3), 300.0), "outside"),
    (np.full((24, 12, 3), np.nan), "NaN"),
    (np.full((24, 12, 3), -1.0), "outside"),
])
def test_bad_image_arrays_are_refused(tmp_path, array, message):
    path = str(tmp_path / "bad.npy")
    np.save(path, array)
    with pytest.raises(UsageError, match=message):
        visualize.load_image(path)


def test_pickled_npy_is_refused_without_unpickling(tmp_path):
    path = str(tmp_path / "objects.npy")
    np.save(path, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    with pytest.raises(UsageError, match="pickled"):
        visualize.load_image(path)
    with pytest.raises(UsageError, match="pickled"):
        visualize.load_feature_map(path)


def test_missing_damaged_and_npz_files_are_refused(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        visualize.load_image(str(tmp_path / "missing.npy"))
    with pytest.raises(UsageError, match="does not exist"):
        visualize.load_image(str(tmp_path / "missing.jpg"))
    (tmp_path / "empty.npy").write_bytes(b"")
    with pytest.raises(UsageError, match="empty.npy"):
        visualize.load_image(str(tmp_path / "empty.npy"))
    (tmp_path / "text.npy").write_text("not an array")
    with pytest.raises(UsageError, match="text.npy"):
        visualize.load_feature_map(str(tmp_path / "text.npy"))
    np.savez(tmp_path / "arrays.npz", a=np.zeros(3))
    os.rename(tmp_path / "arrays.npz", tmp_path / "arrays.npy")
    with pytest.raises(UsageError, match="npz"):
        visualize.load_feature_map(str(tmp_path / "arrays.npy"))


def test_feature_maps_load_in_both_layouts_and_bad_ones_are_refused(tmp_path):
    feature_map = np.random.default_rng(4).random((1, 8, 6, 2)).astype(np.float32)
    np.save(tmp_path / "batch.npy", feature_map)
    np.save(tmp_path / "single.npy", feature_map[0])
    for name in ("batch.npy", "single.npy"):
        np.testing.assert_array_equal(visualize.load_feature_map(str(tmp_path / name)), feature_map[0])
    for name, array, message in [("flat.npy", np.zeros((6, 2)), "shape"),
                                 ("two.npy", np.zeros((2, 8, 6, 2)), "shape"),
                                 ("complex.npy", np.zeros((8, 6, 2), np.complex128), "dtype"),
                                 ("bool.npy", np.zeros((8, 6, 2), bool), "dtype")]:
        np.save(tmp_path / name, array)
        with pytest.raises(UsageError, match=message):
            visualize.load_feature_map(str(tmp_path / name))


def test_layers_are_checked_against_the_model():
    with_dsa = models.create("resnet18", num_classes=3, num_features=8)
    without_dsa = models.create("resnet18", num_classes=3, num_features=8, dsa=False)
    visualize.check_layers(["layer1", "dsa3"], with_dsa, "dsp")
    with pytest.raises(UsageError, match="no DSA blocks.*layer1, layer2, layer3, layer4"):
        visualize.check_layers(["dsa1"], without_dsa, "baseline")
    with pytest.raises(UsageError, match="Unknown layer 'layer5'.*dsa1, dsa2, dsa3"):
        visualize.check_layers(["layer5"], with_dsa, "dsp")


def test_grad_cam_gives_a_normalised_map_and_a_probability():
    torch.manual_seed(0)
    model = models.create("resnet18", num_classes=4, num_features=8).eval()
    batch = torch.randn(1, 3, 96, 32)
    cam, label, probability = visualize.grad_cam(model, batch, "layer4")
    assert cam.shape == (6, 2) and cam.min() >= 0 and cam.max() <= 1
    assert 0 <= label < 4 and 0.25 <= probability <= 1
    assert label == int(model.identity_logits(batch).argmax())
    assert visualize.grad_cam(model, batch, "layer2")[0].shape == (12, 4)
    with pytest.raises(UsageError, match="layer1, layer2, layer3, layer4"):
        visualize.grad_cam(model, batch, "dsa1")


def test_rank_list_skips_same_identity_same_camera():
    distances = np.array([0.1, 0.2, 0.3, 0.4, 0.5])
    pids, camids = np.array([7, 7, 3, 7, 4]), np.array([1, 2, 1, 1, 1])
    assert visualize.rank_list(distances, 7, 1, pids, camids, topk=3).tolist() == [1, 2, 4]


def test_save_rank_lists_writes_one_figure_per_sampled_query(tmp_path):
    paths = []
    for index in range(6):
        path = str(tmp_path / f"{index:04d}_c{index % 2}.png")
        write_png(gradient_image(16, 8), path)
        paths.append(path)
    query = [(paths[i], i, 0) for i in range(3)]
    gallery = [(paths[i], i % 3, 1) for i in range(6)]
    distances = torch.rand(3, 6, generator=torch.Generator().manual_seed(0))
    written = visualize.save_rank_lists(distances, query, gallery, str(tmp_path / "visrank"), topk=4,
                                        num_queries=2)
    assert len(written) == 2 and sorted(os.listdir(tmp_path / "visrank")) == sorted(map(os.path.basename, written))
    again = visualize.save_rank_lists(distances.numpy(), query, gallery, str(tmp_path / "again"), topk=4,
                                      num_queries=2)
    assert list(map(os.path.basename, again)) == list(map(os.path.basename, written))
    everything = visualize.save_rank_lists(distances, query, gallery, str(tmp_path / "all"), topk=10)
    assert len(everything) == 3
    with pytest.raises(UsageError, match="--visrank"):
        visualize.save_rank_lists(distances, query, gallery, str(tmp_path / "none"), topk=0)


def test_the_correlation_figure_is_titled_with_the_avg_corr_line(monkeypatch):
    figures = []
    monkeypatch.setattr(visualize, "_save", lambda figure, path, dpi: figures.append(figure))
    same = visualize.spatial_correlation(np.broadcast_to(np.arange(6.0)[:, None, None], (6, 2, 3)))
    mixed = visualize.spatial_correlation(np.random.default_rng(5).normal(size=(16, 3, 2)))
    assert visualize.correlation_title(same) == "Avg.Corr : 1.000"
    assert visualize.correlation_title(mixed) == f"Avg.Corr : {np.mean(mixed):.3f}"
    visualize.plot_correlation(same, "unused.png")
    image = gradient_image(12, 6).permute(1, 2, 0).numpy()
    visualize.plot_comparison(image, [("baseline", np.ones((6, 3, 2)), same), ("DSP", np.ones((6, 3, 2)), mixed)],
                              "unused.png", "title")
    titles = [[axis.get_title() for axis in figure.findobj(plt.Axes)] for figure in figures]
    for figure in figures:
        plt.close(figure)
    assert "Avg.Corr : 1.000" in titles[0]
    assert [title for title in titles[1] if title.startswith("Avg.Corr")] == [
        "Avg.Corr : 1.000", visualize.correlation_title(mixed)]


def test_the_untrained_baseline_is_the_same_on_every_call_and_leaves_the_global_seed_alone(monkeypatch, tmp_path):
    monkeypatch.setattr(models, "imagenet_weights_path", lambda arch: str(tmp_path / "absent.pth"))
    torch.manual_seed(123)
    first, pretrained = visualize.baseline_model("resnet18")
    after = torch.rand(3)
    second, _ = visualize.baseline_model("resnet18")
    assert not pretrained
    torch.testing.assert_close(first.state_dict(), second.state_dict())
    torch.manual_seed(123)
    assert torch.equal(after, torch.rand(3))
