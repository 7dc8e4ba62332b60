"""Building the fastai ResNet34 U-Net, preparing it for inference, tiled prediction."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from vessel_core.progress import silence
from vessel_core.resnet import imagenet_weight_file

logger = logging.getLogger(__name__)

#: Every tile side is a multiple of this (the encoder's total stride).
STRIDE = 32

#: What the network is built with besides the encoder (DynamicUnet's options).
ARCH_KEYS = ("last_cross", "self_attention", "blur", "decoder_norm")


def resolve_pretrained(pretrained: bool | str) -> Path | None:
    """The ImageNet weight file to load, or None for random weights.

    ``"auto"`` uses the file when it is in the torch cache; ``True`` requires it;
    ``False`` never uses it. Nothing is ever downloaded.
    """
    path = imagenet_weight_file()
    if pretrained == "auto":
        return path if path.is_file() else None
    if pretrained is True:
        if not path.is_file():
            raise ValueError(
                f"pretrained=True needs torchvision's resnet34 weights at {path}, "
                "which is not there (nothing is downloaded); put the file there or "
                "use pretrained='auto' or False"
            )
        return path
    return None


def silence_libraries() -> None:
    """Turn off the warnings of torch and fastai that say nothing a user can act
    on (deprecations inside them, fastai's dummy pass, torch's int8 observers),
    once for the process (`vessel_core.progress.silence`: no
    `warnings.catch_warnings`, which threads undo for each other)."""
    silence(FutureWarning, module=r"torch\.jit")  # fastai uses torch.jit.script
    silence(module=r"torch\.ao\.")
    silence(DeprecationWarning, message=r"torch\.ao\.quantization is deprecated")
    silence(message=r"The 'mode\.chained_assignment' option is deprecated")


def build_unet(
    arch: dict,
    weight_file: Path | None = None,
    seed: int | None = None,
) -> nn.Module:
    """A fastai `DynamicUnet` on torchvision's resnet34 encoder, 2 output classes.

    Parameters
    ----------
    arch : dict
        ``last_cross``, ``self_attention``, ``blur`` (bool) and ``decoder_norm``
        (``"batch"`` or ``"none"``), passed to `DynamicUnet`.
    weight_file : Path, optional
        A torchvision resnet34 state_dict loaded into the encoder before it is cut
        (``torch.load(..., weights_only=True)``); random weights when None.
    seed : int, optional
        Seeds torch's generator first, so the random weights repeat.
    """
    import torchvision

    silence_libraries()
    from fastai.layers import NormType
    from fastai.vision.models.unet import DynamicUnet

    if seed is not None:
        torch.manual_seed(int(seed))
    resnet = torchvision.models.resnet34(weights=None)
    if weight_file is not None:
        state = torch.load(weight_file, map_location="cpu", weights_only=True)
        resnet.load_state_dict(state)
        logger.info("resnet34 encoder: ImageNet weights from %s", weight_file)
    else:  # debug: a saved model is built this way too, then its weights loaded
        logger.debug("resnet34 encoder: random weights (no ImageNet weight file used)")
    encoder = nn.Sequential(*list(resnet.children())[:-2])
    norm = {"batch": NormType.Batch, "none": None}[arch["decoder_norm"]]
    net = DynamicUnet(
        encoder,
        n_out=2,
        img_size=(128, 128),
        blur=bool(arch["blur"]),
        self_attention=bool(arch["self_attention"]),
        last_cross=bool(arch["last_cross"]),
        norm_type=norm,
    )
    return net


def encoder_of(net: nn.Module) -> nn.Module:
    """The resnet34 body inside a `DynamicUnet` (its first layer)."""
    return net.layers[0]


# ---------------------------------------------------------------------------
# Inference


def fold_for_inference(net: nn.Module) -> nn.Module:
    """Make an eval-mode network cheaper without changing what it computes.

    Every BatchNorm that directly follows a convolution is folded into that
    convolution's weights (and replaced by an identity), ReLUs work in place and
    on the CPU the weights are stored channels-last, which oneDNN convolves
    faster. The network is changed in place and returned.
    """
    net.eval()
    pairs = [pair for module in net.modules() for pair in _conv_bn_pairs(module)]
    with torch.no_grad():
        for conv, bn_name, owner in pairs:
            _fold(conv, getattr(owner, bn_name))
            setattr(owner, bn_name, nn.Identity())
        for module in net.modules():
            if isinstance(module, nn.ReLU):
                module.inplace = True
    if next(net.parameters()).device.type == "cpu":
        net.to(memory_format=torch.channels_last)
    return net


def _conv_bn_pairs(module: nn.Module):
    """(conv, bn attribute name, owner) for each conv directly followed by a BN."""
    import torchvision

    if isinstance(module, torchvision.models.resnet.BasicBlock):
        return [(module.conv1, "bn1", module), (module.conv2, "bn2", module)]
    if not isinstance(module, nn.Sequential):
        return []
    names = list(module._modules)
    pairs = []
    for first, second in zip(names, names[1:], strict=False):
        a, b = module._modules[first], module._modules[second]
        if isinstance(a, nn.Conv2d) and isinstance(b, nn.BatchNorm2d):
            pairs.append((a, second, module))
    return pairs


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    conv.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1))
    new_bias = (bias - bn.running_mean) * scale + bn.bias
    if conv.bias is None:
        conv.bias = nn.Parameter(new_bias)
    else:
        conv.bias.copy_(new_bias)


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Evenly spaced starts of tiles of ``tile`` pixels covering ``length`` pixels.

    Neighbouring tiles overlap by at least ``overlap`` pixels; one tile when
    ``length <= tile``.
    """
    if length <= tile:
        return [0]
    n = math.ceil((length - overlap) / (tile - overlap))
    return [round(i * (length - tile) / (n - 1)) for i in range(n)]


def blend_window(length: int, overlap: int, floor: float = 1e-3) -> NDArray[np.float32]:
    """1-D tile weights: ~0 on the outer quarter of the overlap, then a cosine ramp.

    A network's output near a tile edge sees that edge's zero padding; those
    pixels get (almost) no weight where a neighbouring tile covers them, and the
    ramp cross-fades the two tiles over the rest of the overlap. Weights are at
    least ``floor``, so a pixel covered by one tile only keeps its value.
    """
    trim = overlap // 4
    t = np.arange(length, dtype=np.float64)
    distance = np.minimum(t, length - 1 - t) + 0.5
    rise = np.clip((distance - trim) / max(overlap - trim, 1), 0.0, 1.0)
    weights = 0.5 - 0.5 * np.cos(np.pi * rise)
    return np.maximum(weights, floor).astype(np.float32)


def predict_tiled(
    forward: Callable[[torch.Tensor], torch.Tensor],
    x: NDArray[np.float32],
    fov_mask: NDArray[np.bool_] | None,
    tile_size: int = 640,
    overlap: int = 64,
    margin: int = 16,
    device: torch.device | str = "cpu",
    channels_last: bool = False,
) -> NDArray[np.float32]:
    """The vessel probability map of a normalised image, tile by tile.

    Parameters
    ----------
    forward : callable
        Maps a (1, C, h, w) float32 tensor (h, w multiples of 32) to (1, 2, h, w)
        logits.
    x : (H, W, C) float32 ndarray
        The network input (`network_input`).
    fov_mask : (H, W) bool ndarray or None
        Only the FOV's bounding box (plus ``margin``) is computed, and tiles holding
        no FOV pixel are skipped (their pixels get probability 0). None: the whole
        image.
    tile_size : int
        Largest tile side (rounded down to a multiple of 32, at least 64); memory
        is bounded by one tile of this size.
    overlap : int
        Pixels neighbouring tiles share; they are blended with raised-cosine
        weights, so no seam shows.
    margin : int
        Pixels of reflected image added around the region, so the network's own
        zero padding falls outside the image.

    Returns
    -------
    (H, W) float32 ndarray
        Softmax probability of the vessel class.
    """
    height, width = x.shape[:2]
    tile = max(2 * STRIDE, int(tile_size) // STRIDE * STRIDE)
    overlap = int(np.clip(overlap, 0, tile // 2))
    prob = np.zeros((height, width), np.float32)

    if fov_mask is None:
        fov_mask = np.ones((height, width), bool)
    if not fov_mask.any():
        return prob
    rows, cols = np.flatnonzero(fov_mask.any(1)), np.flatnonzero(fov_mask.any(0))
    r0, r1 = rows[0], rows[-1] + 1
    c0, c1 = cols[0], cols[-1] + 1

    # the FOV's box with a reflected margin, then padded up to whole tiles
    region = np.pad(
        x[r0:r1, c0:c1],
        ((margin, margin), (margin, margin), (0, 0)),
        mode="reflect" if min(r1 - r0, c1 - c0) > margin else "edge",
    )
    fov_region = np.pad(fov_mask[r0:r1, c0:c1], margin)
    sizes = [_tile_side(n, tile) for n in region.shape[:2]]
    extra = [max(0, s - n) for s, n in zip(sizes, region.shape[:2], strict=True)]
    region = np.pad(region, ((0, extra[0]), (0, extra[1]), (0, 0)), mode="edge")
    fov_region = np.pad(fov_region, ((0, extra[0]), (0, extra[1])))

    total = np.zeros(region.shape[:2], np.float32)
    weight = np.zeros(region.shape[:2], np.float32)
    window = np.outer(blend_window(sizes[0], overlap), blend_window(sizes[1], overlap))
    for top in tile_starts(region.shape[0], sizes[0], overlap):
        for left in tile_starts(region.shape[1], sizes[1], overlap):
            box = (slice(top, top + sizes[0]), slice(left, left + sizes[1]))
            if not fov_region[box].any():
                continue
            patch = torch.from_numpy(
                np.ascontiguousarray(region[box].transpose(2, 0, 1))
            )
            patch = patch[None].to(device)
            if channels_last:
                patch = patch.contiguous(memory_format=torch.channels_last)
            logits = forward(patch)
            p = torch.softmax(logits.float(), dim=1)[0, 1].cpu().numpy()
            total[box] += window * p
            weight[box] += window
    covered = weight > 0
    total[covered] /= weight[covered]

    inner = total[margin : margin + r1 - r0, margin : margin + c1 - c0]
    prob[r0:r1, c0:c1] = inner
    return prob


def _tile_side(length: int, tile: int) -> int:
    """The tile side along an axis of ``length``: ``tile``, or less when it fits."""
    return min(tile, math.ceil(length / STRIDE) * STRIDE)
