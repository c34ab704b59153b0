"""``FeatureExtractor``: the retrieval features of a trained checkpoint for any images, outside training.

    from reid import FeatureExtractor
    extractor = FeatureExtractor("logs/demo/model_best.pth.tar")
    features = extractor(["a.jpg", "b.png"])      # (2, D) float32 on the CPU

Images are resized to the checkpoint's input size as the evaluator resizes them and embedded through
``evaluator.embed_batch``, so the features are those ``main.py --evaluate`` computes for the same files.
"""
import os

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2

from . import data, distributed, evaluator, models
from .errors import UsageError
from .images import image_from_array, read_image


class FeatureExtractor:
    """Embed images with the model of a training checkpoint (``model_best.pth.tar`` or ``checkpoint.pth.tar``).

    ``extractor(images)`` takes one image or a list of them: file paths, PIL images, H x W x 3 arrays (uint8,
    or float in [0, 1] or [0, 255], as ``reid.images.image_from_array`` reads them), 3 x H x W tensors
    (uint8, or float in [0, 1] as torchvision uses them) or N x 3 x H x W tensors, and returns an (N, D)
    float32 CPU tensor. With ``flip`` each feature is averaged with that of the mirrored image
    (``--flip-test``). ``device``: a torch device or its name; default CUDA when available, else the CPU.
    """

    def __init__(self, checkpoint, device=None, batch_size=64, flip=False):
        if batch_size < 1:
            raise UsageError(f"FeatureExtractor: batch_size must be at least 1, got {batch_size}.")
        self.device = _device(device)
        model, saved = models.load_trained_model(os.fspath(checkpoint))
        self.model = model.to(self.device)
        self.checkpoint = saved
        self.input_size = tuple(saved.input_size)
        self.batch_size = batch_size
        self.flip = flip
        self._resize = data.build_transform(*self.input_size, train=False)

    def __call__(self, images):
        pictures = [self._resize(_image_tensor(image)) for image in _as_list(images)]
        if not pictures:
            return torch.empty(0, 0)
        chunks = [self._embed(pictures[start:start + self.batch_size])
                  for start in range(0, len(pictures), self.batch_size)]
        return torch.cat(chunks).cpu()

    def _embed(self, pictures):
        """One batch of resized (3, H, W) tensors; uint8 batches stay uint8, exactly as the evaluator's."""
        if any(picture.dtype != torch.uint8 for picture in pictures):
            pictures = [v2.functional.to_dtype(picture, torch.float32, scale=True) for picture in pictures]
        return evaluator.embed_batch(self.model, torch.stack(pictures), self.device, flip=self.flip)


def _device(name):
    """``name`` as a torch device (default: CUDA when available, else the CPU); a UsageError when unusable."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return distributed.parse_device(name, "device")


def _as_list(images):
    """One image or a sequence of them -> a list; an N x 3 x H x W tensor or N x H x W x 3 array -> its rows."""
    if isinstance(images, (list, tuple)):
        return list(images)
    if isinstance(images, (torch.Tensor, np.ndarray)) and images.ndim == 4:
        return list(images)
    return [images]


def _image_tensor(image):
    """A path, PIL image, H x W x 3 array or 3 x H x W tensor -> a (3, H, W) uint8 tensor, or float32 in
    [0, 1] for a float tensor."""
    if isinstance(image, (str, os.PathLike)):
        path = os.fspath(image)
        if not os.path.isfile(path):
            raise UsageError(f"The image {path} does not exist (FeatureExtractor expects image files, PIL "
                             f"images, arrays or tensors).")
        return read_image(path)
    if isinstance(image, Image.Image):
        return image_from_array(np.asarray(image.convert("RGB")), "a PIL image")
    if isinstance(image, np.ndarray):
        return image_from_array(image, "an array")
    if isinstance(image, torch.Tensor):
        return _from_tensor(image)
    raise UsageError(f"FeatureExtractor cannot read a {type(image).__name__}; pass file paths, PIL images, "
                     f"H x W x 3 arrays or 3 x H x W tensors.")


def _from_tensor(image):
    if image.ndim != 3 or image.shape[0] != 3 or 0 in image.shape:
        raise UsageError(f"FeatureExtractor got a tensor of shape {tuple(image.shape)}; expected 3 x H x W "
                         f"(or N x 3 x H x W), RGB, as torchvision reads images.")
    image = image.detach().cpu()
    if image.dtype == torch.uint8:
        return image
    if not image.is_floating_point():
        raise UsageError(f"FeatureExtractor got a {image.dtype} tensor; expected uint8, or float in [0, 1].")
    if not torch.isfinite(image).all() or image.min() < 0 or image.max() > 1:
        raise UsageError("FeatureExtractor got a float tensor with values outside [0, 1] (or NaN/inf); float "
                         "tensors are read as torchvision's to_tensor gives them, in [0, 1].")
    return image.float()
