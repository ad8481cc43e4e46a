"""`imagesim export`: a trained ``model.pt`` (or a pretrained ``backbone.pt``) to an ONNX graph that takes raw chip pixels.

The graph's input ``image`` is ``uint8 [N, S, S, 3]`` (RGB, NHWC, S = the chip size the model was
trained at): the conversion to float, the ImageNet normalisation and the NCHW transpose live inside
the graph, so clients send decoded pixels and nothing else. Outputs: ``embedding`` ``[N, 512]`` (the
head's 512-d layer, L2-normalised unless ``normalize=False``) and ``logits`` ``[N, classes]``. The
batch axis is dynamic. Class names, tuned thresholds, chip size, normalisation and the model's
identity go into the ONNX metadata (``imagesim.*`` keys).

A backbone without a head (``backbone.pt`` of `imagesim pretrain`, told apart by its ``kind`` tag)
exports to the one output ``embedding``: the ResNet's global-average-pooled features (512-d for
resnet18, 2048-d for resnet50), L2-normalised the same way; its metadata names no classes
(``classes`` and ``thresholds`` empty, ``head`` "none").

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
        head = f"{len(self.classes)} classes" if self.classes else "no head: embedding only"
        return (
            f"export: {self.out} ({self.precision}, {self.chip_size} px, {head}, id {self.model_id}); "
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


def _embedding_wrapper(net: Any, normalize: bool) -> Any:
    """The same input stage as :func:`_wrapper` around a backbone without a head: (embedding,) only."""
    import torch
    from torch import nn

    class RawPixelsEmbedding(nn.Module):
        """uint8 NHWC RGB → normalised NCHW float → pooled backbone features."""

        mean: torch.Tensor
        scale: torch.Tensor

        def __init__(self) -> None:
            super().__init__()
            self.model = net
            self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).mul(255.0).view(1, 3, 1, 1))
            self.register_buffer("scale", torch.tensor(IMAGENET_STD).mul(255.0).reciprocal().view(1, 3, 1, 1))

        def forward(self, image: torch.Tensor) -> tuple[torch.Tensor]:
            x = image.permute(0, 3, 1, 2).to(self.mean.dtype)
            x = (x - self.mean) * self.scale
            emb = self.model(x)
            if normalize:
                emb = nn.functional.normalize(emb, dim=1)
            return (emb,)

    return RawPixelsEmbedding().eval()


def _peek(path: Path) -> Any:
    """What a torch file holds, tensors memory-mapped (cheap for a large model.pt), to tell a backbone from a
    model; None when torch cannot load it safely (:func:`imagesim.learn.train.load_model` then says why)."""
    import warnings

    import torch

    for mmap in (True, False):  # files of torch's legacy format cannot be memory-mapped
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except Exception:  # noqa: BLE001, S112 - any failure: the strict loader reports it
            continue
    return None


def _neither(path: Path, content: Any) -> InvalidArgumentError:
    """The error for a torch file that is neither a trained model nor a pretrained backbone."""
    import torch

    from imagesim.learn.model import EXPORTABLE

    if isinstance(content, dict) and isinstance(content.get("kind"), str):
        what = f"a file of kind {content['kind']!r}"
    elif isinstance(content, dict) and content and all(torch.is_tensor(v) for v in content.values()):
        what = f"a state dict of {len(content)} tensors without imagesim's tags; fine-tune ResNet weights with `imagesim train --weights`"
    else:
        what = f"a PyTorch file holding a {type(content).__name__}" + (
            " without imagesim's format tag" if isinstance(content, dict) else ""
        )
    return InvalidArgumentError(f"{path}: neither a trained model nor a pretrained backbone ({what}); expected {EXPORTABLE}")


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


def _export_graph(torch: Any, wrapper: Any, dummy: Any, path: Path, opset: int, outputs: tuple[str, ...] = ("embedding", "logits")) -> str:
    """Write the graph with torch's exporter for ``opset``: the torch.export-based ("dynamo") one
    from opset 18, TorchScript's below (the dynamo exporter does not write older opsets)."""
    import warnings

    names = {"input_names": ["image"], "output_names": list(outputs), "opset_version": opset}
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
            dynamic_axes={"image": {0: "batch"}, **{name: {0: "batch"} for name in outputs}},
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
    from imagesim.learn.model import backbone_description, backbone_network, check_backbone_file, is_backbone_file
    from imagesim.learn.train import CHECKPOINT_FORMAT, MODEL_FORMAT, load_model

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
    content = _peek(model_path)
    outputs: tuple[str, ...] = ("embedding", "logits")
    if is_backbone_file(content):  # `imagesim pretrain`'s backbone.pt: no head, the pooled features are the embedding
        ckpt = check_backbone_file(content, model_path)
        net = backbone_network(ckpt, model_path)
        classes: list[str] = []
        config = ckpt["config"] if isinstance(ckpt.get("config"), dict) else {}
        size = int(settings.chip_size or ckpt["chip_size"])
        options.check_range("chip_size", size, *options.CHIP_SIZE_RANGE)
        with torch.no_grad():
            embedding_dim = int(net(torch.zeros((1, 3, size, size))).shape[1])
        backbone = str(ckpt["backbone"])
        wrapper = _embedding_wrapper(net, settings.normalize)
        outputs = ("embedding",)
    else:
        if content is not None and not (isinstance(content, dict) and content.get("format") in (CHECKPOINT_FORMAT, MODEL_FORMAT)):
            raise _neither(model_path, content)
        del content  # the memory-mapped peek; load_model reads the checkpoint (and says what is wrong with it)
        model, ckpt = load_model(model_path)
        classes = list(ckpt["classes"])
        config = ckpt["config"]
        size = int(settings.chip_size or ckpt.get("chip_size") or ckpt["config"]["chip_size"])
        options.check_range("chip_size", size, *options.CHIP_SIZE_RANGE)
        embedding_dim = model.neck[-1].num_features
        backbone = str(ckpt["config"]["backbone"])
        wrapper = _wrapper(model, settings.normalize)
    precision = "fp16" if settings.fp16 else "fp32"
    if settings.fp16:
        wrapper = wrapper.half()

    dummy = torch.zeros((2, size, size, 3), dtype=torch.uint8)
    with tempfile.TemporaryDirectory(prefix=".imagesim-export-", dir=out.parent if out.parent.exists() else None) as tmp:
        raw = Path(tmp) / "raw.onnx"
        exporter = _export_graph(torch, wrapper, dummy, raw, settings.opset, outputs)
        graph = onnx.load(str(raw))
        thresholds = [float(t) for t in np.asarray(ckpt.get("thresholds", [options.THRESHOLD] * len(classes))).ravel()]
        metrics = ckpt.get("metrics") or {}
        metrics = metrics if isinstance(metrics, dict) else {}
        meta = {
            "classes": json.dumps(classes),
            "thresholds": json.dumps(thresholds),
            "chip_size": str(size),
            "input": "image: uint8 [batch, chip_size, chip_size, 3], RGB, NHWC; normalisation inside the graph",
            "mean": json.dumps(list(IMAGENET_MEAN)),
            "std": json.dumps(list(IMAGENET_STD)),
            "embedding_dim": str(embedding_dim),
            "embedding_normalized": json.dumps(settings.normalize),
            "backbone": backbone,
            "precision": precision,
            "exporter": exporter,
            "source_model": str(model_path.resolve()),
            "source_sha256": hashlib.sha256(model_path.read_bytes()).hexdigest(),
            "epoch": str(ckpt.get("epoch", "")),
            "val_f1_micro": json.dumps(metrics.get("f1_micro_tuned", metrics.get("f1_micro"))),
        }
        if not classes:
            meta["head"] = f"none: {backbone_description(ckpt)}, the embedding is its pooled features"
        for key, value in meta.items():
            entry = graph.metadata_props.add()
            entry.key, entry.value = META_PREFIX + key, value
        graph.producer_name = "imagesim"
        onnx.checker.check_model(graph)
        final = Path(tmp) / "model.onnx"
        onnx.save(graph, str(final))

        images, source = parity_images(settings.parity_chips or Path(str(config.get("chips") or "")), size, settings.parity_count)
        try:
            session, provider = devices.onnx_session(final, settings.provider)
        except EncodeError as exc:
            raise ExportError(f"{out}: parity check: {exc}; nothing written") from None
        got = session.run(list(outputs), {"image": images})
        with torch.no_grad():
            want = [t.float().numpy() for t in wrapper(torch.from_numpy(images))]
        diffs = {name: float(np.abs(g.astype(np.float32) - w).max()) for name, g, w in zip(outputs, got, want)}
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
