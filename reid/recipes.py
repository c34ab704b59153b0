"""Training recipes: named presets of the training flags (``--recipe paper|strong``), and their checks.

``paper`` (the default) is the DSP paper's training, every flag at its default. ``strong`` takes the settings of
the "bag of tricks" baseline (Luo et al., "Bag of Tricks and A Strong Baseline for Deep Person
Re-identification", CVPR workshops 2019): Adam at 3.5e-4 with 10 warm-up epochs and lr x0.1 at epochs 40 and 70
of 120, label smoothing 0.1, a batch-hard triplet loss (margin 0.3) on P x K = 16 x 4 batches (with the default
``-b 64``), random erasing 0.5 and BNNeck heads. A flag given on the command line overrides its preset value.
"""
import dataclasses

from .config import RunConfig
from .errors import UsageError
from .trainer import ADAM_BETAS

RECIPES = ("paper", "strong")

# Every setting a recipe governs: its place in a RunConfig ("section.field") and its main.py flag.
FLAGS = {
    "train.optimizer": "--optimizer",
    "train.lr": "--lr",
    "train.weight_decay": "--weight-decay",
    "train.lr_schedule": "--lr-schedule",
    "train.milestones": "--milestones",
    "train.epochs": "--epochs",
    "train.warmup_epochs": "--warmup-epochs",
    "train.label_smoothing": "--label-smoothing",
    "train.triplet_weight": "--triplet-weight",
    "train.margin": "--margin",
    "data.num_instances": "--num-instances",
    "data.random_erasing": "--random-erasing",
    "model.bnneck": "--bnneck",
}

PRESETS = {
    "paper": {},
    "strong": {
        "train.optimizer": "adam",
        "train.lr": 3.5e-4,
        "train.weight_decay": 5e-4,
        "train.lr_schedule": "step",
        "train.milestones": [40, 70],
        "train.epochs": 120,
        "train.warmup_epochs": 10,
        "train.label_smoothing": 0.1,
        "train.triplet_weight": 1.0,
        "train.margin": 0.3,
        "data.num_instances": 4,
        "data.random_erasing": 0.5,
        "model.bnneck": True,
    },
}

# Settings compared when a checkpoint is resumed under another recipe (the run's length may change).
RESUME_CHECKED = [path for path in FLAGS if path != "train.epochs"]


def dest(flag):
    """The argparse destination of a long flag: ``--warmup-epochs`` -> ``warmup_epochs``."""
    return flag.lstrip("-").replace("-", "_")


def apply(recipe, config, explicit):
    """``config`` (a RunConfig) with the preset values of ``recipe`` for every setting whose flag is not in
    ``explicit`` (the argparse destinations the user gave), and ``train.recipe`` set to ``recipe``.

    An explicit ``--step-size`` also keeps the preset's milestones out, since milestones would override it.
    """
    if recipe not in RECIPES:
        raise UsageError(f"Unknown --recipe {recipe!r}; choose one of: {', '.join(RECIPES)}.")
    changes = {"train": {"recipe": recipe}}
    for path, value in PRESETS[recipe].items():
        given = dest(FLAGS[path]) in explicit or (path == "train.milestones" and "step_size" in explicit)
        if not given:
            section, name = path.split(".")
            changes.setdefault(section, {})[name] = value
    sections = {section: dataclasses.replace(getattr(config, section), **values)
                for section, values in changes.items()}
    return dataclasses.replace(config, **sections)


def validate(config):
    """Refuse settings that cannot train together, or under which nothing trains, with a UsageError naming the
    flags (an unknown --optimizer or --lr-schedule is refused by ``reid.trainer``; a single training identity, and
    one identity per batch with the triplet loss, by ``reid.experiment`` once the data is loaded)."""
    train, data = config.train, config.data
    if not 0 <= train.label_smoothing < 1:
        raise UsageError(f"--label-smoothing must be in [0, 1), got {train.label_smoothing}.")
    if train.warmup_epochs < 0 or train.triplet_weight < 0 or train.margin < 0:
        raise UsageError("--warmup-epochs, --triplet-weight and --margin must be 0 or more.")
    milestones = list(train.milestones)
    if milestones and (milestones != sorted(set(milestones)) or milestones[0] < 1):
        raise UsageError(f"--milestones must be increasing epoch numbers of at least 1, got {milestones}.")
    if train.triplet_weight > 0 and data.num_instances < 2:
        raise UsageError(
            f"--triplet-weight {train.triplet_weight} needs batches that hold several images of each identity: "
            f"add --num-instances K with K of at least 2 (4 in the strong recipe; -b/--batch-size must be a "
            f"multiple of K), or set --triplet-weight 0.")
    if config.model.bnneck and config.model.feature == "reduced":
        raise UsageError("--bnneck has no reduced feature (its heads classify the stripes themselves): use "
                         "--feature parts or --feature global with it.")
    trains = train.epochs > 0 and not config.evaluate
    if trains and train.lr_schedule == "cosine" and train.warmup_epochs >= train.epochs:
        raise UsageError(
            f"--lr-schedule cosine with --warmup-epochs {train.warmup_epochs}{_origin(config, 'train.warmup_epochs')} "
            f"and --epochs {train.epochs} trains at lr 0 at every step: the cosine starts where the warm-up ends, and "
            f"the run ends before that. Use --warmup-epochs below {train.epochs}, or more --epochs.")


def ineffective(config, explicit):
    """Warnings, one line each naming the flag, for settings that have no effect in this run, or not the one they
    seem to ask for (``explicit``: the argparse destinations given on the command line). A user may mean them, so
    they are not refused; ``validate`` refuses the settings under which nothing trains."""
    train, data = config.train, config.data
    if config.evaluate:
        return []
    if train.epochs == 0:
        built_as = "its ImageNet backbone and untrained heads" if config.pretrained or config.pretrained_path else \
            "random weights"
        return [] if config.resume else [f"--epochs 0 trains nothing: the model is evaluated with {built_as}."]
    messages = []
    if train.warmup_epochs >= train.epochs:
        messages.append(f"--warmup-epochs {train.warmup_epochs}{_origin(config, 'train.warmup_epochs')} lasts the "
                        f"whole run (--epochs {train.epochs}): the lr rises at every step and reaches --lr "
                        f"{train.lr} only at the last step, if at all.")
    if train.lr_schedule == "cosine":
        ignored = [flag for flag in ("--milestones", "--step-size") if dest(flag) in explicit]
        if ignored:
            messages.append(f"{' and '.join(ignored)} {'has' if len(ignored) == 1 else 'have'} no effect with "
                            f"--lr-schedule cosine, which lowers the lr at every step.")
    elif train.milestones:
        unreached = [str(epoch) for epoch in train.milestones if epoch >= train.epochs]
        if unreached:
            messages.append(f"--milestones {' '.join(unreached)}{_origin(config, 'train.milestones')}: the run ends "
                            f"before {'that epoch' if len(unreached) == 1 else 'those epochs'} (--epochs "
                            f"{train.epochs}), so the lr is not lowered there.")
        if "step_size" in explicit:
            messages.append(f"--step-size {train.step_size} has no effect: --milestones "
                            f"{_format(list(train.milestones))} set when the lr is lowered.")
    elif "step_size" in explicit and train.step_size >= train.epochs:
        messages.append(f"--step-size {train.step_size} is not shorter than the run (--epochs {train.epochs}): the "
                        f"lr is never lowered.")
    if train.optimizer == "adam" and "momentum" in explicit:
        messages.append(f"--momentum {train.momentum} has no effect with --optimizer adam"
                        f"{_origin(config, 'train.optimizer')}, which uses its betas {ADAM_BETAS}; it applies to "
                        f"--optimizer sgd.")
    if not train.triplet_weight and "margin" in explicit:
        messages.append(f"--margin {train.margin} has no effect without the triplet loss (--triplet-weight 0).")
    if not config.model.deep_supervision and "ds_weight" in explicit:
        messages.append(f"--ds-weight {train.ds_weight} has no effect with --no-deep-supervision (there are no "
                        f"L1..L3 heads).")
    if data.combine_trainval and "num_val" in explicit:
        messages.append(f"--num-val {data.num_val} has no effect with --combine-trainval, which holds no identity "
                        f"out for validation.")
    return messages


def _origin(config, path):
    """`` (the strong recipe's preset)`` when the setting at ``path`` has its recipe's preset value, else ``""``."""
    recipe = config.train.recipe
    value = _value(config.to_dict(), path)
    preset = PRESETS.get(recipe, {})
    return f" (the {recipe} recipe's preset)" if path in preset and value == preset[path] else ""


def _value(run, path):
    """A setting of a saved run (``RunConfig.to_dict()``, or ``{"format_1_args": args}`` of a format-1
    checkpoint, which only knew the paper recipe), with RunConfig's default where it is missing."""
    section, name = path.split(".")
    default = getattr(getattr(RunConfig(), section), name)
    if isinstance(run.get(section), dict):
        value = run[section].get(name, default)
    else:
        value = (run.get("format_1_args") or {}).get(name, default)
    return list(value) if isinstance(value, (list, tuple)) else value


def recipe_of(run):
    """The recipe a saved run was trained with ("paper" for runs from before recipes existed)."""
    return _value(run, "train.recipe")


def check_resume(saved_run, current, source):
    """Refuse to resume the checkpoint ``source`` (its run: ``saved_run``) under ``current`` (a RunConfig) when
    the two would train differently: another recipe, unless every setting the recipes govern has the
    checkpoint's value, or, whatever the recipe, another optimiser (its state cannot carry over)."""
    now = current.to_dict()
    saved_recipe, recipe = recipe_of(saved_run), current.train.recipe
    differences = [_difference(FLAGS[path], _value(now, path), _value(saved_run, path))
                   for path in RESUME_CHECKED if _value(now, path) != _value(saved_run, path)]
    if saved_recipe != recipe and differences:
        raise UsageError(
            f"The checkpoint {source} was trained with --recipe {saved_recipe}, and this run asks for --recipe "
            f"{recipe}, which trains differently: {'; '.join(differences)}. Resume with --recipe {saved_recipe} "
            f"(and the same flags as that run), or give those flags their checkpoint values.")
    saved_optimizer = _value(saved_run, "train.optimizer")
    if saved_optimizer != current.train.optimizer:
        raise UsageError(
            f"The checkpoint {source} was trained with --optimizer {saved_optimizer}, this run asks for "
            f"{current.train.optimizer}: the optimiser's state cannot continue in another one. Resume with "
            f"--optimizer {saved_optimizer}, or train from scratch.")


def describe(run):
    """The recipe of a saved run and the settings where it departs from that recipe, e.g.
    ``strong (--milestones 8, --warmup-epochs 1)`` (the number of epochs is left out); for ``reid.report``."""
    recipe = recipe_of(run)
    preset = PRESETS.get(recipe, {})
    departures = [_as_flag(FLAGS[path], _value(run, path)) for path in RESUME_CHECKED
                  if _value(run, path) != preset.get(path, _value({}, path))]
    return f"{recipe} ({', '.join(departures)})" if departures else recipe


def _difference(flag, value, saved):
    saved_text = _as_flag(flag, saved) if isinstance(saved, bool) else _format(saved)
    return f"{_as_flag(flag, value)} (checkpoint: {saved_text})"


def _as_flag(flag, value):
    if isinstance(value, bool):
        return flag if value else f"--no-{flag[2:]}"
    return f"{flag} {_format(value)}"


def _format(value):
    if isinstance(value, list):
        return " ".join(str(item) for item in value) or "(none)"
    return str(value)
