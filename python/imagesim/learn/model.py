"""The multilabel network: a torchvision ResNet backbone and the design notebook's fully connected head.

Head (the notebook's intended one; its last Linear had slipped inside a loop)::

    Linear(F→1024) ReLU BatchNorm1d Dropout(0.5) Linear(1024→512) ReLU BatchNorm1d  ← embedding (512-d)
    Dropout(0.5) Linear(512→classes)                                                 ← logits

F is 2048 for resnet50 and 512 for resnet18. ``model.embed(x)`` returns the embedding used for
similarity search; ``model.embed_and_logits(x)`` returns both (what the ONNX export needs).
"""

from __future__ import annotations

import re
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from imagesim import options
from imagesim.errors import ImagesimFileNotFoundError, InvalidArgumentError

BACKBONES = options.BACKBONES
EMBEDDING_DIM = 512
#: What a `weights` file must be, for error messages.
BACKBONE_WEIGHTS = "backbone weights: a torchvision ResNet state dict saved with torch.save (.pth/.pt)"


class MultilabelNet(nn.Module):
    def __init__(self, backbone: str, n_classes: int, dropout: float = 0.5) -> None:
        super().__init__()
        import torchvision

        options.check_choice("backbone", backbone, BACKBONES)
        net = getattr(torchvision.models, backbone)(weights=None)
        features = net.fc.in_features
        net.fc = nn.Identity()
        self.backbone = net
        self.neck = nn.Sequential(
            nn.Linear(features, 1024),
            nn.ReLU(inplace=True),
            nn.BatchNorm1d(1024),
            nn.Dropout(dropout),
            nn.Linear(1024, EMBEDDING_DIM),
            nn.ReLU(inplace=True),
            nn.BatchNorm1d(EMBEDDING_DIM),
        )
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(EMBEDDING_DIM, n_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.neck(self.backbone(x))

    def embed_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        e = self.embed(x)
        return e, self.classifier(self.dropout(e))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed_and_logits(x)[1]

    def init_prior(self, frequency) -> None:
        """Start the classifier at the label frequencies (bias = logit of each class's share), so the
        untrained model already predicts the priors and rare classes start near 0, not 0.5."""
        f = torch.as_tensor(frequency, dtype=torch.float32).clamp(1e-3, 1 - 1e-3)
        with torch.no_grad():
            self.classifier.bias.copy_(torch.log(f / (1 - f)))

    def head_parameters(self) -> list[nn.Parameter]:
        return [*self.neck.parameters(), *self.classifier.parameters()]

    def set_backbone_frozen(self, frozen: bool) -> None:
        for p in self.backbone.parameters():
            p.requires_grad_(not frozen)

    def train(self, mode: bool = True) -> MultilabelNet:
        super().train(mode)
        # A frozen backbone keeps its BatchNorm statistics too.
        if mode and not any(p.requires_grad for p in self.backbone.parameters()):
            self.backbone.eval()
        return self


def read_torch_file(path: str | Path, what: str, expected: str) -> Any:
    """``torch.load`` of a local file on the CPU, tensors and plain containers only (no pickled code).

    The one guarded loader of imagesim's checkpoints and weights. A missing file is an
    :class:`~imagesim.errors.ImagesimFileNotFoundError` naming ``what``; a file torch cannot load
    (text, empty, a zip or pickle of something else, an ONNX model, a pickled whole model …) is one
    :class:`~imagesim.errors.InvalidArgumentError` line: the file, what it looks like and what was
    ``expected``, never torch's multi-line unpickling error.
    """
    path = Path(path)
    if not path.is_file():
        raise ImagesimFileNotFoundError(f"{what} not found: {path}")
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4 in the checkpoint": the error says it all
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InvalidArgumentError(f"{path}: not a PyTorch checkpoint ({_looks_like(path, exc)}); expected {expected}") from exc


_TORCH_PICKLE_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19."  # torch.save's legacy (pre-zip) format


def _looks_like(path: Path, exc: Exception) -> str:
    """What the file ``torch.load`` refused looks like, in a few words."""
    try:
        with path.open("rb") as f:
            head = f.read(4096)
    except OSError as err:
        return f"cannot read it: {err.strerror or err}"
    if not head:
        return "the file is empty"
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError):
            return "a damaged or truncated zip archive (an interrupted copy or download?)"
        if not any(n.endswith("data.pkl") for n in names):
            return f"a zip archive of {len(names)} files, not one written by torch.save"
        return f"a PyTorch file it cannot load safely: {_torch_reason(exc)}"
    if head.startswith(_TORCH_PICKLE_MAGIC):
        return f"a PyTorch file in the legacy format it cannot load safely: {_torch_reason(exc)}"
    if head[:1] == b"\x80":
        return "a Python pickle, not a file written by torch.save"
    if path.suffix.lower() == ".onnx" or _is_onnx(head):
        return "an ONNX model: give it to `imagesim encode --onnx`"
    text = _text(head)
    if text is not None:
        first = next((line.strip() for line in text.splitlines() if line.strip()), "")
        return f"a text file starting {first[:40]!r}" if first else "a text file of blank lines"
    return f"unknown content starting {head[:8].hex(' ')}"


def _torch_reason(exc: Exception) -> str:
    """The one useful line of a ``torch.load`` error."""
    message = str(exc)
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", message)
    if found:
        return f"it pickles Python objects ({found.group(1)}), not only tensors: save the model's state_dict() instead"
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    after = [lines[i + 1] for i, line in enumerate(lines[:-1]) if line.endswith("WeightsUnpickler error:")]
    line = (after or lines or [type(exc).__name__])[0]
    return line if len(line) <= 160 else line[:157] + "…"


def _is_onnx(head: bytes) -> bool:
    """An ONNX ModelProto starts with field 1 (``ir_version``, a small varint) and names its producer,
    graph or opsets in the first bytes."""
    return len(head) > 3 and head[0] == 0x08 and head[1] < 0x80 and head[2] in (0x12, 0x1A, 0x22, 0x2A, 0x3A, 0x42)


def _text(head: bytes) -> str | None:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as err:
        if err.start < len(head) - 4:  # not just a character cut by the 4 KiB read
            return None
        text = head[: err.start].decode("utf-8")
    return text if all(c.isprintable() or c in "\t\r\n\f" for c in text) else None


#: The tag and layout version of `imagesim pretrain`'s ``backbone.pt``: ``{"kind", "format", "backbone", "chip_size",
#: "embedding_dim", "state_dict" (a torchvision ResNet's, no ``fc.*``), "config", "epoch"}``.
BACKBONE_KIND = "imagesim-backbone"
BACKBONE_FORMAT = 1
#: What `imagesim export --model` reads, for error messages.
EXPORTABLE = "a trained model (RUN/model.pt of `imagesim train`) or a pretrained backbone (RUN/backbone.pt of `imagesim pretrain`)"


def is_backbone_file(content: Any) -> bool:
    """Whether a loaded file is `imagesim pretrain`'s ``backbone.pt`` (by its ``kind`` tag)."""
    return isinstance(content, dict) and content.get("kind") == BACKBONE_KIND


def check_backbone_file(content: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """``content`` (a loaded ``backbone.pt``) when it follows the contract; else one
    :class:`~imagesim.errors.InvalidArgumentError` line naming the file and what is wrong."""
    fmt = content.get("format")
    if fmt != BACKBONE_FORMAT:
        raise InvalidArgumentError(
            f"{path}: imagesim backbone of format {fmt!r}; this imagesim reads format {BACKBONE_FORMAT} (a newer imagesim wrote it?)"
        )
    backbone, state, size = content.get("backbone"), content.get("state_dict"), content.get("chip_size")
    if backbone not in BACKBONES or not isinstance(state, dict) or not state or not isinstance(size, int):
        raise InvalidArgumentError(
            f"{path}: damaged imagesim backbone: its `backbone` ({backbone!r}), `chip_size` ({size!r}) or `state_dict` is missing or wrong"
        )
    return content


def backbone_description(content: dict[str, Any]) -> str:
    """``imagesim pretrained resnet18 backbone (epoch 5, 64 px chips)``: for logs."""
    epoch = content.get("epoch")
    return f"imagesim pretrained {content.get('backbone')} backbone ({f'epoch {epoch}, ' if epoch is not None else ''}{content.get('chip_size')} px chips)"


def backbone_network(content: dict[str, Any], path: str | Path) -> nn.Module:
    """The ResNet of a checked ``backbone.pt`` with ``fc`` = Identity (global-average-pooled features out),
    in eval mode on the CPU; a state dict that does not fit its own ``backbone`` is refused."""
    import torchvision

    net = getattr(torchvision.models, content["backbone"])(weights=None)
    net.fc = nn.Identity()
    state = {k: v for k, v in content["state_dict"].items() if not str(k).startswith("fc.")}
    try:
        result = net.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # a tensor of another shape
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[-1].strip()
        raise InvalidArgumentError(f"{path}: damaged imagesim backbone: its weights do not fit a {content['backbone']} ({first})") from exc
    # BatchNorm step counters do not change the output; every other tensor must be there, and nothing else.
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    if missing or result.unexpected_keys:
        bad = missing or result.unexpected_keys
        what = "missing" if missing else f"that a {content['backbone']} does not have"
        raise InvalidArgumentError(f"{path}: damaged imagesim backbone: {len(bad)} tensors {what} (e.g. {', '.join(bad[:3])})")
    return net.eval()


#: `weights` value that loads torchvision's ImageNet weights instead of a file.
IMAGENET = "imagenet"
#: Seconds without a byte before a weights download gives up (never hang on a machine without internet).
DOWNLOAD_TIMEOUT_S = 15.0
#: Checkpoint wrappers that hold the state dict (Lightning, MoCo, DINO-style trainers, plain `{"model": …}`).
_WRAPPERS = ("state_dict", "model", "model_state_dict", "net", "network", "teacher")
#: Of two prefixes that match equally (MoCo's query and key encoders, BYOL's online and target networks), the one
#: fine-tuned downstream has one of the first words, the momentum copy one of the second.
_PREFER = ("encoder_q", "base_encoder", "online", "student", "backbone")
_AVOID = ("encoder_k", "momentum", "target", "teacher", "ema")


@dataclass
class WeightsReport:
    """What :func:`load_backbone_weights` took from a file, for the log line of `train`."""

    source: str
    loaded: int
    prefix: str = ""
    head: int = 0  # `fc.*` tensors of the file's own classifier, left out
    unknown: list[str] = field(default_factory=list)  # keys that are not the backbone's

    def summary(self) -> str:
        text = f"loaded {self.loaded} tensors of the backbone"
        if self.prefix:
            text += f" (prefix `{self.prefix}` stripped)"
        skipped = []
        if self.head:
            skipped.append(f"fc.* (head, {self.head} tensors)")
        if self.unknown:
            shown = ", ".join(self.unknown[:3]) + (", …" if len(self.unknown) > 3 else "")
            skipped.append(f"{len(self.unknown)} unknown keys ({shown})")
        return text + ("; skipped " + ", ".join(skipped) if skipped else "") + f" from {self.source}"


def imagenet_state_dict(backbone: str, *, progress: bool = True) -> tuple[dict[str, Any], Path]:
    """torchvision's ImageNet weights of ``backbone`` (``IMAGENET1K_V1``): from the torch hub cache
    (``$TORCH_HOME/hub/checkpoints``) when the file is there, else downloaded into it once, with progress.

    Without a connection: one :class:`~imagesim.errors.ImagesimFileNotFoundError` line naming the file,
    the folder to place it in and the URL to fetch it from elsewhere.
    """
    import http.client
    import socket

    import torchvision

    options.check_choice("backbone", backbone, BACKBONES)
    # V1 for both: the classic recipe whose features are the usual transfer-learning baseline (the design's model).
    weights = getattr(torchvision.models, {"resnet18": "ResNet18_Weights", "resnet50": "ResNet50_Weights"}[backbone]).IMAGENET1K_V1
    url = weights.url
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    path = folder / Path(url).name
    if path.is_file():
        return read_torch_file(path, "ImageNet weights", BACKBONE_WEIGHTS), path
    before = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)  # urllib has no timeout of its own here: a dead network would hang
    try:
        state = torch.hub.load_state_dict_from_url(
            url, model_dir=str(folder), map_location="cpu", progress=progress, check_hash=True, weights_only=True
        )
    except (OSError, http.client.HTTPException) as exc:  # URLError, socket timeouts, DNS failures, a dropped connection
        reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise ImagesimFileNotFoundError(
            f"`weights` imagenet: {path.name} is not in {folder} and cannot be downloaded ({reason}); "
            f"on a machine with internet fetch {url} and place it in {folder} (the folder follows TORCH_HOME)"
        ) from exc
    except RuntimeError as exc:  # check_hash: a truncated or altered download (torch removes it)
        raise InvalidArgumentError(f"`weights` imagenet: the download of {url} is damaged ({str(exc).splitlines()[0]}); try again") from exc
    finally:
        socket.setdefaulttimeout(before)
    return state, path


def load_backbone_weights(model: MultilabelNet, weights: str | Path, *, progress: bool = True) -> WeightsReport:
    """Load pretrained ResNet weights into ``model.backbone``: ``"imagenet"`` (torchvision's, see
    :func:`imagenet_state_dict`) or a local checkpoint file.

    Files may be torchvision or timm ResNet state dicts (TorchGeo's ResNet weights are timm's), under a
    ``state_dict``/``model`` wrapper (Lightning, trainers) and behind a prefix (``module.encoder_q.`` of MoCo,
    ``module.base_encoder.`` of MoCo v3, ``backbone.``, ``encoder.``, ``model.`` …): the prefix that makes the
    most keys torchvision's names is stripped. The file's ``fc.*`` head is left out. A tensor of the wrong
    shape (a 13-band ``conv1``, another depth) or a file without the backbone's tensors is refused.
    """
    if str(weights) == IMAGENET:
        state, path = imagenet_state_dict(_backbone_name(model), progress=progress)
        source = f"torchvision ImageNet weights ({path})"
    else:
        path = Path(weights)
        state = read_torch_file(path, "backbone weights", BACKBONE_WEIGHTS)
        source = str(path)
        if is_backbone_file(state):  # `imagesim pretrain`'s backbone.pt: its tags say what it is
            check_backbone_file(state, path)
            if state["backbone"] != _backbone_name(model):
                raise InvalidArgumentError(
                    f"{path}: an imagesim pretrained {state['backbone']} backbone, not a {_backbone_name(model)}: "
                    f"choose `backbone` {state['backbone']} to fine-tune it"
                )
            source = f"{path}, {backbone_description(state)}"
    state = _unwrap(state, path)
    expected = model.backbone.state_dict()
    prefix, matched = _best_prefix(state, expected)
    if not matched:
        sample = ", ".join(list(state)[:3])
        raise InvalidArgumentError(
            f"{path}: none of its {len(state)} keys is a ResNet backbone tensor (e.g. {sample}); expected {BACKBONE_WEIGHTS}"
        )
    clean: dict[str, torch.Tensor] = {}
    head = 0
    unknown: list[str] = []
    for key, value in state.items():
        name = key[len(prefix) :] if key.startswith(prefix) else None
        if name is not None and name in expected and torch.is_tensor(value):
            clean[name] = value
        elif name is not None and name.startswith("fc."):
            head += 1
        else:
            unknown.append(key)
    backbone = _backbone_name(model)
    bottleneck = any(k.endswith("layer1.0.conv3.weight") for k in state)
    depth_hint = (
        " (the file is a bottleneck ResNet such as resnet50: choose that `backbone`)"
        if bottleneck and backbone == "resnet18"
        else " (the file is a basic-block ResNet such as resnet18: choose that `backbone`)"
        if not bottleneck and backbone == "resnet50"
        else ""
    )
    for name, value in clean.items():
        want = expected[name]
        if value.shape != want.shape:
            hint = depth_hint
            if name == "conv1.weight" and value.ndim == 4 and value.shape[1] != want.shape[1]:
                hint = f" (a {value.shape[1]}-band model; imagesim's chips are RGB: use RGB weights)"
            raise InvalidArgumentError(
                f"{path}: weights do not fit this backbone: `{name}` is {list(value.shape)} in the file, {list(want.shape)} expected{hint}"
            )
    # Shapes that fit but blocks this backbone lacks: a deeper ResNet (resnet34 into resnet18) would load half a network.
    extra = [k for k in unknown if k.startswith(prefix) and re.match(r"layer\d+\.\d+\.", k[len(prefix) :])]
    if extra:
        raise InvalidArgumentError(
            f"{path}: weights do not fit this backbone: the file has {len(extra)} tensors in blocks a {backbone} lacks "
            f"(e.g. {extra[0][len(prefix) :]}); a deeper ResNet?{depth_hint}"
        )
    # Checkpoints from before torch 0.4.1 have no BatchNorm step counters; the rest must all be there.
    missing = [k for k in expected if k not in clean and not k.endswith("num_batches_tracked")]
    if missing:
        raise InvalidArgumentError(
            f"{path}: {len(missing)} backbone tensors missing (e.g. {', '.join(missing[:3])}); "
            f"is it a torchvision ResNet of the chosen `backbone` ({backbone})?"
        )
    model.backbone.load_state_dict(clean, strict=False)
    return WeightsReport(source=source, loaded=len(clean), prefix=prefix, head=head, unknown=unknown)


def _backbone_name(model: MultilabelNet) -> str:
    first = model.neck[0]
    return "resnet50" if isinstance(first, nn.Linear) and first.in_features == 2048 else "resnet18"


def _unwrap(state: Any, path: Path) -> dict[str, Any]:
    """The state dict inside a checkpoint: descend through wrappers until a dict that holds tensors."""
    while isinstance(state, dict) and not any(torch.is_tensor(v) for v in state.values()):
        inner = next((state[k] for k in _WRAPPERS if isinstance(state.get(k), dict)), None)
        if inner is None:
            break
        state = inner
    if not isinstance(state, dict):
        raise InvalidArgumentError(
            f"{path}: not a state dict (a PyTorch file holding a {type(state).__name__}); expected {BACKBONE_WEIGHTS}"
        )
    return state


def _best_prefix(state: dict[str, Any], expected: dict[str, torch.Tensor]) -> tuple[str, int]:
    """The key prefix (ending in ``.``, or none) after which most keys are the backbone's, and how many."""
    counts: dict[str, int] = {}
    for key in state:
        if not isinstance(key, str):
            continue
        for i, ch in enumerate(key):
            if ch == "." and key[i + 1 :] in expected:
                counts[key[: i + 1]] = counts.get(key[: i + 1], 0) + 1
        if key in expected:
            counts[""] = counts.get("", 0) + 1
    if not counts:
        return "", 0

    def rank(prefix: str) -> tuple[int, int, int]:
        words = prefix.split(".")
        preference = any(w in _PREFER for w in words) - any(w in _AVOID for w in words)
        return counts[prefix], preference, -len(prefix)

    best = max(counts, key=rank)
    return best, counts[best]
