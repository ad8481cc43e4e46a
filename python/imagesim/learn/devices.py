"""Where models run: one CPU/CUDA decision for training, export and encoding.

``auto`` means the same everywhere: CUDA when a GPU is present (and the library at hand can use it),
else the CPU. An explicit ``cuda`` (or ``tensorrt``) on a machine without a GPU is an error, never a
silent fall back to the CPU.

- :func:`torch_device` — the ``torch.device`` of ``train`` (``device``: auto, cpu, cuda);
- :func:`cuda_kernels` — cuDNN's fastest algorithms or deterministic kernels for training on CUDA;
- :func:`onnx_providers` — the onnxruntime execution providers of ``encode`` and of ``export``'s
  parity check (``provider``: auto, cuda, tensorrt, cpu), best first, CPU last;
- :func:`onnx_session` — an onnxruntime session on those providers that really runs on the first.

torch and onnxruntime are imported inside the functions that need them.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from imagesim import options
from imagesim.errors import EncodeError, InvalidArgumentError, require

CPU_PROVIDER = "CPUExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"
TENSORRT_PROVIDER = "TensorrtExecutionProvider"
_GPU_PROVIDERS = {"cuda": CUDA_PROVIDER, "tensorrt": TENSORRT_PROVIDER}


def cuda_device_count() -> int:
    """GPUs the CUDA driver sees (0 without a driver). onnxruntime-gpu lists the CUDA provider even
    on machines without a GPU, so the provider list alone proves nothing."""
    for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        count = ctypes.c_int(0)
        if lib.cuInit(0) != 0 or lib.cuDeviceGetCount(ctypes.byref(count)) != 0:
            return 0
        return count.value
    return 0


def torch_device(requested: str = options.DEVICE) -> Any:
    """The ``torch.device`` for ``device`` = auto, cpu or cuda (auto: CUDA when torch sees a GPU)."""
    options.check_choice("device", requested, options.DEVICES)
    torch = require("torch", "train", purpose="training")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise InvalidArgumentError("`device` cuda asked for, but torch sees no CUDA device (use `device` cpu or auto)", param="device")
    return torch.device(requested)


def cuda_kernels(torch: Any, *, deterministic: bool) -> None:
    """How CUDA runs the model: cuDNN's fastest algorithms for the run's fixed shapes, benchmarked once
    (the default, as torchvision's reference training does), or only deterministic kernels — slower,
    and a few kernels (adaptive average pooling's backward) have no deterministic version and warn."""
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS is deterministic only with it
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    torch.backends.cudnn.benchmark = not deterministic
    torch.backends.cudnn.deterministic = deterministic


def onnx_providers(requested: str = options.PROVIDER, available: Sequence[str] | None = None) -> list[str]:
    """onnxruntime execution providers for ``provider`` = auto, cuda, tensorrt or cpu, best first.

    ``auto``: CUDA (then the CPU) when a GPU is present and this onnxruntime has the CUDA provider,
    else the CPU alone. ``available`` defaults to onnxruntime's own list.
    """
    options.check_choice("provider", requested, options.ENCODE_PROVIDERS)
    if requested == "cpu":
        return [CPU_PROVIDER]
    if available is None:
        available = require("onnxruntime", "encode", purpose="running an ONNX model").get_available_providers()
    gpus = cuda_device_count()
    wanted = requested
    if requested == "auto":
        wanted = "cuda" if gpus and CUDA_PROVIDER in available else "cpu"
    if wanted == "cpu":
        return [CPU_PROVIDER]
    if not gpus:
        raise EncodeError(f"`provider` {requested}: no CUDA GPU on this machine (use `provider` cpu or auto)")
    name = _GPU_PROVIDERS[wanted]
    if name not in available:
        raise EncodeError(f"`provider` {requested}: this onnxruntime has no {name} (install onnxruntime-gpu)")
    return [name, CPU_PROVIDER] if wanted == "cuda" else [name, CUDA_PROVIDER, CPU_PROVIDER]


def onnx_session(onnx_path: str | Path, requested: str = options.PROVIDER) -> tuple[Any, str]:
    """An onnxruntime session of ``onnx_path`` on ``provider`` and the name of the provider that runs.

    The session must run on the first provider of :func:`onnx_providers`: onnxruntime falling back to
    the CPU behind a CUDA request is an :class:`~imagesim.errors.EncodeError`, as is a model that
    does not load.
    """
    ort = require("onnxruntime", "encode", purpose="running an ONNX model")
    providers = onnx_providers(requested, ort.get_available_providers())
    if providers[0] != CPU_PROVIDER and hasattr(ort, "preload_dlls"):
        try:  # CUDA/cuDNN from the nvidia-* wheels that torch installs
            ort.preload_dlls()
        except Exception:  # noqa: BLE001 - a system CUDA may still work
            pass
    settings = ort.SessionOptions()
    settings.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    try:
        session = ort.InferenceSession(str(onnx_path), sess_options=settings, providers=providers)
    except Exception as exc:  # onnxruntime raises its own exception types
        raise EncodeError(f"{onnx_path}: cannot load the model with {providers[0]} ({exc})") from None
    running = session.get_providers()[0]
    if running != providers[0]:
        raise EncodeError(f"{onnx_path}: {providers[0]} did not start (onnxruntime fell back to {running}); check the CUDA/cuDNN libraries")
    return session, running


__all__ = ["CPU_PROVIDER", "CUDA_PROVIDER", "TENSORRT_PROVIDER", "cuda_device_count", "torch_device", "onnx_providers", "onnx_session"]
