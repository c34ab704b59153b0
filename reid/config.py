"""The settings of a run, as typed dataclasses: what each part of the package needs, and nothing else.

``main.py`` turns its flags into a ``RunConfig``; library functions take the part they use (a ``DataConfig``
for the loaders, a ``TrainConfig`` for the optimiser, an ``EvalConfig`` for the evaluator). ``ModelConfig``
is what a checkpoint stores to rebuild its model.
"""
import dataclasses
from dataclasses import dataclass, field

DEFAULT_INPUT_SIZE = (384, 128)


@dataclass
class ModelConfig:
    """The arguments of ``reid.models.create`` that fix the model's architecture (and its checkpoint's keys)."""

    arch: str = "resnet50"
    num_classes: int = 751
    num_features: int = 256
    dropout: float = 0.5
    dsa: bool = True
    deep_supervision: bool = True
    parts: int = 6
    feature: str = "parts"
    bnneck: bool = False

    @classmethod
    def from_dict(cls, values):
        """A ModelConfig from a dict (a checkpoint's), ignoring keys it does not know; TypeError/KeyError when
        ``values`` is not a dict or lacks ``arch`` or ``num_classes``."""
        known = {f.name for f in dataclasses.fields(cls)}
        values = dict(values)
        for required in ("arch", "num_classes"):
            if required not in values:
                raise KeyError(required)
        return cls(**{key: value for key, value in values.items() if key in known})


@dataclass
class DataConfig:
    """Which images, and how they are batched and augmented for training."""

    dataset: str = "market"
    root: str = "data/market"
    batch_size: int = 64
    workers: int = 4
    height: int = 384  # main.py resolves its None default from the checkpoint (see data.input_size)
    width: int = 128
    combine_trainval: bool = False
    num_val: int = 100
    num_instances: int = 0
    random_erasing: float = 0.0
    cache_images: bool = False
    seed: int = 1
    cuhk03: str = "labeled"
    name_pattern: str = None
    camera_ranges: str = None  # -d custom: "0-4,5-9", cameras 1 and 2 by the file name's image index
    split: str = None  # -d custom: "parity" splits one folder of every image by identity


@dataclass
class TrainConfig:
    """The optimiser, its schedule and the loss weights."""

    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    epochs: int = 60
    step_size: int = 40
    milestones: list = field(default_factory=list)
    part_weight: float = 1.0
    ds_weight: float = 1.0
    recipe: str = "paper"
    optimizer: str = "sgd"
    lr_schedule: str = "step"
    warmup_epochs: int = 0
    label_smoothing: float = 0.0
    triplet_weight: float = 0.0
    margin: float = 0.3
    seed: int = 1
    deterministic: bool = False
    print_freq: int = 10
    eval_freq: int = 5


@dataclass
class EvalConfig:
    """How features are extracted and ranked."""

    batch_size: int = 64
    workers: int = 4
    height: int = 384
    width: int = 128
    metric: str = "euclidean"
    rerank: bool = False
    flip_test: bool = False
    visrank: int = 0
    eval_dtype: str = "float32"


@dataclass
class DeviceConfig:
    """Where and how fast: the device and the CUDA-only speed options."""

    device: str = None
    amp: bool = False
    channels_last: bool = False
    compile: bool = False
    sync_bn: bool = False


@dataclass
class RunConfig:
    """Everything ``main.py`` was asked to do."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    device: DeviceConfig = field(default_factory=DeviceConfig)
    pretrained: bool = True
    pretrained_path: str = None
    resume: str = None
    evaluate: bool = False
    logs_dir: str = "logs"
    overwrite: bool = False
    tensorboard: bool = True  # event files in logs_dir (reid.tensorboard_log)
    test_datasets: list = field(default_factory=list)  # [name, root] pairs evaluated after the test
    command: list = field(default_factory=list)

    def to_dict(self):
        return dataclasses.asdict(self)
