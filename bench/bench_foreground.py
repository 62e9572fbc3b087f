"""Non-model time per foreground candidate at 1024x1024 (target <= 80 ms p50). One JSON line per figure.

    .venv/bin/python bench/bench_foreground.py [--runs 30]

Times what generate(foreground=...) does around the inpainter for each candidate: reading the object's
mask (alpha), placing it on the canvas (template), the paint mask, compositing the object back, and the
over-extension check. The inpainter's output is stood in for by a real photograph of the canvas size.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
from PIL import Image, ImageDraw
from skimage import data

from tools.core.masks import erode
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


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--side", type=int, default=1024)
    args = parser.parse_args()
    main(args.runs, args.side)
