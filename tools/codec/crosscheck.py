"""Cross-process determinism: encode here, decode the same records in a spawned process with another
torch thread count, and compare symbols and reconstructions."""

from __future__ import annotations

import multiprocessing
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ...shared.codec import ScaleRecord, make_codec
from ...shared.codec.learned import SCALE_INDEX, LearnedCodec

RECONSTRUCTION_TOLERANCE = 1e-5
"""Largest relative difference between two decodes of one stream still counted as float32 rounding."""


def decoded_frame(codec: LearnedCodec, records: list[ScaleRecord]) -> list[dict[str, Tensor]]:
    """Per record: ``x_hat`` ``[1, C, H, W]`` from the frame decode, and the entropy-decoded ``y_symbols``,
    ``z_symbols`` and ``indexes`` (absent for an ``xscale`` record at its starve level)."""
    decoded = codec.decode(records)
    results = []
    for record in records:
        item = {"x_hat": decoded[record.name]}
        if codec.starve_phi is None or record.phi > codec.starve_phi:
            out = codec.entropy_decode(record)
            item.update({key: out[key] for key in ("y_symbols", "z_symbols", "indexes")})
        results.append(item)
    return results


def _decode_child(codec_name: str, checkpoint: str, records: list[ScaleRecord], threads: int, sender: Any) -> None:
    """Child side of :func:`decode_in_subprocess`: decode, send numpy arrays (copied by pickle) back."""
    try:
        torch.set_num_threads(threads)
        codec = make_codec(codec_name, checkpoint)
        results = [{key: value.numpy() for key, value in item.items()} for item in decoded_frame(codec, records)]
        sender.send(("ok", results))
    except Exception as exc:  # reported to the parent, which raises
        sender.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        sender.close()


def decode_in_subprocess(checkpoint: Path, records: list[ScaleRecord], threads: int = 2, timeout: float = 600.0,
                         codec_name: str = "learned") -> list[dict[str, Tensor]]:
    """Decode ``records`` (one frame) in a fresh spawned process with ``threads`` torch threads; see
    :func:`decoded_frame`.

    Raises:
        RuntimeError: the child failed, died or did not answer within ``timeout`` seconds.
    """
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_decode_child, args=(codec_name, str(checkpoint), records, threads, sender), daemon=True)
    process.start()
    sender.close()
    try:
        if not receiver.poll(timeout):
            raise RuntimeError(f"decoder process gave no answer within {timeout:.0f} s")
        status, payload = receiver.recv()
    except EOFError:
        process.join(10)
        raise RuntimeError(f"decoder process died (exit code {process.exitcode})") from None
    finally:
        receiver.close()
        process.join(10)
        if process.is_alive():
            process.kill()
    if status != "ok":
        raise RuntimeError(f"decoder process failed: {payload}")
    return [{key: torch.from_numpy(value) for key, value in item.items()} for item in payload]


def cross_process_check(checkpoint: Path, features: dict[str, Tensor], phi: float,
                        threads: tuple[int, int] = (1, 2), codec_name: str = "learned") -> dict[str, Any]:
    """Encode here with ``threads[0]`` threads, decode in another process with ``threads[1]``.

    Returns:
        ``symbols_identical`` (every hyper-latent and latent symbol and every CDF index equal to the
        encoder's: the property the integer scale network guarantees), ``reconstruction_identical``
        and ``reconstruction_max_abs_diff`` / ``..._relative`` (the float synthesis transform may
        round differently with another thread count: oneDNN's 1x1 convolution inside IGDN does),
        and ``deterministic``: symbols identical and reconstructions equal to float32 rounding
        (relative difference below :data:`RECONSTRUCTION_TOLERANCE`).
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(threads[0])
    try:
        codec = make_codec(codec_name, checkpoint)
        records = codec.encode(features, dict.fromkeys(features, phi))
        local = decoded_frame(codec, records)
        sent = {r.name: codec.model.compress(features[r.name], SCALE_INDEX[r.name], phi) for r in records}
    finally:
        torch.set_num_threads(previous)
    remote = decode_in_subprocess(checkpoint, records, threads[1], codec_name=codec_name)
    symbols = all(
        all(torch.equal(sent[r.name][key], out[key]) for key in ("y_symbols", "z_symbols", "indexes"))
        for r, out in zip(records, remote) if "y_symbols" in out
    )
    diff = max(float((a["x_hat"] - b["x_hat"]).abs().max()) for a, b in zip(local, remote))
    relative = max(float((a["x_hat"] - b["x_hat"]).abs().max() / a["x_hat"].abs().max().clamp_min(1e-12))
                   for a, b in zip(local, remote))
    return {"deterministic": bool(symbols and relative <= RECONSTRUCTION_TOLERANCE),
            "symbols_identical": bool(symbols), "reconstruction_identical": diff == 0.0,
            "reconstruction_max_abs_diff": diff, "reconstruction_max_relative_diff": relative,
            "threads": list(threads)}
