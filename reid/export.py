"""Export a trained checkpoint for deployment: ONNX (for onnxruntime) or TorchScript (``torch.jit.load``).

    python -m reid.export logs/demo/model_best.pth.tar --format onnx --out model.onnx

The exported model's contract: input ``images``, a uint8 (N, 3, H, W) RGB batch at the checkpoint's input
size (H, W), N free; output ``features``, the (N, D) float32 retrieval features, compared by Euclidean
distance. The ImageNet normalisation is part of the graph, so callers only resize and stack.

Every export carries a marker (an ONNX metadata entry, a TorchScript extra file). ``--out`` may name a new file
or an earlier export of the same format, recognised by that marker, and never the checkpoint or any other file.
"""
import argparse
import inspect
import os
import sys
import warnings
import zipfile

import torch
from torch import nn

from . import data, evaluator, models, run_files
from .errors import UsageError

FORMATS = ("onnx", "torchscript")
INPUT_NAME, OUTPUT_NAME = "images", "features"
OPSET = 18
# The ONNX metadata entry and the TorchScript extra file that mark this tool's exports; the value is the format.
MARKER = "reid.export"
FORMAT_NAMES = {"onnx": "ONNX", "torchscript": "TorchScript"}
SUFFIXES = {"onnx": ".onnx", "torchscript": ".pt"}
ONNX_MAX_BYTES = 2 ** 31  # protobuf's limit: a larger file is not a single-file ONNX model


class UInt8Model(nn.Module):
    """``model`` behind a uint8 input: (N, 3, H, W) uint8 -> ImageNet-normalised float -> retrieval features.

    The mean and standard deviation are buffers, so the graph carries them to whatever device it runs on.
    """

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.register_buffer("mean", 255 * torch.tensor(data.IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", 255 * torch.tensor(data.IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, images):
        return self.model((images.float() - self.mean) / self.std)


def example_batch(height, width, size=2, seed=0):
    """A uint8 (size, 3, height, width) batch of smooth random images: the tracing and checking input."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(size, 3, 8, 4, generator=generator)
    smooth = nn.functional.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
    return (255 * smooth).round().to(torch.uint8)


def export(checkpoint_path, out, export_format):
    """Write the model of ``checkpoint_path`` to ``out`` as ``export_format`` (``onnx`` or ``torchscript``).

    The file is written under a temporary name, checked, and only then renamed over ``out`` (the file a link
    there points to). Returns ``(input_size, feature_dim, max_difference)``: the latter the largest absolute
    difference between the written model, run by onnxruntime or ``torch.jit.load``, and PyTorch on an example
    batch.
    """
    if export_format not in FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)}, got {export_format!r}.")
    check_out(out, checkpoint_path, export_format)
    model, saved = models.load_trained_model(checkpoint_path)
    wrapped = UInt8Model(model).eval()
    height, width = saved.input_size
    example = example_batch(height, width)
    check = example_batch(height, width, size=3, seed=1)
    target = os.path.realpath(out)
    _make_folder_of(target)
    try:
        with run_files.replacing_path(target) as temporary:
            if export_format == "onnx":
                _write_onnx(wrapped, example, temporary, out)
            else:
                _write_torchscript(wrapped, example, temporary, out)
            produced = run_exported(temporary, export_format, check)
    except OSError as error:
        raise UsageError(f"Cannot write {out} (--out): {error.strerror or error}.") from None
    expected = evaluator.embed_batch(model, check, torch.device("cpu"))
    return (height, width), expected.shape[1], float((produced - expected).abs().max())


def check_out(out, checkpoint_path, export_format):
    """Refuse an --out that is the checkpoint, also through a symbolic or hard link, or an existing file other
    than an earlier export of this tool in ``export_format`` (see ``exported_format``)."""
    example = f"dsp{SUFFIXES[export_format]}"
    if os.path.isdir(out):
        raise UsageError(f"--out {out} is a folder; name the file to write, such as {os.path.join(out, example)}.")
    if not os.path.exists(out):
        return
    if os.path.exists(checkpoint_path) and os.path.samefile(out, checkpoint_path):
        raise UsageError(f"--out {out} is the checkpoint being exported ({checkpoint_path}), and an export never "
                         f"replaces its input. Choose another --out, a new file such as {example}.")
    found = exported_format(out)
    if found != export_format:
        what = f"an export in {FORMAT_NAMES[found]} format" if found else "not a file this exporter wrote"
        raise UsageError(f"--out {out} exists and is {what}; an export replaces no file but its own earlier export "
                         f"in {FORMAT_NAMES[export_format]} format. Choose another --out, a new file such as "
                         f"{example}.")


def exported_format(path):
    """The format of the export of this tool at ``path``, as its marker says; None for any other file."""
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                markers = [name for name in archive.namelist() if name.endswith(f"/extra/{MARKER}")]
                return "torchscript" if markers and archive.read(markers[0]) == b"torchscript" else None
        except (OSError, EOFError, RuntimeError, NotImplementedError, zipfile.BadZipFile):
            return None
    import onnx
    from google.protobuf.message import DecodeError
    model = onnx.ModelProto()
    try:
        if os.path.getsize(path) >= ONNX_MAX_BYTES:
            return None
        with open(path, "rb") as handle:
            model.ParseFromString(handle.read())
    except (OSError, DecodeError):
        return None
    return "onnx" if any(entry.key == MARKER and entry.value == "onnx" for entry in model.metadata_props) else None


def _write_onnx(wrapped, example, path, out):
    """torch.export-based ONNX with a dynamic batch axis and the marker; the weights inside the one file."""
    if "dynamo" not in inspect.signature(torch.onnx.export).parameters:
        raise UsageError(f"ONNX export needs PyTorch 2.5 or newer (this is {torch.__version__}); upgrade it, or "
                         f"export with --format torchscript.")
    batch = torch.export.Dim("batch", min=1)
    try:
        program = torch.onnx.export(wrapped, (example,), dynamo=True, input_names=[INPUT_NAME],
                                    output_names=[OUTPUT_NAME], dynamic_shapes=({0: batch},), opset_version=OPSET,
                                    verbose=False)
    except ImportError as error:
        raise UsageError(f"ONNX export needs the packages onnx and onnxscript ({error}); install them with "
                         f"pip install -r requirements.txt.") from None
    program.model.metadata_props[MARKER] = "onnx"
    try:
        program.save(path, external_data=False)
    except OSError as error:
        raise UsageError(f"Cannot write {out} (--out): {error.strerror or error}.") from None


def _write_torchscript(wrapped, example, path, out):
    """``torch.jit.trace`` (the DSA blocks trace their plain formulas), with the marker as an extra file; the
    batch size stays free because nothing in the model branches on it."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit")
        traced = torch.jit.trace(wrapped, example, check_trace=False)
        try:
            torch.jit.save(traced, path, _extra_files={MARKER: "torchscript"})
        except (OSError, RuntimeError) as error:
            raise UsageError(f"Cannot write {out} (--out): {error}.") from None


def run_exported(path, export_format, images):
    """Run an exported file on a uint8 (N, 3, H, W) batch: its (N, D) float32 features as a CPU tensor."""
    if export_format == "onnx":
        import onnxruntime
        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        return torch.from_numpy(session.run([OUTPUT_NAME], {INPUT_NAME: images.numpy()})[0])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit")
        loaded = torch.jit.load(path, map_location="cpu")
    with torch.inference_mode():
        return loaded(images).float()


def _make_folder_of(path):
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as error:
        raise UsageError(f"Cannot create the folder {folder} for --out: {error.strerror or error}.") from None


def get_args_parser():
    parser = argparse.ArgumentParser(
        prog="python -m reid.export",
        description="Export a trained checkpoint to ONNX or TorchScript. Input: uint8 (N, 3, H, W) RGB at the "
                    "trained size; output: (N, D) float32 retrieval features (Euclidean distance).")
    parser.add_argument("checkpoint", help="model_best.pth.tar or checkpoint.pth.tar written by main.py")
    parser.add_argument("--format", choices=FORMATS, required=True, help="onnx (onnxruntime) or torchscript")
    parser.add_argument("--out", required=True, metavar="FILE", help="the file to write (e.g. model.onnx)")
    return parser


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    try:
        (height, width), feature_dim, difference = export(args.checkpoint, args.out, args.format)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"Wrote {args.out} ({args.format}): input '{INPUT_NAME}' uint8 (N, 3, {height}, {width}) RGB, "
          f"output '{OUTPUT_NAME}' float32 (N, {feature_dim}); max |difference| from PyTorch on 3 example "
          f"images: {difference:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
