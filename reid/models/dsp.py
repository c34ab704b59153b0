"""The DSP network: ResNet backbone + DSA blocks + deep-supervision heads + PCB part classifiers.

```
image -> stem -> layer1 -> DSA1 -> layer2 -> DSA2 -> layer3 -> DSA3 -> layer4 (last stride 1)
                            |DS1            |DS2             |DS3        +-> P stripes -> reduce -> P1..Pn
                            L1              L2               L3          +-> mean of reduced stripes -> L4
```

With ``bnneck`` the part and global heads follow the BNNeck of Luo et al. (2019): each pooled vector (a stripe,
or the global average of layer4) goes through its own batch norm (bias fixed at 0) into a bias-free classifier,
and the retrieval feature is taken after that batch norm.
"""
from collections import OrderedDict
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet

from .attention import DSA

FEATURES = ("parts", "reduced", "global")


class TrainingOutput(NamedTuple):
    """What ``DSP`` returns in training mode: every classifier's logits and the embedding for metric losses.

    ``embedding`` is the retrieval feature before its L2 normalisation and before the BNNeck (the stripes of
    ``parts`` or ``reduced`` concatenated, or the global average), (B, D): what a triplet loss trains.
    """

    part_logits: tuple
    global_logits: torch.Tensor
    ds_logits: tuple
    embedding: torch.Tensor


def _init_classifier(linear):
    nn.init.normal_(linear.weight, std=0.001)
    if linear.bias is not None:
        nn.init.zeros_(linear.bias)


def _bnneck(channels):
    """A BNNeck batch norm: learned scale, shift fixed at 0 (as in the BoT code)."""
    norm = nn.BatchNorm1d(channels)
    norm.bias.requires_grad_(False)
    return norm


class DeepSupervisionHead(nn.Module):
    """Global average pooling -> linear reduction -> BN -> ReLU -> identity classifier."""

    def __init__(self, in_channels, num_features, num_classes):
        super().__init__()
        self.reduce = nn.Sequential(
            nn.Linear(in_channels, num_features, bias=False),
            nn.BatchNorm1d(num_features),
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Linear(num_features, num_classes)
        nn.init.kaiming_normal_(self.reduce[0].weight, mode="fan_out")
        _init_classifier(self.classifier)

    def forward(self, x):
        return self.classifier(self.reduce(F.adaptive_avg_pool2d(x, 1).flatten(1)))


class PartHead(nn.Module):
    """PCB head: horizontal stripes -> dropout -> shared 1x1 reduction -> one classifier per stripe; L4 classifies
    the mean of the reduced stripe vectors.

    With ``bnneck``: each stripe -> its batch norm -> a bias-free classifier, and L4 classifies the batch-normed
    global average of layer4 (no dropout, no reduction: the BoT head on every stripe).
    """

    def __init__(self, in_channels, num_features, num_classes, parts, dropout, bnneck=False):
        super().__init__()
        self.parts = parts
        self.bnneck = bnneck
        if bnneck:
            self.part_necks = nn.ModuleList(_bnneck(in_channels) for _ in range(parts))
            self.global_neck = _bnneck(in_channels)
            width = in_channels
        else:
            self.dropout = nn.Dropout(dropout)
            self.reduce = nn.Sequential(
                nn.Conv2d(in_channels, num_features, kernel_size=1, bias=False),
                nn.BatchNorm2d(num_features),
                nn.ReLU(inplace=True),
            )
            width = num_features
        self.part_classifiers = nn.ModuleList(nn.Linear(width, num_classes, bias=not bnneck) for _ in range(parts))
        self.global_classifier = nn.Linear(width, num_classes, bias=not bnneck)
        if not bnneck:
            nn.init.kaiming_normal_(self.reduce[0].weight, mode="fan_out")
        for classifier in [*self.part_classifiers, self.global_classifier]:
            _init_classifier(classifier)

    def stripes(self, feature_map):
        """(B, C, H, W) -> (B, C, parts): average over each horizontal stripe, for any H."""
        return F.adaptive_avg_pool2d(feature_map, (self.parts, 1)).flatten(2)

    def reduced(self, stripes):
        """(B, C, parts) -> (B, num_features, parts)."""
        return self.reduce(self.dropout(stripes).unsqueeze(-1)).squeeze(-1)

    def necked_stripes(self, stripes):
        """(B, C, parts) -> the same after each stripe's BNNeck."""
        return torch.stack([neck(stripes[:, :, i]) for i, neck in enumerate(self.part_necks)], dim=2)

    def forward(self, layer4):
        """(part logits P1..Pn, global logits L4, the reduced stripes, or None with ``bnneck``)."""
        stripes = self.stripes(layer4)
        if self.bnneck:
            reduced = None
            part_inputs = self.necked_stripes(stripes).unbind(dim=2)
            global_input = self.global_neck(global_average(layer4))
        else:
            reduced = self.reduced(stripes)
            part_inputs = [reduced[:, :, i] for i in range(self.parts)]
            global_input = reduced.mean(dim=2)
        part_logits = tuple(classifier(x) for classifier, x in zip(self.part_classifiers, part_inputs))
        return part_logits, self.global_classifier(global_input), reduced


def global_average(feature_map):
    """(B, C, H, W) -> (B, C)."""
    return F.adaptive_avg_pool2d(feature_map, 1).flatten(1)


class DSP(nn.Module):
    """ResNet with DSA after layer1..3, deep supervision on their outputs and a PCB head on layer4.

    ``dsa`` and ``deep_supervision`` switch the paper's ablation parts off; ``parts`` sets the stripes;
    ``feature`` chooses the retrieval feature returned in eval mode: ``parts`` (the stripe-pooled layer4
    vectors, each L2-normalised, concatenated), ``reduced`` (the reduced stripe vectors, likewise) or
    ``global`` (the L2-normalised average of layer4). ``bnneck`` puts a BNNeck on the part and global heads;
    the retrieval feature (``parts`` or ``global``) is then taken after its batch norm.
    """

    def __init__(self, arch, num_classes, num_features=256, dropout=0.5, dsa=True, deep_supervision=True,
                 parts=6, feature="parts", bnneck=False):
        super().__init__()
        if feature not in FEATURES:
            raise ValueError(f"feature must be one of {FEATURES}, got {feature!r}")
        if bnneck and feature == "reduced":
            raise ValueError("the 'reduced' feature has no BNNeck form (the BNNeck head has no reduction); "
                             "use 'parts' or 'global' with bnneck")
        if parts < 1 or num_classes < 1 or num_features < 1:
            raise ValueError("parts, num_classes and num_features must be positive")
        backbone = getattr(resnet, arch)(weights=None)
        _set_last_stride_one(backbone.layer4)
        self.arch = arch
        self.feature = feature
        self.options = dict(num_classes=num_classes, num_features=num_features, dropout=dropout, dsa=dsa,
                            deep_supervision=deep_supervision, parts=parts, feature=feature, bnneck=bnneck)
        self.stem = nn.Sequential(backbone.conv1, backbone.bn1, backbone.relu, backbone.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            backbone.layer1, backbone.layer2, backbone.layer3, backbone.layer4)
        channels = [_out_channels(layer) for layer in (self.layer1, self.layer2, self.layer3, self.layer4)]
        self.dsa = nn.ModuleList(DSA(c) if dsa else nn.Identity() for c in channels[:3])
        self.deep_supervision = (
            nn.ModuleList(DeepSupervisionHead(c, num_features, num_classes) for c in channels[:3])
            if deep_supervision else None)
        self.part_head = PartHead(channels[3], num_features, num_classes, parts, dropout, bnneck)

    def backbone_modules(self):
        """The modules that ImageNet weights initialise (trained at a lower learning rate)."""
        return [self.stem, self.layer1, self.layer2, self.layer3, self.layer4]

    def _trunk(self, x, maps=None):
        """Run the backbone with the DSA blocks; return layer4 and the DSA outputs feeding DS heads.

        When ``maps`` is a dict, every layer's output and every DSA gate are recorded in it.
        """
        x = self.stem(x)
        attended = []
        for k, (layer, dsa) in enumerate(zip((self.layer1, self.layer2, self.layer3), self.dsa), start=1):
            x = layer(x)
            if maps is not None and isinstance(dsa, DSA):
                maps[f"dsa{k}"] = dsa.gate(x)
            x = dsa(x)
            attended.append(x)
            if maps is not None:
                maps[f"layer{k}"] = x
        x = self.layer4(x)
        if maps is not None:
            maps["layer4"] = x
        return x, attended

    def forward(self, x):
        """Training: a ``TrainingOutput``. Eval: the retrieval feature."""
        layer4, attended = self._trunk(x)
        if not self.training:
            return self.retrieval_feature(layer4)
        part_logits, global_logits, reduced = self.part_head(layer4)
        ds_logits = ()
        if self.deep_supervision is not None:
            ds_logits = tuple(head(feature_map) for head, feature_map in zip(self.deep_supervision, attended))
        return TrainingOutput(part_logits, global_logits, ds_logits, self._embedding(layer4, reduced))

    def identity_logits(self, x):
        """Identity scores in any mode, with gradients (for Grad-CAM): the mean of the part logits P1..Pn."""
        layer4, _ = self._trunk(x)
        part_logits, _, _ = self.part_head(layer4)
        return torch.stack(part_logits).mean(dim=0)

    def _embedding(self, layer4, reduced):
        """The retrieval feature before its normalisation and the BNNeck (training mode: ``reduced`` is the
        part head's, dropout included)."""
        if self.feature == "global":
            return global_average(layer4)
        stripes = reduced if self.feature == "reduced" else self.part_head.stripes(layer4)
        return stripes.transpose(1, 2).flatten(1)

    def retrieval_feature(self, layer4):
        bnneck = self.part_head.bnneck
        if self.feature == "global":
            feature = global_average(layer4)
            return F.normalize(self.part_head.global_neck(feature) if bnneck else feature, dim=1)
        stripes = self.part_head.stripes(layer4)
        if self.feature == "reduced":
            stripes = self.part_head.reduced(stripes)
        elif bnneck:
            stripes = self.part_head.necked_stripes(stripes)
        return F.normalize(stripes, dim=1).transpose(1, 2).flatten(1)

    @torch.no_grad()
    def feature_maps(self, x):
        """Intermediate maps for visualisation: ``layer1``..``layer4`` (layer k<4 after its DSA block)
        and ``dsa1``..``dsa3`` (the fused gates, when DSA is on), each (B, C, h, w)."""
        maps = OrderedDict()
        self._trunk(x, maps)
        return maps


def _out_channels(layer):
    block = layer[-1]
    return (block.bn3 if hasattr(block, "bn3") else block.bn2).num_features


def _set_last_stride_one(layer4):
    """Keep layer4 at the resolution of layer3 (PCB's 'last stride 1'): 384x128 -> 24x8."""
    first = layer4[0]
    strided_conv = first.conv2 if hasattr(first, "conv3") else first.conv1
    strided_conv.stride = (1, 1)
    if first.downsample is not None:
        first.downsample[0].stride = (1, 1)
