"""reid.FeatureExtractor: every input kind, and the same features as the evaluator on the same images."""
import json
import os
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
              "uint8 tensor": tensor, "batch tensor": tensor[None], "pathlib path": [type(trained)(path)]}
    for name, given in inputs.items():
        torch.testing.assert_close(extractor(given), reference, rtol=0, atol=1e-5, msg=name)
    float_tensor = extractor(tensor.float() / 255)
    assert (float_tensor - reference).abs().max() < 0.05, "a float tensor is resized in float, not in uint8"
    mixed = extractor([path, tensor.float() / 255, picture])
    assert mixed.shape == (3, reference.shape[1])
    torch.testing.assert_close(mixed[2], reference[0], rtol=0, atol=1e-5)


def test_the_input_size_comes_from_the_checkpoint(trained_input_size, trained):
    extractor = FeatureExtractor(trained, device="cpu")
    assert extractor.input_size == trained_input_size
    small = torch.full((3, 40, 20), 128, dtype=torch.uint8)
    large = torch.full((3, 400, 200), 128, dtype=torch.uint8)
    torch.testing.assert_close(extractor(small), extractor(large), rtol=0, atol=1e-5)


def test_bad_input_is_a_usage_error(trained, tmp_path):
    extractor = FeatureExtractor(trained, device="cpu")
    cases = {str(tmp_path / "absent.jpg"): "does not exist",
             "bad shape": (torch.zeros(4, 8, 8, dtype=torch.uint8), "3 x H x W"),
             "out of range": (torch.full((3, 8, 8), 2.0), r"outside \[0, 1\]"),
             "int64": (torch.zeros(3, 8, 8, dtype=torch.int64), "uint8"),
             "not an image": (3.5, "cannot read a float")}
    for key, case in cases.items():
        given, message = (key, case) if isinstance(case, str) else case
        with pytest.raises(UsageError, match=message):
            extractor(given)
    text_file = tmp_path / "notes.jpg"
    text_file.write_text("not a picture")
    with pytest.raises(UsageError, match="notes.jpg"):
        extractor(str(text_file))
    with pytest.raises(UsageError, match="does not exist"):
        FeatureExtractor(str(tmp_path / "missing.pth.tar"))
    with pytest.raises(UsageError, match="Unknown device 'tpu'"):
        FeatureExtractor(trained, device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="no CUDA GPU"):
            FeatureExtractor(trained, device="cuda")


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
