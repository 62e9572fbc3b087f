"""Non-model time per foreground candidate at 1024x1024 (target <= 80 ms p50). One JSON line per figure.

    .venv/bin/python bench/bench_foreground.py [--runs 30]

Times what generate(foreground=...) does around the inpainter for each candidate: reading the object's
mask (alpha), placing it on the canvas (template), the paint mask, compositing the object back, and the
over-extension check. The inpainter's output is stood in for by a real photograph of the canvas size.

Then GrabCut, the mask of an opaque product photo without a segmenter (generate's foreground, cut_out): at
`--side` on each photograph, cut on a copy of at most GRABCUT_SIDE px (what limner runs) and at full size
(what it ran before), with the two masks' IoU. One run each: a full-size cut takes seconds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
from PIL import Image, ImageDraw
from skimage import data

from tools.core.masks import GRABCUT_SIDE, erode, grabcut
from tools.generate import foreground as fg


def cutout(size: int) -> Image.Image:
    face = Image.fromarray(data.chelsea()).resize((size, size))
    alpha = Image.new("L", (size, size), 0)
    ImageDraw.Draw(alpha).ellipse((4, 4, size - 5, size - 5), fill=255)
    rgba = face.convert("RGBA")
    rgba.putalpha(alpha)
    return rgba


def main(runs: int, side: int) -> None:
    source = cutout(420)
    painted = np.asarray(Image.fromarray(data.coffee()).resize((side, side)))
    times, stages = [], {"understand": [], "template": [], "paint_mask": [], "composite": [], "integrity": []}
    for i in range(runs + 2):
        t = [time.perf_counter()]
        obj = fg.understand(source, None)
        t.append(time.perf_counter())
        template = fg.place(obj, fg.auto_placement(obj, side, side), side, side, "placement")
        t.append(time.perf_counter())
        erode(template.mask, fg.EDGE_ERODE)
        t.append(time.perf_counter())
        image = fg.composite_object(painted, template)
        t.append(time.perf_counter())
        fg.over_extension(image, template)
        t.append(time.perf_counter())
        if i >= 2:  # two warm-up rounds
            times.append((t[-1] - t[0]) * 1000)
            for k, name in enumerate(stages):
                stages[name].append((t[k + 1] - t[k]) * 1000)
    print(
        json.dumps(
            {
                "name": f"foreground_non_model_per_candidate_{side}px_p50",
                "value": round(statistics.median(times), 2),
                "unit": "ms",
                "target": "<= 80",
            }
        )
    )
    for name, values in stages.items():
        print(
            json.dumps(
                {"name": f"stage_{name}_p50", "value": round(statistics.median(values), 2), "unit": "ms"}
            )
        )


def grabcut_figures(side: int) -> None:
    for name in ("coffee", "astronaut", "chelsea"):
        photo = getattr(data, name)()
        h, w = photo.shape[:2]
        big = np.asarray(Image.fromarray(photo).resize((side, round(side * h / w)), Image.Resampling.BICUBIC))
        started = time.perf_counter()
        scaled = grabcut(big)
        scaled_s = time.perf_counter() - started
        started = time.perf_counter()
        full = grabcut(big, side=max(big.shape[:2]))
        full_s = time.perf_counter() - started
        iou = (scaled & full).sum() / max(1, (scaled | full).sum())
        for label, value, unit in (
            (f"grabcut_{name}_{side}px_at_{GRABCUT_SIDE}_s", scaled_s, "s"),
            (f"grabcut_{name}_{side}px_full_size_s", full_s, "s"),
            (f"grabcut_{name}_iou_with_full_size", iou, "IoU"),
        ):
            print(json.dumps({"name": label, "value": round(float(value), 3), "unit": unit}))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--side", type=int, default=1024)
    args = parser.parse_args()
    main(args.runs, args.side)
    grabcut_figures(args.side)
