"""reid.trainer: the optimisers, the learning-rate schedule (warm-up per step, step, cosine) and one epoch."""
import math

import pytest
import torch

from reid import data, datasets, models
from reid.config import DataConfig, TrainConfig
from reid.errors import UsageError
from reid.losses import build_criterion
from reid.trainer import LearningRateSchedule, build_optimizer, decay_epochs, train_one_epoch

torch.set_num_threads(1)


def tiny_model(num_classes=4, **options):
    torch.manual_seed(0)
    return models.create("resnet18", num_classes=num_classes, num_features=8, **options)


def two_group_optimizer(lr, backbone_lr):
    parameters = [torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))]
    return torch.optim.SGD([{"params": [parameters[0]], "lr": backbone_lr}, {"params": [parameters[1]], "lr": lr}],
                           lr=lr, momentum=0.9)


def lrs(schedule, epoch, step=0, steps_in_epoch=1):
    schedule.set_position(epoch, step, steps_in_epoch)
    return [group["lr"] for group in schedule.optimizer.param_groups]


@pytest.mark.parametrize("lr,step_size,epochs", [(0.05, 8, 25), (0.1, 40, 130), (3.5e-4, 3, 12)])
def test_the_step_schedule_gives_the_lrs_of_per_epoch_steplr_bit_for_bit(lr, step_size, epochs):
    """The paper's schedule as earlier versions ran it: StepLR stepped after every epoch."""
    reference = two_group_optimizer(lr, lr * 0.1)
    step_lr = torch.optim.lr_scheduler.StepLR(reference, step_size=step_size, gamma=0.1)
    schedule = LearningRateSchedule(two_group_optimizer(lr, lr * 0.1), TrainConfig(epochs=epochs, step_size=step_size))
    for epoch in range(epochs):
        expected = [group["lr"] for group in reference.param_groups]
        for step in (0, 3, 9):
            assert lrs(schedule, epoch, step, 10) == expected, (epoch, step)
        reference.step()
        step_lr.step()


def test_a_format_1_checkpoint_resumes_with_the_lrs_steplr_would_have_given():
    """Earlier checkpoints saved StepLR's state; the schedule needs only the optimiser state, whose groups carry
    ``initial_lr``: a resumed run continues with the saved base lr, not the --lr it is given now."""
    old = two_group_optimizer(0.05, 0.005)
    step_lr = torch.optim.lr_scheduler.StepLR(old, step_size=4, gamma=0.1)
    for _ in range(6):
        old.step()
        step_lr.step()
    saved = old.state_dict()
    resumed = two_group_optimizer(0.9, 0.9)
    resumed.load_state_dict(saved)
    schedule = LearningRateSchedule(resumed, TrainConfig(lr=0.9, epochs=12, step_size=4))
    for epoch in range(6, 12):
        assert lrs(schedule, epoch, 5, 7) == [group["lr"] for group in old.param_groups], epoch
        old.step()
        step_lr.step()


def test_milestones_decay_at_the_given_epochs():
    schedule = LearningRateSchedule(two_group_optimizer(3.5e-4, 3.5e-4),
                                    TrainConfig(epochs=120, milestones=[40, 70], step_size=0))
    assert decay_epochs(TrainConfig(epochs=120, step_size=30, milestones=[70, 40])) == [40, 70]
    assert decay_epochs(TrainConfig(epochs=20, step_size=8)) == [8, 16]
    assert decay_epochs(TrainConfig(epochs=20, step_size=0)) == []
    assert lrs(schedule, 39, 9, 10)[1] == 3.5e-4
    assert lrs(schedule, 40)[1] == 3.5e-4 * 0.1
    assert lrs(schedule, 69, 9, 10)[1] == 3.5e-4 * 0.1
    assert lrs(schedule, 70)[1] == 3.5e-4 * 0.1 * 0.1


def test_warmup_rises_linearly_every_step_and_reaches_the_base_lr_at_its_end():
    schedule = LearningRateSchedule(two_group_optimizer(0.4, 0.04), TrainConfig(epochs=10, warmup_epochs=2,
                                                                                  step_size=5))
    steps = 4
    warmup = [lrs(schedule, epoch, step, steps)[1] for epoch in range(2) for step in range(steps)]
    assert warmup == pytest.approx([0.4 * (k + 1) / 8 for k in range(8)])
    assert all(a < b for a, b in zip(warmup, warmup[1:]))
    assert warmup[-1] == 0.4
    assert lrs(schedule, 0, 3, steps) == pytest.approx([0.04 / 2, 0.4 / 2]), "epoch t ends at t / warmup x base"
    assert lrs(schedule, 2, 0, steps)[1] == 0.4
    assert lrs(schedule, 5, 0, steps)[1] == pytest.approx(0.04)


def test_cosine_runs_from_the_base_lr_after_warmup_down_to_zero_at_the_end():
    schedule = LearningRateSchedule(two_group_optimizer(0.1, 0.01), TrainConfig(epochs=12, warmup_epochs=2,
                                                                                  lr_schedule="cosine"))
    assert lrs(schedule, 2, 0, 5) == [0.01, 0.1]
    assert lrs(schedule, 7, 0, 5)[1] == pytest.approx(0.05), "half-way between warm-up end and the last epoch"
    assert lrs(schedule, 12, 0, 5) == [0.0, 0.0]
    after_warmup = [lrs(schedule, epoch, step, 5)[1] for epoch in range(2, 12) for step in range(5)]
    assert all(a > b for a, b in zip(after_warmup, after_warmup[1:]))
    assert after_warmup[-1] == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * (9.8 / 10))))
    plain = LearningRateSchedule(two_group_optimizer(0.1, 0.01), TrainConfig(epochs=4, lr_schedule="cosine"))
    assert lrs(plain, 0) == [0.01, 0.1] and lrs(plain, 4) == [0.0, 0.0]


def test_sgd_is_the_papers_and_adam_trains_every_layer_at_the_lr():
    model = tiny_model()
    sgd = build_optimizer(model, TrainConfig(lr=0.1, momentum=0.9, weight_decay=5e-4), pretrained=True)
    assert isinstance(sgd, torch.optim.SGD)
    assert [group["lr"] for group in sgd.param_groups] == [0.1 * 0.1, 0.1]
    assert all(group["nesterov"] and group["momentum"] == 0.9 for group in sgd.param_groups)
    scratch = build_optimizer(model, TrainConfig(lr=0.05), pretrained=False)
    assert [group["lr"] for group in scratch.param_groups] == [0.05, 0.05]
    adam = build_optimizer(model, TrainConfig(optimizer="adam", lr=3.5e-4, weight_decay=5e-4), pretrained=True)
    assert isinstance(adam, torch.optim.Adam)
    assert [group["lr"] for group in adam.param_groups] == [3.5e-4, 3.5e-4]
    assert all(g["betas"] == (0.9, 0.999) and g["weight_decay"] == 5e-4 for g in adam.param_groups)
    assert sum(len(group["params"]) for group in adam.param_groups) == len(list(model.parameters()))


def test_the_bnneck_shift_stays_at_zero_while_training():
    model = tiny_model(bnneck=True).train()
    optimizer = build_optimizer(model, TrainConfig(optimizer="adam", lr=1e-2), pretrained=False)
    criterion = build_criterion(TrainConfig(label_smoothing=0.1))
    for _ in range(2):
        optimizer.zero_grad()
        criterion(model(torch.randn(4, 3, 96, 32)), torch.tensor([0, 1, 2, 3])).total.backward()
        optimizer.step()
    necks = [*model.part_head.part_necks, model.part_head.global_neck]
    assert all(torch.count_nonzero(neck.bias) == 0 for neck in necks)
    assert any(not torch.all(neck.weight == 1) for neck in necks)


def test_an_unknown_optimizer_or_schedule_is_refused():
    with pytest.raises(UsageError, match="--optimizer 'rmsprop'; choose sgd or adam"):
        build_optimizer(tiny_model(), TrainConfig(optimizer="rmsprop"), pretrained=False)
    with pytest.raises(UsageError, match="--lr-schedule 'linear'; choose step or cosine"):
        LearningRateSchedule(two_group_optimizer(0.1, 0.1), TrainConfig(lr_schedule="linear"))


@pytest.fixture
def tiny_loader(tiny_synthetic):
    dataset = datasets.create("synthetic", str(tiny_synthetic), combine_trainval=True, verbose=False)
    config = DataConfig(height=96, width=32, batch_size=8, workers=0, num_instances=2)
    return dataset, data.train_loader(dataset.train, config)


def test_one_epoch_sets_the_lr_every_step_and_reports_the_loss_terms(tiny_loader):
    dataset, loader = tiny_loader
    model = tiny_model(num_classes=dataset.num_train_ids, bnneck=True)
    config = TrainConfig(optimizer="adam", lr=1e-3, epochs=3, warmup_epochs=2, triplet_weight=1.0,
                         label_smoothing=0.1)
    optimizer = build_optimizer(model, config, pretrained=False)
    schedule = LearningRateSchedule(optimizer, config)
    seen = []
    optimizer.register_step_pre_hook(lambda opt, args, kwargs: seen.append(opt.param_groups[1]["lr"]))
    data.start_epoch(loader, 0)
    stats = train_one_epoch(model, build_criterion(config), optimizer, loader, torch.device("cpu"), epoch=0,
                            show_progress=False, schedule=schedule)
    steps = stats["steps"]
    assert steps >= 2 and seen == pytest.approx([1e-3 * (s + 1) / steps / 2 for s in range(steps)])
    assert optimizer.param_groups[1]["lr"] == pytest.approx(1e-3 * (1 + 1 / steps) / 2), "the next epoch's first"
    assert set(stats["terms"]) == {"ce_parts", "ce_global", "ce_ds", "triplet"}
    assert all(value > 0 for value in stats["terms"].values())
    assert stats["loss"] == pytest.approx(sum(stats["terms"].values()), rel=1e-5)
