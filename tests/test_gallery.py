"""The session gallery's preview cache lives as long as the server: it must hold only what the page shows."""

import time

import numpy as np
from PIL import Image

from tools.core.images import ImageStore
from tools.session.gallery import render_gallery
from tools.session.log import SessionLog


def test_previews_of_images_rotated_out_of_the_session_log_leave_the_gallery_cache(tmp_path):
    store = ImageStore(tmp_path / "images")
    log = SessionLog(tmp_path, max_bytes=3_000)
    thumbs: dict[tuple[str, int], str] = {}
    made = []
    for i in range(12):
        pixels = np.full((16, 16, 3), i * 20, dtype=np.uint8)
        ref = store.put(Image.fromarray(pixels), tool="generate", params={"prompt": f"grey {i}"})
        made.append(ref.id)
        log.record(
            "generate",
            {"prompt": f"grey {i}", "pad": "x" * 200},
            time.time(),
            0.01,
            result={"images": [{"id": ref.id}]},
        )
        render_gallery(log, store, thumbs)
    shown = set(log.image_ids())
    assert log.rotated_out > 0 and made[0] not in shown  # the first calls left the log
    cached = {image_id for image_id, _ in thumbs}
    assert cached == shown  # every shown image has its preview, and no other image keeps one
