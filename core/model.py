"""The U-Net of Ronneberger et al. (2015), with 'same' padding so the output matches the input.

Architecture (``depth`` poolings, ``base_width`` channels at the top level)::

    encoder level i (i = 0 .. depth-1):  DoubleConv -> (skip) -> MaxPool 2x2
    bottleneck:                          DoubleConv at base_width * 2**depth channels
    decoder level i (i = depth-1 .. 0):  ConvTranspose 2x2 stride 2 -> concat skip -> DoubleConv
    head:                                Conv 1x1 -> one logit per pixel (apply a sigmoid for probabilities)

where DoubleConv is (Conv 3x3 -> BatchNorm -> ReLU) twice. With ``base_width=64, depth=4``
this is the paper's network (64 -> 1024 channels); 32 is a faster default and 16 a small one.

Inputs of any height and width work: :meth:`UNet.forward` pads them (reflect) to a multiple
of ``2**depth`` so every pooling divides evenly, and crops the logits back.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.errors import ModelConfigError

#: Most poolings: 2**6 = 64x downsampling already needs 64-pixel-aligned inputs.
MAX_DEPTH = 6
#: Most input channels (grey 1, colour 3, a few stains or a z-stack).
MAX_IN_CHANNELS = 16
#: Largest network built: 250 M parameters (1 GB of float32 weights, 8x the paper's width-64
#: U-Net). A checkpoint or setting asking for more is refused before anything is allocated.
MAX_PARAMETERS = 250_000_000


def _require_positive_int(name: str, value: object, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ModelConfigError(f"{name} must be a positive integer, got {value!r}")
    if maximum is not None and value > maximum:
        raise ModelConfigError(f"{name} must be at most {maximum}, got {value}")
    return value


def expected_parameters(in_channels: int, base_width: int, depth: int, out_channels: int = 1) -> int:
    """Parameter count of ``UNet(in_channels, base_width, depth, out_channels)``, computed without building it."""

    def double_conv(inputs: int, outputs: int) -> int:  # two bias-free 3x3 convs, two batch norms
        return 9 * inputs * outputs + 9 * outputs * outputs + 4 * outputs

    widths = [base_width * 2**level for level in range(depth + 1)]
    total, channels = 0, in_channels
    for width in widths[:-1]:
        total += double_conv(channels, width)
        channels = width
    total += double_conv(widths[-2], widths[-1])
    for level in range(depth):  # transposed conv (with bias) then DoubleConv on the concatenation
        total += 4 * widths[level + 1] * widths[level] + widths[level] + double_conv(2 * widths[level], widths[level])
    return total + widths[0] * out_channels + out_channels


def check_model_size(in_channels: int, base_width: int, depth: int, out_channels: int = 1) -> None:
    """Refuse settings outside the bounds above, naming the setting.

    Raises
    ------
    ModelConfigError
    """
    _require_positive_int("in_channels", in_channels, MAX_IN_CHANNELS)
    _require_positive_int("base_width", base_width)
    _require_positive_int("depth", depth, MAX_DEPTH)
    _require_positive_int("out_channels", out_channels, MAX_IN_CHANNELS)
    parameters = expected_parameters(in_channels, base_width, depth, out_channels)
    if parameters > MAX_PARAMETERS:
        raise ModelConfigError(
            f"a U-Net of width {base_width} and depth {depth} has {parameters:,} parameters "
            f"({parameters * 4 / 1e9:.1f} GB of weights), over the limit of {MAX_PARAMETERS:,}; "
            "choose a smaller width or depth")


class DoubleConv(nn.Sequential):
    """Two (3x3 conv -> batch norm -> ReLU) layers; 'same' padding keeps height and width."""

    def __init__(self, in_channels: int, out_channels: int):
        # bias=False: the batch norm that follows has its own shift, a conv bias would be redundant.
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class UpBlock(nn.Module):
    """2x2 transposed conv (halves the channels), concatenation with the skip, DoubleConv."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.upsample = nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2)
        self.conv = DoubleConv(2 * out_channels, out_channels)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        return self.conv(torch.cat([skip, self.upsample(x)], dim=1))


class UNet(nn.Module):
    """U-Net for binary segmentation: images in, one logit per pixel out.

    Parameters
    ----------
    in_channels : int
        Channels of the input images (1 for EM / grey, 3 for RGB).
    base_width : int
        Channels of the first level; level ``i`` has ``base_width * 2**i``. The paper used 64.
    depth : int
        Number of 2x2 poolings (the paper used 4).
    out_channels : int
        Logit maps produced (1 for foreground / background).

    Raises
    ------
    ModelConfigError
        If any argument is not a positive integer, or the network would exceed
        :data:`MAX_PARAMETERS` (checked before anything is allocated).
    """

    def __init__(self, in_channels: int = 1, base_width: int = 32, depth: int = 4, out_channels: int = 1):
        super().__init__()
        check_model_size(in_channels, base_width, depth, out_channels)
        self.in_channels, self.base_width, self.depth, self.out_channels = in_channels, base_width, depth, out_channels

        widths = [base_width * 2**level for level in range(depth + 1)]
        self.encoder = nn.ModuleList()
        channels = in_channels
        for width in widths[:-1]:
            self.encoder.append(DoubleConv(channels, width))
            channels = width
        self.pool = nn.MaxPool2d(kernel_size=2)
        self.bottleneck = DoubleConv(widths[-2], widths[-1])
        self.decoder = nn.ModuleList(
            UpBlock(widths[level + 1], widths[level]) for level in reversed(range(depth))
        )
        self.head = nn.Conv2d(widths[0], out_channels, kernel_size=1)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> Tensor:
        """Logits for a batch of images.

        Parameters
        ----------
        x : Tensor, shape (N, in_channels, H, W), floating point
            Any H, W >= 1.

        Returns
        -------
        Tensor, shape (N, out_channels, H, W)
            Logits; ``torch.sigmoid`` of them gives foreground probabilities.
        """
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ModelConfigError(
                f"UNet expects input of shape (N, {self.in_channels}, H, W), got {tuple(x.shape)}"
            )
        height, width = x.shape[-2:]
        x, (top, left) = self._pad_to_multiple(x)

        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        for block, skip in zip(self.decoder, reversed(skips)):
            x = block(x, skip)
        logits = self.head(x)
        return logits[..., top : top + height, left : left + width]

    def _pad_to_multiple(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """Pad H and W up to a multiple of 2**depth, split evenly on both sides."""
        multiple = 2**self.depth
        height, width = x.shape[-2:]
        pad_h = -height % multiple
        pad_w = -width % multiple
        if pad_h == 0 and pad_w == 0:
            return x, (0, 0)
        top, left = pad_h // 2, pad_w // 2
        padding = (left, pad_w - left, top, pad_h - top)
        # Reflection avoids the artificial dark frame zero padding would add, but needs the
        # padding to be smaller than the image; tiny inputs fall back to repeating the edge.
        mode = "reflect" if max(padding) < min(height, width) else "replicate"
        return F.pad(x, padding, mode=mode), (top, left)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters of ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def forward_flops(model: nn.Module, height: int = 256, width: int = 256) -> int:
    """Floating-point operations of one forward pass on a single ``height x width`` image.

    Counts the convolutions and transposed convolutions (2 per multiply-add, as
    ``torch.utils.flop_counter`` does); batch norm, ReLU and pooling are negligible beside
    them. Inputs whose size is not a multiple of ``2**depth`` are counted at the padded
    size the network actually computes on. Runs on the ``meta`` device, so it costs
    no arithmetic and leaves ``model`` untouched.
    """
    from torch.utils.flop_counter import FlopCounterMode

    _require_positive_int("height", height)
    _require_positive_int("width", width)
    in_channels = getattr(model, "in_channels", None)
    if in_channels is None:
        first_conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
        in_channels = first_conv.in_channels
    meta_model = copy.deepcopy(model).to("meta").eval()
    image = torch.empty(1, in_channels, height, width, device="meta")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        meta_model(image)
    return int(counter.get_total_flops())


@dataclass(frozen=True)
class ModelInfo:
    """Size and cost of one U-Net configuration.

    Attributes
    ----------
    parameters : int
        Trainable parameters.
    gflops_256 : float
        Forward GFLOPs (1e9, 2 per multiply-add) for one 256x256 image.
    weights_mb : float
        Size of the float32 weights in MB (1e6 bytes).
    """

    base_width: int
    depth: int
    in_channels: int
    parameters: int
    gflops_256: float
    weights_mb: float

    def as_dict(self) -> dict:
        return asdict(self)


def model_info(base_width: int = 32, depth: int = 4, in_channels: int = 1) -> ModelInfo:
    """Parameter count and 256x256 forward cost of ``UNet(in_channels, base_width, depth)``."""
    with torch.device("meta"):
        # Built on the meta device: sizes and FLOPs need the structure, not the weights.
        model = UNet(in_channels=in_channels, base_width=base_width, depth=depth)
    parameters = count_parameters(model)
    return ModelInfo(
        base_width=base_width,
        depth=depth,
        in_channels=in_channels,
        parameters=parameters,
        gflops_256=forward_flops(model, 256, 256) / 1e9,
        weights_mb=parameters * 4 / 1e6,
    )

