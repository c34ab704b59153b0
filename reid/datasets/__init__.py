"""Dataset factory: ``create('market', root)`` returns a ``ReidDataset`` of ``(path, pid, camid)`` lists."""
from ..errors import UsageError
from . import base, duke, market
from .base import ReidDataset, parse_name

__all__ = ["ReidDataset", "canonical_name", "create", "names", "parse_name"]

_LOADERS = {"market": market, "duke": duke, "synthetic": market}
_TITLES = {"market": market.TITLE, "duke": duke.TITLE, "synthetic": "Synthetic"}
_ALIASES = {"market1501": "market", "market-1501": "market", "dukemtmc": "duke", "dukemtmc-reid": "duke"}


def names():
    return list(_LOADERS)


def canonical_name(name):
    """``'market'``, ``'duke'`` or ``'synthetic'`` for a name or alias (any case); UsageError otherwise."""
    key = name.lower()
    key = _ALIASES.get(key, key)
    if key not in _LOADERS:
        raise UsageError(f"Unknown dataset {name!r} (-d/--dataset); choose one of: {', '.join(names())} "
                         f"(aliases: {', '.join(_ALIASES)}).")
    return key


def create(name, root, combine_trainval=False, num_val=100, verbose=True):
    """Load dataset ``name`` from the folder ``root``.

    Unless ``combine_trainval``, ``num_val`` training identities are held out as val_query/val_gallery.
    The synthetic dataset is generated into ``root`` first when that folder does not exist.
    """
    name = canonical_name(name)
    root = str(root)
    if name == "synthetic":
        from . import synthetic  # imported here so that `python -m reid.datasets.synthetic` runs cleanly
        synthetic.ensure(root, verbose=verbose)
    train, query, gallery, num_ignored = _LOADERS[name].load(root, name=_TITLES[name])
    dataset = base.build_dataset(name, root, train, query, gallery, num_ignored, combine_trainval, num_val)
    if verbose:
        print(dataset.summary(_TITLES[name]))
    return dataset
