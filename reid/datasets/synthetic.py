"""A generated person re-identification dataset in the Market-1501 layout, for demos and tests.

Each identity is a drawn figure whose clothing (upper and lower colours and patterns), build, hair and bag
stay the same across its images; colours and patterns are drawn from small sets, so identities share
single attributes and only their combination identifies them. Each camera has its own lighting (colour
cast, brightness, contrast), background, figure scale and position, blur, noise and chance of an
occluding object, and every image gets its own pose, shift and clutter, so that raw colours alone do not
match a person across cameras while a trained network can.

    python -m reid.datasets.synthetic data/synthetic --train-ids 100 --test-ids 100 --cameras 6
"""
import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ..errors import UsageError
from .base import STANDARD_FOLDERS

DEFAULTS = dict(num_train_ids=100, num_test_ids=100, num_cameras=6, images_per_camera=4, height=128, width=64,
                seed=0)
JPEG_QUALITY = 90
INFO_FILE = "synthetic.json"

CLOTHING_COLOURS = {
    "red": (200, 35, 35), "maroon": (115, 25, 40), "orange": (235, 125, 25), "yellow": (235, 210, 45),
    "green": (45, 150, 55), "olive": (110, 120, 45), "teal": (25, 140, 140), "sky": (115, 175, 235),
    "blue": (35, 65, 195), "navy": (25, 35, 85), "purple": (115, 45, 155), "pink": (240, 145, 185),
    "brown": (110, 70, 40), "beige": (210, 190, 150), "white": (235, 235, 235), "grey": (130, 130, 130),
    "black": (28, 28, 30),
}
LOWER_COLOURS = ("navy", "blue", "black", "grey", "beige", "brown", "olive", "white", "maroon", "sky", "green",
                 "red")
UPPER_PATTERNS = ("solid", "solid", "horizontal stripes", "vertical stripes", "checks", "logo", "two-tone")
LOWER_STYLES = ("trousers", "trousers", "shorts", "skirt")
SKIN_TONES = ((240, 200, 170), (220, 170, 130), (180, 125, 85), (120, 80, 55), (80, 55, 40))
HAIR_COLOURS = ((25, 20, 20), (70, 45, 25), (150, 110, 60), (215, 185, 110), (160, 160, 160), (150, 60, 30))
SHOE_COLOURS = ((25, 25, 25), (235, 235, 235), (100, 60, 35), (180, 40, 40))
BAGS = (None, None, "backpack", "shoulder bag")
BACKGROUNDS = ("wall and floor", "columns", "tiles", "foliage", "gradient")

# Random-number streams: every drawn thing has its own, so changing one part never shifts another.
_IDENTITY, _CAMERA, _IMAGE, _QUERY, _EXTRA = range(5)


@dataclass(frozen=True)
class Identity:
    upper: tuple
    upper_second: tuple
    upper_pattern: str
    stripe_period: float
    long_sleeves: bool
    lower: tuple
    lower_style: str
    side_stripe: bool
    shoes: tuple
    skin: tuple
    hair: tuple
    long_hair: bool
    bag: object
    bag_colour: tuple
    height_scale: float
    width_scale: float


@dataclass(frozen=True)
class Camera:
    gain: tuple
    contrast: float
    background: str
    background_colours: tuple
    background_period: float
    scale: float
    vertical_position: float
    horizontal_offset: float
    blur: float
    noise: float
    occlusion_probability: float
    back_view_probability: float


def _rng(seed, *stream):
    return np.random.default_rng([seed, *stream])


def _pick(rng, choices):
    return choices[rng.integers(len(choices))]


def _colour(rng, names=tuple(CLOTHING_COLOURS)):
    return CLOTHING_COLOURS[_pick(rng, names)]


def make_identity(rng):
    upper = _colour(rng)
    upper_second = _colour(rng)
    while upper_second == upper:
        upper_second = _colour(rng)
    return Identity(
        upper=upper, upper_second=upper_second, upper_pattern=_pick(rng, UPPER_PATTERNS),
        stripe_period=float(rng.uniform(0.035, 0.06)), long_sleeves=bool(rng.random() < 0.6),
        lower=_colour(rng, LOWER_COLOURS), lower_style=_pick(rng, LOWER_STYLES),
        side_stripe=bool(rng.random() < 0.2), shoes=_pick(rng, SHOE_COLOURS), skin=_pick(rng, SKIN_TONES),
        hair=_pick(rng, HAIR_COLOURS), long_hair=bool(rng.random() < 0.35), bag=_pick(rng, BAGS),
        bag_colour=_colour(rng), height_scale=float(rng.uniform(0.86, 1.0)),
        width_scale=float(rng.uniform(0.8, 1.2)))


def _signature(identity):
    """What must differ between two identities: their upper and lower clothing."""
    second = identity.upper_second if identity.upper_pattern != "solid" else None
    return identity.upper, second, identity.upper_pattern, identity.lower, identity.lower_style


def make_identities(pids, seed):
    """One ``Identity`` per pid, redrawn until no two share the whole clothing signature."""
    identities, taken = {}, set()
    for pid in pids:
        rng = _rng(seed, _IDENTITY, pid)
        identity = make_identity(rng)
        while _signature(identity) in taken:
            identity = make_identity(rng)
        taken.add(_signature(identity))
        identities[pid] = identity
    return identities


def make_camera(rng):
    gain = rng.uniform(0.68, 1.32, 3)
    gain = gain / gain.mean() * rng.uniform(0.65, 1.25)
    colours = tuple(tuple(int(c) for c in rng.integers(30, 226, 3)) for _ in range(3))
    return Camera(
        gain=tuple(float(g) for g in gain), contrast=float(rng.uniform(0.7, 1.15)),
        background=_pick(rng, BACKGROUNDS), background_colours=colours,
        background_period=float(rng.uniform(0.08, 0.25)), scale=float(rng.uniform(0.72, 0.94)),
        vertical_position=float(rng.uniform(0.2, 0.8)), horizontal_offset=float(rng.uniform(-0.1, 0.1)),
        blur=float(rng.uniform(0.0, 1.1)), noise=float(rng.uniform(2.0, 9.0)),
        occlusion_probability=float(rng.uniform(0.05, 0.4)), back_view_probability=float(rng.uniform(0.1, 0.7)))


def make_cameras(num_cameras, seed):
    return [make_camera(_rng(seed, _CAMERA, cam)) for cam in range(num_cameras)]


def _background(camera, rng, height, width):
    """A (height, width, 3) float array: the camera's scene, shifted per image, with some clutter."""
    wall, floor, accent = (np.array(c, dtype=np.float32) for c in camera.background_colours)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    period = camera.background_period * height
    phase = rng.uniform(0, period)
    if camera.background == "wall and floor":
        horizon = height * rng.uniform(0.55, 0.8)
        shade = (ys / height)[..., None]
        image = np.where((ys < horizon)[..., None], wall * (0.85 + 0.3 * shade), floor * (0.7 + 0.4 * shade))
    elif camera.background == "columns":
        image = np.where((((xs + phase) // (period * 0.6)) % 2 == 0)[..., None], wall, accent)
    elif camera.background == "tiles":
        checks = ((xs + phase) // (period * 0.5) + (ys + phase) // (period * 0.5)) % 2 == 0
        image = np.where(checks[..., None], floor, accent)
    elif camera.background == "foliage":
        coarse = rng.random((height // 8 + 2, width // 8 + 2, 1)).astype(np.float32)
        blobs = np.asarray(Image.fromarray((coarse[..., 0] * 255).astype(np.uint8)).resize(
            (width, height), Image.BILINEAR), dtype=np.float32)[..., None] / 255
        image = wall * blobs + accent * (1 - blobs)
    else:
        t = (ys / height)[..., None]
        image = wall * (1 - t) + floor * t
    image = np.broadcast_to(image, (height, width, 3)).copy()
    for _ in range(rng.integers(0, 4)):
        y0, x0 = rng.integers(0, height), rng.integers(0, width)
        h, w = rng.integers(height // 10, height // 3), rng.integers(width // 8, width // 2)
        image[y0:y0 + h, x0:x0 + w] = _colour(rng)
    return image


def _limb(start, angle, length, thickness):
    """Corners of a rectangle hanging from ``start`` at ``angle`` radians from vertical."""
    dx, dy = math.sin(angle), math.cos(angle)
    px, py = dy * thickness / 2, -dx * thickness / 2
    end = (start[0] + dx * length, start[1] + dy * length)
    return [(start[0] + px, start[1] + py), (end[0] + px, end[1] + py),
            (end[0] - px, end[1] - py), (start[0] - px, start[1] - py)], end


def _garment_texture(identity, box, size, back_view):
    """The upper-body cloth as a full-size RGB array: the identity's pattern laid out over ``box``."""
    width, height = size
    x0, y0, x1, y1 = box
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    period = max(2.0, identity.stripe_period * (y1 - y0) / 0.36)
    first, second = np.array(identity.upper, np.float32), np.array(identity.upper_second, np.float32)
    pattern = identity.upper_pattern
    if pattern == "horizontal stripes":
        use_second = ((ys - y0) // period) % 2 == 1
    elif pattern == "vertical stripes":
        use_second = ((xs - x0) // period) % 2 == 1
    elif pattern == "checks":
        use_second = ((xs - x0) // (period * 1.5) + (ys - y0) // (period * 1.5)) % 2 == 1
    elif pattern == "logo" and not back_view:
        centre_x, centre_y, radius = (x0 + x1) / 2, y0 + 0.35 * (y1 - y0), 0.22 * (x1 - x0)
        use_second = (xs - centre_x) ** 2 + (ys - centre_y) ** 2 < radius ** 2
    elif pattern == "two-tone":
        use_second = ys > y0 + 0.55 * (y1 - y0)
    else:
        use_second = np.zeros_like(ys, dtype=bool)
    return np.where(use_second[..., None], second, first)


def _paste(image, texture, polygons, ellipses=()):
    mask = Image.new("L", image.size, 0)
    draw = ImageDraw.Draw(mask)
    for polygon in polygons:
        draw.polygon(polygon, fill=255)
    for ellipse in ellipses:
        draw.ellipse(ellipse, fill=255)
    image.paste(Image.fromarray(np.clip(texture, 0, 255).astype(np.uint8)), mask=mask)


def draw_person(image, identity, rng, unit, centre_x, top, back_view, mirrored):
    """Draw ``identity`` on the PIL ``image``: ``unit`` is the figure height in pixels, ``top`` its top."""
    draw = ImageDraw.Draw(image)
    w = identity.width_scale
    side = -1 if mirrored else 1
    head_radius = 0.062 * unit
    head_y = top + 0.07 * unit
    shoulder_y, hip_y = top + 0.145 * unit, top + 0.5 * unit
    shoulder_half, hip_half = 0.12 * unit * w, 0.095 * unit * w
    arm_swing = rng.uniform(-0.35, 0.35)
    stride = rng.uniform(0.0, 0.3)
    leg_length, leg_thickness = 0.45 * unit, 0.085 * unit * w

    legs, feet = [], []
    for sign in (-1, 1):
        polygon, end = _limb((centre_x + sign * hip_half * 0.5, hip_y), sign * stride, leg_length, leg_thickness)
        legs.append(polygon)
        feet.append(end)
    skin = identity.skin
    for polygon in legs:
        draw.polygon(polygon, fill=skin)
    for foot_x, foot_y in feet:
        draw.ellipse((foot_x - leg_thickness * 0.7, foot_y - 0.02 * unit, foot_x + leg_thickness * 0.7,
                      foot_y + 0.035 * unit), fill=identity.shoes)

    size = image.size
    lower = np.array(identity.lower, np.float32)
    hips = [(centre_x - hip_half, hip_y - 0.02 * unit), (centre_x + hip_half, hip_y - 0.02 * unit),
            (centre_x + hip_half, hip_y + 0.08 * unit), (centre_x - hip_half, hip_y + 0.08 * unit)]
    if identity.lower_style == "skirt":
        skirt_bottom = hip_y + 0.24 * unit
        lower_polygons = [[hips[0], hips[1], (centre_x + hip_half * 1.5, skirt_bottom),
                           (centre_x - hip_half * 1.5, skirt_bottom)]]
    else:
        reach = 0.42 if identity.lower_style == "shorts" else 1.0
        lower_polygons = [hips] + [_limb((centre_x + sign * hip_half * 0.5, hip_y), sign * stride,
                                         leg_length * reach, leg_thickness * 1.05)[0] for sign in (-1, 1)]
    _paste(image, np.broadcast_to(lower, (size[1], size[0], 3)), lower_polygons)
    if identity.side_stripe and identity.lower_style != "skirt":
        stripe = np.array(identity.upper_second, np.float32)
        for sign in (-1, 1):
            polygon = _limb((centre_x + sign * (hip_half * 0.5 + leg_thickness * 0.4), hip_y), sign * stride,
                            leg_length * (0.42 if identity.lower_style == "shorts" else 1.0),
                            leg_thickness * 0.2)[0]
            draw.polygon(polygon, fill=tuple(int(c) for c in stripe))

    torso_box = (centre_x - shoulder_half, shoulder_y, centre_x + shoulder_half, hip_y + 0.02 * unit)
    torso = [(centre_x - shoulder_half, shoulder_y), (centre_x + shoulder_half, shoulder_y),
             (centre_x + hip_half, hip_y + 0.02 * unit), (centre_x - hip_half, hip_y + 0.02 * unit)]
    arm_length, arm_thickness = 0.34 * unit, 0.06 * unit * w
    sleeve_reach = 1.0 if identity.long_sleeves else 0.4
    arms, sleeves, hands = [], [], []
    for sign in (-1, 1):
        start = (centre_x + sign * (shoulder_half - arm_thickness * 0.4), shoulder_y + 0.015 * unit)
        angle = sign * 0.08 + (arm_swing if sign > 0 else -arm_swing)
        polygon, hand = _limb(start, angle, arm_length, arm_thickness)
        arms.append(polygon)
        sleeves.append(_limb(start, angle, arm_length * sleeve_reach, arm_thickness * 1.1)[0])
        hands.append(hand)
    for polygon in arms:
        draw.polygon(polygon, fill=skin)
    for hand_x, hand_y in hands:
        r = arm_thickness * 0.6
        draw.ellipse((hand_x - r, hand_y - r, hand_x + r, hand_y + r), fill=skin)
    texture = _garment_texture(identity, torso_box, size, back_view)
    _paste(image, texture, [torso] + sleeves)

    neck = (centre_x - 0.025 * unit, head_y + head_radius * 0.6, centre_x + 0.025 * unit, shoulder_y + 2)
    draw.rectangle(neck, fill=skin)
    head = (centre_x - head_radius, head_y - head_radius, centre_x + head_radius, head_y + head_radius)
    if identity.long_hair:
        draw.rectangle((centre_x - head_radius * 1.05, head_y, centre_x + head_radius * 1.05,
                        shoulder_y + 0.06 * unit), fill=identity.hair)
    draw.ellipse(head, fill=identity.hair if back_view else skin)
    draw.chord((head[0] - 1, head[1] - 1, head[2] + 1, head[3] + 1), 180, 360, fill=identity.hair)

    bag_colour = identity.bag_colour
    if identity.bag == "backpack":
        if back_view:
            draw.rectangle((centre_x - shoulder_half * 0.75, shoulder_y + 0.03 * unit,
                            centre_x + shoulder_half * 0.75, hip_y - 0.06 * unit), fill=bag_colour)
        else:
            for sign in (-1, 1):
                x = centre_x + sign * shoulder_half * 0.55
                draw.line((x, shoulder_y, x, shoulder_y + 0.2 * unit), fill=bag_colour,
                          width=max(1, round(0.02 * unit)))
    elif identity.bag == "shoulder bag":
        bag_x = centre_x + side * (hip_half + 0.03 * unit)
        draw.line((centre_x - side * shoulder_half * 0.6, shoulder_y, bag_x, hip_y - 0.02 * unit),
                  fill=bag_colour, width=max(1, round(0.015 * unit)))
        draw.rectangle((bag_x - 0.06 * unit, hip_y - 0.04 * unit, bag_x + 0.06 * unit, hip_y + 0.07 * unit),
                       fill=bag_colour)


def _occlude(image, rng, figure_box):
    """Cover part of the figure with an object: something in front of the legs, or a pole at one side."""
    draw = ImageDraw.Draw(image)
    x0, y0, x1, y1 = figure_box
    colour = _colour(rng)
    if rng.random() < 0.6:
        top = y1 - (y1 - y0) * rng.uniform(0.2, 0.45)
        draw.rectangle((0, top, image.size[0], image.size[1]), fill=colour)
    else:
        band = (x1 - x0) * rng.uniform(0.3, 0.6)
        left = x0 - band * 0.3 if rng.random() < 0.5 else x1 - band * 0.7
        draw.rectangle((left, 0, left + band, image.size[1]), fill=colour)


def _apply_camera(pixels, camera, rng):
    """Lighting, contrast, blur and sensor noise of ``camera`` on a float (H, W, 3) array -> uint8 image."""
    lighting = np.array(camera.gain, np.float32) * rng.uniform(0.9, 1.1)
    pixels = pixels * lighting
    mean = pixels.mean()
    pixels = np.clip((pixels - mean) * camera.contrast + mean, 0, 255)
    image = Image.fromarray(pixels.astype(np.uint8))
    if camera.blur > 0.05:
        image = image.filter(ImageFilter.GaussianBlur(camera.blur * rng.uniform(0.7, 1.3)))
    noisy = np.asarray(image, np.float32) + rng.normal(0, camera.noise, (image.size[1], image.size[0], 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def render(identity, camera, rng, height, width, crop=None):
    """One image of ``identity`` (None: background only) seen by ``camera``.

    ``crop`` (x0, y0, x1, y1 as fractions) keeps only that part of the scene, resized back to full size.
    """
    image = Image.fromarray(_background(camera, rng, height, width).astype(np.uint8))
    unit = camera.scale * height * (identity.height_scale if identity else 1.0) * rng.uniform(0.95, 1.05)
    top = (height - unit) * np.clip(camera.vertical_position + rng.uniform(-0.15, 0.15), 0, 1)
    centre_x = width * (0.5 + camera.horizontal_offset + rng.uniform(-0.06, 0.06))
    if identity is not None:
        back_view = rng.random() < camera.back_view_probability
        draw_person(image, identity, rng, unit, centre_x, top, back_view, mirrored=rng.random() < 0.5)
    if rng.random() < camera.occlusion_probability:
        half = 0.16 * unit
        _occlude(image, rng, (centre_x - half, top, centre_x + half, top + unit))
    if crop is not None:
        box = (crop[0] * width, crop[1] * height, crop[2] * width, crop[3] * height)
        image = image.resize((width, height), Image.BILINEAR, box=box)
    return _apply_camera(np.asarray(image, np.float32), camera, rng)


def _file_name(pid, cam, frame):
    """Market-1501 name: ``PPPP_cCs1_FFFFFF_01.jpg`` (``-1`` for junk), ``cam`` 0-based."""
    person = "-1" if pid == -1 else f"{pid:04d}"
    return f"{person}_c{cam + 1}s1_{frame:06d}_01.jpg"


def _check_options(num_train_ids, num_test_ids, num_cameras, images_per_camera, height, width, seed):
    limits = [("--train-ids", num_train_ids, 1), ("--test-ids", num_test_ids, 1),
              ("--images-per-camera", images_per_camera, 1), ("--height", height, 32), ("--width", width, 16),
              ("--seed", seed, 0)]
    for flag, value, lowest in limits:
        if value < lowest:
            raise UsageError(f"Synthetic dataset option {flag} must be at least {lowest}, got {value}.")
    if not 2 <= num_cameras <= 9:
        raise UsageError(f"Synthetic dataset option --cameras must be between 2 and 9 (a query needs another "
                         f"camera to match, and file names have one camera digit), got {num_cameras}.")


def _plan(pids, num_cameras, images_per_camera, seed):
    """``(pid, cam, index)`` of every image of ``pids``: each camera sees each identity
    ``images_per_camera - 1`` or ``images_per_camera`` times (at least once)."""
    shots = []
    for pid in pids:
        for cam in range(num_cameras):
            rng = _rng(seed, _QUERY, pid, cam)
            count = max(1, images_per_camera - int(rng.integers(0, 2)))
            shots += [(pid, cam, index) for index in range(count)]
    return shots


def _query_cameras(pid, num_cameras, seed):
    rng = _rng(seed, _QUERY, pid)
    count = max(1, num_cameras // 2)
    return set(rng.choice(num_cameras, size=count, replace=False).tolist())


def generate(root, num_train_ids=DEFAULTS["num_train_ids"], num_test_ids=DEFAULTS["num_test_ids"],
             num_cameras=DEFAULTS["num_cameras"], images_per_camera=DEFAULTS["images_per_camera"],
             height=DEFAULTS["height"], width=DEFAULTS["width"], seed=DEFAULTS["seed"]):
    """Write the dataset into the folder ``root`` (which must not exist or be empty); returns the image count.

    Train ids are 1..num_train_ids and test ids follow. Query holds one image per test id for half of
    the cameras, the gallery the rest plus distractors (id 0) and junk (id -1). The files are written
    into ``root.tmp-*`` and renamed at the end, so an interrupted run leaves no ``root``.
    """
    _check_options(num_train_ids, num_test_ids, num_cameras, images_per_camera, height, width, seed)
    root = os.path.abspath(root)
    if os.path.exists(root) and (not os.path.isdir(root) or os.listdir(root)):
        raise UsageError(f"Cannot generate the synthetic dataset into {root}: it already exists and is not an "
                         f"empty folder. Remove it or choose another folder.")
    parent = os.path.dirname(root)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=os.path.basename(root) + ".tmp-", dir=parent)
    try:
        count = _write_images(staging, num_train_ids, num_test_ids, num_cameras, images_per_camera, height,
                              width, seed)
        options = dict(num_train_ids=num_train_ids, num_test_ids=num_test_ids, num_cameras=num_cameras,
                       images_per_camera=images_per_camera, height=height, width=width, seed=seed)
        with open(os.path.join(staging, INFO_FILE), "w") as handle:
            json.dump({"generator": "reid.datasets.synthetic", "images": count, **options}, handle, indent=2)
            handle.write("\n")
        if os.path.isdir(root):
            os.rmdir(root)
        os.rename(staging, root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return count


def _write_images(folder, num_train_ids, num_test_ids, num_cameras, images_per_camera, height, width, seed):
    for sub_folder in STANDARD_FOLDERS.values():
        os.mkdir(os.path.join(folder, sub_folder))
    train_pids = list(range(1, num_train_ids + 1))
    test_pids = list(range(num_train_ids + 1, num_train_ids + num_test_ids + 1))
    identities = make_identities(train_pids + test_pids, seed)
    cameras = make_cameras(num_cameras, seed)
    query_cameras = {pid: _query_cameras(pid, num_cameras, seed) for pid in test_pids}

    jobs = []
    for pid, cam, index in _plan(train_pids, num_cameras, images_per_camera, seed):
        jobs.append(("train", pid, cam, index, identities[pid], None))
    for pid, cam, index in _plan(test_pids, num_cameras, images_per_camera, seed):
        split = "query" if index == 0 and cam in query_cameras[pid] else "gallery"
        jobs.append((split, pid, cam, index, identities[pid], None))
    jobs += _extra_gallery_jobs(num_test_ids, num_cameras, seed)

    for split, pid, cam, index, identity, crop in jobs:
        rng = _rng(seed, _IMAGE, pid + 1, cam, index)
        image = render(identity, cameras[cam], rng, height, width, crop)
        path = os.path.join(folder, STANDARD_FOLDERS[split], _file_name(pid, cam, 25 * (index + 1)))
        image.save(path, quality=JPEG_QUALITY)
    return len(jobs)


def _extra_gallery_jobs(num_test_ids, num_cameras, seed):
    """Distractors (id 0: strangers, often cut off, or empty scenes) and junk (id -1: body-part fragments)."""
    rng = _rng(seed, _EXTRA)
    jobs = []
    for index in range(max(2, num_test_ids // 2)):
        stranger = make_identity(rng) if rng.random() < 0.75 else None
        crop = None
        if rng.random() < 0.5:
            x0, y0 = rng.uniform(0, 0.4), rng.uniform(0, 0.5)
            crop = (x0, y0, x0 + rng.uniform(0.5, 0.6), y0 + rng.uniform(0.4, 0.5))
        jobs.append(("gallery", 0, int(rng.integers(num_cameras)), index, stranger, crop))
    for index in range(max(2, num_test_ids // 4)):
        x0, y0 = rng.uniform(0.1, 0.6), rng.uniform(0.1, 0.7)
        crop = (x0, y0, x0 + rng.uniform(0.2, 0.35), y0 + rng.uniform(0.15, 0.3))
        jobs.append(("gallery", -1, int(rng.integers(num_cameras)), index, make_identity(rng), crop))
    return jobs


def ensure(root, verbose=True, **options):
    """Generate the dataset into ``root`` unless that folder already exists (and is not empty)."""
    if os.path.isdir(root) and os.listdir(root):
        return root
    settings = {**DEFAULTS, **options}
    if verbose:
        print(f"Generating the synthetic dataset in {root} ({settings['num_train_ids']} train ids, "
              f"{settings['num_test_ids']} test ids, {settings['num_cameras']} cameras, "
              f"{settings['height']}x{settings['width']} images, seed {settings['seed']}) ...", flush=True)
    started = time.perf_counter()
    count = generate(root, **settings)
    if verbose:
        print(f"Generated {count} images in {time.perf_counter() - started:.1f} s.")
    return root


def get_args_parser():
    parser = argparse.ArgumentParser(prog="python -m reid.datasets.synthetic", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", metavar="OUT_DIR", help="folder to create (must not exist, or be empty)")
    parser.add_argument("--train-ids", type=int, default=DEFAULTS["num_train_ids"])
    parser.add_argument("--test-ids", type=int, default=DEFAULTS["num_test_ids"])
    parser.add_argument("--cameras", type=int, default=DEFAULTS["num_cameras"])
    parser.add_argument("--images-per-camera", type=int, default=DEFAULTS["images_per_camera"],
                        help="images of each identity per camera (this many or one fewer)")
    parser.add_argument("--height", type=int, default=DEFAULTS["height"])
    parser.add_argument("--width", type=int, default=DEFAULTS["width"])
    parser.add_argument("--seed", type=int, default=DEFAULTS["seed"])
    return parser


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    started = time.perf_counter()
    try:
        count = generate(args.out_dir, num_train_ids=args.train_ids, num_test_ids=args.test_ids,
                         num_cameras=args.cameras, images_per_camera=args.images_per_camera, height=args.height,
                         width=args.width, seed=args.seed)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"Generated {count} images in {args.out_dir} in {time.perf_counter() - started:.1f} s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
