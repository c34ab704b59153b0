"""reid.FeatureExtractor: every input kind, and the same features as the evaluator on the same images."""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from reid import FeatureExtractor, evaluator, models
from reid.config import EvalConfig
from reid.errors import UsageError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def query_items(market_items, tiny_synthetic):
    return market_items(os.path.join(tiny_synthetic, "query"))


@pytest.mark.parametrize("flip", [False, True])
def test_features_equal_the_evaluators_on_the_same_images(trained, query_items, flip):
    model, saved = models.load_trained_model(trained)
    config = EvalConfig(batch_size=7, workers=0, height=saved.input_size[0], width=saved.input_size[1],
                        flip_test=flip)
    expected = evaluator.extract_features(model, query_items, config, torch.device("cpu"), show_progress=False)
    extractor = FeatureExtractor(trained, device="cpu", batch_size=5, flip=flip)
    features = extractor([path for path, _, _ in query_items])
    assert features.dtype == torch.float32 and features.shape == expected.shape
    assert features.shape == (len(query_items), 6 * 512)
    torch.testing.assert_close(features, expected, rtol=0, atol=1e-5)


@pytest.mark.slow
def test_features_equal_those_of_main_py_evaluate(tiny_synthetic, tiny_args, tmp_path, monkeypatch):
    """The features ``main.py --evaluate --flip-test`` ranks, caught on their way to the metrics."""
    import main

    assert main.main(tiny_args(tiny_synthetic, tmp_path / "train", "--epochs", "1", "--combine-trainval")) == 0
    trained_model = str(tmp_path / "train" / "model_best.pth.tar")
    extracted = []
    original = evaluator.extract_features

    def keep(model, items, *args, **kwargs):
        features = original(model, items, *args, **kwargs)
        extracted.append(([path for path, _, _ in items], features))
        return features

    monkeypatch.setattr(evaluator, "extract_features", keep)
    assert main.main(tiny_args(tiny_synthetic, tmp_path / "eval", "--evaluate", "--resume", trained_model,
                               "--flip-test")) == 0
    assert len(extracted) == 2, "query and gallery"
    extractor = FeatureExtractor(trained_model, device="cpu", flip=True)
    for paths, features in extracted:
        torch.testing.assert_close(extractor(paths), features, rtol=0, atol=1e-5)


def test_every_input_kind_gives_the_features_of_the_file(trained, query_items):
    extractor = FeatureExtractor(trained, device="cpu")
    path = query_items[0][0]
    with Image.open(path) as opened:
        picture = opened.convert("RGB")
    array = np.array(picture)
    tensor = torch.from_numpy(array).permute(2, 0, 1).contiguous()
    reference = extractor(path)
    assert reference.shape == (1, 6 * 512)
    inputs = {"PIL": picture, "uint8 array": array, "float array in [0, 1]": array / 255.0,
              "uint8 tensor": tensor, "float tensor in [0, 1]": tensor.float() / 255, "batch tensor": tensor[None],
              "pathlib path": [type(trained)(path)]}
    for name, given in inputs.items():
        torch.testing.assert_close(extractor(given), reference, rtol=0, atol=1e-5, msg=name)
    mixed = extractor([path, tensor.float() / 255, picture])
    assert mixed.shape == (3, reference.shape[1])
    torch.testing.assert_close(mixed, reference.expand(3, -1), rtol=0, atol=1e-5)


def blocks(mode, height=64, width=32, block=8):
    """A picture of flat 8x8 blocks of random colours in PIL ``mode`` (RGB, RGBA, L, P)."""
    colours = np.random.default_rng(7).integers(0, 256, (height // block, width // block, 4))
    picture = Image.fromarray(np.kron(colours, np.ones((block, block, 1))).astype(np.uint8), "RGBA")
    return picture.convert(mode) if mode != "P" else picture.convert("RGB").quantize(16)


def picture_files(folder, write_rgb48_png):
    """{picture: (its PNG file, its pixels as an array holds them)} for the pictures the matrix compares."""
    rng = np.random.default_rng(3)
    files = {}
    for name, mode in (("8-bit RGB", "RGB"), ("gray", "L"), ("RGBA", "RGBA"), ("palette", "P")):
        picture = blocks(mode)
        picture.save(folder / f"{name}.png")
        # An array holds a palette picture as its colours: the palette indices alone are a gray picture.
        files[name] = (folder / f"{name}.png", np.asarray(picture.convert("RGB") if mode == "P" else picture))
    rgb16 = rng.integers(0, 65536, (64, 32, 3), dtype=np.uint16)
    write_rgb48_png(folder / "16-bit RGB.png", rgb16)
    files["16-bit RGB"] = (folder / "16-bit RGB.png", rgb16)
    gray16 = rng.integers(0, 65536, (64, 32), dtype=np.uint16)
    Image.fromarray(gray16).save(folder / "16-bit gray.png")
    files["16-bit gray"] = (folder / "16-bit gray.png", gray16)
    return files


def as_chw(pixels):
    """An H x W or H x W x C array as the C x H x W tensor torchvision reads."""
    return torch.from_numpy(np.array(pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)))


def test_each_input_kind_gives_the_features_of_the_same_picture_read_by_path(trained, tmp_path, write_rgb48_png):
    """The matrix of the documented input kinds (path, PIL image, numpy array, tensor; the 8-bit pictures also
    as floats in [0, 1]) and the pictures real folders hold: 8-bit RGB, 16-bit RGB and gray, gray, RGBA,
    palette. Every cell gives the features of the PNG file read by path."""
    extractor = FeatureExtractor(trained, device="cpu")
    for name, (path, pixels) in picture_files(tmp_path, write_rgb48_png).items():
        reference = extractor(str(path))
        with Image.open(path) as opened:
            kinds = {"path": path, "PIL image as opened": opened, "PIL image loaded": opened.copy(),
                     "numpy array": pixels, "tensor": as_chw(pixels)}
            if pixels.dtype == np.uint8:
                kinds.update({"float array": pixels / 255.0, "float tensor": as_chw(pixels).float() / 255})
            for kind, given in kinds.items():
                torch.testing.assert_close(extractor(given), reference, rtol=0, atol=1e-5, msg=f"{name}, {kind}")
    rgb_path, rgb = picture_files(tmp_path, write_rgb48_png)["8-bit RGB"]
    bmp = tmp_path / "0001_c1s1_000001_00.jpg"
    Image.fromarray(rgb).save(bmp, format="BMP")
    torch.testing.assert_close(extractor(bmp), extractor(rgb_path), rtol=0, atol=1e-5, msg="a BMP named .jpg")


def test_float_images_are_in_0_1_whatever_their_values_and_the_rest_is_refused(trained):
    """One convention, torchvision's: floats are in [0, 1]. A picture of only 0s and 1s is black and white (no
    guess from its maximum); a [0, 255] float picture, or a [0, 1] one with a value slightly above 1, is refused
    with the range found, never rescaled."""
    extractor = FeatureExtractor(trained, device="cpu")
    pixels = np.asarray(blocks("RGB"))
    zeros_and_ones = (pixels > 127).astype(np.float64)
    torch.testing.assert_close(extractor(zeros_and_ones), extractor((zeros_and_ones * 255).astype(np.uint8)),
                               rtol=0, atol=1e-5)
    above_one = pixels / 255.0
    above_one[0, 0, 0], above_one[-1, -1, -1] = 1.0001, 0.0
    refusals = [(pixels.astype(np.float32), f"from {pixels.min()} to {pixels.max()}, outside [0, 1]", "numpy array"),
                (above_one, "from 0 to 1.0001, outside [0, 1]", "numpy array"),
                (torch.from_numpy(above_one).permute(2, 0, 1), "from 0 to 1.0001, outside [0, 1]", "tensor")]
    for given, values, kind in refusals:
        with pytest.raises(UsageError) as refused:
            extractor([pixels, given])
        assert str(refused.value).startswith(f"The image #2 given to FeatureExtractor (a {kind}) has float values "
                                             f"{values}. Float images are read in [0, 1], torchvision's convention")


def test_a_uint16_array_of_8_bit_values_is_refused_not_read_almost_black(trained):
    extractor = FeatureExtractor(trained, device="cpu")
    eight_bit = np.asarray(blocks("RGB")).astype(np.uint16)
    for given, kind in ((eight_bit, "numpy array"), (torch.from_numpy(eight_bit).permute(2, 0, 1), "tensor")):
        with pytest.raises(UsageError, match=re.escape(f"The image #1 given to FeatureExtractor (a {kind}) is a "
                                                       f"uint16 array whose values are all at most 2")):
            extractor(given)


def test_the_input_size_comes_from_the_checkpoint(trained_input_size, trained):
    extractor = FeatureExtractor(trained, device="cpu")
    assert extractor.input_size == trained_input_size
    small = torch.full((3, 40, 20), 128, dtype=torch.uint8)
    large = torch.full((3, 400, 200), 128, dtype=torch.uint8)
    torch.testing.assert_close(extractor(small), extractor(large), rtol=0, atol=1e-5)


def test_bad_input_is_a_usage_error(trained, tmp_path):
    extractor = FeatureExtractor(trained, device="cpu")
    cases = {str(tmp_path / "absent.jpg"): "does not exist",
             str(tmp_path): f"^The image {re.escape(str(tmp_path))} is a directory, not an image file.$",
             "bad shape": (torch.zeros(5, 8, 8, dtype=torch.uint8), "C x H x W with C = 3"),
             "out of range": (torch.full((3, 8, 8), 2.0), r"outside \[0, 1\]"),
             "int64": (torch.zeros(3, 8, 8, dtype=torch.int64), "dtype int64; expected uint8"),
             "not an image": (3.5, "cannot read a float")}
    for key, case in cases.items():
        given, message = (key, case) if isinstance(case, str) else case
        with pytest.raises(UsageError, match=message):
            extractor(given)
    text_file = tmp_path / "notes.jpg"
    text_file.write_text("not a picture")
    with pytest.raises(UsageError, match="notes.jpg: Pillow does not recognise its format"):
        extractor(str(text_file))
    assert text_file.read_text() == "not a picture"
    with pytest.raises(UsageError, match="does not exist"):
        FeatureExtractor(str(tmp_path / "missing.pth.tar"))


@pytest.mark.parametrize("arguments, message", [
    (dict(batch_size=2.5), "batch_size must be a whole number of images, 1 or more, got 2.5 (float)"),
    (dict(batch_size=True), "batch_size must be a whole number of images, 1 or more, got True (bool)"),
    (dict(batch_size="8"), "batch_size must be a whole number of images, 1 or more, got '8' (str)"),
    (dict(batch_size=0), "batch_size must be a whole number of images, 1 or more, got 0 (int)"),
    (dict(flip="no"), "flip must be True or False, got 'no' (str)"),
    (dict(device="tpu"), "Unknown device 'tpu'"),
    (dict(device="meta"), "device meta: this PyTorch cannot compute on meta devices (Cannot copy out of meta "
                          "tensor; no data!)"),
    (dict(device=torch.device("meta")), "device meta: this PyTorch cannot compute on meta devices"),
])
def test_arguments_of_the_wrong_type_or_value_are_usage_errors_naming_them(trained, arguments, message):
    with pytest.raises(UsageError) as refused:
        FeatureExtractor(trained, **arguments)
    assert message in str(refused.value)


def test_a_device_this_pytorch_cannot_compute_on_is_named(trained):
    """mps off a Mac, a CUDA GPU the machine does not have: refused before the model is loaded."""
    if not torch.backends.mps.is_available():
        with pytest.raises(UsageError, match="^device mps: this PyTorch cannot compute on mps devices"):
            FeatureExtractor(trained, device="mps")
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="no CUDA GPU"):
            FeatureExtractor(trained, device="cuda")
    else:
        with pytest.raises(UsageError, match=f"^device cuda:99: this machine has no CUDA GPU 99; its "
                                             f"{torch.cuda.device_count()} GPU"):
            FeatureExtractor(trained, device="cuda:99")
    extractor = FeatureExtractor(trained, device="cpu", batch_size=np.int64(2), flip=np.bool_(False))
    assert extractor.batch_size == 2 and extractor.flip is False


def test_an_image_that_decodes_to_gigabytes_is_refused_with_its_size(trained, tmp_path):
    from test_images import write_black_png

    large = write_black_png(tmp_path / "large.png", 10000, 10000)
    extractor = FeatureExtractor(trained, device="cpu")
    with pytest.warns(Image.DecompressionBombWarning), Image.open(large) as opened:
        for given in (large, opened):
            with pytest.raises(UsageError, match=r"is 10000x10000 pixels \(100,000,000, from its header\), more "
                                                 r"than the 89,478,485 pixels Pillow decodes"):
                extractor(given)


def test_importing_reid_loads_neither_torch_nor_the_model_code():
    code = "import sys, reid; print('torch' in sys.modules, 'reid.inference' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", "False"]


def test_the_speed_benchmark_prints_its_figures(capsys):
    from benchmarks import inference_speed

    inference_speed.main(["-a", "resnet18", "--height", "64", "--width", "32", "-b", "4", "--images", "8",
                          "--rounds", "1", "--index-size", "50", "--queries", "2"])
    result = json.loads(capsys.readouterr().out)
    for key in ("api_images_per_second", "evaluator_images_per_second", "api_over_evaluator", "embed_seconds",
                "rank_seconds", "query_seconds", "index_load_seconds"):
        assert result[key] > 0, key
    assert result["feature_dim"] == 6 * 512 and result["index_size"] == 50
