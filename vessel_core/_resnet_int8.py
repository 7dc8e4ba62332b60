"""int8 prediction for the ResNet34 U-Net: an explicit graph, FX quantization.

fastai's `DynamicUnet` passes the encoder's skip connections through forward
hooks, which graph tracers cannot follow. `UnetGraph` runs the same modules
with the skips passed explicitly, so `torch.ao.quantization.quantize_fx` can
trace it, fuse convolution + batch norm + ReLU and quantize weights (per channel)
and activations (per tensor) to int8 for the x86 backend (fbgemm/oneDNN).
Activation ranges come from calibration images and are stored with the model,
so a loaded model quantizes the same way without its training data.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from vessel_core._resnet_net import silence_libraries

#: Prefix of the observer entries in a calibrated network's state_dict.
OBSERVER_KEY = "activation_post_process"


class UnetGraph(nn.Module):
    """The forward pass of a fastai `DynamicUnet` with explicit skip connections.

    Shares the modules (and weights) of ``net``; inputs must have sides that are
    multiples of 32 (no resizing happens inside).
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        from fastai.layers import MergeLayer
        from fastai.vision.models.unet import ResizeToOrig, UnetBlock

        layers = list(net.layers)
        encoder = layers[0]
        self.stem = nn.Sequential(encoder[0], encoder[1], encoder[2])
        self.pool = encoder[3]
        self.layer1, self.layer2 = encoder[4], encoder[5]
        self.layer3, self.layer4 = encoder[6], encoder[7]
        self.middle = nn.Sequential(layers[1], layers[2], layers[3])
        blocks = [m for m in layers if isinstance(m, UnetBlock)]
        if len(blocks) != 4:
            raise ValueError(f"expected 4 UnetBlocks in the U-Net, found {len(blocks)}")
        self.blocks = nn.ModuleList(blocks)
        after = layers[layers.index(blocks[-1]) + 1 :]
        self.head = nn.ModuleList()
        self.cross_at = -1
        for module in after:
            if (
                isinstance(module, ResizeToOrig)
                or type(module).__name__ == "ToTensorBase"
            ):
                continue
            if isinstance(module, MergeLayer):
                self.cross_at = len(self.head)
                continue
            if not isinstance(module, nn.Module):
                raise ValueError(f"unexpected layer {module!r} in the U-Net head")
            self.head.append(module)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s0 = self.stem(x)
        s1 = self.layer1(self.pool(s0))
        s2 = self.layer2(s1)
        s3 = self.layer3(s2)
        h = self.middle(self.layer4(s3))
        for block, skip in zip(self.blocks, (s3, s2, s1, s0), strict=True):
            up = block.shuf(h)
            h = block.conv2(block.conv1(block.relu(torch.cat([up, block.bn(skip)], 1))))
        for i, module in enumerate(self.head):
            if i == self.cross_at:
                h = torch.cat([h, x], 1)
            h = module(h)
        return h


def _qconfig_mapping():
    from torch.ao.quantization import get_default_qconfig_mapping

    return get_default_qconfig_mapping("x86")


def prepare(net: nn.Module, example: torch.Tensor) -> nn.Module:
    """An observed graph of ``net`` (eval mode, on the CPU) ready for calibration.

    ``net`` must be a fresh copy, used for nothing else: its skip-connection hooks
    are removed (the tracer would run them) and fusion may reuse its modules.
    """
    from torch.ao.quantization.quantize_fx import prepare_fx

    net.sfs.remove()

    torch.backends.quantized.engine = "x86"
    graph = UnetGraph(net)
    graph.eval()
    silence_libraries()
    return prepare_fx(graph, _qconfig_mapping(), example_inputs=(example,))


def calibrate(observed: nn.Module, inputs: Sequence[np.ndarray], size: int = 256):
    """Run ``observed`` on four ``size``-pixel crops of each (H, W, C) input.

    The crops are centred on the quarters' centres of the image, so they hold
    vessels, background and the FOV's rim.
    """
    with torch.no_grad():
        for x in inputs:
            h, w = x.shape[:2]
            side_h = min(size, h) // 32 * 32
            side_w = min(size, w) // 32 * 32
            if side_h == 0 or side_w == 0:
                continue
            for fy in (0.25, 0.75):
                for fx in (0.25, 0.75):
                    top = int(np.clip(fy * h - side_h / 2, 0, h - side_h))
                    left = int(np.clip(fx * w - side_w / 2, 0, w - side_w))
                    crop = x[top : top + side_h, left : left + side_w]
                    t = torch.from_numpy(np.ascontiguousarray(crop.transpose(2, 0, 1)))
                    observed(t[None])


def observer_state(observed: nn.Module) -> dict[str, torch.Tensor]:
    """The calibrated activation observers' buffers (what quantization needs)."""
    return {
        k: v.detach().clone()
        for k, v in observed.state_dict().items()
        if k.startswith(OBSERVER_KEY)
    }


def convert(observed: nn.Module) -> nn.Module:
    """The int8 network of a calibrated observed one."""
    from torch.ao.quantization.quantize_fx import convert_fx

    silence_libraries()
    return convert_fx(observed)


def quantized_from(net: nn.Module, ranges: dict[str, torch.Tensor]) -> nn.Module:
    """Rebuild the int8 network of ``net`` from stored observer buffers."""
    example = torch.zeros(1, 3, 64, 64)
    observed = prepare(net, example)
    missing = [k for k in observer_state(observed) if k not in ranges]
    if missing:
        raise ValueError(
            f"the stored int8 ranges lack {len(missing)} observer(s), e.g. {missing[0]}"
        )
    observed.load_state_dict(ranges, strict=False)
    return convert(observed)
