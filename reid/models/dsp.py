"""The DSP network: ResNet backbone + DSA blocks + deep-supervision heads + PCB part classifiers.

```
image -> stem -> layer1 -> DSA1 -> layer2 -> DSA2 -> layer3 -> DSA3 -> layer4 (last stride 1)
                            |DS1            |DS2             |DS3        +-> P stripes -> reduce -> P1..Pn
                            L1              L2               L3          +-> mean of reduced stripes -> L4
```
"""
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet

from .attention import DSA

FEATURES = ("parts", "reduced", "global")


def _init_classifier(linear):
    nn.init.normal_(linear.weight, std=0.001)
    nn.init.zeros_(linear.bias)


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
    """PCB head: horizontal stripes -> dropout -> shared 1x1 reduction -> one classifier per stripe.

    L4 classifies the mean of the reduced stripe vectors.
    """

    def __init__(self, in_channels, num_features, num_classes, parts, dropout):
        super().__init__()
        self.parts = parts
        self.dropout = nn.Dropout(dropout)
        self.reduce = nn.Sequential(
            nn.Conv2d(in_channels, num_features, kernel_size=1, bias=False),
            nn.BatchNorm2d(num_features),
            nn.ReLU(inplace=True),
        )
        self.part_classifiers = nn.ModuleList(nn.Linear(num_features, num_classes) for _ in range(parts))
        self.global_classifier = nn.Linear(num_features, num_classes)
        nn.init.kaiming_normal_(self.reduce[0].weight, mode="fan_out")
        for classifier in [*self.part_classifiers, self.global_classifier]:
            _init_classifier(classifier)

    def stripes(self, feature_map):
        """(B, C, H, W) -> (B, C, parts): average over each horizontal stripe, for any H."""
        return F.adaptive_avg_pool2d(feature_map, (self.parts, 1)).flatten(2)

    def reduced(self, stripes):
        """(B, C, parts) -> (B, num_features, parts)."""
        return self.reduce(self.dropout(stripes).unsqueeze(-1)).squeeze(-1)

    def forward(self, stripes):
        reduced = self.reduced(stripes)
        logits = OrderedDict(
            (f"P{i + 1}", classifier(reduced[:, :, i])) for i, classifier in enumerate(self.part_classifiers)
        )
        logits["L4"] = self.global_classifier(reduced.mean(dim=2))
        return logits


class DSP(nn.Module):
    """ResNet with DSA after layer1..3, deep supervision on their outputs and a PCB head on layer4.

    ``dsa`` and ``deep_supervision`` switch the paper's ablation parts off; ``parts`` sets the stripes;
    ``feature`` chooses the retrieval feature returned in eval mode: ``parts`` (the stripe-pooled layer4
    vectors, each L2-normalised, concatenated), ``reduced`` (the reduced stripe vectors, likewise) or
    ``global`` (the L2-normalised average of layer4).
    """

    def __init__(self, arch, num_classes, num_features=256, dropout=0.5, dsa=True, deep_supervision=True,
                 parts=6, feature="parts"):
        super().__init__()
        if feature not in FEATURES:
            raise ValueError(f"feature must be one of {FEATURES}, got {feature!r}")
        if parts < 1 or num_classes < 1 or num_features < 1:
            raise ValueError("parts, num_classes and num_features must be positive")
        backbone = getattr(resnet, arch)(weights=None)
        _set_last_stride_one(backbone.layer4)
        self.arch = arch
        self.feature = feature
        self.options = dict(num_classes=num_classes, num_features=num_features, dropout=dropout, dsa=dsa,
                            deep_supervision=deep_supervision, parts=parts, feature=feature)
        self.stem = nn.Sequential(backbone.conv1, backbone.bn1, backbone.relu, backbone.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            backbone.layer1, backbone.layer2, backbone.layer3, backbone.layer4)
        channels = [_out_channels(layer) for layer in (self.layer1, self.layer2, self.layer3, self.layer4)]
        self.dsa = nn.ModuleList(DSA(c) if dsa else nn.Identity() for c in channels[:3])
        self.deep_supervision = (
            nn.ModuleList(DeepSupervisionHead(c, num_features, num_classes) for c in channels[:3])
            if deep_supervision else None)
        self.part_head = PartHead(channels[3], num_features, num_classes, parts, dropout)

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
        """Training: an ordered dict of logits (P1..Pn, L4, then L1..L3). Eval: the retrieval feature."""
        layer4, attended = self._trunk(x)
        if self.training:
            logits = self.part_head(self.part_head.stripes(layer4))
            if self.deep_supervision is not None:
                for k, (head, feature_map) in enumerate(zip(self.deep_supervision, attended), start=1):
                    logits[f"L{k}"] = head(feature_map)
            return logits
        return self.retrieval_feature(layer4)

    def identity_logits(self, x):
        """Identity scores in any mode, with gradients (for Grad-CAM): the mean of the part logits P1..Pn."""
        layer4, _ = self._trunk(x)
        logits = self.part_head(self.part_head.stripes(layer4))
        return torch.stack([logits[f"P{i + 1}"] for i in range(self.part_head.parts)]).mean(dim=0)

    def retrieval_feature(self, layer4):
        if self.feature == "global":
            return F.normalize(F.adaptive_avg_pool2d(layer4, 1).flatten(1), dim=1)
        stripes = self.part_head.stripes(layer4)
        if self.feature == "reduced":
            stripes = self.part_head.reduced(stripes)
        return F.normalize(stripes, dim=1).transpose(1, 2).flatten(1)

    @torch.no_grad()
    def feature_maps(self, x):
        """Intermediate maps for visualisation: ``layer1``..``layer4`` (layer k<4 after its DSA block)
        and ``dsa1``..``dsa3`` (the fused gates, when DSA is on), each (B, C, h, w)."""
        maps = OrderedDict()
        self._trunk(x, maps)
        return maps

    def logit_names(self):
        names = [f"P{i + 1}" for i in range(self.part_head.parts)] + ["L4"]
        if self.deep_supervision is not None:
            names += [f"L{k}" for k in range(1, len(self.deep_supervision) + 1)]
        return names


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
