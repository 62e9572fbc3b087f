"""locate's non-model time at 1024x1024 with 3 instances (target <= 40 ms p50). One JSON line per figure.

    .venv/bin/python bench/bench_locate.py [--runs 30] [--side 1024] [--instances 3]

Times what locate does around the detector and the segmenter: the pixels the models see (model_image), and
the finish step (every mask stored as a PNG with its metadata, its area and centre, the overlay), and the
overlay's encoding as the result's preview. The
segmenter's masks are stood in for by smooth shapes of a real photograph's size; each run stores into a
fresh store, so every mask is encoded and written as on a first call. Process CPU time is printed beside the
wall time: other processes sharing the cores do not inflate it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from skimage import data

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tools.core.images import ImageStore, Resolved, preview  # noqa: E402
from tools.locate.request import LocateRequest, LocateWork  # noqa: E402
from tools.locate.result import finish  # noqa: E402
from tools.locate.work import Instance, LocateOutput, model_image  # noqa: E402


def instances(side: int, count: int) -> list[Instance]:
    """`count` smooth blobs (ellipses bent by a polygon), as SAM's masks look, each with its box."""
    found = []
    rng = np.random.default_rng(0)
    for k in range(count):
        canvas = np.zeros((side, side), np.uint8)
        cx, cy = int(side * (0.25 + 0.25 * k)) % side, int(side * (0.3 + 0.2 * k)) % side
        axes = (int(side * 0.12), int(side * 0.18))
        cv2.ellipse(canvas, (cx, cy), axes, 15 * k, 0, 360, 1, -1)
        points = np.array(
            [
                [cx + rng.integers(-side // 6, side // 6), cy + rng.integers(-side // 6, side // 6)]
                for _ in range(6)
            ],
            np.int32,
        )
        cv2.fillPoly(canvas, [cv2.convexHull(points)], 1)
        mask = canvas.astype(bool)
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        box = (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)
        name = "mug" if k < 2 else "handle"
        exact = (float(box[0]), float(box[1]), float(box[2]), float(box[3]))
        found.append(Instance(name, 0.9 - 0.1 * k, box, exact, mask, 0.95, "segmenter"))
    return found


def main(runs: int, side: int, count: int) -> None:
    photo = Image.fromarray(cv2.resize(data.astronaut(), (side, side), interpolation=cv2.INTER_AREA))
    found = instances(side, count)
    request = LocateRequest(("mug", "handle"), 0.3, 5, "grounding-dino-tiny", "sam-vit-base", "segmenter")
    output = LocateOutput(
        found, {"mug": 0.2, "handle": None}, "bench detector", "bench segmenter", False, [], {}
    )
    times, cpus, stages = [], [], {"model_image": [], "finish": [], "preview": []}
    with tempfile.TemporaryDirectory() as tmp:
        image_id = ImageStore(Path(tmp) / "input").put(photo, tool="input").id
        given = LocateWork(request, Resolved(photo, image_id, "store"))
        for i in range(runs + 2):
            store = ImageStore(Path(tmp) / f"run{i}")
            store.put(photo, tool="input")  # the searched image is stored already (called by id)
            started, started_cpu = time.perf_counter(), time.process_time()
            model_image(given.source.image)
            middle = time.perf_counter()
            _, images = finish(given, output, store)
            finished = time.perf_counter()
            for image in images:
                preview(image)
            ended = time.perf_counter()
            if i >= 2:  # two warm-up rounds
                times.append((ended - started) * 1000)
                cpus.append((time.process_time() - started_cpu) * 1000)
                stages["model_image"].append((middle - started) * 1000)
                stages["finish"].append((finished - middle) * 1000)
                stages["preview"].append((ended - finished) * 1000)
    print(
        json.dumps(
            {
                "name": f"locate_non_model_{side}px_{count}_instances_p50",
                "value": round(statistics.median(times), 2),
                "unit": "ms",
                "target": "<= 40",
                "cpu_ms_p50": round(statistics.median(cpus), 2),
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
    parser.add_argument("--instances", type=int, default=3)
    args = parser.parse_args()
    main(args.runs, args.side, args.instances)
