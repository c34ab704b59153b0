"""Dataset factory: ``create('market', root)`` returns a ``ReidDataset`` of ``(path, pid, camid)`` lists."""
import os

from ..errors import UsageError
from . import base, cuhk03np, custom, duke, market, msmt17
from .base import ReidDataset, parse_name

__all__ = ["ReidDataset", "canonical_name", "create", "names", "parse_name", "parse_test_dataset"]

_TITLES = {"market": market.TITLE, "duke": duke.TITLE, "msmt17": msmt17.TITLE, "cuhk03-np": cuhk03np.TITLE,
           "custom": custom.TITLE, "synthetic": "Synthetic"}
_MARKET_LAYOUT = {"market": market, "duke": duke, "synthetic": market}
_ALIASES = {"market1501": "market", "market-1501": "market", "dukemtmc": "duke", "dukemtmc-reid": "duke",
            "msmt17_v1": "msmt17", "msmt17_v2": "msmt17", "msmt": "msmt17", "cuhk03np": "cuhk03-np",
            "cuhk03": "cuhk03-np"}


def names():
    return list(_TITLES)


def canonical_name(name, flag="-d/--dataset"):
    """The dataset's name for a name or alias (any case); a UsageError naming ``flag`` otherwise."""
    key = name.lower()
    key = _ALIASES.get(key, key)
    if key not in _TITLES:
        raise UsageError(f"Unknown dataset {name!r} ({flag}); choose one of: {', '.join(names())} "
                         f"(aliases: {', '.join(_ALIASES)}).")
    return key


def parse_test_dataset(spec):
    """``(name, root)`` of a ``--test-dataset NAME[:DIR]`` value; the folder defaults to ``data/<name>``."""
    name, separator, root = spec.partition(":")
    if separator and not root:
        raise UsageError(f"--test-dataset {spec!r} names no folder after the colon; write NAME or NAME:DIR "
                         f"(e.g. market:data/Market-1501).")
    name = canonical_name(name, flag="--test-dataset")
    return name, root or os.path.join("data", name)


def _read_splits(name, root, cuhk03, custom_options):
    if name == "msmt17":
        return msmt17.load(root)
    if name == "cuhk03-np":
        return cuhk03np.load(root, variant=cuhk03)
    if name == "custom":
        return custom.load(root, **custom_options)
    return _MARKET_LAYOUT[name].load(root, name=_TITLES[name])


def create(name, root, combine_trainval=False, num_val=100, verbose=True, cuhk03="labeled", name_pattern=None,
           camera_ranges=None, split=None):
    """Load dataset ``name`` from the folder ``root``.

    Unless ``combine_trainval``, ``num_val`` training identities are held out as val_query/val_gallery.
    ``cuhk03`` (``labeled`` or ``detected``) picks CUHK03-NP's variant. ``name_pattern`` (the file-name
    pattern), ``camera_ranges`` (cameras by image-index range) and ``split`` (``parity``: split one folder of
    every image by identity) are the custom dataset's; other datasets ignore them. The synthetic dataset is
    generated into ``root`` first when that folder does not exist.
    """
    name = canonical_name(name)
    root = str(root)
    if name == "synthetic":
        from . import synthetic  # imported here so that `python -m reid.datasets.synthetic` runs cleanly
        synthetic.ensure(root, verbose=verbose)
    custom_options = dict(name_pattern=name_pattern, camera_ranges=camera_ranges, split=split)
    splits = _read_splits(name, root, cuhk03, custom_options)
    dataset = base.build_dataset(name, root, splits, combine_trainval, num_val)
    if verbose:
        print(dataset.summary(splits.title or _TITLES[name]))
    return dataset
