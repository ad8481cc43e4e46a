"""A file that is not a checkpoint, given where one is expected (`train --weights`, `export --model`,
a run's last.pt), is one clear line naming the file, what it looks like and what was expected — never
torch's multi-line unpickling error."""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="checkpoints need torch (pip install 'imagesim[train]')")
pytest.importorskip("torchvision")

from imagesim.errors import InvalidArgumentError  # noqa: E402
from imagesim.imagery.chip import ChipSettings, run_chip  # noqa: E402
from imagesim.learn.model import MultilabelNet, load_backbone_weights, read_torch_file  # noqa: E402
from imagesim.learn.train import load_checkpoint, load_model  # noqa: E402

from train_fixtures import write_synthetic_labels  # noqa: E402


class _Thing:
    """Something pickled that is neither a tensor nor a plain container."""


def _onnx_bytes() -> bytes:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    return onnx.helper.make_model(graph).SerializeToString()


def _zip_not_torch(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("readme.txt", "not a checkpoint")


def _truncated_torch(path: Path) -> None:
    torch.save({"w": torch.zeros(1000)}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


#: name → (how to write it, what the message says it looks like)
BAD_FILES: dict[str, tuple[Callable[[Path], object], str]] = {
    "text.pt": (lambda p: p.write_text("hello, this is not a model\n"), "a text file starting 'hello, this is not a model'"),
    "empty.pt": (lambda p: p.write_bytes(b""), "the file is empty"),
    "archive.zip": (_zip_not_torch, "a zip archive of 1 files, not one written by torch.save"),
    "truncated.pt": (_truncated_torch, "a damaged or truncated zip archive"),
    "dict.pkl": (lambda p: p.write_bytes(pickle.dumps({"a": 1}, protocol=4)), "a Python pickle, not a file written by torch.save"),
    "thing.pkl": (lambda p: p.write_bytes(pickle.dumps(_Thing(), protocol=2)), "a Python pickle, not a file written by torch.save"),
    "whole-model.pt": (lambda p: torch.save(torch.nn.Linear(2, 2), p), "it pickles Python objects (torch.nn.modules.linear.Linear)"),
    "model.onnx": (lambda p: p.write_bytes(_onnx_bytes()), "an ONNX model: give it to `imagesim encode --onnx`"),
    "onnx-without-suffix.bin": (lambda p: p.write_bytes(_onnx_bytes()), "an ONNX model"),
}


@pytest.fixture(params=sorted(BAD_FILES))
def bad_file(request, tmp_path) -> tuple[Path, str]:
    write, looks = BAD_FILES[request.param]
    path = tmp_path / request.param
    write(path)
    return path, looks


def _one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message and len(message) < 400, message
    return message


def test_read_torch_file_names_the_file_and_what_it_looks_like(bad_file) -> None:
    path, looks = bad_file
    with pytest.raises(InvalidArgumentError) as exc:
        read_torch_file(path, "checkpoint", "a checkpoint of some kind")
    message = _one_line(exc)
    assert message.startswith(f"{path}: not a PyTorch checkpoint (")
    assert looks in message and message.endswith("expected a checkpoint of some kind")


def test_load_model_and_checkpoint_say_what_they_expected(bad_file) -> None:
    path, looks = bad_file
    for load in (load_checkpoint, load_model):
        with pytest.raises(InvalidArgumentError) as exc:
            load(path)
        message = _one_line(exc)
        assert message.startswith(f"{path}: not a PyTorch checkpoint (") and looks in message
        assert "expected an imagesim model: model.pt (or last.pt) written by `imagesim train`" in message


@pytest.fixture(scope="module")
def net() -> MultilabelNet:
    return MultilabelNet("resnet18", 2)


def test_backbone_weights_say_what_they_expected(bad_file, net) -> None:
    path, looks = bad_file
    with pytest.raises(InvalidArgumentError) as exc:
        load_backbone_weights(net, path)
    message = _one_line(exc)
    assert message.startswith(f"{path}: not a PyTorch checkpoint (") and looks in message
    assert "expected backbone weights: a torchvision ResNet state dict" in message


def test_torch_files_holding_something_else(tmp_path, net) -> None:
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(InvalidArgumentError, match=r"list\.pt: not an imagesim checkpoint \(a PyTorch file holding a list\); expected"):
        load_checkpoint(tmp_path / "list.pt")
    with pytest.raises(InvalidArgumentError, match=r"list\.pt: not a state dict \(a PyTorch file holding a list\); expected backbone"):
        load_backbone_weights(net, tmp_path / "list.pt")
    torch.save({"conv1.weight": torch.zeros(2)}, tmp_path / "weights.pth")
    with pytest.raises(InvalidArgumentError, match=r"a state dict of 1 tensors; backbone weights go to `imagesim train --weights`"):
        load_model(tmp_path / "weights.pth")
    torch.save({"format": "imagesim-model/1", "classes": ["a"]}, tmp_path / "partial.pt")
    with pytest.raises(InvalidArgumentError, match=r"partial\.pt: damaged imagesim checkpoint \(its config, classes or model"):
        load_model(tmp_path / "partial.pt")
    wrong = MultilabelNet("resnet18", 3).state_dict()
    torch.save({"format": "imagesim-model/1", "classes": ["a", "b"], "config": {"backbone": "resnet18"}, "model": wrong}, tmp_path / "m.pt")
    with pytest.raises(InvalidArgumentError, match=r"m\.pt: damaged imagesim checkpoint: its weights do not fit its own config") as exc:
        load_model(tmp_path / "m.pt")
    _one_line(exc)


# --------------------------------------------------------------------------------------------
# Through the command line
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chips(small_sample, tmp_path_factory) -> Path:
    """Chips of the small sample with synthetic labels: enough for `train` to reach its --weights."""
    dest = tmp_path_factory.mktemp("weights-chips")
    run_chip(small_sample.root, dest, ChipSettings(zoom=17, proc=2))
    write_synthetic_labels(dest)
    return dest


def _error_line(res) -> str:
    assert res.returncode == 1, res.stderr
    assert "Traceback" not in res.stderr and "WeightsUnpickler" not in res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) >= 1 and lines[-1].startswith("error: "), res.stderr
    return lines[-1]


def test_cli_export_model_that_is_not_a_checkpoint(cli, tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    path = tmp_path / "model.onnx"
    path.write_bytes(_onnx_bytes())
    res = cli("export", "--model", path, "--out", tmp_path / "out.onnx")
    assert _error_line(res) == (
        f"error: {path}: not a PyTorch checkpoint (an ONNX model: give it to `imagesim encode --onnx`); "
        "expected an imagesim model: model.pt (or last.pt) written by `imagesim train`"
    )
    assert len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out.onnx").exists()


def test_cli_train_weights_that_are_not_a_state_dict(cli, chips, tmp_path) -> None:
    path = tmp_path / "resnet18.pth"
    path.write_bytes(b"")
    res = cli(
        "train", "--chips", chips, "--out", tmp_path / "run", "--backbone", "resnet18", "--chip-size", "64",
        "--epochs", "1", "--workers", "0", "--weights", path,
    )  # fmt: skip
    assert _error_line(res) == (
        f"error: {path}: not a PyTorch checkpoint (the file is empty); "
        "expected backbone weights: a torchvision ResNet state dict saved with torch.save (.pth/.pt)"
    )
