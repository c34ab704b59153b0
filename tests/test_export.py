"""reid.export: the ONNX file run by onnxruntime and the TorchScript file run by torch.jit.load give PyTorch's
features (max abs difference <= 1e-4) on real-looking images, for any batch size; --out replaces only an earlier
export of the same format, never the checkpoint or another file."""
import hashlib
import os
import pathlib
import shutil
import subprocess
import sys
import warnings

import onnx
import onnxruntime
import pytest
import torch

from reid import checkpoint, data, evaluator, export, models
from reid.images import read_image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def strong_gates(trained, tmp_path_factory):
    """The trained checkpoint with its DSA parameters drawn at random, so every gate is far from 1 and a
    wrong formula in the exported graph would show."""
    saved = checkpoint.read(trained)
    generator = torch.Generator().manual_seed(3)
    for key, value in saved.model.items():
        if key.startswith("dsa.") and key.rsplit(".", 1)[1] in ("gamma_c", "beta_c", "gamma_s", "beta_s"):
            saved.model[key] = torch.randn(value.shape, generator=generator)
    path = str(tmp_path_factory.mktemp("gates") / "strong_gates.pth.tar")
    checkpoint.write(saved, path)
    return path


@pytest.fixture(scope="module")
def photos(market_items, trained_input_size, tiny_synthetic):
    """Eight gallery JPEGs resized to the input size as the evaluator resizes them: a uint8 (8, 3, H, W) batch."""
    resize = data.build_transform(*trained_input_size, train=False)
    items = market_items(os.path.join(tiny_synthetic, "bounding_box_test"))[::3][:8]
    return torch.stack([resize(read_image(path)) for path, _, _ in items])


def file_hashes(folder):
    """{path: SHA-256 of its bytes, or where a symbolic link points} of every file under ``folder``."""
    found = {}
    for directory, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(directory, name)
            found[path] = (f"link to {os.readlink(path)}" if os.path.islink(path)
                           else hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest())
    return found


def pytorch_features(checkpoint_path, images):
    model, _ = models.load_trained_model(checkpoint_path)
    return evaluator.embed_batch(model, images, torch.device("cpu"))


def assert_close_to_pytorch(path, export_format, checkpoint_path, photos):
    for batch in (photos[:1], photos):
        expected = pytorch_features(checkpoint_path, batch)
        produced = export.run_exported(path, export_format, batch)
        assert produced.shape == expected.shape and produced.dtype == torch.float32
        assert (produced - expected).abs().max() <= TOLERANCE


@pytest.mark.parametrize("which", ["trained", "strong_gates"])
def test_onnx_runs_in_onnxruntime_with_pytorchs_features(trained_input_size, which, request, photos, tmp_path, capsys):
    checkpoint_path = request.getfixturevalue(which)
    out = str(tmp_path / "deploy" / "dsp.onnx")
    assert export.main([checkpoint_path, "--format", "onnx", "--out", out]) == 0
    assert f"input 'images' uint8 (N, 3, {trained_input_size[0]}, {trained_input_size[1]})" in capsys.readouterr().out
    assert sorted(os.listdir(tmp_path / "deploy")) == ["dsp.onnx"], "the weights are inside the one file"
    assert_close_to_pytorch(out, "onnx", checkpoint_path, photos)


def test_the_onnx_graph_states_the_contract(trained_input_size, trained, tmp_path):
    out = str(tmp_path / "dsp.onnx")
    export.export(trained, out, "onnx")
    graph = onnx.load(out).graph
    (given,), (returned,) = graph.input, graph.output
    assert given.name == "images" and given.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    dims = given.type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, *trained_input_size]
    assert returned.name == "features" and returned.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    session = onnxruntime.InferenceSession(out, providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    assert export.exported_format(out) == "onnx"
    export.export(trained, out, "onnx")
    assert export.exported_format(out) == "onnx" and os.listdir(tmp_path) == ["dsp.onnx"], "its own export replaced"


@pytest.mark.parametrize("which", ["trained", "strong_gates"])
def test_torchscript_loads_with_torch_jit_and_gives_pytorchs_features(which, request, photos, tmp_path):
    checkpoint_path = request.getfixturevalue(which)
    out = str(tmp_path / "dsp.pt")
    assert export.main([checkpoint_path, "--format", "torchscript", "--out", out]) == 0
    assert_close_to_pytorch(out, "torchscript", checkpoint_path, photos)


@pytest.mark.filterwarnings("ignore:.*torch.jit.trace.*is deprecated:FutureWarning")
def test_the_traced_dsa_block_is_the_fused_one(strong_gates):
    model, _ = models.load_trained_model(strong_gates)
    block = model.dsa[1]
    x = torch.randn(2, block.channels, 8, 4, generator=torch.Generator().manual_seed(0))
    assert (block.gate(x) - 1).abs().max() > 0.5, "the gates must matter for this comparison"
    traced = torch.jit.trace(block, x)
    torch.testing.assert_close(traced(x), block(x), rtol=1e-5, atol=1e-5)
    assert "PythonOp" not in str(traced.graph)


def test_bad_input_exits_2_with_a_message(trained, tmp_path, capsys):
    assert export.main([str(tmp_path / "absent.pth.tar"), "--format", "onnx", "--out", str(tmp_path / "x")]) == 2
    assert "absent.pth.tar does not exist" in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert export.main([trained, "--format", "torchscript", "--out", str(blocker / "dsp.pt")]) == 2
    assert "--out" in capsys.readouterr().err


@pytest.mark.parametrize("export_format", ["onnx", "torchscript"])
def test_out_is_never_the_checkpoint_nor_a_file_the_exporter_did_not_write(trained, export_format, tmp_path, capsys):
    """--out names a new file or an earlier export in the same format (its marker says so): never the checkpoint,
    also through a symbolic or hard link, nor another model or file."""
    checkpoint_path = tmp_path / "model_best.pth.tar"
    shutil.copy(trained, checkpoint_path)
    (tmp_path / "symbolic.onnx").symlink_to(checkpoint_path)
    os.link(checkpoint_path, tmp_path / "hard.pt")
    (tmp_path / "notes.txt").write_text("not a model")
    identity = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["images"], ["features"])], "identity",
        [onnx.helper.make_tensor_value_info("images", onnx.TensorProto.UINT8, ["N", 3, 8, 4])],
        [onnx.helper.make_tensor_value_info("features", onnx.TensorProto.UINT8, ["N", 3, 8, 4])])
    onnx.save(onnx.helper.make_model(identity), tmp_path / "other.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(torch.nn.Identity()), tmp_path / "other.pt")
    (tmp_path / "folder").mkdir()
    before = file_hashes(tmp_path)
    suffix = ".onnx" if export_format == "onnx" else ".pt"
    checkpoint_itself = "is the checkpoint being exported"
    foreign = "exists and is not a file this exporter wrote; an export replaces no file but its own earlier export"
    cases = {"model_best.pth.tar": checkpoint_itself, "symbolic.onnx": checkpoint_itself, "hard.pt": checkpoint_itself,
             "notes.txt": foreign, "other.onnx": foreign, "other.pt": foreign, "folder": "is a folder; name the file"}
    for name, message in cases.items():
        assert export.main([str(checkpoint_path), "--format", export_format, "--out", str(tmp_path / name)]) == 2
        error = capsys.readouterr().err
        assert message in error and "Traceback" not in error, name
        assert f"such as {'' if name != 'folder' else str(tmp_path / name) + os.sep}dsp{suffix}." in error, name
    assert file_hashes(tmp_path) == before


def test_an_export_replaces_its_own_earlier_export_of_that_format_only(trained, tmp_path, capsys):
    out = tmp_path / "dsp.pt"
    assert export.main([trained, "--format", "torchscript", "--out", str(out)]) == 0
    assert export.exported_format(str(out)) == "torchscript"
    (tmp_path / "current.pt").symlink_to(out)
    assert export.main([trained, "--format", "torchscript", "--out", str(tmp_path / "current.pt")]) == 0
    assert os.readlink(tmp_path / "current.pt") == str(out), "the file the link points to is replaced, not the link"
    assert export.exported_format(str(out)) == "torchscript"
    capsys.readouterr()
    before = file_hashes(tmp_path)
    assert export.main([trained, "--format", "onnx", "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert (f"--out {out} exists and is an export in TorchScript format; an export replaces no file but its own "
            f"earlier export in ONNX format. Choose another --out, a new file such as dsp.onnx.") in error
    assert file_hashes(tmp_path) == before
    assert sorted(os.listdir(tmp_path)) == ["current.pt", "dsp.pt"], "no temporary file is left behind"


def test_python_dash_m_runs_the_exporter(tmp_path):
    result = subprocess.run([sys.executable, "-m", "reid.export", str(tmp_path / "absent.pth.tar"), "--format",
                             "onnx", "--out", str(tmp_path / "dsp.onnx")], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "does not exist" in result.stderr
