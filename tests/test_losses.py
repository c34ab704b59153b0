"""reid.losses: the named loss terms, the paper's sum bit for bit, label smoothing and the batch-hard triplet."""
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F

from reid import models
from reid.config import TrainConfig
from reid.losses import DeepSupervisionLoss, batch_hard_triplet, build_criterion, part_accuracy
from reid.models.dsp import TrainingOutput

CLASSES = 5


def random_output(batch=8, parts=6, deep_supervision=True, dim=12, seed=0):
    generator = torch.Generator().manual_seed(seed)

    def logits():
        return torch.randn(batch, CLASSES, generator=generator) * 3

    return TrainingOutput(tuple(logits() for _ in range(parts)), logits(),
                          tuple(logits() for _ in range(3 if deep_supervision else 0)),
                          torch.randn(batch, dim, generator=generator))


def original_loss(output, targets, part_weight=1.0, ds_weight=1.0):
    """The loss as the code before named terms computed it: an ordered dict P1..Pn, L4, L1..L3 summed from 0."""
    logits = OrderedDict((f"P{i + 1}", x) for i, x in enumerate(output.part_logits))
    logits["L4"] = output.global_logits
    logits.update((f"L{k + 1}", x) for k, x in enumerate(output.ds_logits))

    def weight(name):
        if name.startswith("P"):
            return part_weight
        return 1.0 if name == "L4" else ds_weight

    return sum(weight(name) * F.cross_entropy(x.float(), targets) for name, x in logits.items())


@pytest.mark.parametrize("part_weight,ds_weight,deep_supervision", [(1.0, 1.0, True), (0.3, 0.7, True),
                                                                     (1.0, 1.0, False)])
def test_the_paper_loss_is_bit_identical_to_the_original_sum(part_weight, ds_weight, deep_supervision):
    targets = torch.arange(8) % CLASSES
    for seed in range(5):
        output = random_output(seed=seed, deep_supervision=deep_supervision)
        loss = DeepSupervisionLoss(part_weight=part_weight, ds_weight=ds_weight)(output, targets)
        assert torch.equal(loss.total, original_loss(output, targets, part_weight, ds_weight))


def test_terms_are_named_weighted_and_add_up_to_the_total():
    targets = torch.arange(8) % CLASSES
    output = random_output()
    criterion = DeepSupervisionLoss(part_weight=0.5, ds_weight=2.0, triplet_weight=1.5, margin=0.3)
    loss = criterion(output, targets)
    assert list(loss.terms) == ["ce_parts", "ce_global", "ce_ds", "triplet"]
    assert all(not value.requires_grad for value in loss.terms.values())
    ce = [F.cross_entropy(x, targets) for x in output.part_logits]
    assert torch.allclose(loss.terms["ce_parts"], 0.5 * sum(ce))
    assert torch.allclose(loss.terms["ce_global"], F.cross_entropy(output.global_logits, targets))
    assert torch.allclose(loss.terms["ce_ds"], 2.0 * sum(F.cross_entropy(x, targets) for x in output.ds_logits))
    assert torch.allclose(loss.terms["triplet"], 1.5 * batch_hard_triplet(output.embedding, targets, 0.3))
    assert torch.allclose(loss.total, sum(loss.terms.values()))


def test_switched_off_terms_are_left_out():
    targets = torch.arange(8) % CLASSES
    loss = DeepSupervisionLoss()(random_output(deep_supervision=False), targets)
    assert list(loss.terms) == ["ce_parts", "ce_global"]


def test_label_smoothing_follows_its_definition():
    """(1 - eps) x cross-entropy with the label + eps x the mean cross-entropy over all classes."""
    targets = torch.arange(8) % CLASSES
    output = random_output(parts=1, deep_supervision=False)
    criterion = build_criterion(TrainConfig(label_smoothing=0.1))
    log_p = output.global_logits.log_softmax(dim=1)
    smoothed = (0.9 * -log_p.gather(1, targets[:, None]).squeeze(1) + 0.1 * -log_p.mean(dim=1)).mean()
    assert torch.allclose(criterion(output, targets).terms["ce_global"], smoothed)
    plain = build_criterion(TrainConfig())(output, targets).terms["ce_global"]
    assert not torch.allclose(plain, smoothed)


def reference_triplet(embeddings, targets, margin):
    """The batch-hard triplet loss written out anchor by anchor."""
    losses = []
    for i in range(len(targets)):
        distances = [torch.dist(embeddings[i], embeddings[j]) for j in range(len(targets))]
        positive = max(d for d, t in zip(distances, targets) if t == targets[i])
        negative = min(d for d, t in zip(distances, targets) if t != targets[i])
        difference = positive - negative
        losses.append(torch.clamp(difference + margin, min=0) if margin > 0 else torch.log1p(torch.exp(difference)))
    return torch.stack(losses).mean()


def clustered_batch(spread, identities=4, instances=4, dim=8, seed=0):
    """``instances`` embeddings per identity around centres 10 apart, each within ``spread`` of its centre."""
    generator = torch.Generator().manual_seed(seed)
    centres = 10 * torch.eye(identities, dim)
    noise = torch.randn(identities, instances, dim, generator=generator)
    noise = spread * noise / noise.norm(dim=2, keepdim=True)
    embeddings = (centres[:, None, :] + noise).reshape(-1, dim)
    return embeddings, torch.arange(identities).repeat_interleave(instances)


def test_triplet_is_zero_for_a_well_separated_batch_and_positive_otherwise():
    embeddings, targets = clustered_batch(spread=0.5)
    assert batch_hard_triplet(embeddings, targets, margin=0.3).item() == 0.0
    overlapping, targets = clustered_batch(spread=8.0)
    loss = batch_hard_triplet(overlapping, targets, margin=0.3)
    assert loss.item() > 0
    assert torch.allclose(loss, reference_triplet(overlapping, targets, 0.3), atol=1e-4)


def test_soft_margin_triplet_at_margin_zero():
    embeddings, targets = clustered_batch(spread=0.5)
    soft = batch_hard_triplet(embeddings, targets, margin=0.0)
    assert 0 < soft.item() < 1e-3, "log(1 + exp(d_pos - d_neg)) is small but never 0"
    overlapping, targets = clustered_batch(spread=8.0, seed=1)
    assert torch.allclose(batch_hard_triplet(overlapping, targets, 0.0), reference_triplet(overlapping, targets, 0.0),
                          atol=1e-4)


def test_triplet_pulls_positives_together_and_pushes_negatives_apart():
    embeddings, targets = clustered_batch(spread=8.0, seed=2)
    embeddings.requires_grad_(True)
    optimizer = torch.optim.SGD([embeddings], lr=0.5)
    losses = []
    for _ in range(20):
        loss = batch_hard_triplet(embeddings, targets, margin=0.3)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_triplet_trains_the_model_through_its_embedding():
    torch.manual_seed(0)
    model = models.create("resnet18", num_classes=3, num_features=16, bnneck=True).train()
    targets = torch.tensor([0, 0, 1, 1, 2, 2])
    output = model(torch.randn(6, 3, 96, 32))
    triplet = batch_hard_triplet(output.embedding, targets, margin=0.0)
    grad = torch.autograd.grad(triplet, model.layer4[-1].conv2.weight, retain_graph=True)[0]
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    DeepSupervisionLoss(triplet_weight=1.0, margin=0.0)(output, targets).total.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_part_accuracy_sums_the_part_probabilities():
    parts = (torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([[0.0, 1.0], [0.0, 3.0]]))
    output = TrainingOutput(parts, torch.zeros(2, 2), (), torch.zeros(2, 1))
    assert part_accuracy(output, torch.tensor([0, 1])).item() == 1.0
    assert part_accuracy(output, torch.tensor([1, 1])).item() == 0.5


def test_build_criterion_reads_the_train_config():
    config = TrainConfig(part_weight=0.5, ds_weight=0.25, label_smoothing=0.1, triplet_weight=2.0, margin=0.0)
    criterion = build_criterion(config)
    settings = (criterion.part_weight, criterion.ds_weight, criterion.label_smoothing, criterion.triplet_weight,
                criterion.margin)
    assert settings == (0.5, 0.25, 0.1, 2.0, 0.0)
