"""LPIPS (Zhang et al. 2018, v0.1 with the AlexNet backbone) for judge's preservation check.

A perceptual distance between two images of the same size: 0 = identical, higher = more different
(RefineAnything reports 0.155-0.264 inside edited regions, RefineEval's LPIPS and LPIPS_bg). The network is
torchvision's AlexNet `features` up to conv5, whose five ReLU outputs are unit-normalised over channels,
differenced, squared, and weighted by five learned 1x1 layers (the lpips package's v0.1 `alex.pth`). Inputs
are RGB in [-1, 1], shifted and scaled as lpips does.

- Whole image: each layer's weighted map is averaged, then the layers summed (lpips' image score).
- Inside / outside a mask: the layers' maps are upsampled (bilinear) to the image size and summed, as lpips'
  `spatial=True`, then averaged over the mask's pixels and over the rest.

Weights are loaded only by tools/models.py; this module builds the network and runs it.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
CHANNELS = (64, 192, 384, 256, 256)
TAPS = (1, 4, 7, 9, 11)  # indexes in `features` whose outputs (conv1..conv5 after ReLU) are compared
EPS = 1e-10  # lpips' normalize_tensor
MIN_SIDE = 32  # AlexNet's strides and pools leave nothing to compare below about 31 px
MAX_SIDE = 1024  # larger pairs are scaled down first (area): 0.58 s at 1024 px on 2 CPU cores, 0.14 s at 512


def alexnet_features() -> Any:
    """torchvision's `alexnet().features` up to conv5's ReLU, indexed as there so its state dict loads."""
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(64, 192, kernel_size=5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(192, 384, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.Conv2d(384, 256, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.Conv2d(256, 256, kernel_size=3, padding=1),
        nn.ReLU(),
    )


def build(backbone: dict[str, Any], linear: dict[str, Any]) -> Any:
    """The LPIPS network from torchvision's AlexNet state dict (`features.N.*`; the classifier is ignored)
    and lpips' v0.1 linear weights (`linK.model.1.weight`). Raises KeyError/RuntimeError on other files."""
    import torch
    from torch import nn

    class LPIPS(nn.Module):
        shift: torch.Tensor  # buffers, set by register_buffer
        scale: torch.Tensor

        def __init__(self) -> None:
            super().__init__()
            self.features = alexnet_features()
            self.lins = nn.ModuleList(nn.Conv2d(c, 1, kernel_size=1, bias=False) for c in CHANNELS)
            self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1), persistent=False)
            self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1), persistent=False)

        def forward(self, a: Any, b: Any) -> list[Any]:
            """Per-layer weighted distance maps, each (N, 1, h, w), for batches a and b in [-1, 1]."""
            x = (torch.cat([a, b]) - self.shift) / self.scale
            maps = []
            for i, layer in enumerate(self.features):
                x = layer(x)
                if i in TAPS:
                    unit = x / (torch.sqrt(torch.sum(x * x, dim=1, keepdim=True)) + EPS)
                    fa, fb = unit.chunk(2)
                    maps.append(self.lins[len(maps)]((fa - fb) ** 2))
            return maps

    net = LPIPS()
    features = {k.removeprefix("features."): v for k, v in backbone.items() if k.startswith("features.")}
    net.features.load_state_dict(features)
    net.lins.load_state_dict({f"{k}.weight": linear[f"lin{k}.model.1.weight"] for k in range(len(CHANNELS))})
    return net.eval()


def _tensor(arr: np.ndarray, device: str) -> Any:
    import torch

    return (
        torch.tensor(arr, device=device).permute(2, 0, 1)[None].float() / 127.5 - 1.0
    )  # a copy: inputs are read-only


def lpips(
    net: Any, image: np.ndarray, original: np.ndarray, mask: np.ndarray | None, device: str = "cpu"
) -> tuple[float | None, float | None]:
    """(outside, inside) for uint8 RGB arrays of one size and a bool mask (True = edited): without a mask,
    outside is the whole image's score and inside None; None where a side is under MIN_SIDE pixels."""
    import torch

    h, w = image.shape[:2]
    if min(h, w) < MIN_SIDE:
        return None, None
    if max(h, w) > MAX_SIDE:
        scale = MAX_SIDE / max(h, w)
        size = (max(MIN_SIDE, round(w * scale)), max(MIN_SIDE, round(h * scale)))
        image, original = (cv2.resize(x, size, interpolation=cv2.INTER_AREA) for x in (image, original))
        if mask is not None:  # a pixel touched by the edit at full size stays inside
            mask = cv2.resize(mask.astype(np.float32), size, interpolation=cv2.INTER_AREA) > 0
        h, w = image.shape[:2]
    with torch.inference_mode():
        maps = net(_tensor(image, device), _tensor(original, device))
        if mask is None:
            return round(float(sum(m.mean() for m in maps)), 6), None
        layers = [
            torch.nn.functional.interpolate(m, size=(h, w), mode="bilinear", align_corners=False)
            for m in maps
        ]
        total = layers[0]
        for layer in layers[1:]:
            total = total + layer
        full = total[0, 0]
        inside = torch.from_numpy(np.ascontiguousarray(mask)).to(full.device)

        def mean(region: Any) -> float | None:
            return round(float(full[region].mean()), 6) if bool(region.any()) else None

        return mean(~inside), mean(inside)
