"""U-Net shapes, gradients, precision modes, parameter and FLOP counts, and the model-info CLI."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from core.cli import main
from core.errors import UNetLabError
from core.model import ModelInfo, UNet, count_parameters, forward_flops, model_info


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)


@pytest.mark.parametrize("depth", [2, 3, 4])
@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize("width", [8, 16])
def test_output_has_input_size_for_odd_sizes(depth, in_channels, width):
    model = UNet(in_channels=in_channels, base_width=width, depth=depth)
    logits = model(torch.rand(2, in_channels, 37, 53))
    assert logits.shape == (2, 1, 37, 53)
    assert logits.dtype == torch.float32
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("size", [(1, 1), (5, 3), (16, 16), (17, 40)])
def test_tiny_and_exact_sizes(size):
    # Inputs smaller than the padding fall back from reflect to replicate padding.
    model = UNet(in_channels=1, base_width=4, depth=3).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 1, *size)).shape == (1, 1, *size)


def test_out_channels():
    assert UNet(in_channels=1, base_width=4, depth=2, out_channels=3)(torch.rand(2, 1, 20, 24)).shape == (2, 3, 20, 24)


def test_padding_is_cropped_away_exactly():
    """A 37x53 image gives the same logits as the network run on its own reflect-padded copy, cropped."""
    model = UNet(in_channels=1, base_width=4, depth=2).eval()
    image = torch.rand(1, 1, 37, 53)
    padded = torch.nn.functional.pad(image, (1, 2, 1, 2), mode="reflect")  # 40x56, split as forward does
    with torch.no_grad():
        direct = model(image)
        manual = model(padded)[..., 1:38, 1:54]
    torch.testing.assert_close(direct, manual)


def test_architecture_follows_the_paper():
    model = UNet(in_channels=1, base_width=64, depth=4)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    # 9 double conv blocks (4 down, bottleneck, 4 up) and the 1x1 head.
    assert len(convs) == 9 * 2 + 1
    assert [block[0].out_channels for block in model.encoder] == [64, 128, 256, 512]
    assert model.bottleneck[0].out_channels == 1024
    up_convs = [m for m in model.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert [(m.in_channels, m.out_channels, m.kernel_size, m.stride) for m in up_convs] == [
        (1024, 512, (2, 2), (2, 2)), (512, 256, (2, 2), (2, 2)), (256, 128, (2, 2), (2, 2)), (128, 64, (2, 2), (2, 2))
    ]
    assert all(conv.bias is None for conv in convs[:-1]), "convs before batch norm carry no bias"
    assert convs[-1].kernel_size == (1, 1) and convs[-1].out_channels == 1
    assert count_parameters(model) == 31_036_481  # the ~31.0 M usually quoted for this network


def expected_parameters(in_channels: int, width: int, depth: int) -> int:
    """Parameter count worked out layer by layer (conv weights, batch-norm weight and bias)."""

    def double_conv(c_in: int, c_out: int) -> int:
        return c_in * c_out * 9 + c_out * c_out * 9 + 2 * (2 * c_out)

    widths = [width * 2**level for level in range(depth + 1)]
    total = double_conv(in_channels, widths[0])
    for level in range(1, depth + 1):
        total += double_conv(widths[level - 1], widths[level])  # encoder levels and bottleneck
    for level in range(depth):
        total += widths[level + 1] * widths[level] * 4 + widths[level]  # 2x2 transposed conv with bias
        total += double_conv(2 * widths[level], widths[level])  # after the concatenation
    return total + widths[0] + 1  # 1x1 head with bias


def test_parameter_count_by_hand():
    # depth=1, width=2 spelled out: encoder, bottleneck, transposed conv, decoder, head.
    assert count_parameters(UNet(in_channels=1, base_width=2, depth=1)) == (
        (18 + 36 + 8) + (72 + 144 + 16) + (32 + 2) + (72 + 36 + 8) + 3
    )
    for in_channels, width, depth in [(1, 2, 1), (3, 8, 2), (1, 16, 4), (3, 32, 3), (1, 64, 4)]:
        model = UNet(in_channels=in_channels, base_width=width, depth=depth)
        assert count_parameters(model) == expected_parameters(in_channels, width, depth)


def test_forward_flops_by_hand():
    """2 FLOPs per multiply-add of every conv and transposed conv, depth=1, width=2, 8x8 input."""
    model = UNet(in_channels=1, base_width=2, depth=1)
    full, half = 8 * 8, 4 * 4
    macs = (
        full * 2 * (1 * 9) + full * 2 * (2 * 9)  # encoder: 1->2, 2->2
        + half * 4 * (2 * 9) + half * 4 * (4 * 9)  # bottleneck: 2->4, 4->4 at 4x4
        + half * 4 * 2 * 4  # transposed conv: every input pixel meets a 2x2x2 kernel per channel
        + full * 2 * (4 * 9) + full * 2 * (2 * 9)  # decoder: 4->2, 2->2
        + full * 1 * 2  # head
    )
    assert forward_flops(model, 8, 8) == 2 * macs
    # Sizes that are not multiples of 2**depth are counted at the padded size.
    assert forward_flops(model, 7, 7) == 2 * macs


def test_forward_flops_leaves_model_usable():
    model = UNet(in_channels=1, base_width=4, depth=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    forward_flops(model, 32, 32)
    assert all(v.device.type == "cpu" for v in model.state_dict().values())
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before[key])


def test_flops_scale_with_width_and_area():
    small = forward_flops(UNet(1, 8, 3), 64, 64)
    assert forward_flops(UNet(1, 8, 3), 128, 128) == 4 * small
    # Doubling the width roughly quadruples the cost (the first conv's 1 input channel does not double).
    assert 3.9 < forward_flops(UNet(1, 16, 3), 64, 64) / small < 4.0


def test_model_info():
    info = model_info(base_width=64, depth=4, in_channels=1)
    assert isinstance(info, ModelInfo)
    assert info.parameters == 31_036_481
    assert info.weights_mb == pytest.approx(31_036_481 * 4 / 1e6)
    assert info.gflops_256 == pytest.approx(forward_flops(UNet(1, 64, 4), 256, 256) / 1e9)
    assert 90 < info.gflops_256 < 100
    assert model_info(16, 4, 3).parameters == count_parameters(UNet(3, 16, 4))


def test_gradients_reach_every_parameter():
    model = UNet(in_channels=1, base_width=4, depth=3)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(
        model(torch.rand(2, 1, 24, 31)), (torch.rand(2, 1, 24, 31) > 0.5).float()
    )
    loss.backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name
        assert torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().sum() > 0, name


def test_one_training_step_lowers_the_loss_on_a_fixed_batch():
    model = UNet(in_channels=1, base_width=4, depth=2)
    images = torch.rand(4, 1, 32, 32)
    target = (images > 0.5).float()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(images), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def test_channels_last_matches_contiguous():
    model = UNet(in_channels=3, base_width=4, depth=2).eval()
    image = torch.rand(2, 3, 37, 53)
    with torch.no_grad():
        expected = model(image)
        model_cl = model.to(memory_format=torch.channels_last)
        result = model_cl(image.to(memory_format=torch.channels_last))
    assert result.shape == (2, 1, 37, 53)
    torch.testing.assert_close(result, expected, rtol=1e-4, atol=1e-4)


def test_bfloat16_autocast_with_channels_last_trains():
    model = UNet(in_channels=1, base_width=4, depth=3).to(memory_format=torch.channels_last)
    image = torch.rand(2, 1, 37, 53).to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(image)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), torch.zeros_like(logits.float()))
    assert logits.shape == (2, 1, 37, 53)
    assert logits.dtype == torch.bfloat16
    assert torch.isfinite(logits).all()
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize(
    "kwargs, word",
    [
        ({"base_width": 0}, "base_width"),
        ({"depth": -1}, "depth"),
        ({"in_channels": 1.5}, "in_channels"),
        ({"out_channels": True}, "out_channels"),
    ],
)
def test_bad_configuration_is_a_clear_error(kwargs, word):
    with pytest.raises(UNetLabError, match=word):
        UNet(**kwargs)


def test_wrong_input_channels_is_a_clear_error():
    model = UNet(in_channels=3, base_width=4, depth=2)
    with pytest.raises(UNetLabError, match=r"\(N, 3, H, W\).*\(2, 1, 16, 16\)"):
        model(torch.rand(2, 1, 16, 16))
    with pytest.raises(UNetLabError, match="shape"):
        model(torch.rand(3, 16, 16))


# ---- python -m core model-info ------------------------------------------------------------


def test_model_info_cli_default_table(capsys):
    assert main(["model-info"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.strip() and line.split()[0].isdigit()]
    assert [row[0] for row in rows] == ["16", "32", "64"]
    assert "31,036,481" in out


def test_model_info_cli_json(capsys):
    assert main(["model-info", "--width", "8", "--depth", "3", "--in-channels", "3", "--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert records == [model_info(8, 3, 3).as_dict()]


def test_model_info_cli_bad_width_is_one_line(capsys):
    assert main(["model-info", "--width", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "base_width" in err and len(err.strip().splitlines()) == 1
