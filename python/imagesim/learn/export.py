"""`imagesim export`: a trained ``model.pt`` to an ONNX graph that takes raw chip pixels.

The graph's input ``image`` is ``uint8 [N, S, S, 3]`` (RGB, NHWC, S = the chip size the model was
trained at): the conversion to float, the ImageNet normalisation and the NCHW transpose live inside
the graph, so clients send decoded pixels and nothing else. Outputs: ``embedding`` ``[N, 512]`` (the
head's 512-d layer, L2-normalised unless ``normalize=False``) and ``logits`` ``[N, classes]``. The
batch axis is dynamic. Class names, tuned thresholds, chip size, normalisation and the model's
identity go into the ONNX metadata (``imagesim.*`` keys).

After writing, the graph is run with onnxruntime on real chips and compared with the PyTorch model;
the export fails (and nothing is left at ``out``) when they differ by more than the tolerance.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imagesim import options
from imagesim.errors import EncodeError, ExportError, ImagesimFileNotFoundError, InvalidArgumentError, OutputExistsError, require
from imagesim.fsutil import atomic_path
from imagesim.learn import devices

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
META_PREFIX = "imagesim."
# Largest |torch - onnxruntime| accepted on the outputs (fp16 carries ~3 decimal digits).
TOLERANCE = {"fp32": 1e-3, "fp16": 5e-2}


@dataclass
class ExportSettings:
    opset: int = options.OPSET
    fp16: bool = False
    chip_size: int | None = None  # default: the size the model was trained at
    normalize: bool = True
    overwrite: bool = False
    parity_chips: Path | None = None  # folder of chips for the parity check; default: the training chips
    parity_count: int = options.PARITY_COUNT
    provider: str = "cpu"  # onnxruntime provider of the parity check (options.ENCODE_PROVIDERS; auto: CUDA when a GPU is present)

    def check(self) -> None:
        options.check_range("opset", self.opset, *options.OPSET_RANGE)
        if self.chip_size is not None:
            options.check_range("chip_size", self.chip_size, *options.CHIP_SIZE_RANGE)
        options.check_range("parity_count", self.parity_count, 1)
        options.check_choice("provider", self.provider, options.ENCODE_PROVIDERS)


@dataclass
class ExportSummary:
    out: Path
    model_id: str
    chip_size: int
    classes: list[str]
    precision: str
    parity_images: int
    parity_source: str
    max_abs_diff: dict[str, float]
    provider: str
    seconds: float

    def line(self) -> str:
        diffs = ", ".join(f"{k} {v:.2e}" for k, v in self.max_abs_diff.items())
        return (
            f"export: {self.out} ({self.precision}, {self.chip_size} px, {len(self.classes)} classes, id {self.model_id}); "
            f"parity on {self.parity_images} {self.parity_source} with {self.provider}: max |torch - onnx| {diffs}; "
            f"{self.seconds:.1f} s"
        )


def model_id(path: str | Path) -> str:
    """A short identity of an ONNX file: the first 16 hex digits of its SHA-256."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def _wrapper(model: Any, normalize: bool) -> Any:
    import torch
    from torch import nn

    class RawPixels(nn.Module):
        """uint8 NHWC RGB → normalised NCHW float → (embedding, logits)."""

        mean: torch.Tensor
        scale: torch.Tensor

        def __init__(self) -> None:
            super().__init__()
            self.model = model
            self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).mul(255.0).view(1, 3, 1, 1))
            self.register_buffer("scale", torch.tensor(IMAGENET_STD).mul(255.0).reciprocal().view(1, 3, 1, 1))

        def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            x = image.permute(0, 3, 1, 2).to(self.mean.dtype)
            x = (x - self.mean) * self.scale
            emb, logits = self.model.embed_and_logits(x)
            if normalize:
                emb = nn.functional.normalize(emb, dim=1)
            return emb, logits

    return RawPixels().eval()


def parity_images(chips: Path | None, size: int, count: int) -> tuple[np.ndarray, str]:
    """Up to ``count`` real chips decoded at ``size`` (the same Rust path `imagesim encode` uses)."""
    from imagesim import _imagesim

    paths = sorted(chips.rglob("*.jpg"))[: count * 4] if chips and chips.is_dir() else []
    if paths:
        out = np.zeros((len(paths), size, size, 3), np.uint8)
        errors = _imagesim.decode_batch([str(p) for p in paths], out)
        good = [i for i, e in enumerate(errors) if e is None]
        # Prefer chips with image content (not flat no-data black).
        good.sort(key=lambda i: -float(out[i].std()))
        if good:
            return out[good[:count]], f"chips from {chips}"
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (count, size, size, 3), dtype=np.uint8), "random images (no chips found)"


def _export_graph(torch: Any, wrapper: Any, dummy: Any, path: Path, opset: int) -> str:
    """Write the graph with torch's exporter for ``opset``: the torch.export-based ("dynamo") one
    from opset 18, TorchScript's below (the dynamo exporter does not write older opsets)."""
    import warnings

    names = {"input_names": ["image"], "output_names": ["embedding", "logits"], "opset_version": opset}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        if opset >= 18 and importlib.util.find_spec("onnxscript") is not None:  # the dynamo exporter needs onnxscript
            torch.onnx.export(
                wrapper,
                (dummy,),
                str(path),
                dynamo=True,
                external_data=False,
                verbose=False,
                dynamic_shapes={"image": {0: torch.export.Dim("batch")}},
                **names,
            )
            return "dynamo"
        torch.onnx.export(
            wrapper,
            (dummy,),
            str(path),
            dynamo=False,
            do_constant_folding=True,
            dynamic_axes={"image": {0: "batch"}, "embedding": {0: "batch"}, "logits": {0: "batch"}},
            **names,
        )
        return "torchscript"


def export_onnx(model_path: str | Path, out: str | Path, settings: ExportSettings | None = None) -> ExportSummary:
    settings = settings or ExportSettings()
    settings.check()
    t0 = time.perf_counter()
    torch = require("torch", "train", purpose="`imagesim export`")
    onnx = require("onnx", "encode", purpose="`imagesim export`")
    require("onnxruntime", "encode", purpose="`imagesim export`")
    from imagesim.learn.train import load_model

    out = Path(out)
    if out.suffix != ".onnx":
        raise InvalidArgumentError(f"`out` {out}: give a file name ending in .onnx", param="out")
    if out.exists() and not settings.overwrite:
        raise OutputExistsError(f"{out} exists; pass `overwrite` to replace it")
    try:  # a provider this machine cannot run fails now, not after the export
        devices.onnx_providers(settings.provider)
    except EncodeError as exc:
        raise ExportError(f"parity check: {exc}") from None
    model_path = Path(model_path)
    if not model_path.is_file():
        raise ImagesimFileNotFoundError(f"model not found: {model_path}")
    model, ckpt = load_model(model_path)
    classes = list(ckpt["classes"])
    size = int(settings.chip_size or ckpt.get("chip_size") or ckpt["config"]["chip_size"])
    options.check_range("chip_size", size, *options.CHIP_SIZE_RANGE)
    wrapper = _wrapper(model, settings.normalize)
    precision = "fp16" if settings.fp16 else "fp32"
    if settings.fp16:
        wrapper = wrapper.half()

    dummy = torch.zeros((2, size, size, 3), dtype=torch.uint8)
    with tempfile.TemporaryDirectory(prefix=".imagesim-export-", dir=out.parent if out.parent.exists() else None) as tmp:
        raw = Path(tmp) / "raw.onnx"
        exporter = _export_graph(torch, wrapper, dummy, raw, settings.opset)
        graph = onnx.load(str(raw))
        thresholds = [float(t) for t in np.asarray(ckpt.get("thresholds", [options.THRESHOLD] * len(classes))).ravel()]
        metrics = ckpt.get("metrics") or {}
        meta = {
            "classes": json.dumps(classes),
            "thresholds": json.dumps(thresholds),
            "chip_size": str(size),
            "input": "image: uint8 [batch, chip_size, chip_size, 3], RGB, NHWC; normalisation inside the graph",
            "mean": json.dumps(list(IMAGENET_MEAN)),
            "std": json.dumps(list(IMAGENET_STD)),
            "embedding_dim": str(model.neck[-1].num_features),
            "embedding_normalized": json.dumps(settings.normalize),
            "backbone": str(ckpt["config"]["backbone"]),
            "precision": precision,
            "exporter": exporter,
            "source_model": str(model_path.resolve()),
            "source_sha256": hashlib.sha256(model_path.read_bytes()).hexdigest(),
            "epoch": str(ckpt.get("epoch", "")),
            "val_f1_micro": json.dumps(metrics.get("f1_micro_tuned", metrics.get("f1_micro"))),
        }
        for key, value in meta.items():
            entry = graph.metadata_props.add()
            entry.key, entry.value = META_PREFIX + key, value
        graph.producer_name = "imagesim"
        onnx.checker.check_model(graph)
        final = Path(tmp) / "model.onnx"
        onnx.save(graph, str(final))

        images, source = parity_images(settings.parity_chips or Path(ckpt["config"].get("chips", "")), size, settings.parity_count)
        try:
            session, provider = devices.onnx_session(final, settings.provider)
        except EncodeError as exc:
            raise ExportError(f"{out}: parity check: {exc}; nothing written") from None
        got = session.run(["embedding", "logits"], {"image": images})
        with torch.no_grad():
            want = [t.float().numpy() for t in wrapper(torch.from_numpy(images))]
        diffs = {name: float(np.abs(g.astype(np.float32) - w).max()) for name, g, w in zip(("embedding", "logits"), got, want)}
        worst = max(diffs.values())
        if not np.isfinite(worst) or worst > TOLERANCE[precision]:
            raise ExportError(
                f"{out}: ONNX and PyTorch outputs differ by up to {worst:.3g} (tolerance {TOLERANCE[precision]:g}) on "
                f"{len(images)} {source}; nothing written"
            )
        with atomic_path(out) as dst:
            dst.write_bytes(final.read_bytes())
    return ExportSummary(out, model_id(out), size, classes, precision, len(images), source, diffs, provider, time.perf_counter() - t0)


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The ``imagesim.*`` metadata of an exported ONNX file, decoded."""
    ort = require("onnxruntime", "encode", purpose="reading an ONNX model")
    path = Path(path)
    if not path.is_file():
        raise ImagesimFileNotFoundError(f"ONNX model not found: {path}")
    try:
        meta = ort.InferenceSession(str(path), providers=[devices.CPU_PROVIDER]).get_modelmeta().custom_metadata_map
    except Exception as exc:  # onnxruntime raises its own exception types
        raise InvalidArgumentError(f"{path}: not a readable ONNX model ({exc})") from None
    return decode_metadata(meta, path)


def decode_metadata(meta: dict[str, str], path: Path) -> dict[str, Any]:
    if META_PREFIX + "classes" not in meta:
        raise InvalidArgumentError(f"{path}: not an imagesim export (no {META_PREFIX}classes metadata); run `imagesim export`")
    out: dict[str, Any] = {}
    for key, value in meta.items():
        if not key.startswith(META_PREFIX):
            continue
        name = key[len(META_PREFIX) :]
        try:
            out[name] = (
                json.loads(value) if name in ("classes", "thresholds", "mean", "std", "embedding_normalized", "val_f1_micro") else value
            )
        except ValueError:
            out[name] = value
    out["chip_size"] = int(out["chip_size"])
    out["embedding_dim"] = int(out.get("embedding_dim", 512))
    return out
