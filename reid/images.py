"""Images from files, PIL images and arrays as (3, H, W) uint8 RGB tensors: for training, evaluation and every
tool.

Every kind goes through one conversion (``_to_rgb8``), so the same picture gives the same pixels whether it
comes as a file, a PIL image, an array or a tensor:

- files are decoded by Pillow, in any format Pillow reads, chosen by the bytes and not by the name;
- grayscale becomes RGB and an alpha channel is dropped;
- 16-bit samples keep their high byte: a 16-bit sample ``v`` becomes ``v >> 8``, as a viewer shows a 16-bit
  PNG; uint16 arrays are 16-bit images over the full range 0..65535;
- float samples are in [0, 1] (torchvision's convention) and become uint8 as torchvision's ``to_dtype`` scales
  them; floats outside [0, 1] are refused, never rescaled by a guess.

An image whose header promises more pixels than Pillow's limit or than the memory available is refused before
it is decoded (``check_decoded_size``). ``.npy`` files are always read with ``allow_pickle=False``, so a file
holding pickled objects is refused instead of being unpickled (which could run code).
"""
import os
import re
import struct
import warnings

try:
    import resource
except ImportError:  # Windows: no process limits to read
    resource = None

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torchvision.transforms.v2.functional import to_dtype

from .errors import UsageError

_NPY_MAGIC = b"\x93NUMPY"
_PICKLE_PROTOCOL_OPCODE = 0x80
_CHANNELS = (1, 2, 3, 4)  # gray, gray + alpha, RGB, RGBA
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
_KEPT_MODES = ("L", "LA", "RGB", "RGBA")  # read as they are; other 8-bit modes are converted to RGB by Pillow
_FORMATS = "an image file (JPEG, PNG, BMP, GIF, TIFF, WebP or another format Pillow reads)"
# Decoding errors of Pillow's plugins on damaged files (the plugins raise more than OSError).
_DECODING_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error)
# Memory while one image is decoded and converted, per pixel: Pillow's buffer (4 bytes for multi-band modes),
# its EXIF-transposed or converted copy (4) and the two array copies (3 + 3), rounded up.
DECODE_BYTES_PER_PIXEL = 16
# Needs below this are not checked against the available memory: reading /proc for every small image would
# cost more than the check is worth.
_UNCHECKED_BYTES = 64 * 2**20


def read_image(path):
    """Decode an image file to a (3, H, W) uint8 RGB tensor, the picture as a viewer shows it.

    Any format Pillow reads, recognised by its bytes, not its name (an animated GIF named .jpg is a GIF). The
    EXIF orientation is applied; an animated image gives its first frame; the pixels are converted as
    ``image_from_pil`` converts them.
    """
    _require_file(path, "image")
    picture = _open(path)
    with picture:
        return image_from_pil(picture, path)


def _require_file(path, what, expected=""):
    """A UsageError unless ``path`` is a regular file (a directory and a missing path are named as such)."""
    if os.path.isdir(path):
        noun = "an image file" if what == "image" else "a file"
        raise UsageError(f"The {what} {path} is a directory, not {noun}{expected}.")
    if not os.path.exists(path):
        raise UsageError(f"The {what} {path} does not exist{expected}.")
    if not os.path.isfile(path):
        raise UsageError(f"The {what} {path} is not a regular file (a device or a pipe?){expected}.")


def _open(path):
    """``Image.open`` (it reads only the header), with Pillow's refusals as UsageErrors naming the file."""
    try:
        with warnings.catch_warnings():
            # Pillow warns above MAX_IMAGE_PIXELS; check_decoded_size refuses those images with their size.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(path)
    except Image.DecompressionBombError as error:
        claimed = re.search(r"\((\d+) pixels\)", str(error))
        size = f"{int(claimed.group(1)):,} pixels" if claimed else "too many pixels"
        raise UsageError(f"The image {path} has {size} (from its header), more than the "
                         f"{Image.MAX_IMAGE_PIXELS:,} pixels Pillow decodes (PIL.Image.MAX_IMAGE_PIXELS; an "
                         f"image this large may be a decompression bomb). Shrink or crop it, or remove it.") from None
    except UnidentifiedImageError:
        reason = "the file is empty" if os.path.getsize(path) == 0 else "Pillow does not recognise its format"
        raise UsageError(_unreadable(path, reason)) from None
    except OSError as error:
        raise UsageError(_unreadable(path, error.strerror or str(error))) from None


def _unreadable(path, reason):
    return f"Cannot read the image {path}: {reason}. Expected {_FORMATS}; remove or replace it."


def check_decoded_size(path, image):
    """Refuse an image before it is decoded when its header promises more pixels than Pillow decodes
    (``PIL.Image.MAX_IMAGE_PIXELS``, honoured as the user sets it) or more than the memory available holds.

    ``image`` is a PIL image as ``Image.open`` returns it: only its header has been read. ``path`` names it in
    the message.
    """
    width, height = image.size
    pixels = width * height
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and pixels > limit:
        raise UsageError(f"The image {path} is {width}x{height} pixels ({pixels:,}, from its header), more than "
                         f"the {limit:,} pixels Pillow decodes (PIL.Image.MAX_IMAGE_PIXELS; an image this large "
                         f"may be a decompression bomb). Shrink or crop it, or remove it.")
    require_memory(pixels * DECODE_BYTES_PER_PIXEL, f"Decoding the image {path} ({width}x{height} pixels)",
                   "shrink or crop it, or remove it")


def image_from_pil(picture, source):
    """A PIL image -> (3, H, W) uint8 RGB tensor, as ``read_image`` converts the file it came from.

    The EXIF orientation is applied. 16-bit grayscale (modes I;16*) keeps the high byte of each sample; modes
    L, LA, RGB and RGBA are taken as they are, the other 8-bit modes (1, P, PA, CMYK, YCbCr, ...) are converted to
    RGB by Pillow. 32-bit modes (I, F) have no agreed scale and are refused, except mode I of a 16-bit
    grayscale PNG (as Pillow before 10.3 opens one). ``source`` names the image in messages.
    """
    check_decoded_size(source, picture)
    sixteen_bit = picture.mode in _SIXTEEN_BIT_MODES or (picture.mode == "I" and picture.format == "PNG")
    if picture.mode in ("I", "F") and not sixteen_bit:
        kind = "integer" if picture.mode == "I" else "floating-point"
        raise UsageError(f"The image {source} has 32-bit {kind} samples (PIL mode {picture.mode}), which have no "
                         f"agreed scale; convert it to 8 bits, or pass its pixels as an array (uint8, uint16, or "
                         f"float in [0, 1]).")
    try:
        picture = ImageOps.exif_transpose(picture)
        if sixteen_bit:
            pixels = np.asarray(picture).astype(np.uint16)
        elif picture.mode in _KEPT_MODES:
            pixels = np.asarray(picture)
        else:
            pixels = np.asarray(picture.convert("RGBA" if "transparency" in picture.info else "RGB"))
    except _DECODING_ERRORS as error:
        raise UsageError(_unreadable(source, str(error).rstrip(".") or type(error).__name__)) from None
    return _to_rgb8(_channels_first(pixels, source), source)


def image_from_array(array, source, channels_first=False):
    """An image array -> (3, H, W) uint8 RGB tensor, converted as ``read_image`` converts image files.

    Layouts: H x W (grayscale), and H x W x C or C x H x W with C = 3 (RGB), 4 (RGBA), 1 (grayscale) or 2
    (grayscale and alpha). An array that fits both layouts is read as RGB if either axis is 3, H x W x 3 (the
    layout ``--to-npy`` writes) before 3 x H x W, else as H x W x C; with ``channels_first`` (tensors) only
    C x H x W is read. dtypes: uint8; uint16, a 16-bit image over the full range 0..65535 like a 16-bit PNG
    (one that holds only values up to 255 is refused: it could as well be an 8-bit picture); float in [0, 1].
    """
    if channels_first and (array.ndim != 3 or array.shape[0] not in _CHANNELS or 0 in array.shape):
        raise UsageError(f"The image {source} has shape {tuple(array.shape)}; expected C x H x W with C = 3 (RGB), "
                         f"4 (RGBA), 1 or 2 (gray, gray + alpha), as torchvision reads images.")
    pixels = array if channels_first else _channels_first(array, source)
    if pixels.dtype == np.uint16 and 0 < pixels.max() <= 255:
        raise UsageError(f"The image {source} is a uint16 array whose values are all at most {pixels.max()}. "
                         f"uint16 images are read over the full 16-bit range 0..65535, like a 16-bit PNG, so this "
                         f"one would be almost black; if it holds 8-bit values, pass it as uint8 "
                         f"(array.astype(numpy.uint8)).")
    return _to_rgb8(pixels, source)


def _channels_first(array, source):
    """``array`` as C x H x W (see ``image_from_array`` for the layouts read), or a UsageError."""
    if array.ndim == 2 and 0 not in array.shape:
        return array[np.newaxis]
    if array.ndim == 3 and 0 not in array.shape:
        if array.shape[-1] == 3 or (array.shape[0] != 3 and array.shape[-1] in _CHANNELS):
            return array.transpose(2, 0, 1)
        if array.shape[0] in _CHANNELS:
            return array
    raise UsageError(f"The image {source} has shape {array.shape}; expected H x W (grayscale), or H x W x C or "
                     f"C x H x W with C = 3 (RGB), 4 (RGBA), 1 or 2 (gray, gray + alpha), as "
                     f"single_images_features_3.py --to-npy writes H x W x 3.")


def _to_rgb8(pixels, source):
    """The one conversion: C x H x W samples (C = 1 gray, 2 gray + alpha, 3 RGB, 4 RGBA; uint8, uint16, or float
    in [0, 1]) -> (3, H, W) uint8 RGB. 16-bit samples keep their high byte, floats are scaled as torchvision's
    ``to_dtype`` scales them, alpha is dropped and gray repeated."""
    if pixels.dtype == np.uint16:
        pixels = (pixels >> 8).astype(np.uint8)
    elif np.issubdtype(pixels.dtype, np.floating):
        pixels = _floats_to_uint8(pixels, source)
    elif pixels.dtype != np.uint8:
        raise UsageError(f"The image {source} has dtype {pixels.dtype}; expected uint8, uint16 (16-bit, the full "
                         f"range 0..65535), or float in [0, 1].")
    if pixels.shape[0] in (2, 4):
        pixels = pixels[:-1]
    if pixels.shape[0] == 1:
        pixels = np.repeat(pixels, 3, axis=0)
    pixels = np.ascontiguousarray(pixels)
    return torch.from_numpy(pixels if pixels.flags.writeable else pixels.copy())


def _floats_to_uint8(pixels, source):
    """Floats in [0, 1] -> uint8, as ``torchvision.transforms.v2.functional.to_dtype(..., scale=True)`` does."""
    pixels = pixels.astype(np.float32)  # float16 cannot hold 255.999, the factor to_dtype multiplies by
    if not np.isfinite(pixels).all():
        raise UsageError(f"The image {source} holds NaN or infinite values; expected float pixels in [0, 1].")
    low, high = float(pixels.min()), float(pixels.max())
    if low < 0 or high > 1:
        raise UsageError(f"The image {source} has float values from {low:g} to {high:g}, outside [0, 1]. Float "
                         f"images are read in [0, 1], torchvision's convention, never rescaled by a guess: divide "
                         f"pixels in [0, 255] by 255 (or pass them as uint8), and clip values just outside [0, 1].")
    return to_dtype(torch.from_numpy(np.ascontiguousarray(pixels)), torch.uint8, scale=True).numpy()


def is_image_file(path):
    """Whether ``path`` is a file ``load_image`` reads, judged by its bytes: a ``.npy`` array, or any format
    Pillow recognises from its header (the name does not matter)."""
    if not os.path.isfile(path):
        return False
    if _starts_with(path, _NPY_MAGIC):
        return True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            Image.open(path).close()
    except Image.DecompressionBombError:
        return True  # an image, too large: reading it says so
    except OSError:
        return False
    return True


def _starts_with(path, magic):
    with open(path, "rb") as handle:
        return handle.read(len(magic)) == magic


def load_npy(path, what):
    """``np.load`` without pickle; every failure becomes a UsageError naming the file."""
    _require_file(path, what)
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
    """An image file in any format Pillow reads, or a ``.npy`` array (by its name or its bytes) -> (3, H, W)
    uint8 tensor."""
    _require_file(path, "image", " (--image expects an image file or a .npy array)")
    if path.lower().endswith(".npy") or _starts_with(path, _NPY_MAGIC):
        return image_from_array(load_npy(path, "image"), path)
    return read_image(path)


def save_image_npy(image_path, out_path):
    """Write an image as the H x W x 3 uint8 ``.npy`` that ``load_image`` reads back unchanged."""
    image = load_image(image_path)
    try:
        np.save(out_path, image.permute(1, 2, 0).numpy())
    except OSError as error:
        raise UsageError(f"Cannot write {out_path}: {error.strerror or error}.") from None


# Memory --------------------------------------------------------------------------------------------------

def require_memory(needed, what, advice):
    """A UsageError, before anything is allocated, when ``needed`` bytes are more than ``available_memory()``:
    ``{what} needs about N GiB of memory, but only M GiB is available; {advice}.``"""
    if needed < _UNCHECKED_BYTES:
        return
    available = available_memory()
    if available is not None and needed > available:
        raise UsageError(f"{what} needs about {format_bytes(needed)} of memory, but only "
                         f"{format_bytes(available)} is available; {advice}.")


def available_memory():
    """The bytes this process can still allocate, as far as the system says: the least of the memory Linux
    reports available, the room left under an address-space or data limit (``ulimit -v``, ``ulimit -d``) and
    under a container's cgroup limit. None where none of them can be read (not Linux)."""
    known = [_meminfo("/proc/meminfo", "MemAvailable")]
    limits = ((resource.RLIMIT_AS, "VmSize"), (resource.RLIMIT_DATA, "VmData")) if resource else ()
    for limit, used in limits:
        soft = resource.getrlimit(limit)[0]
        if soft != resource.RLIM_INFINITY:
            known.append(soft - (_meminfo("/proc/self/status", used) or 0))
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        limit, usage = _number_in(limit_file), _number_in(usage_file)
        if limit is not None and usage is not None and limit < 2**62:
            known.append(limit - usage)
    known = [max(value, 0) for value in known if value is not None]
    return min(known) if known else None


def _meminfo(path, key):
    """The ``key:   N kB`` line of a /proc file, in bytes; None when absent."""
    try:
        with open(path) as handle:
            for line in handle:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _number_in(path):
    """The integer a cgroup file holds; None when absent or ``max``."""
    try:
        with open(path) as handle:
            return int(handle.read().strip())
    except (OSError, ValueError):
        return None


def format_bytes(count):
    """``1.5 GiB``, ``300 MiB``: sizes for messages."""
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20)):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return f"{count / 2**10:.1f} KiB"
