"""The training objective: a sum of named terms over the ``TrainingOutput`` of ``DSP`` in training mode.

``ce_parts`` (P1..Pn), ``ce_global`` (L4) and ``ce_ds`` (L1..L3) are the weighted cross-entropy of those
classifiers, the ten losses the original optimised; ``triplet`` is the batch-hard triplet loss on the embedding.
"""
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

TERMS = ("ce_parts", "ce_global", "ce_ds", "triplet")


class LossValue(NamedTuple):
    """``total`` to back-propagate, and ``terms``: each active term's (weighted) value, detached, by name.

    A term that is switched off (no deep supervision, triplet weight 0) is not in ``terms``.
    """

    total: torch.Tensor
    terms: dict


class DeepSupervisionLoss(nn.Module):
    """Weighted (label-smoothed) cross-entropy of every classifier, plus a weighted batch-hard triplet loss.

    Part classifiers take ``part_weight``, the global L4 classifier ``global_weight``, the deep-supervision heads
    ``ds_weight`` (all 1 by default), the triplet loss ``triplet_weight`` (0, off, by default) with ``margin``
    (0: soft margin).
    """

    def __init__(self, part_weight=1.0, global_weight=1.0, ds_weight=1.0, label_smoothing=0.0, triplet_weight=0.0,
                 margin=0.3):
        super().__init__()
        self.part_weight, self.global_weight, self.ds_weight = part_weight, global_weight, ds_weight
        self.label_smoothing = label_smoothing
        self.triplet_weight, self.margin = triplet_weight, margin

    def cross_entropy(self, logits, targets):
        return F.cross_entropy(logits.float(), targets, label_smoothing=self.label_smoothing)

    def forward(self, output, targets):
        """The ``LossValue`` of a ``TrainingOutput`` for the identity labels ``targets``.

        The total adds the classifiers' losses one by one from 0 in the order P1..Pn, L4, L1..L3 (then the
        triplet term), so that it is bit for bit the sum the original computed.
        """
        groups = {
            "ce_parts": [self.part_weight * self.cross_entropy(x, targets) for x in output.part_logits],
            "ce_global": [self.global_weight * self.cross_entropy(output.global_logits, targets)],
            "ce_ds": [self.ds_weight * self.cross_entropy(x, targets) for x in output.ds_logits],
        }
        total = sum(loss for losses in groups.values() for loss in losses)
        terms = {name: sum(losses).detach() for name, losses in groups.items() if losses}
        if self.triplet_weight:
            triplet = self.triplet_weight * batch_hard_triplet(output.embedding, targets, self.margin)
            total = total + triplet
            terms["triplet"] = triplet.detach()
        return LossValue(total, terms)


def batch_hard_triplet(embeddings, targets, margin):
    """The batch-hard triplet loss of Hermans et al. (2017), "In Defense of the Triplet Loss".

    For each anchor: its farthest same-identity sample and its nearest other-identity sample in the batch
    (Euclidean distance); the loss is ``max(0, d_pos - d_neg + margin)``, or the soft margin
    ``log(1 + exp(d_pos - d_neg))`` when ``margin`` is 0, averaged over the anchors. It needs batches holding
    several images of each identity (the identity sampler, ``--num-instances``).
    """
    embeddings = embeddings.float()
    distances = torch.cdist(embeddings, embeddings)
    same = targets[:, None] == targets[None, :]
    hardest_positive = distances.masked_fill(~same, float("-inf")).amax(dim=1)
    hardest_negative = distances.masked_fill(same, float("inf")).amin(dim=1)
    difference = hardest_positive - hardest_negative
    if margin > 0:
        return F.relu(difference + margin).mean()
    return F.softplus(difference).mean()


def part_accuracy(output, targets):
    """Accuracy of the summed part-classifier probabilities, the prediction PCB makes."""
    probabilities = torch.stack([logits.float().softmax(dim=1) for logits in output.part_logits]).sum(dim=0)
    return (probabilities.argmax(dim=1) == targets).float().mean()


def build_criterion(train_config):
    """The ``DeepSupervisionLoss`` of a ``TrainConfig``."""
    return DeepSupervisionLoss(part_weight=train_config.part_weight, ds_weight=train_config.ds_weight,
                               label_smoothing=train_config.label_smoothing,
                               triplet_weight=train_config.triplet_weight, margin=train_config.margin)
