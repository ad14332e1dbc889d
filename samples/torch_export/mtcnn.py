"""MTCNN's three face-detection networks with the trained weights facenet-pytorch ships.

The ``.pt`` state dicts come from the installed ``facenet-pytorch==2.6.0`` wheel (MIT), which
is installed with ``--no-deps`` because it pins an old torch. Its package cannot be imported
beside torch 2.13 without torchvision (its face-alignment helpers need it), so the networks
are declared here from torch layers, with the layer names of the weight files; loading with
``strict=True`` proves the architecture matches the weights exactly.

    trtforge export samples/torch_export/mtcnn.py:pnet -o pnet.onnx --shapes 'x:1x3x12x12,1x3x120x160,2x3x480x640'
    trtforge export samples/torch_export/mtcnn.py:rnet -o rnet.onnx --shapes 'x:1x3x24x24,32x3x24x24,256x3x24x24'
    trtforge export samples/torch_export/mtcnn.py:onet -o onet.onnx --shapes 'x:1x3x48x48,16x3x48x48,64x3x48x48'
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch import nn

#: Dynamic ranges the sample exports with: PNet scans an image pyramid (any H, W >= 12),
#: RNet and ONet score batches of 24x24 and 48x48 face crops.
SHAPES = {
    "pnet": "x:1x3x12x12,1x3x120x160,2x3x480x640",
    "rnet": "x:1x3x24x24,32x3x24x24,256x3x24x24",
    "onet": "x:1x3x48x48,16x3x48x48,64x3x48x48",
}


def weights_path(name: str) -> Path:
    """``<site-packages>/facenet_pytorch/data/<name>.pt``, found without importing the package."""
    spec = importlib.util.find_spec("facenet_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("facenet-pytorch is not installed: pip install --no-deps facenet-pytorch==2.6.0")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / f"{name}.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall facenet-pytorch==2.6.0 (--no-deps)")
    return path


def _conv_prelu(cin: int, cout: int, kernel: int) -> tuple[nn.Conv2d, nn.PReLU]:
    return nn.Conv2d(cin, cout, kernel_size=kernel), nn.PReLU(cout)


class PNet(nn.Module):
    """Proposal network: fully convolutional, so height and width are free (>= 12)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = _conv_prelu(3, 10, 3)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2, self.prelu2 = _conv_prelu(10, 16, 3)
        self.conv3, self.prelu3 = _conv_prelu(16, 32, 3)
        self.conv4_1 = nn.Conv2d(32, 2, kernel_size=1)  # face / not face
        self.softmax4_1 = nn.Softmax(dim=1)
        self.conv4_2 = nn.Conv2d(32, 4, kernel_size=1)  # box regression

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        return self.conv4_2(x), self.softmax4_1(self.conv4_1(x))


class RNet(nn.Module):
    """Refinement network on 24x24 crops."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = _conv_prelu(3, 28, 3)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = _conv_prelu(28, 48, 3)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = _conv_prelu(48, 64, 2)
        self.dense4, self.prelu4 = nn.Linear(576, 128), nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.softmax5_1 = nn.Softmax(dim=1)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu3(self.conv3(x))
        # The weights were converted from a channels-last framework: flatten in (W, H, C) order.
        x = self.prelu4(self.dense4(x.permute(0, 3, 2, 1).flatten(1)))
        return self.dense5_2(x), self.softmax5_1(self.dense5_1(x))


class ONet(nn.Module):
    """Output network on 48x48 crops: boxes, five landmarks, face probability."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = _conv_prelu(3, 32, 3)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = _conv_prelu(32, 64, 3)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = _conv_prelu(64, 64, 3)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4, self.prelu4 = _conv_prelu(64, 128, 2)
        self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.softmax6_1 = nn.Softmax(dim=1)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu4(self.conv4(x))
        x = self.prelu5(self.dense5(x.permute(0, 3, 2, 1).flatten(1)))
        return self.dense6_2(x), self.dense6_3(x), self.softmax6_1(self.dense6_1(x))


def _load(net: nn.Module, name: str) -> nn.Module:
    state = torch.load(weights_path(name), map_location="cpu", weights_only=True)
    net.load_state_dict(state, strict=True)
    return net.eval()


def pnet() -> nn.Module:
    return _load(PNet(), "pnet")


def rnet() -> nn.Module:
    return _load(RNet(), "rnet")


def onet() -> nn.Module:
    return _load(ONet(), "onet")
