"""Front-half backends: eager PyTorch, or ONNX Runtime over an exported ResNet50 + FPN graph.

::

    images ──> GeneralizedRCNNTransform (Python: normalise, resize, pad) ──> [1, 3, H, W] ──> torch | ORT ──> P2..P5

:func:`export_onnx` writes the backbone and FPN (dynamic height and width) with the settings that make the
backbone fingerprint in the file's metadata, so :func:`load_onnx_front` rebuilds the same
:class:`~fpnlink.shared.model.front.FrontHalf` (same fingerprints, hence accepted by the same cloud) without
loading any torch weights. Execution providers are taken from what the installed onnxruntime offers, in the
order TensorRT, CUDA, CPU. Each image is run on its own (the edge codes one frame at a time).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..shared.errors import WeightsError
from ..shared.model import TRANSMITTED_SCALES
from ..shared.model.front import FrontHalf, build_transform
from ..shared.model.split import ImageSize
from ..shared.model.zoo import ModelConfig

BACKENDS: tuple[str, ...] = ("torch", "onnxruntime")
PROVIDER_ORDER: tuple[str, ...] = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
META_KEY = "fpnlink.front_half"
OPSET = 17
_OUTPUTS = tuple(f"p{int(name) + 2}" for name in TRANSMITTED_SCALES)


class _Body(nn.Module):
    """ResNet50 + FPN with the transmitted maps as a tuple (ONNX outputs are positional)."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        features = self.backbone(images)
        return tuple(features[name] for name in TRANSMITTED_SCALES)


def export_onnx(front: FrontHalf, path: str | Path, sample_size: tuple[int, int] = (256, 320)) -> Path:
    """Write ``front``'s backbone + FPN as ONNX with dynamic H and W, its fingerprints in the metadata.

    Raises:
        WeightsError: ``front`` is not a torch front half, or the ``onnx`` package is missing.
    """
    edge = front.edge
    if not isinstance(edge, nn.Module):
        raise WeightsError("only a torch front half can be exported")
    try:
        import onnx
    except ImportError as exc:
        raise WeightsError("exporting needs the onnx package: pip install 'fpnlink[cpu]'") from exc
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = _Body(edge.backbone).eval()
    sample = torch.zeros(1, 3, *sample_size)
    with torch.inference_mode(False), torch.no_grad():
        torch.onnx.export(body, (sample,), str(path), input_names=["images"], output_names=list(_OUTPUTS),
                          dynamic_axes={"images": {2: "height", 3: "width"},
                                        **{o: {2: f"{o}_h", 3: f"{o}_w"} for o in _OUTPUTS}},
                          opset_version=OPSET, dynamo=False)
    model = onnx.load(str(path))
    meta = {"weights": front.weights, "trained": front.trained, "archs": list(front.archs),
            "min_size": front.config.min_size, "max_size": front.config.max_size,
            "backbone_fingerprint": front.backbone_fingerprint,
            "backbone_weight_fingerprint": front.backbone_weight_fingerprint}
    model.metadata_props.add(key=META_KEY, value=json.dumps(meta))
    onnx.save(model, str(path))
    return path


def quantize_int8(path: str | Path, out: str | Path, calibration: list[Tensor]) -> Path:
    """An int8 copy of an exported front half (static QDQ: int8 weights per channel, uint8 activations).

    Args:
        path: a file from :func:`export_onnx`.
        out: where the int8 model goes (the fingerprints metadata is carried over: same weights, fewer bits).
        calibration: transformed [1, 3, H, W] inputs whose activation ranges fix the quantisation.
    """
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"images": x.numpy()} for x in calibration])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    out = Path(out)
    prepared = out.with_suffix(".pre.onnx")
    quant_pre_process(str(path), str(prepared))
    quantize_static(str(prepared), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8)
    prepared.unlink()
    model = onnx.load(str(out))
    del model.metadata_props[:]
    meta = dict(onnx_metadata(path), precision="int8")
    model.metadata_props.add(key=META_KEY, value=json.dumps(meta))
    onnx.save(model, str(out))
    return out


def choose_providers(available: list[str] | None = None) -> list[str]:
    """The installed execution providers in preference order: TensorRT, CUDA, CPU."""
    import onnxruntime as ort

    offered = ort.get_available_providers() if available is None else available
    return [p for p in PROVIDER_ORDER if p in offered] or ["CPUExecutionProvider"]


class OrtFront:
    """The front half on ONNX Runtime: the transform in Python, the graph in a session.

    Args:
        path: a file from :func:`export_onnx`.
        config: network-input settings (from the file).
        providers: execution providers; :func:`choose_providers` when None.
        threads: intra-op threads of the session (0: onnxruntime's default).
    """

    def __init__(self, path: Path, config: ModelConfig, providers: list[str] | None = None, threads: int = 0) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        self.providers = providers or choose_providers()
        try:
            self.session = ort.InferenceSession(str(path), options, providers=self.providers)
        except Exception as exc:  # onnxruntime raises its own types for a missing or corrupt model
            raise WeightsError(f"cannot load ONNX model {path}: {exc}") from exc
        self.transform = build_transform(config).eval()

    def __call__(self, images: list[Tensor]) -> tuple[dict[str, Tensor], list[ImageSize], list[ImageSize]]:
        original_sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
        image_list, _ = self.transform(images)
        outputs = [self.session.run(None, {"images": image_list.tensors[i:i + 1].numpy()})
                   for i in range(len(images))]
        features = {name: torch.from_numpy(np.concatenate([o[k] for o in outputs]))
                    for k, name in enumerate(TRANSMITTED_SCALES)}
        image_sizes = [(int(h), int(w)) for h, w in image_list.image_sizes]
        return features, image_sizes, original_sizes


def onnx_metadata(path: str | Path) -> dict[str, Any]:
    """The fpnlink metadata an exported file carries.

    Raises:
        WeightsError: the file is missing, not ONNX, or was not written by :func:`export_onnx`.
    """
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"no ONNX model at {path} (write one with `fpnlink-edge export`)")
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise WeightsError(f"{path} is not a loadable ONNX model: {exc}") from exc
    meta = session.get_modelmeta().custom_metadata_map.get(META_KEY)
    if meta is None:
        raise WeightsError(f"{path} was not written by `fpnlink-edge export` (no {META_KEY} metadata)")
    return json.loads(meta)


def load_onnx_front(path: str | Path, providers: list[str] | None = None, threads: int = 0) -> FrontHalf:
    """A :class:`FrontHalf` on ONNX Runtime from an exported file (no torch weights are loaded)."""
    meta = onnx_metadata(path)
    config = ModelConfig(min_size=int(meta["min_size"]), max_size=int(meta["max_size"]))
    return FrontHalf(meta["weights"], bool(meta["trained"]), config, tuple(meta["archs"]),
                     OrtFront(Path(path), config, providers, threads), meta["backbone_fingerprint"],
                     meta["backbone_weight_fingerprint"])
