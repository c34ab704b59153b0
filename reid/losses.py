"""The training objective: the sum of every classifier's cross-entropy, as the original optimised."""
import torch
import torch.nn.functional as F
from torch import nn


class DeepSupervisionLoss(nn.Module):
    """Weighted sum of cross-entropy over the named logits of ``DSP.forward`` in training mode.

    Part classifiers (P1..Pn) take ``part_weight``, the global L4 classifier ``global_weight`` and the
    deep-supervision heads (L1..L3) ``ds_weight``; all 1 by default.
    """

    def __init__(self, part_weight=1.0, global_weight=1.0, ds_weight=1.0, label_smoothing=0.0):
        super().__init__()
        self.part_weight, self.global_weight, self.ds_weight = part_weight, global_weight, ds_weight
        self.label_smoothing = label_smoothing

    def weight(self, name):
        if name.startswith("P"):
            return self.part_weight
        return self.global_weight if name == "L4" else self.ds_weight

    def forward(self, logits, targets):
        return sum(self.weight(name) * F.cross_entropy(output.float(), targets,
                                                       label_smoothing=self.label_smoothing)
                   for name, output in logits.items())


def part_accuracy(logits, targets):
    """Accuracy of the summed part-classifier probabilities, the prediction PCB makes."""
    parts = [output for name, output in logits.items() if name.startswith("P")]
    probabilities = torch.stack([output.float().softmax(dim=1) for output in parts]).sum(dim=0)
    return (probabilities.argmax(dim=1) == targets).float().mean()
