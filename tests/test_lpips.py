"""LPIPS in judge's preservation check: equal to torchmetrics' LPIPS on the same weights, and through the client.

The AlexNet backbone's ImageNet weights cannot be downloaded here, so a checkpoint in torchvision's layout is
written with seeded random weights; the linear layers are the real lpips v0.1 weights that torchmetrics ships.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn
from torchmetrics.functional.image import lpips as tm_lpips

from tests.conftest import connect, structured
from tests.test_judge import data_uri, mask_uri, photo
from tools.models import perceptual

LINEAR = Path(tm_lpips.__file__).parent / "lpips_models" / "alex.pth"  # lpips' own v0.1 alex.pth


def torchvision_alexnet_features() -> nn.Sequential:
    """torchvision.models.alexnet().features, as torchvision defines it (written out: no torchvision here)."""
    return nn.Sequential(
        nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(64, 192, kernel_size=5, padding=2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(192, 384, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(256, 256, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
    )


def write_weights(folder: Path) -> Path:
    """An AlexNet checkpoint in torchvision's layout (seeded random weights) and lpips' alex.pth."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    state = {f"features.{k}": v for k, v in torchvision_alexnet_features().state_dict().items()}
    state["classifier.6.bias"] = torch.zeros(1000)  # the real file's classifier: not used by LPIPS
    torch.save(state, folder / "alexnet-owt-7be5be79.pth")
    shutil.copy(LINEAR, folder / "alex.pth")
    return folder


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_weights(tmp_path_factory.mktemp("lpips") / "lpips-alex")


def reference(weights: Path, monkeypatch: pytest.MonkeyPatch, spatial: bool) -> nn.Module:
    """torchmetrics' LPIPS (alex, v0.1 linear layers) with its torchvision backbone loaded from our file."""

    def features(net: str, pretrained: bool = False) -> nn.Sequential:
        seq = torchvision_alexnet_features()
        state = torch.load(weights / "alexnet-owt-7be5be79.pth", weights_only=True)
        seq.load_state_dict({k.removeprefix("features."): v for k, v in state.items() if "features" in k})
        return seq

    monkeypatch.setattr(tm_lpips, "_get_tv_model_features", features)
    return tm_lpips._LPIPS(net="alex", spatial=spatial, pretrained=True).eval()


def ours(weights: Path) -> nn.Module:
    load = lambda name: torch.load(weights / name, map_location="cpu", weights_only=True)  # noqa: E731
    return perceptual.build(load("alexnet-owt-7be5be79.pth"), load("alex.pth"))


def edited_pair(side: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    original = photo("astronaut", side)
    mask = np.zeros(original.shape[:2], bool)
    h, w = mask.shape
    mask[h // 4 : h // 2, w // 3 : 2 * w // 3] = True
    edited = original.copy()
    edited[mask] = 255 - edited[mask]
    return edited, original, mask


def as_input(arr: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(arr).permute(2, 0, 1)[None].float() / 127.5 - 1


# 1200: scaled down to 1024 a side first
@pytest.mark.parametrize("side", [96, pytest.param(1200, marks=pytest.mark.slow)])
def test_lpips_equals_torchmetrics_lpips_on_the_same_weights(weights, monkeypatch, side):
    edited, original, mask = edited_pair(side)
    outside, inside = perceptual.lpips(ours(weights), edited, original, mask)
    whole, none = perceptual.lpips(ours(weights), edited, original, None)
    if side > perceptual.MAX_SIDE:
        size = (perceptual.MAX_SIDE, round(edited.shape[0] * perceptual.MAX_SIDE / edited.shape[1]))
        edited, original = (cv2.resize(x, size, interpolation=cv2.INTER_AREA) for x in (edited, original))
        mask = cv2.resize(mask.astype(np.float32), size, interpolation=cv2.INTER_AREA) > 0
    with torch.no_grad():
        expected = float(reference(weights, monkeypatch, spatial=False)(as_input(edited), as_input(original)))
        mp = reference(weights, monkeypatch, spatial=True)(as_input(edited), as_input(original))[0, 0]
    assert none is None and whole == pytest.approx(expected, rel=1e-4, abs=1e-6)
    assert inside == pytest.approx(float(mp[torch.from_numpy(mask)].mean()), rel=1e-4, abs=1e-6)
    assert outside == pytest.approx(float(mp[torch.from_numpy(~mask)].mean()), rel=1e-4, abs=1e-6)
    assert inside > outside > 0  # the edit dominates inside; receptive fields reach a little past it


def test_identical_images_are_0_and_too_small_ones_are_none(weights):
    original = photo("coffee", 64)
    assert perceptual.lpips(ours(weights), original, original.copy(), None) == (0.0, None)
    tiny = original[:24, :40]
    assert perceptual.lpips(ours(weights), tiny, tiny, None) == (None, None)


@pytest.mark.anyio
async def test_judge_reports_lpips_inside_and_outside_the_mask_when_its_weights_are_installed(
    make_settings, tmp_path, weights
):
    models = tmp_path / "models"
    shutil.copytree(weights, models / "lpips-alex")
    edited, original, mask = edited_pair(128)
    args = {"original": data_uri(original), "checks": ["preservation"]}
    async with connect(make_settings(models_path=models)) as client:
        out = structured(
            await client.call_tool("judge", {"image": data_uri(edited), "mask": mask_uri(mask), **args})
        )
        same = structured(await client.call_tool("judge", {"image": data_uri(original), **args}))
    kept = out["judgements"][0]["preservation"]
    assert (kept["lpips_outside"], kept["lpips_inside"]) == pytest.approx(
        perceptual.lpips(ours(weights), edited, original, mask), rel=1e-5
    )
    assert kept["lpips_inside"] > kept["lpips_outside"] > 0
    assert out["models"] == {"lpips": "lpips-alex"} and not out["warnings"]
    assert same["judgements"][0]["preservation"]["lpips_outside"] == 0.0
    assert same["judgements"][0]["preservation"]["lpips_inside"] is None


@pytest.mark.anyio
async def test_without_lpips_weights_lpips_is_null_and_the_warning_says_where_they_go(
    make_settings, tmp_path
):
    edited, original, mask = edited_pair(96)
    args = {"image": data_uri(edited), "original": data_uri(original), "mask": mask_uri(mask)}
    async with connect(make_settings(models_path=tmp_path / "models")) as client:
        out = structured(await client.call_tool("judge", {**args, "checks": ["preservation"]}))
    kept = out["judgements"][0]["preservation"]
    assert kept["lpips_outside"] is None and kept["lpips_inside"] is None
    assert kept["inside"]["ssim"] < 0.9  # the other preservation figures stand
    (warning,) = [w for w in out["warnings"] if "LPIPS" in w]
    assert str(tmp_path / "models" / "lpips-alex") in warning and "alexnet-owt-7be5be79.pth" in warning


@pytest.mark.anyio
async def test_a_truncated_lpips_file_is_a_warning_and_a_fresh_copy_is_picked_up(
    make_settings, tmp_path, weights
):
    folder = shutil.copytree(weights, tmp_path / "models" / "lpips-alex")
    (folder / "alex.pth").write_bytes(LINEAR.read_bytes()[:1000])
    edited, original, mask = edited_pair(96)
    args = {"image": data_uri(edited), "original": data_uri(original), "mask": mask_uri(mask)}
    async with connect(make_settings(models_path=tmp_path / "models")) as client:
        broken = structured(await client.call_tool("judge", {**args, "checks": ["preservation"]}))
        shutil.copy(LINEAR, folder / "alex.pth")
        fixed = structured(await client.call_tool("judge", {**args, "checks": ["preservation"]}))
    assert broken["judgements"][0]["preservation"]["lpips_inside"] is None
    assert broken["judgements"][0]["preservation"]["outside"]["mse"] == 0
    (warning,) = [w for w in broken["warnings"] if "LPIPS" in w]
    assert "could not be loaded" in warning and "alex.pth" in warning
    assert fixed["judgements"][0]["preservation"]["lpips_inside"] > 0 and not fixed["warnings"]
