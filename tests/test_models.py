import itertools
import shutil

import pytest
import torch
import torchvision

from reid import models
from reid.errors import UsageError
from reid.config import TrainConfig
from reid.models.attention import DSA
from reid.models.dsp import TrainingOutput
from reid.trainer import build_optimizer

torch.set_num_threads(2)
SMALL = dict(arch="resnet18", num_classes=5, num_features=16)


def tiny_model(**options):
    torch.manual_seed(0)
    return models.create(**{**SMALL, **options})


def test_original_factory_call_and_names():
    assert models.names() == ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]
    model = models.create("resnet50", num_features=256, dropout=0.5, num_classes=751)
    assert model.part_head.global_classifier.out_features == 751
    with pytest.raises(UsageError, match="resnet50"):
        models.create("vgg16", num_classes=3)


@pytest.mark.parametrize("dsa,deep_supervision,parts,feature", list(itertools.product(
    (True, False), (True, False), (1, 6), models.FEATURES)))
def test_outputs_for_every_switch(dsa, deep_supervision, parts, feature):
    model = tiny_model(dsa=dsa, deep_supervision=deep_supervision, parts=parts, feature=feature)
    images = torch.randn(2, 3, 96, 32)
    output = model.train()(images)
    assert isinstance(output, TrainingOutput)
    assert len(output.part_logits) == parts and len(output.ds_logits) == (3 if deep_supervision else 0)
    assert all(logits.shape == (2, 5) for logits in [*output.part_logits, output.global_logits, *output.ds_logits])
    width = {"parts": parts * 512, "reduced": parts * 16, "global": 512}[feature]
    assert output.embedding.shape == (2, width)
    features = model.eval()(images)
    assert features.shape == (2, width)
    maps = model.feature_maps(images)
    assert set(maps) == {"layer1", "layer2", "layer3", "layer4"} | ({"dsa1", "dsa2", "dsa3"} if dsa else set())


def test_retrieval_features_without_bnneck_are_the_normalised_pooled_layer4():
    """bnneck=False keeps the retrieval feature of earlier versions: each stripe (or the global average) of
    layer4, L2-normalised, concatenated."""
    images = torch.randn(3, 3, 96, 32)
    for feature in ("parts", "global"):
        model = tiny_model(feature=feature).eval()
        layer4 = model.feature_maps(images)["layer4"]
        bins = 6 if feature == "parts" else 1
        pooled = torch.nn.functional.adaptive_avg_pool2d(layer4, (bins, 1)).flatten(2).transpose(1, 2)
        expected = torch.nn.functional.normalize(pooled, dim=2).flatten(1)
        assert torch.allclose(model(images), expected, atol=1e-6)


@pytest.mark.parametrize("feature,bnneck", [(feature, bnneck) for feature in models.FEATURES for bnneck in (False, True)
                                            if not (bnneck and feature == "reduced")])
def test_training_embedding_is_the_retrieval_feature_before_normalisation_and_bnneck(feature, bnneck):
    model = tiny_model(feature=feature, dropout=0.0, bnneck=bnneck).train()
    images = torch.randn(3, 3, 96, 32)
    embedding = model(images).embedding
    layer4 = model._trunk(images)[0]
    stripes = model.part_head.stripes(layer4)
    expected = {"parts": lambda: stripes.transpose(1, 2).flatten(1),
                "reduced": lambda: model.part_head.reduced(stripes).transpose(1, 2).flatten(1),
                "global": lambda: layer4.mean(dim=(2, 3))}[feature]()
    assert torch.allclose(embedding, expected, atol=1e-5)


def test_bnneck_heads_classify_batch_normed_pooled_vectors_and_retrieve_after_the_norm():
    """BoT's BNNeck on every stripe and on the global average: BN (shift fixed at 0) -> bias-free classifier;
    the eval feature is the batch-normed vector (running statistics), L2-normalised."""
    model = tiny_model(bnneck=True)
    head = model.part_head
    norms = [*head.part_necks, head.global_neck]
    assert len(head.part_necks) == 6 and all(not norm.bias.requires_grad for norm in norms)
    assert all(c.bias is None and c.in_features == 512 for c in [*head.part_classifiers, head.global_classifier])
    assert not hasattr(head, "reduce")
    images = torch.randn(4, 3, 96, 32)
    for _ in range(3):
        model.train()(images)
    with torch.no_grad():
        for norm in norms:
            norm.weight.uniform_(0.5, 2.0)
    model.eval()
    stripes = head.stripes(model.feature_maps(images)["layer4"])
    expected = torch.stack([torch.nn.functional.normalize(neck(stripes[:, :, i]), dim=1)
                            for i, neck in enumerate(head.part_necks)], dim=1).flatten(1)
    assert torch.allclose(model(images), expected, atol=1e-5)
    assert not torch.allclose(expected, torch.nn.functional.normalize(stripes, dim=1).transpose(1, 2).flatten(1),
                              atol=1e-3), "the norm's running statistics change the feature"
    global_model = tiny_model(bnneck=True, feature="global").eval()
    pooled = global_model.feature_maps(images)["layer4"].mean(dim=(2, 3))
    expected = torch.nn.functional.normalize(global_model.part_head.global_neck(pooled), dim=1)
    assert torch.allclose(global_model(images), expected, atol=1e-5)


def test_bnneck_logits_come_from_the_normed_vectors():
    model = tiny_model(bnneck=True).train()
    images = torch.randn(4, 3, 96, 32)
    output = model(images)
    layer4 = model._trunk(images)[0]
    head = model.part_head
    stripes = head.stripes(layer4)
    assert torch.allclose(output.part_logits[2], head.part_classifiers[2](head.part_necks[2](stripes[:, :, 2])),
                          atol=1e-6)
    global_input = head.global_neck(layer4.mean(dim=(2, 3)))
    assert torch.allclose(output.global_logits, head.global_classifier(global_input), atol=1e-6)


def test_bnneck_refuses_the_reduced_feature():
    with pytest.raises(ValueError, match="reduced"):
        tiny_model(bnneck=True, feature="reduced")


def test_parts_feature_is_normalised_per_stripe():
    features = tiny_model().eval()(torch.randn(3, 3, 96, 32))
    norms = features.view(3, 6, 512).norm(dim=2)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)


def test_resnet50_at_384x128_gives_24x8_layer4_and_stripes_of_2048():
    model = models.create("resnet50", num_classes=10).eval()
    maps = model.feature_maps(torch.randn(1, 3, 384, 128))
    assert maps["layer4"].shape == (1, 2048, 24, 8)
    assert maps["dsa1"].shape == maps["layer1"].shape == (1, 256, 96, 32)
    assert model(torch.randn(1, 3, 384, 128)).shape == (1, 6 * 2048)


def test_any_input_size_works():
    model = tiny_model().eval()
    for height, width in ((96, 32), (130, 50), (256, 128)):
        assert model(torch.randn(1, 3, height, width)).shape == (1, 6 * 512)


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_dsa_adds_exactly_six_parameters_per_channel(arch):
    def count(model):
        return sum(p.numel() for p in model.parameters())

    with_dsa = models.create(arch, num_classes=7, dsa=True)
    without = models.create(arch, num_classes=7, dsa=False)
    channels = [block.channels for block in with_dsa.dsa]
    assert count(with_dsa) - count(without) == 6 * sum(channels)
    assert all(count(block) == 6 * block.channels for block in with_dsa.dsa)


def reference_dsa(block, x, eps=1e-5):
    """DESIGN.md's DSA formulas, written out literally: ``(y, g_c, g_s)``."""
    e_c = block.alpha_c * torch.sqrt((x ** 2).sum(dim=(2, 3), keepdim=True) + eps)
    g_c = 1 + torch.tanh(e_c * block.gamma_c / torch.sqrt((e_c ** 2).mean(dim=1, keepdim=True) + eps) + block.beta_c)
    e_s = block.alpha_s * torch.sqrt((x ** 2).sum(dim=1, keepdim=True) + eps)
    g_s = 1 + torch.tanh(e_s * block.gamma_s / torch.sqrt((e_s ** 2).mean(dim=(2, 3), keepdim=True) + eps)
                         + block.beta_s)
    return x + x * g_c * g_s, g_c, g_s


def random_dsa(channels, seed):
    torch.manual_seed(seed)
    block = DSA(channels)
    with torch.no_grad():
        for parameter in block.parameters():
            parameter.copy_(torch.randn_like(parameter))
    return block


def test_dsa_matches_the_formulas():
    block = random_dsa(4, seed=1)
    x = torch.randn(2, 4, 5, 3)
    expected, g_c, g_s = reference_dsa(block, x)
    assert g_c.shape == (2, 4, 1, 1) and g_s.shape == (2, 4, 5, 3)
    assert torch.allclose(block(x), expected, atol=1e-6)
    assert torch.allclose(block.gate(x), g_c * g_s, atol=1e-6)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_dsa_gradients_are_those_of_the_formulas(memory_format):
    """``forward`` has a hand-written backward pass; in float64 its gradients equal autograd's through the
    formulas, also for a post-ReLU input with a dead channel and an all-zero position."""
    block = random_dsa(6, seed=2).double()
    x = torch.randn(3, 6, 7, 5, dtype=torch.float64).relu()
    x[:, 0] = 0
    x[:, :, 0, 0] = 0
    x = x.contiguous(memory_format=memory_format).requires_grad_(True)
    weights = torch.randn_like(x)
    inputs = [x, *block.parameters()]
    got = torch.autograd.grad((block(x) * weights).sum(), inputs)
    expected = torch.autograd.grad((reference_dsa(block, x)[0] * weights).sum(), inputs)
    for name, a, b in zip(["x", *dict(block.named_parameters())], got, expected):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-12), name


def test_dsa_follows_the_input_dtype_and_layout_under_autocast():
    """A bfloat16 channels_last map, as ``--amp --channels-last`` gives, keeps its dtype and layout through
    the block and its backward pass; the gate parameters' gradients stay float32 and close to float32's."""
    block = random_dsa(8, seed=3)
    x = torch.randn(2, 8, 6, 4).to(memory_format=torch.channels_last).requires_grad_(True)
    weights = torch.randn_like(x)
    (block(x) * weights).sum().backward()
    expected_x_grad, expected = x.grad, [p.grad.clone() for p in block.parameters()]
    block.zero_grad()
    low = x.detach().bfloat16().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = block(low)
    assert y.dtype == torch.bfloat16 and y.is_contiguous(memory_format=torch.channels_last)
    (y.float() * weights).sum().backward()
    assert low.grad.dtype == torch.bfloat16 and low.grad.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(y.float(), block(x).detach(), rtol=0.05, atol=0.05)
    assert torch.allclose(low.grad.float(), expected_x_grad, rtol=0.1, atol=0.1)
    for parameter, grad in zip(block.parameters(), expected):
        assert parameter.grad.dtype == torch.float32
        assert torch.allclose(parameter.grad, grad, rtol=0.1, atol=0.1 * grad.abs().max().item())


def test_dsa_keeps_two_full_size_tensors_for_the_backward_pass():
    """Only the input and the spatial tanh are saved at (B, C, H, W); the rest are per-image statistics."""
    block = random_dsa(8, seed=4)
    x = torch.randn(2, 8, 6, 4, requires_grad=True)
    saved = []

    def pack(tensor):
        saved.append(tensor.shape)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        block(x)
    assert sum(shape == x.shape for shape in saved) == 2
    assert all(shape.numel() <= max(2 * 8, 2 * 6 * 4) for shape in saved if shape != x.shape)


@pytest.mark.skipif(shutil.which("g++") is None, reason="torch.compile on the CPU needs a C++ compiler")
def test_dsa_compiles_as_one_graph_with_the_same_values():
    """``--compile`` traces the hand-written backward pass too: no graph break, the same output and gradients."""
    block = random_dsa(6, seed=5)
    x = torch.randn(2, 6, 8, 4, requires_grad=True)
    weights = torch.randn_like(x)
    inputs = [x, *block.parameters()]
    expected = torch.autograd.grad((block(x) * weights).sum(), inputs)
    torch._dynamo.reset()
    compiled = torch.compile(block, fullgraph=True)
    got = torch.autograd.grad((compiled(x) * weights).sum(), inputs)
    for a, b in zip(got, expected):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)


def test_gates_start_at_one():
    x = torch.randn(2, 8, 6, 4)
    block = DSA(8)
    assert torch.equal(block.gate(x), torch.ones_like(x))
    assert torch.allclose(block(x), 2 * x)


def test_spatial_gate_depends_on_the_input_once_gamma_is_not_zero():
    block = DSA(8)
    with torch.no_grad():
        block.gamma_s.fill_(1.0)
    first, second = torch.randn(1, 8, 6, 4), torch.randn(1, 8, 6, 4)
    gate_first, gate_second = block.spatial_gate(first), block.spatial_gate(second)
    assert not torch.allclose(gate_first, gate_second)
    assert gate_first.std() > 0.01, "the gate varies across positions of one image"


def test_gate_parameters_are_registered_saved_and_in_the_full_lr_group():
    model = tiny_model()
    state = model.state_dict()
    for k in (1, 2, 3):
        for name in ("alpha_c", "gamma_c", "beta_c", "alpha_s", "gamma_s", "beta_s"):
            assert f"dsa.{k - 1}.{name}" in state
    optimizer = build_optimizer(model, TrainConfig(lr=0.1), pretrained=True)
    new_group = {id(p) for p in optimizer.param_groups[1]["params"]}
    backbone_group = {id(p) for p in optimizer.param_groups[0]["params"]}
    assert optimizer.param_groups[1]["lr"] == 0.1 and optimizer.param_groups[0]["lr"] == pytest.approx(0.01)
    assert all(id(p) in new_group for p in model.dsa.parameters())
    assert all(id(p) in backbone_group for p in model.layer1.parameters())
    assert len(new_group) + len(backbone_group) == len(list(model.parameters()))


def test_gradient_reaches_every_gate_and_head_and_gates_learn():
    """At the start gamma = 0 blocks alpha's gradient (as in GCT); after one step every gate learns."""
    model = tiny_model().train()
    before = {name: p.detach().clone() for name, p in model.dsa.named_parameters()}
    optimizer = build_optimizer(model, TrainConfig(lr=0.1), pretrained=True)
    images, targets = torch.randn(4, 3, 96, 32), torch.tensor([0, 1, 2, 3])
    for step in range(2):
        optimizer.zero_grad()
        output = model(images)
        logits = [*output.part_logits, output.global_logits, *output.ds_logits]
        sum(torch.nn.functional.cross_entropy(scores, targets) for scores in logits).backward()
        if step == 0:
            assert all(p.grad.abs().sum() > 0 for name, p in model.dsa.named_parameters() if "alpha" not in name)
        optimizer.step()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name
    for name in ("dsa", "deep_supervision", "part_head"):
        for parameter_name, parameter in getattr(model, name).named_parameters():
            assert parameter.grad.abs().sum() > 0, f"{name}.{parameter_name}"
    changed = [name for name, p in model.dsa.named_parameters() if not torch.equal(p, before[name])]
    assert len(changed) == len(before)


def test_spatial_alpha_cancels_in_the_spatial_normalisation():
    """With DESIGN.md's formulas alpha_s is divided out by the per-channel normalisation over positions
    (up to eps), so the spatial gate barely depends on it: its gradient is tiny (documented in the README)."""
    block = DSA(4)
    with torch.no_grad():
        block.gamma_s.fill_(2.0)
    x = torch.randn(2, 4, 6, 4)
    gate = block.spatial_gate(x)
    with torch.no_grad():
        block.alpha_s.mul_(3.0)
    assert torch.allclose(block.spatial_gate(x), gate, atol=1e-5)


def test_gates_follow_the_model_to_its_device():
    model = tiny_model().to("meta")
    assert all(p.device.type == "meta" for p in model.dsa.parameters())


def test_tiny_model_overfits_a_tiny_batch():
    torch.manual_seed(0)
    model = models.create("resnet18", num_classes=4, num_features=16, dropout=0.0).train()
    images, targets = torch.randn(8, 3, 96, 32), torch.arange(4).repeat(2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(30):
        output = model(images)
        logits = [*output.part_logits, output.global_logits, *output.ds_logits]
        loss = sum(torch.nn.functional.cross_entropy(scores, targets) for scores in logits)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0]


def test_backbone_weights_from_a_local_file(tmp_path):
    reference = torchvision.models.resnet18()
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    model = models.create("resnet18", num_classes=3, pretrained_path=str(path))
    assert torch.equal(model.stem[0].weight, reference.conv1.weight)
    assert torch.equal(model.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)
    assert torch.all(model.dsa[0].alpha_c == 1) and torch.all(model.dsa[0].gamma_c == 0)


def test_backbone_weights_of_another_depth_are_refused(tmp_path):
    path = tmp_path / "resnet34.pth"
    torch.save(torchvision.models.resnet34().state_dict(), path)
    with pytest.raises(UsageError, match="resnet34.pth.*do not fit"):
        models.create("resnet18", num_classes=3, pretrained_path=str(path))


def test_missing_imagenet_weights_say_how_to_supply_them(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(UsageError, match="--pretrained-path.*--no-pretrained"):
        models.create("resnet18", num_classes=3, pretrained=True)


def test_imagenet_weights_from_torchvision_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    path = models.imagenet_weights_path("resnet18")
    (tmp_path / "checkpoints").mkdir()
    reference = torchvision.models.resnet18()
    torch.save(reference.state_dict(), path)
    model = models.create("resnet18", num_classes=3, pretrained=True)
    assert torch.equal(model.layer2[0].conv1.weight, reference.layer2[0].conv1.weight)


def test_classifier_initialisation():
    model = models.create("resnet50", num_classes=751)
    weight = model.part_head.part_classifiers[0].weight
    assert abs(weight.std().item() - 0.001) < 0.0002
    assert torch.all(model.part_head.global_classifier.bias == 0)


def test_checkpoint_of_another_model_is_refused_clearly():
    state = tiny_model(num_classes=5).state_dict()
    with pytest.raises(UsageError, match="ckpt.pth.*5, 7|differ in shape"):
        models.load_model_state(tiny_model(num_classes=7), state, "ckpt.pth")
    with pytest.raises(UsageError, match="missing|unexpected"):
        models.load_model_state(tiny_model(dsa=False), state, "ckpt.pth")
