"""The multilabel network: a torchvision ResNet backbone and the design notebook's fully connected head.

Head (the notebook's intended one; its last Linear had slipped inside a loop)::

    Linear(F→1024) ReLU BatchNorm1d Dropout(0.5) Linear(1024→512) ReLU BatchNorm1d  ← embedding (512-d)
    Dropout(0.5) Linear(512→classes)                                                 ← logits

F is 2048 for resnet50 and 512 for resnet18. ``model.embed(x)`` returns the embedding used for
similarity search; ``model.embed_and_logits(x)`` returns both (what the ONNX export needs).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from imagesim import options
from imagesim.errors import ImagesimFileNotFoundError, InvalidArgumentError

BACKBONES = options.BACKBONES
EMBEDDING_DIM = 512


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


def read_torch_file(path: str | Path, what: str, kind: str):
    """``torch.load`` of a local file on the CPU, tensors and plain containers only (no pickled code);
    a missing file or an unreadable one is a typed error naming ``what`` / ``kind``."""
    path = Path(path)
    if not path.is_file():
        raise ImagesimFileNotFoundError(f"{what} not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InvalidArgumentError(f"{path}: cannot read as a PyTorch {kind} ({exc})") from exc


def load_backbone_weights(model: MultilabelNet, path: str | Path) -> int:
    """Load a local torchvision ResNet state dict (``fc.*`` ignored; ``module.``/``backbone.`` prefixes
    and ``state_dict``/``model`` wrappers accepted). Returns the number of tensors loaded."""
    path = Path(path)
    state = read_torch_file(path, "backbone weights", "state dict")
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise InvalidArgumentError(f"{path}: not a state dict")
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
