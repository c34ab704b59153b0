"""Images from files and arrays as (3, H, W) uint8 RGB tensors: for training, evaluation and every tool.

Files and arrays are converted the same way: grayscale becomes RGB, an alpha channel is dropped, 16-bit
samples are scaled to 8 bits. ``.npy`` files are always read with ``allow_pickle=False``, so a file holding
pickled objects is refused instead of being unpickled (which could run code).
"""
import os
import re

import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms.v2.functional import to_dtype

from .errors import UsageError

# torchvision's decoding errors start with the C++ function and source line ("decode_jpeg, /path/x.cpp:171, ").
_SOURCE_LOCATION = re.compile(r"^.*\.cpp:\d+,\s*", re.DOTALL)
_NPY_MAGIC = b"\x93NUMPY"
_PICKLE_PROTOCOL_OPCODE = 0x80
_CHANNELS = (1, 2, 3, 4)  # gray, gray + alpha, RGB, RGBA


def read_image(path):
    """Decode an image file to a (3, H, W) uint8 RGB tensor, the picture as a viewer shows it.

    The format comes from the bytes, not the name (an animated GIF named .jpg is a GIF). The EXIF orientation
    is applied; grayscale, palette and CMYK images become RGB and an alpha channel is dropped; 16-bit PNGs are
    scaled to 8 bits; an animated GIF gives its first frame.
    """
    try:
        image = decode_image(_file_bytes(path), mode=ImageReadMode.RGB, apply_exif_orientation=True)
    except (RuntimeError, OSError, ValueError) as error:
        reason = _SOURCE_LOCATION.split(str(error))[-1].strip().split(". ")[0].rstrip(".") or type(error).__name__
        raise UsageError(f"Cannot read the image {path}: {reason}. Expected a JPEG, PNG, GIF or WebP file; "
                         f"remove or replace it.") from None
    if image.ndim == 4:  # the frames of an animated GIF
        image = image[0]
    return to_dtype(image, torch.uint8, scale=True)


def _file_bytes(path):
    """The bytes of ``path`` as a uint8 tensor, read by Python (torchvision's ``read_file`` refuses paths that
    hold bytes that are not UTF-8)."""
    with open(path, "rb") as handle:
        content = handle.read()
    if not content:
        raise ValueError("the file is empty")
    return torch.frombuffer(bytearray(content), dtype=torch.uint8)


def load_npy(path, what):
    """``np.load`` without pickle; every failure becomes a UsageError naming the file."""
    if not os.path.isfile(path):
        raise UsageError(f"The {what} {path} does not exist.")
    try:
        array = np.load(path, allow_pickle=False)
    except ValueError as error:
        if "pickle" in str(error).lower():
            raise UsageError(_pickle_refusal(path, what)) from None
        raise UsageError(f"Cannot read the {what} {path}: {error}. Expected a .npy file written by "
                         f"numpy.save.") from None
    except (OSError, EOFError) as error:
        raise UsageError(f"Cannot read the {what} {path}: {str(error) or 'the file is empty or cut short'}. "
                         f"Expected a .npy file written by numpy.save.") from None
    except (MemoryError, OverflowError):
        raise UsageError(f"Cannot read the {what} {path}: its header claims an array too large for memory "
                         f"(a damaged file?). Expected a .npy file written by numpy.save.") from None
    if not isinstance(array, np.ndarray):
        array.close()
        raise UsageError(f"The {what} {path} is a .npz archive; pass one array saved with numpy.save (.npy).")
    return array


def _pickle_refusal(path, what):
    """The message for a file that ``np.load`` could only read by unpickling: an object array in a .npy, a
    Python pickle, or bytes that are neither (numpy tries pickle last)."""
    with open(path, "rb") as handle:
        start = handle.read(len(_NPY_MAGIC))
    if start == _NPY_MAGIC:
        return (f"The {what} {path} holds pickled Python objects (a numpy object array), which no {what} "
                f"needs; it was not loaded, since unpickling them could run code. Save a plain numeric array with "
                f"numpy.save.")
    if start[:1] == bytes([_PICKLE_PROTOCOL_OPCODE]):
        return (f"The {what} {path} is a pickled Python object, not a .npy file; it was not loaded, since "
                f"unpickling it could run code. Save a plain numeric array with numpy.save.")
    return (f"Cannot read the {what} {path}: it is not a .npy file (it does not start with numpy's header). "
            f"Expected a .npy file written by numpy.save.")


def load_image(path):
    """An image file (JPEG/PNG) or a ``.npy`` array -> (3, H, W) uint8 tensor."""
    if path.lower().endswith(".npy"):
        return image_from_array(load_npy(path, "image"), path)
    if not os.path.isfile(path):
        raise UsageError(f"The image {path} does not exist (--image expects a JPEG/PNG file or a .npy array).")
    return read_image(path)


def image_from_array(array, source):
    """An image array -> (3, H, W) uint8 RGB tensor, converted as ``read_image`` converts image files.

    Layouts: H x W (grayscale), and H x W x C or C x H x W with C = 3 (RGB), 4 (RGBA), 1 (grayscale) or 2
    (grayscale and alpha). An array that fits both layouts is read as RGB if either axis is 3, H x W x 3 (the
    layout ``--to-npy`` writes) before 3 x H x W, else as H x W x C. uint8 is taken as is and uint16 scaled to
    8 bits like a 16-bit PNG; floats are read as [0, 1] when their maximum is at most 1, else as [0, 255].
    """
    pixels = _channels_first(array, source)
    if pixels.dtype == np.uint16:
        pixels = to_dtype(torch.from_numpy(np.ascontiguousarray(pixels)), torch.uint8, scale=True).numpy()
    elif np.issubdtype(pixels.dtype, np.floating):
        pixels = _floats_to_uint8(pixels, source)
    elif pixels.dtype != np.uint8:
        raise UsageError(f"The image array {source} has dtype {array.dtype}; expected uint8, uint16, or float in "
                         f"[0, 1] or [0, 255].")
    if pixels.shape[0] in (2, 4):
        pixels = pixels[:-1]
    if pixels.shape[0] == 1:
        pixels = np.repeat(pixels, 3, axis=0)
    return torch.from_numpy(np.ascontiguousarray(pixels))


def _channels_first(array, source):
    """``array`` as C x H x W (see ``image_from_array`` for the layouts read), or a UsageError."""
    if array.ndim == 2 and 0 not in array.shape:
        return array[np.newaxis]
    if array.ndim == 3 and 0 not in array.shape:
        if array.shape[-1] == 3 or (array.shape[0] != 3 and array.shape[-1] in _CHANNELS):
            return array.transpose(2, 0, 1)
        if array.shape[0] in _CHANNELS:
            return array
    raise UsageError(f"The image array {source} has shape {array.shape}; expected H x W (grayscale), or "
                     f"H x W x C or C x H x W with C = 3 (RGB), 4 (RGBA), 1 or 2 (gray, gray + alpha), as "
                     f"single_images_features_3.py --to-npy writes H x W x 3.")


def _floats_to_uint8(pixels, source):
    if not np.isfinite(pixels).all() or pixels.min() < 0 or pixels.max() > 255:
        raise UsageError(f"The image array {source} has values outside [0, 255] (or NaN/inf); expected "
                         f"floats in [0, 1] or [0, 255].")
    scale = 255.0 if pixels.max() <= 1.0 else 1.0
    return np.rint(pixels.astype(np.float64) * scale).astype(np.uint8)


def save_image_npy(image_path, out_path):
    """Write an image as the H x W x 3 uint8 ``.npy`` that ``load_image`` reads back unchanged."""
    image = load_image(image_path)
    try:
        np.save(out_path, image.permute(1, 2, 0).numpy())
    except OSError as error:
        raise UsageError(f"Cannot write {out_path}: {error.strerror or error}.") from None
