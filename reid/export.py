"""Export a trained checkpoint for deployment: ONNX (for onnxruntime) or TorchScript (``torch.jit.load``).

    python -m reid.export logs/demo/model_best.pth.tar --format onnx --out model.onnx

The exported model's contract: input ``images``, a uint8 (N, 3, H, W) RGB batch at the checkpoint's input
size (H, W), N free; output ``features``, the (N, D) float32 retrieval features, compared by Euclidean
distance. The ImageNet normalisation is part of the graph, so callers only resize and stack.
"""
import argparse
import inspect
import os
import sys
import warnings

import torch
from torch import nn

from . import data, evaluator, models
from .errors import UsageError

FORMATS = ("onnx", "torchscript")
INPUT_NAME, OUTPUT_NAME = "images", "features"
OPSET = 18


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

    Returns ``(input_size, feature_dim, max_difference)``: the latter the largest absolute difference
    between the written model, run by onnxruntime or ``torch.jit.load``, and PyTorch on an example batch.
    """
    if export_format not in FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)}, got {export_format!r}.")
    model, saved = models.load_trained_model(checkpoint_path)
    wrapped = UInt8Model(model).eval()
    height, width = saved.input_size
    example = example_batch(height, width)
    _make_folder_of(out)
    if export_format == "onnx":
        _write_onnx(wrapped, example, out)
    else:
        _write_torchscript(wrapped, example, out)
    check = example_batch(height, width, size=3, seed=1)
    expected = evaluator.embed_batch(model, check, torch.device("cpu"))
    produced = run_exported(out, export_format, check)
    return (height, width), expected.shape[1], float((produced - expected).abs().max())


def _write_onnx(wrapped, example, out):
    """torch.export-based ONNX with a dynamic batch axis; the weights inside the one file."""
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
    try:
        program.save(out, external_data=False)
    except OSError as error:
        raise UsageError(f"Cannot write {out} (--out): {error.strerror or error}.") from None


def _write_torchscript(wrapped, example, out):
    """``torch.jit.trace`` (the DSA blocks trace their plain formulas); the batch size stays free because
    nothing in the model branches on it."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit")
        traced = torch.jit.trace(wrapped, example, check_trace=False)
        try:
            torch.jit.save(traced, out)
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
