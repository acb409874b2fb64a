"""The parts' boundaries (DESIGN.md "Parts"): the pure parts import no I/O framework and no
torch, imports run one way between the parts, and no module imports itself in a circle.

The import graph is read from the source (``TYPE_CHECKING`` and function-level imports
included); ``from package import name`` counts as an import of ``package.name`` when that
is a module, else of ``package``.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import peerprog

FORBIDDEN = ("asyncio", "aiohttp", "torch", "socket")
ROOT = Path(peerprog.__file__).parent

# A part may import the parts of lower rank (and itself); node and api, of equal rank,
# never import each other: the app composes them.
RANKS = {
    "peerprog._version": 0,
    "peerprog.errors": 0,
    "peerprog.urls": 0,
    "peerprog.sendfile": 0,
    "peerprog.dirswap": 0,
    "peerprog.ui": 0,  # the web UI's static files; the api serves them
    "peerprog.codec": 1,
    "peerprog.swarm": 1,
    "peerprog.manifest": 2,
    "peerprog.formats": 2,
    "peerprog.config": 3,
    "peerprog.store": 3,
    "peerprog.reference": 3,
    "peerprog.calibrate": 4,  # torch: the publisher's sensitivity, used by the cli
    "peerprog.listen": 4,
    "peerprog.node": 5,
    "peerprog.api": 5,
    "peerprog.app": 6,
    "peerprog.cli": 7,
    "peerprog.__main__": 7,
    "peerprog": 7,
}
# Inside the groupplane codec: a module imports only those of lower rank; the kernels'
# implementations are known to the selection alone (encode and decode take a Kernels).
GROUPPLANE = "peerprog.codec.groupplane"
GROUPPLANE_RANKS = {
    "_rans": 0,  # the entropy coder's C extension (its stub)
    "params": 0,  # the codec and tensor params
    "varbits": 0,
    "rans": 1,  # the entropy coder of the frames
    "_kernels": 1,  # the C extension (its stub)
    "format": 2,  # the byte format
    "kernels": 3,  # the kernels' interface
    "rate": 3,  # analyse and plan
    "classes": 3,  # row classes: their choice and their bytes
    "numpy_kernels": 4,
    "c_kernels": 4,
    "selection": 5,
    "encode": 6,
    "decode": 6,
    "codec": 7,
    "": 8,  # the package's public names
}
KERNEL_IMPLEMENTATIONS = ("numpy_kernels", "c_kernels", "_kernels")
API_CLIENT_SIDE = (
    "peerprog.api.client",
    "peerprog.api.wire",
    "peerprog.api.model",
    "peerprog.api.tree",
)


def modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = ("peerprog", *path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def import_graph() -> dict[str, set[str]]:
    """Module → the peerprog modules (or third-party top-level names) it imports."""
    mods = modules()
    # compiled extensions, known by their type stubs: modules of their own, not the package
    stubs = {
        ".".join(("peerprog", *p.relative_to(ROOT).with_suffix("").parts))
        for p in ROOT.rglob("*.pyi")
    }
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*up, base] if base else up)
                for a in node.names:
                    full = f"{base}.{a.name}"
                    found.add(full if full in mods or full in stubs else base)
        graph[name] = found
    return graph


def part(module: str) -> str:
    for prefix in sorted(RANKS, key=len, reverse=True):
        if module == prefix or module.startswith(prefix + "."):
            return prefix
    raise AssertionError(f"{module} belongs to no part: add it to RANKS")


def test_no_import_cycles() -> None:
    graph = {m: {t for t in ts if t in modules()} for m, ts in import_graph().items()}
    cycles = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        path.append(m)
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                cycles.append(" → ".join([*path[path.index(t) :], t]))
            elif t not in state:
                visit(t)
        path.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_imports_run_one_way_between_parts() -> None:
    bad = []
    for module, targets in import_graph().items():
        src = part(module)
        for t in targets:
            if t != "peerprog" and not t.startswith("peerprog."):
                continue
            dst = part(t)
            if dst != src and RANKS[dst] >= RANKS[src] and not (RANKS[src] == RANKS[dst] == 7):
                bad.append(f"{module} imports {t}")
    assert not bad, "\n".join(sorted(bad))


def _groupplane_module(module: str) -> str | None:
    if module == GROUPPLANE:
        return ""
    if module.startswith(GROUPPLANE + "."):
        return module[len(GROUPPLANE) + 1 :]
    return None


def test_groupplane_modules_import_one_way() -> None:
    graph = import_graph()
    bad = []
    for module, targets in graph.items():
        src = _groupplane_module(module)
        if src is None:
            continue
        assert src in GROUPPLANE_RANKS, f"{module}: add it to GROUPPLANE_RANKS"
        for t in targets:
            dst = _groupplane_module(t)
            if dst is None or dst == src:
                continue
            if GROUPPLANE_RANKS[dst] >= GROUPPLANE_RANKS[src]:
                bad.append(f"{module} imports {t}")
            if dst in KERNEL_IMPLEMENTATIONS and src not in (
                "selection",
                *KERNEL_IMPLEMENTATIONS,
            ):
                bad.append(f"{module} imports {t}: pass a Kernels in instead")
    assert not bad, "\n".join(sorted(bad))
    outside = sorted(
        f"{module} imports {t}"
        for module, targets in graph.items()
        if _groupplane_module(module) is None
        for t in targets
        if (_groupplane_module(t) or "") in KERNEL_IMPLEMENTATIONS
    )
    assert not outside, "\n".join(outside)


def test_the_api_client_side_needs_no_server_side() -> None:
    graph = import_graph()
    seen, todo = set(), list(API_CLIENT_SIDE)
    while todo:
        m = todo.pop()
        if m in seen or m not in graph:
            continue
        seen.add(m)
        todo.extend(graph[m])
    server = sorted(m for m in seen if m.startswith("peerprog.api.") and m not in API_CLIENT_SIDE
                    and m != "peerprog.api.errors")  # fmt: skip
    assert not server, f"the API client side imports {server}"
    assert "aiohttp.web" not in seen and not any(m.startswith("peerprog.node") for m in seen)


@pytest.mark.parametrize("module", ["peerprog.codec", "peerprog.manifest", "peerprog.swarm"])
def test_pure_part_imports_no_io(module: str) -> None:
    code = (
        f"import sys, {module}\n"
        f"bad = [m for m in {FORBIDDEN!r} if m in sys.modules]\n"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"{module} imports {out.stdout.strip()}"


def test_package_import_does_not_pull_torch_or_aiohttp() -> None:
    code = "import sys, peerprog; print(any(m in sys.modules for m in ('torch', 'aiohttp')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_the_node_package_needs_neither_the_demo_nor_its_libraries() -> None:
    """``pip install peerprog`` stays small: the demo (rich, matplotlib) is its own package."""
    graph = import_graph()
    bad = sorted(
        f"{module} imports {t}"
        for module, targets in graph.items()
        for t in targets
        if t.split(".")[0] in ("peerprog_demo", "rich", "matplotlib")
    )
    assert not bad, "\n".join(bad)
