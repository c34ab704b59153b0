"""Feature maps, correlation, Grad-CAM and the baseline model of the feature tools."""
import os

import numpy as np
import pytest
import torch

from reid import images, maps, models
from reid.errors import UsageError

torch.set_num_threads(2)


def test_correlation_matches_numpy_and_sees_opposite_positions():
    feature_map = np.random.default_rng(1).normal(size=(8, 3, 2))
    feature_map[:, 1, 1] = -feature_map[:, 0, 0]
    correlation = maps.spatial_correlation(feature_map)
    np.testing.assert_allclose(correlation, np.corrcoef(feature_map.reshape(8, -1).T), atol=1e-12)
    assert correlation[0, 3] == pytest.approx(-1.0)


def test_a_constant_position_counts_as_uncorrelated_not_nan():
    feature_map = np.random.default_rng(2).normal(size=(16, 2, 2))
    feature_map[:, 0, 1] = 0.3
    correlation = maps.spatial_correlation(feature_map)
    assert not np.isnan(correlation).any()
    assert correlation[1, 1] == 1.0
    assert np.all(np.delete(correlation[1], 1) == 0) and np.all(np.delete(correlation[:, 1], 1) == 0)


def test_activation_map_is_normalised_and_a_flat_map_is_zero():
    feature_map = np.random.default_rng(3).normal(size=(4, 6, 3))
    heatmap = maps.activation_map(feature_map)
    assert heatmap.shape == (6, 3) and heatmap.min() == 0 and heatmap.max() == pytest.approx(1)
    assert np.all(maps.activation_map(np.ones((4, 6, 3))) == 0)


def test_pickled_npy_is_refused_without_unpickling(tmp_path):
    path = str(tmp_path / "objects.npy")
    np.save(path, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    with pytest.raises(UsageError, match="pickled"):
        images.load_image(path)
    with pytest.raises(UsageError, match="pickled"):
        maps.load_feature_map(path)


def test_missing_damaged_and_npz_files_are_refused(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        images.load_image(str(tmp_path / "missing.npy"))
    with pytest.raises(UsageError, match="does not exist"):
        images.load_image(str(tmp_path / "missing.jpg"))
    (tmp_path / "empty.npy").write_bytes(b"")
    with pytest.raises(UsageError, match="empty.npy"):
        images.load_image(str(tmp_path / "empty.npy"))
    (tmp_path / "text.npy").write_text("not an array")
    with pytest.raises(UsageError, match="text.npy"):
        maps.load_feature_map(str(tmp_path / "text.npy"))
    np.savez(tmp_path / "arrays.npz", a=np.zeros(3))
    os.rename(tmp_path / "arrays.npz", tmp_path / "arrays.npy")
    with pytest.raises(UsageError, match="npz"):
        maps.load_feature_map(str(tmp_path / "arrays.npy"))


def test_feature_maps_load_in_both_layouts_and_bad_ones_are_refused(tmp_path):
    feature_map = np.random.default_rng(4).random((1, 8, 6, 2)).astype(np.float32)
    np.save(tmp_path / "batch.npy", feature_map)
    np.save(tmp_path / "single.npy", feature_map[0])
    for name in ("batch.npy", "single.npy"):
        np.testing.assert_array_equal(maps.load_feature_map(str(tmp_path / name)), feature_map[0])
    for name, array, message in [("flat.npy", np.zeros((6, 2)), "shape"),
                                 ("two.npy", np.zeros((2, 8, 6, 2)), "shape"),
                                 ("complex.npy", np.zeros((8, 6, 2), np.complex128), "dtype"),
                                 ("bool.npy", np.zeros((8, 6, 2), bool), "dtype")]:
        np.save(tmp_path / name, array)
        with pytest.raises(UsageError, match=message):
            maps.load_feature_map(str(tmp_path / name))


def test_layers_are_checked_against_the_model():
    with_dsa = models.create("resnet18", num_classes=3, num_features=8)
    without_dsa = models.create("resnet18", num_classes=3, num_features=8, dsa=False)
    maps.check_layers(["layer1", "dsa3"], with_dsa, "dsp")
    with pytest.raises(UsageError, match="no DSA blocks.*layer1, layer2, layer3, layer4"):
        maps.check_layers(["dsa1"], without_dsa, "baseline")
    with pytest.raises(UsageError, match="Unknown layer 'layer5'.*dsa1, dsa2, dsa3"):
        maps.check_layers(["layer5"], with_dsa, "dsp")


def test_grad_cam_gives_a_normalised_map_and_a_probability():
    torch.manual_seed(0)
    model = models.create("resnet18", num_classes=4, num_features=8).eval()
    batch = torch.randn(1, 3, 96, 32)
    cam, label, probability = maps.grad_cam(model, batch, "layer4")
    assert cam.shape == (6, 2) and cam.min() >= 0 and cam.max() <= 1
    assert 0 <= label < 4 and 0.25 <= probability <= 1
    assert label == int(model.identity_logits(batch).argmax())
    assert maps.grad_cam(model, batch, "layer2")[0].shape == (12, 4)
    with pytest.raises(UsageError, match="layer1, layer2, layer3, layer4"):
        maps.grad_cam(model, batch, "dsa1")


def test_the_untrained_baseline_is_the_same_on_every_call_and_leaves_the_global_seed_alone(monkeypatch, tmp_path):
    monkeypatch.setattr(models, "imagenet_weights_path", lambda arch: str(tmp_path / "absent.pth"))
    torch.manual_seed(123)
    first, pretrained = maps.baseline_model("resnet18")
    after = torch.rand(3)
    second, _ = maps.baseline_model("resnet18")
    assert not pretrained
    torch.testing.assert_close(first.state_dict(), second.state_dict())
    torch.manual_seed(123)
    assert torch.equal(after, torch.rand(3))


def test_a_correlation_too_large_for_memory_is_refused_before_it_is_computed(monkeypatch):
    """65,536 positions: a 65,536 x 65,536 matrix of float64 is 32 GiB before it is drawn."""
    monkeypatch.setattr(images, "available_memory", lambda: 16 * 2**30)
    feature_map = np.zeros((4, 256, 256), np.float32)
    with pytest.raises(UsageError) as refused:
        maps.check_correlation_memory(feature_map.shape, "layer1", "lower --height/--width")
    assert str(refused.value) == ("The correlation figure of layer1 (256x256 = 65,536 positions, a 65,536 x 65,536 "
                                  "matrix) needs about 384.0 GiB of memory, but only 16.0 GiB is available; lower "
                                  "--height/--width.")
    with pytest.raises(UsageError, match="^The correlation matrix of a map of 65,536 positions needs about 32.0 GiB"):
        maps.spatial_correlation(feature_map)
    maps.check_correlation_memory((4, 64, 64), "layer3", "unused")
    assert maps.spatial_correlation(np.random.default_rng(0).normal(size=(4, 64, 64))).shape == (4096, 4096)


def test_an_input_size_too_large_for_memory_is_refused_before_the_forward_pass(monkeypatch):
    monkeypatch.setattr(images, "available_memory", lambda: 16 * 2**30)
    with pytest.raises(UsageError, match=r"^The forward pass at the input size 100000x100000 needs about 9.3 TiB of "
                                         r"memory, but only 16.0 GiB is available; lower --height/--width.$"):
        maps.check_input_memory(100000, 100000)
    with pytest.raises(UsageError, match=r"^Grad-CAM at the input size 2048x2048 needs about 24.0 GiB"):
        maps.check_input_memory(2048, 2048, grad_cam=True)
    maps.check_input_memory(2048, 2048)
    maps.check_input_memory(384, 128, grad_cam=True, count=2)


def test_the_memory_checks_pass_when_the_system_does_not_say(monkeypatch):
    monkeypatch.setattr(images, "available_memory", lambda: None)
    maps.check_input_memory(10**6, 10**6)
