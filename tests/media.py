"""Test media written with real encoders: short videos through PyAV."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np


def write_video(path: Path, frames: int = 12, fps: int = 10, height: int = 48, width: int = 64,
                creation_time: str | None = "2024-01-02T03:04:05.000000Z") -> Path:
    """Write an MPEG-4 video with PyAV whose frame ``i`` is flat gray ``20 * i % 256``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        if creation_time is not None:
            container.metadata["creation_time"] = creation_time
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for index in range(frames):
            pixels = np.full((height, width, 3), 20 * index % 256, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
