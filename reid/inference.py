"""``FeatureExtractor``: the retrieval features of a trained checkpoint for any images, outside training.

    from reid import FeatureExtractor
    extractor = FeatureExtractor("logs/demo/model_best.pth.tar")
    features = extractor(["a.jpg", "b.png"])      # (2, D) float32 on the CPU

Images are resized to the checkpoint's input size as the evaluator resizes them and embedded through
``evaluator.embed_batch``, so the features are those ``main.py --evaluate`` computes for the same files.
"""
import numbers
import os

import numpy as np
import torch
from PIL import Image

from . import data, distributed, evaluator, models
from .errors import UsageError
from .images import image_from_array, image_from_pil, read_image


class FeatureExtractor:
    """Embed images with the model of a training checkpoint (``model_best.pth.tar`` or ``checkpoint.pth.tar``).

    ``extractor(images)`` takes one image or a list of them and returns an (N, D) float32 CPU tensor. Every
    kind becomes the same 8-bit RGB picture before it is resized (``reid.images``), so a picture gives the same
    features whichever kind holds it:

    - file paths, in any format Pillow reads;
    - PIL images (EXIF orientation applied, as for files);
    - numpy arrays, H x W x C or C x H x W (C = 1 to 4) or H x W, and ``torch`` tensors, C x H x W: uint8;
      uint16, a 16-bit image over 0..65535 like a 16-bit PNG; float in [0, 1] (torchvision's convention;
      values outside it are refused, never rescaled);
    - N x C x H x W tensors and N x H x W x C arrays, which count as N images.

    With ``flip`` each feature is averaged with that of the mirrored image (``--flip-test``). ``device``: a
    torch device or its name; default CUDA when available, else the CPU. ``batch_size``: images per forward
    pass, a whole number from 1.
    """

    def __init__(self, checkpoint, device=None, batch_size=64, flip=False):
        if not isinstance(checkpoint, (str, os.PathLike)):
            raise UsageError(f"FeatureExtractor: checkpoint must be the path of a checkpoint file, got a "
                             f"{type(checkpoint).__name__}.")
        if not isinstance(batch_size, numbers.Integral) or isinstance(batch_size, (bool, np.bool_)) \
                or batch_size < 1:
            raise UsageError(f"FeatureExtractor: batch_size must be a whole number of images, 1 or more, got "
                             f"{batch_size!r} ({type(batch_size).__name__}).")
        if not isinstance(flip, (bool, np.bool_)):
            raise UsageError(f"FeatureExtractor: flip must be True or False, got {flip!r} "
                             f"({type(flip).__name__}).")
        self.device = _device(device)
        model, saved = models.load_trained_model(os.fspath(checkpoint))
        self.model = model.to(self.device)
        self.checkpoint = saved
        self.input_size = tuple(saved.input_size)
        self.batch_size = int(batch_size)
        self.flip = bool(flip)
        self._resize = data.build_transform(*self.input_size, train=False)

    def __call__(self, images):
        pictures = [self._resize(_image_tensor(image, number))
                    for number, image in enumerate(_as_list(images), start=1)]
        if not pictures:
            return torch.empty(0, 0)
        chunks = [evaluator.embed_batch(self.model, torch.stack(pictures[start:start + self.batch_size]),
                                        self.device, flip=self.flip)
                  for start in range(0, len(pictures), self.batch_size)]
        return torch.cat(chunks).cpu()


def _device(name):
    """``name`` as a torch device (default: CUDA when available, else the CPU); a UsageError when unusable."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return distributed.parse_device(name, "device")


def _as_list(images):
    """One image or a sequence of them -> a list; an N x C x H x W tensor or N x H x W x C array -> its rows."""
    if isinstance(images, (list, tuple)):
        return list(images)
    if isinstance(images, (torch.Tensor, np.ndarray)) and images.ndim == 4:
        return list(images)
    return [images]


def _image_tensor(image, number):
    """Image ``number`` (1-based) of a call, of any kind -> a (3, H, W) uint8 tensor, through ``reid.images``."""
    if isinstance(image, (str, os.PathLike)):
        return read_image(os.fspath(image))
    if isinstance(image, Image.Image):
        return image_from_pil(image, f"#{number} given to FeatureExtractor (a PIL image)")
    if isinstance(image, np.ndarray):
        return image_from_array(image, f"#{number} given to FeatureExtractor (a numpy array)")
    if isinstance(image, torch.Tensor):
        pixels = image.detach().cpu()
        if pixels.is_floating_point():
            pixels = pixels.float()  # numpy has no bfloat16; every float becomes float32 there anyway
        return image_from_array(pixels.numpy(), f"#{number} given to FeatureExtractor (a tensor)",
                                channels_first=True)
    raise UsageError(f"FeatureExtractor cannot read a {type(image).__name__} (image #{number}); pass file paths, "
                     f"PIL images, numpy arrays or tensors.")
