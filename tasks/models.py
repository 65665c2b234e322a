"""The six architectures of the paper's Table 1, for 28x28x1 (MNIST) and 32x32x3 (CIFAR-10) inputs.

Every model treats examples independently, as the harness's per-example gradients and leave-one-out re-training
under ``torch.func.vmap`` require: no batch statistics anywhere (BatchNorm is replaced by GroupNorm, see each
model), no dropout (the models are deterministic, so ``train()`` and ``eval()`` compute the same function), and no
in-place activations. Use them through ``torch.func.functional_call(module, params, (x,))``; ``x`` is
``[N, C, H, W]`` and the output ``[N, num_classes]`` logits.

Parameter counts (10 classes; :func:`count_parameters`):

============  ===========  =============
model         28x28x1      32x32x3
============  ===========  =============
small-cnn           2,616          2,760
lenet              44,426         62,006
vgg13           9,940,170      9,941,322
vgg14          12,301,002     12,302,154
resnet18       11,172,810     11,173,962
resnet50       23,519,690     23,520,842
============  ===========  =============
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from benchmark import UsageError
from benchmark.common.errors import UnknownNameError

MODELS = ("small-cnn", "lenet", "vgg13", "vgg14", "resnet18", "resnet50")

GROUPS = 32
"""GroupNorm groups (Wu & He's default) wherever the reference architecture has BatchNorm."""


def group_norm(channels: int) -> nn.GroupNorm:
    """The per-example replacement of ``BatchNorm2d(channels)``: ``GroupNorm(min(32, channels), channels)``."""
    return nn.GroupNorm(min(GROUPS, channels), channels)


def count_parameters(model: nn.Module) -> int:
    """Number of scalar parameters of ``model`` (the length ``P`` of the harness's flat ``theta``)."""
    return sum(p.numel() for p in model.parameters())


def _too_small(name: str, image_size: int, need: str) -> UsageError:
    return UsageError(f"model {name!r} needs images of at least {need} pixels, got {image_size}x{image_size}")


class SmallCNN(nn.Module):
    """Koh & Liang's (2017) small all-convolutional network, the paper's small CNN for small MNIST (section 5.2).

    Their ``All_CNN_C`` with ``hidden_units = 8`` and ``conv_patch_size = 3``: six convolutions (the paper's depth 6)
    with bias, 'valid' padding and tanh (as in their code), a spatial mean, and a 10 -> ``num_classes`` linear layer::

        conv3x3(C->8) conv3x3/2(8->8) conv3x3(8->8) conv3x3/2(8->8) conv3x3(8->8) conv1x1(8->10) mean(H,W) linear(10)

    Spatial sizes: 28 -> 26 -> 12 -> 10 -> 4 -> 2 -> 2 (MNIST), 32 -> 30 -> 14 -> 12 -> 5 -> 3 -> 3 (CIFAR-10).
    Parameters: **2,616** on 28x28x1 (the paper's "about 2,600"), 2,760 on 32x32x3. No normalisation.
    The activation is tanh, as in Koh & Liang's code (the other models use ReLU). The one difference from theirs is
    the initialisation: PyTorch's default (theirs: truncated normal of std ``2/sqrt(fan_in)``, zero biases).
    """

    def __init__(self, in_channels: int, image_size: int, num_classes: int = 10, hidden: int = 8):
        side = image_size
        for stride in (1, 2, 1, 2, 1):
            side = (side - 3) // stride + 1
        if side < 1:
            raise _too_small("small-cnn", image_size, "15x15")
        layers: list[nn.Module] = []
        for i, stride in enumerate((1, 2, 1, 2, 1)):
            layers += [nn.Conv2d(in_channels if i == 0 else hidden, hidden, 3, stride=stride), nn.Tanh()]
        layers += [nn.Conv2d(hidden, 10, 1), nn.Tanh()]
        super().__init__()
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(10, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x).mean(dim=(2, 3)))


class LeNet(nn.Sequential):
    """LeNet-5 (LeCun et al. 1998) with ReLU and max-pooling, no padding::

        conv5x5(C->6) relu maxpool2 conv5x5(6->16) relu maxpool2 linear(16*s*s->120) relu linear(84) relu linear(10)

    with ``s = ((image_size - 4) // 2 - 4) // 2``: 4 on MNIST, 5 on CIFAR-10. Parameters: **44,426** on 28x28x1 (the
    paper's "about 44k"), 62,006 on 32x32x3 (the classic 61,706 plus 300 for the two extra input channels). No
    normalisation.
    """

    def __init__(self, in_channels: int, image_size: int, num_classes: int = 10):
        side = ((image_size - 4) // 2 - 4) // 2
        if side < 1:
            raise _too_small("lenet", image_size, "16x16")
        super().__init__(
            nn.Conv2d(in_channels, 6, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(16 * side * side, 120),
            nn.ReLU(),
            nn.Linear(120, 84),
            nn.ReLU(),
            nn.Linear(84, num_classes),
        )


VGG_PLANS: dict[str, tuple[int | str, ...]] = {
    "vgg13": (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg14": (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, 512, "M"),
}
"""Channel plans: ``vgg13`` is torchvision's configuration "B"; ``vgg14`` adds a third 512-channel convolution to the
fifth block (the first four blocks as VGG13, the fifth as VGG16's)."""


class VGG(nn.Module):
    """VGG13 / VGG14 for small images: torchvision's ``vgg13_bn`` with GroupNorm for BatchNorm and a smaller head.

    Features: the channel plan of :data:`VGG_PLANS`, each number a ``conv3x3(pad 1) -> GroupNorm(32) -> ReLU``, each
    ``M`` a 2x2 max-pool with ``ceil_mode=True`` so that 28x28 inputs reach 1x1 after the five pools
    (28 -> 14 -> 7 -> 4 -> 2 -> 1; 32 -> 16 -> 8 -> 4 -> 2 -> 1) and every convolution sees at least 2x2 maps.
    Head: ``linear(512->512) relu linear(512->512) relu linear(512->num_classes)``, i.e. torchvision's three
    fully connected layers at width 512 instead of 4096, without the 7x7 adaptive pool and without dropout.

    VGG13: 10 convolutions + 3 linear layers = 13 weight layers, **9,940,170** parameters on 28x28x1, 9,941,322 on
    32x32x3. VGG14: VGG13 plus one ``conv3x3(512->512) GroupNorm ReLU`` after the last convolution of the fifth block
    (11 + 3 = 14 weight layers), **12,301,002** on 28x28x1, 12,302,154 on 32x32x3. Initialisation as torchvision's
    VGG (Kaiming-normal fan-out convolutions, N(0, 0.01) linear layers, zero biases).
    """

    def __init__(self, plan: tuple[int | str, ...], in_channels: int, image_size: int, num_classes: int = 10):
        super().__init__()
        layers: list[nn.Module] = []
        channels, side = in_channels, image_size
        for item in plan:
            if item == "M":
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
                side = math.ceil(side / 2)
            else:
                layers += [nn.Conv2d(channels, int(item), 3, padding=1), group_norm(int(item)), nn.ReLU()]
                channels = int(item)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(channels * side * side, 512),
            nn.ReLU(),
            nn.Linear(512, 512),
            nn.ReLU(),
            nn.Linear(512, num_classes),
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


def resnet(name: str, in_channels: int, num_classes: int = 10) -> nn.Module:
    """torchvision's ResNet-18 / ResNet-50 with the CIFAR stem and GroupNorm.

    ``torchvision.models.resnet18`` / ``resnet50`` (no pre-trained weights) with: the stem convolution replaced by
    ``conv3x3(in_channels->64, stride 1, pad 1, no bias)`` and the max-pool removed (the usual CIFAR adaptation, so
    32x32 inputs reach layer4 at 4x4 and 28x28 inputs at 4x4 too); every BatchNorm replaced by
    ``GroupNorm(32, channels)`` (same affine parameter count); every ReLU not in-place; ``num_classes`` outputs.
    Parameters: ResNet-18 **11,172,810** on 28x28x1, 11,173,962 on 32x32x3; ResNet-50 **23,519,690** on 28x28x1,
    23,520,842 on 32x32x3 (the image size does not change them; the input channels do).
    """
    from torchvision import models

    builder = {"resnet18": models.resnet18, "resnet50": models.resnet50}[name]
    model = builder(weights=None, num_classes=num_classes, norm_layer=group_norm)
    model.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    model.maxpool = nn.Identity()
    for m in model.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False
    return model


def build_model(name: str, in_channels: int, image_size: int, num_classes: int = 10) -> nn.Module:
    """A freshly initialised model ``name`` (one of :data:`MODELS`) for ``[N, in_channels, image_size, image_size]``
    inputs and ``num_classes`` logits, in float32, initialised from torch's global random state (seed it, or wrap in
    ``torch.random.fork_rng``, for a reproducible initialisation).

    Raises:
        UnknownNameError: an unknown ``name`` (with the choices and a suggestion).
        UsageError: images too small for the architecture, or non-positive sizes.
    """
    if name not in MODELS:
        raise UnknownNameError("model", name, MODELS)
    for field, value in (("in_channels", in_channels), ("image_size", image_size), ("num_classes", num_classes)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UsageError(f"{field} must be a positive integer, got {value!r}")
    if name == "small-cnn":
        return SmallCNN(in_channels, image_size, num_classes)
    if name == "lenet":
        return LeNet(in_channels, image_size, num_classes)
    if name in VGG_PLANS:
        return VGG(VGG_PLANS[name], in_channels, image_size, num_classes)
    return resnet(name, in_channels, num_classes)
