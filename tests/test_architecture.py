"""The package's import rules (docs/architecture.md), checked on every import statement in it.

Each rule is checked on the import graph parsed from the source (top-level and function-level imports
alike: a lazy import is still a dependency), so a rule breaks here, not in a review.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "python" / "imagesim"
STAGES = ("imagery", "labels", "learn", "search", "cli")
# The compiled Rust extension: private by name (an implementation module), public to the package.
EXTENSION = "imagesim._imagesim"


@dataclass(frozen=True)
class Import:
    source: str  # the importing module, dotted
    target: str  # the imported module, dotted
    names: tuple[str, ...]  # names taken from it with `from … import`
    line: int

    def where(self) -> str:
        return f"{self.source}:{self.line} imports {self.target}" + (f" ({', '.join(self.names)})" if self.names else "")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def resolve(node: ast.ImportFrom, source: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = source.split(".") if is_package else source.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports() -> list[Import]:
    known = modules()
    found = []
    for name, path in known.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == "imagesim":
                        found.append(Import(name, alias.name, (), node.lineno))
            elif isinstance(node, ast.ImportFrom):
                target = resolve(node, name, path.name == "__init__.py")
                if target.split(".")[0] != "imagesim":
                    continue
                taken = []
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    if sub in known or sub == EXTENSION:  # `from imagesim import grid`: the module itself
                        found.append(Import(name, sub, (), node.lineno))
                    else:
                        taken.append(alias.name)
                if taken:
                    found.append(Import(name, target, tuple(taken), node.lineno))
    return found


def stage_of(module: str) -> str | None:
    """The stage a module belongs to (``imagery`` …), or None for a foundation module."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in STAGES else None


ALL = imports()


def test_the_parser_sees_the_package() -> None:
    mods = modules()
    assert "imagesim.errors" in mods and "imagesim.imagery.chip" in mods and "imagesim.cli" in mods
    assert any(i.source == "imagesim.imagery.chip" and i.target == "imagesim.artefacts" for i in ALL)


def broken(rule) -> list[str]:  # type: ignore[no-untyped-def]
    return [i.where() for i in ALL if rule(i)]


def test_foundations_import_no_stage() -> None:
    assert broken(lambda i: stage_of(i.source) is None and stage_of(i.target) is not None) == []


def test_imagery_imports_no_later_stage() -> None:
    assert broken(lambda i: stage_of(i.source) == "imagery" and stage_of(i.target) in ("labels", "learn", "search")) == []


def test_labels_import_no_learn_or_search() -> None:
    assert broken(lambda i: stage_of(i.source) == "labels" and stage_of(i.target) in ("learn", "search")) == []


def test_search_reads_learn_outputs_only_through_artefacts() -> None:
    assert broken(lambda i: stage_of(i.source) == "search" and stage_of(i.target) == "learn") == []


def test_nothing_but_cli_imports_cli() -> None:
    assert broken(lambda i: stage_of(i.target) == "cli" and stage_of(i.source) != "cli") == []


def test_no_private_names_across_modules() -> None:
    def private(i: Import) -> bool:
        if i.target == i.source:
            return False
        package, _, leaf = i.target.rpartition(".")
        # A private module (cli/_common.py) belongs to its package: its siblings may use it.
        private_module = leaf.startswith("_") and not leaf.startswith("__") and i.target != EXTENSION
        if private_module and i.source != package and not i.source.startswith(package + "."):
            return True
        return any(n.startswith("_") and not n.startswith("__") for n in i.names)

    assert broken(private) == []


def test_no_import_cycles() -> None:
    graph: dict[str, set[str]] = {}
    for i in ALL:
        if i.target != i.source and i.target in modules():
            graph.setdefault(i.source, set()).add(i.target)
    cycles = []
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(stack[stack.index(nxt) :] + [nxt]))
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert cycles == []


@pytest.mark.parametrize(
    ("rule", "source", "target", "names"),
    [
        (test_foundations_import_no_stage, "imagesim.grid", "imagesim.imagery.chip", ()),
        (test_imagery_imports_no_later_stage, "imagesim.imagery.chip", "imagesim.labels.build", ()),
        (test_search_reads_learn_outputs_only_through_artefacts, "imagesim.search.index", "imagesim.learn.encode", ()),
        (test_nothing_but_cli_imports_cli, "imagesim.learn.train", "imagesim.cli", ()),
        (test_no_private_names_across_modules, "imagesim.labels.report", "imagesim.labels.build", ("_bitset",)),
        (test_no_private_names_across_modules, "imagesim.search.index", "imagesim.cli._common", ()),
        (test_no_import_cycles, "imagesim.artefacts", "imagesim.imagery.chip", ()),
    ],
)
def test_each_rule_catches_a_violation(monkeypatch, rule, source, target, names) -> None:
    """The rules are not vacuous: one planted bad import fails each of them."""
    monkeypatch.setattr(__import__(__name__), "ALL", [*ALL, Import(source, target, names, 1)])
    with pytest.raises(AssertionError):
        rule()
