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


def load_backbone_weights(model: MultilabelNet, path: str | Path) -> int:
    """Load a local torchvision ResNet state dict (``fc.*`` ignored; ``module.``/``backbone.`` prefixes
    and ``state_dict``/``model`` wrappers accepted). Returns the number of tensors loaded."""
    path = Path(path)
    state = read_torch_file(path, "backbone weights", BACKBONE_WEIGHTS)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise InvalidArgumentError(
            f"{path}: not a state dict (a PyTorch file holding a {type(state).__name__}); expected {BACKBONE_WEIGHTS}"
        )
    clean = {}
    for k, v in state.items():
        for prefix in ("module.", "backbone."):
            if k.startswith(prefix):
                k = k[len(prefix) :]
        if not k.startswith("fc.") and torch.is_tensor(v):
            clean[k] = v
    try:
        result = model.backbone.load_state_dict(clean, strict=False)
    except RuntimeError as exc:  # shape mismatch: weights of another architecture
        raise InvalidArgumentError(f"{path}: weights do not fit this backbone ({str(exc).splitlines()[0]} …)") from exc
    if result.missing_keys:
        raise InvalidArgumentError(
            f"{path}: {len(result.missing_keys)} backbone tensors missing (e.g. {', '.join(result.missing_keys[:3])}); "
            "is it a torchvision ResNet of the chosen `backbone`?"
        )
    return len(clean) - len(result.unexpected_keys)
