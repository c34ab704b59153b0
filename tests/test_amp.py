"""The float16 path of --amp (T4, V100, the free Colab GPU), run on the CPU: a training step under fp16
autocast with a gradient scaler, and the DSA block keeping its per-image statistics in float32."""
import pytest
import torch

from reid import losses, models, trainer
from reid.models.attention import DSA

torch.set_num_threads(2)


@pytest.fixture
def trained_dsa_block():
    """A DSA block whose gates are no longer exactly 1 (random gamma, beta and alpha)."""
    generator = torch.Generator().manual_seed(0)
    block = DSA(16)
    with torch.no_grad():
        for name, parameter in block.named_parameters():
            if name.startswith("alpha"):
                parameter.uniform_(0.5, 2.0, generator=generator)
            else:
                parameter.normal_(0.0, 1.0, generator=generator)
    return block


def record_dsa_dtypes(model):
    """Forward hooks noting the input and output dtypes of every DSA block."""
    seen = []
    for block in model.dsa:
        block.register_forward_hook(lambda module, inputs, output: seen.append((inputs[0].dtype, output.dtype)))
    return seen


def test_a_training_step_runs_under_cpu_float16_autocast_with_a_gradient_scaler():
    torch.manual_seed(0)
    model = models.create("resnet18", num_classes=4, num_features=16, parts=2).train()
    dsa_dtypes = record_dsa_dtypes(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu")
    images = torch.randn(8, 3, 64, 32)
    targets = torch.arange(4).repeat_interleave(2)
    before = {name: parameter.detach().clone() for name, parameter in model.named_parameters()}

    with torch.autocast("cpu", dtype=torch.float16):
        output = model(images)
    loss = losses.DeepSupervisionLoss()(output, targets)
    trainer.apply_gradients(loss.total, optimizer, scaler)

    assert dsa_dtypes == [(torch.float16, torch.float16)] * 3
    assert output.global_logits.dtype == torch.float16
    assert loss.total.dtype == torch.float32 and torch.isfinite(loss.total)
    assert scaler.get_scale() == 2.0 ** 16, "no gradient overflowed, so the scaler took the step"
    unchanged = [name for name, parameter in model.named_parameters()
                 if parameter.requires_grad and torch.equal(parameter, before[name])]
    assert not [name for name in unchanged if name.startswith("dsa.") and "gamma" in name], unchanged
    assert all(torch.isfinite(parameter).all() for parameter in model.parameters())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_dsa_keeps_full_size_tensors_in_the_input_dtype_and_statistics_in_float32(trained_dsa_block, dtype):
    """What the block saves for its backward pass: x and the spatial tanh at full size in the input's dtype,
    every per-image statistic (one value per channel or per position) in float32."""
    x = torch.randn(2, 16, 12, 4).to(dtype).requires_grad_()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda tensor: saved.append(tensor) or tensor, lambda t: t):
        with torch.autocast("cpu", dtype=dtype):
            y = trained_dsa_block(x)
    assert y.dtype == dtype
    full_size = [tensor for tensor in saved if tensor.shape == x.shape]
    statistics = [tensor for tensor in saved if tensor.shape != x.shape]
    assert len(full_size) == 2 and all(tensor.dtype == dtype for tensor in full_size)
    assert statistics and all(tensor.dtype == torch.float32 for tensor in statistics), \
        [(tuple(tensor.shape), tensor.dtype) for tensor in statistics]


def formula_reference(block, x):
    """The block's output and gradients computed in float64 through the formulas as written (``DSA.gate``)."""
    reference = DSA(block.channels).double()
    reference.load_state_dict({name: value.double() for name, value in block.state_dict().items()})
    x64 = x.detach().double().requires_grad_()
    y = x64 + x64 * reference.gate(x64)
    y.sum().backward()
    return y.detach(), x64.grad, {name: parameter.grad for name, parameter in reference.named_parameters()}


@pytest.mark.parametrize("scale", [1.0, 100.0])
def test_dsa_float16_output_and_gradients_follow_the_formulas_for_small_and_large_activations(
        trained_dsa_block, scale):
    """Activations of 100 make per-image sums over positions exceed float16's range (65504): the block must
    form them in float32, forward and backward, and still match the float64 formulas to float16 precision."""
    torch.manual_seed(1)
    x = (torch.randn(2, 16, 12, 4) * scale).half().requires_grad_()
    with torch.autocast("cpu", dtype=torch.float16):
        y = trained_dsa_block(x)
    y.float().sum().backward()
    expected_y, expected_x_grad, expected_grads = formula_reference(trained_dsa_block, x)

    def relative_error(got, expected):
        return ((got.double() - expected).abs().max() / expected.abs().max()).item()

    assert relative_error(y, expected_y) < 5e-3
    assert relative_error(x.grad, expected_x_grad) < 5e-3
    for name, parameter in trained_dsa_block.named_parameters():
        assert torch.isfinite(parameter.grad).all(), name
        assert relative_error(parameter.grad, expected_grads[name]) < 2e-2, name
