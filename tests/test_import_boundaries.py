"""One dependency direction through the package, read from the source with `ast` (nothing is imported).

errors at the bottom; oci/ (references, digests, images, layers, their sources, registry/) and archive/ (the
cpio format, compression, output) beside each other, archive knowing nothing of images or trees; rootfs/ (the
flattened tree) on both; build (with progress, what a build shows while it runs), boot/ (booting an output)
and cli on top. kube/ (the operator) sits beside the engine: it may use all of it, and nothing in the engine
imports kube/ or the operator's libraries.
kube/api.py, kube/client.py and kube/metrics.py, at the bottom of kube/, import nothing of the package.
delivery/ (the agent on each VM host) uses the engine and the few parts of kube/ both programs share (the API
client and its own transport, the API's names, conditions' timestamps, selectors, registry access, the work
queue); kube/ never imports delivery/, nor the engine either. The agent's process never loads the kubernetes
package (most of its memory): delivery/ may not import it, and what delivery/ imports of kube/ does not either
(checked in a fresh interpreter).
Importing what a build imports does no work that would raise the peak memory of every build (also checked in a
fresh interpreter).
"""

import ast
import re
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

from fixtures.tools import REPO

PACKAGE = "initramfs_operator"

# Module names are relative to the package ("" is its __init__). A module belongs to the longest layer
# that names it or a package above it, and may import only package modules under the layers listed.
LAYERS: dict[str, tuple[str, ...]] = {
    "": (),  # __version__
    "errors": (),
    "oci": ("errors", "oci"),
    # the registry speaks the image model; it never reaches back into the other sources
    "oci.registry": ("errors", "oci.reference", "oci.digests", "oci.image", "oci.registry"),
    "archive": ("errors", "archive"),
    # the format alone: records in, bytes out (and back)
    "archive.cpio": ("errors",),
    # the tree is built from image layers and turned into the format's records
    "rootfs": ("errors", "oci", "archive.cpio", "rootfs"),
    # what a build is doing, watched from beside it
    "progress": ("oci", "archive", "rootfs"),
    "build": ("errors", "oci", "archive", "rootfs", "progress"),
    # booting an output to verify it: the kernel comes out of an image like any build's root
    "boot": ("errors", "oci", "archive", "rootfs", "boot"),
    "cli": ("", "errors", "oci", "archive", "rootfs", "progress", "build", "boot"),
    # the entry points that need the [operator] extra
    "extra": (),
    "kube": ("", "errors", "oci", "archive", "rootfs", "build", "boot", "cli", "extra", "kube"),
    # the lowest level of the operator: the API client and the metrics know nothing of the domain
    "kube.api": (),
    "kube.client": (),
    "kube.metrics": (),
    "delivery": ("errors", "oci", "archive", "extra", "kube.api", "kube.client", "kube.conditions", "kube.crd",
                 "kube.informer", "kube.selector", "kube.registry_access", "kube.workqueue", "delivery"),
}
# Third-party imports (by top-level name) and the layers allowed to use them; anything else that is
# not in the standard library is refused.
THIRD_PARTY: dict[str, tuple[str, ...]] = {
    "httpx": ("oci.registry", "kube", "delivery"),  # kube, delivery: timeouts they hand the registry client
    "zstandard": ("oci", "archive", "boot"),
    "zlib_ng": ("oci", "archive"),
    "lz4": ("archive",),
    "isal": ("oci", "boot"),
    "kopf": ("kube",),
    "kubernetes": ("kube",),
    "prometheus_client": ("kube", "delivery"),
    "yaml": ("kube",),  # kube/client.py: kubeconfig files
}
DISTRIBUTIONS = {"yaml": "pyyaml"}  # the requirement's name, where it is not the module's

# _typeshed: the standard library's stubs-only module, imported under TYPE_CHECKING
STANDARD_LIBRARY = sys.stdlib_module_names | {"_typeshed"}


@dataclass(frozen=True)
class Import:
    module: str  # the importer
    target: str  # a package module, or the top-level name of anything else
    internal: bool
    line: int


def under(name: str, prefix: str) -> bool:
    """`prefix` is the module or a package above it ("" is only the package's own __init__)."""
    return name == prefix or (prefix != "" and name.startswith(prefix + "."))


def layer_of(module: str) -> str | None:
    matches = [layer for layer in LAYERS if under(module, layer)]
    return max(matches, key=len) if matches else None


def modules(source_root: Path) -> dict[str, Path]:
    out = {}
    for path in sorted((source_root / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(source_root / PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _absolute(package: str, node: ast.ImportFrom) -> str:
    """The dotted name `from ... import` reads from; `package` is the importer's, relative to PACKAGE."""
    if not node.level:
        return node.module or ""
    parts = [PACKAGE, *filter(None, package.split("."))]
    return ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))


def imports(module: str, path: Path, known: set[str]) -> list[Import]:
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [(alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [(_absolute(package, node), alias.name) for alias in node.names]
        else:
            continue
        for dotted, member in names:
            if dotted != PACKAGE and not dotted.startswith(PACKAGE + "."):
                found.append(Import(module, dotted.partition(".")[0], False, node.lineno))
                continue
            target = dotted.removeprefix(PACKAGE).removeprefix(".")
            # `from . import build` names a module; `from .oci.image import Image` a name in one
            submodule = f"{target}.{member}" if target and member else (member or target)
            found.append(Import(module, submodule if member and submodule in known else target, True, node.lineno))
    return found


def violations(source_root: Path) -> list[str]:
    found = modules(source_root)
    graph: dict[str, set[str]] = {m: set() for m in found}
    problems = []
    for module, path in found.items():
        layer = layer_of(module)
        if layer is None:
            problems.append(f"{module}: in no layer (add its folder to LAYERS)")
            continue
        for imp in imports(module, path, set(found)):
            where = f"{module}:{imp.line} imports {imp.target or PACKAGE}"
            if imp.internal:
                graph[module].add(imp.target)
                if not any(under(imp.target, allowed) for allowed in LAYERS[layer]):
                    problems.append(f"{where}: layer {layer or PACKAGE} may import only {LAYERS[layer]}")
            elif imp.target not in STANDARD_LIBRARY:
                allowed = THIRD_PARTY.get(imp.target)
                if allowed is None:
                    problems.append(f"{where}: not a dependency listed in THIRD_PARTY")
                elif not any(under(module, a) for a in allowed):
                    problems.append(f"{where}: only {allowed} may use it")
    return problems + [f"import cycle: {' -> '.join(c)}" for c in cycles(graph)]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, done = [], set()

    def visit(node: str, path: list[str]) -> None:
        if node in path:
            found.append(path[path.index(node):] + [node])
            return
        if node in done:
            return
        for nxt in sorted(graph.get(node, ())):
            visit(nxt, path + [node])
        done.add(node)

    for node in sorted(graph):
        visit(node, [])
    return found


def test_the_package_keeps_one_dependency_direction():
    assert violations(REPO / "operator") == []


def _requirement_names(requirements: list[str]) -> set[str]:
    return {re.match(r"[A-Za-z0-9_.-]+", r).group(0).lower().replace("-", "_") for r in requirements}


def test_the_cli_needs_only_base_dependencies_and_the_operator_its_extra():
    used = {imp.target for module, path in modules(REPO / "operator").items()
            for imp in imports(module, path, set()) if not imp.internal and imp.target not in STANDARD_LIBRARY}
    assert used == set(THIRD_PARTY), "THIRD_PARTY lists a dependency nothing imports, or misses one"
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    base = _requirement_names(project["dependencies"])
    extra = _requirement_names(project["optional-dependencies"]["operator"])
    operator_only = {name for name, layers in THIRD_PARTY.items() if set(layers) <= {"kube", "delivery"}}
    assert extra == {DISTRIBUTIONS.get(name, name) for name in operator_only} == {
        "kopf", "kubernetes", "prometheus_client", "pyyaml"}
    assert base == set(THIRD_PARTY) - operator_only


def test_the_delivery_agent_process_never_loads_kubernetes():
    """What `initramfs-delivery-agent` imports, in a fresh interpreter: the kubernetes package stays out."""
    probe = ("import sys, initramfs_operator.delivery.agent; "
             "print(sorted({m.partition('.')[0] for m in sys.modules} & {'kubernetes', 'kopf', 'urllib3'}))")
    loaded = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True).stdout
    assert loaded.strip() == "[]"


def test_loading_the_build_leaves_no_transient_peak():
    """What a build imports (the CLI, every compression), in a fresh interpreter: its peak RSS is what stays
    resident (the code and its tables), not work done at import and freed (blockxz once ran liblzma's preset-6
    encoder on an empty input for its 12-byte stream header: 13 MiB more at the peak of every build, xz or not)."""
    probe = ("import initramfs_operator.cli, initramfs_operator.build, initramfs_operator.archive.compress\n"
             "status = dict(line.split(':', 1) for line in open('/proc/self/status'))\n"
             "print(int(status['VmHWM'].split()[0]) - int(status['VmRSS'].split()[0]))")
    transient_kib = int(subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True,
                                       text=True).stdout)
    assert transient_kib < 2048


def test_every_layer_exists():
    found = modules(REPO / "operator")
    for layer in LAYERS:
        assert layer in found, layer


PLANTED = {
    # each planted file breaks one rule: the checker must report exactly these
    "errors.py": "import json\n",
    "oci/__init__.py": "",
    "oci/digests.py": "from .. import errors\n",
    "oci/source.py": "from .registry import client\n",
    "oci/registry/__init__.py": "",
    "oci/registry/client.py": "import httpx\nfrom .. import source\n",
    "archive/__init__.py": "",
    "archive/cpio.py": "from ..rootfs.tree import Tree\n",
    "archive/compress.py": "import zstandard\nimport kopf\n",
    "rootfs/__init__.py": "",
    "rootfs/tree.py": "from ..archive import cpio, compress\nimport httpx\n",
    "build.py": "from .kube import crd\nimport requests\n",
    "kube/__init__.py": "",
    "kube/crd.py": "import kubernetes\nfrom .. import errors\n",
    "kube/buildjob.py": "from ..delivery import store\n",
    "delivery/__init__.py": "",
    "delivery/store.py": "from ..archive import cpio\nimport kubernetes\n",
    "delivery/agent.py": "from ..kube import crd, buildjob\nimport kopf\n",
    "cli.py": "from . import __version__, build\nfrom .delivery import agent\n",
    "tools/helper.py": "",
}
EXPECTED = [
    "oci.registry.client:2 imports oci.source: layer oci.registry may import only",
    "archive.cpio:1 imports rootfs.tree: layer archive.cpio may import only",
    "archive.compress:2 imports kopf: only ('kube',) may use it",
    "rootfs.tree:1 imports archive.compress: layer rootfs may import only",
    "rootfs.tree:2 imports httpx: only ('oci.registry', 'kube', 'delivery') may use it",
    "build:1 imports kube.crd: layer build may import only",
    "build:2 imports requests: not a dependency",
    "cli:2 imports delivery.agent: layer cli may import only",
    "kube.buildjob:1 imports delivery.store: layer kube may import only",
    "delivery.agent:1 imports kube.buildjob: layer delivery may import only",
    "delivery.store:2 imports kubernetes: only ('kube',) may use it",
    "delivery.agent:2 imports kopf: only ('kube',) may use it",
    "tools.helper: in no layer",
    "import cycle: archive.cpio -> rootfs.tree -> archive.cpio",
    "import cycle: oci.registry.client -> oci.source -> oci.registry.client",
]


def test_the_checker_reports_each_planted_violation(tmp_path):
    for name, text in {"__init__.py": "__version__ = '0'\n", **PLANTED}.items():
        (tmp_path / PACKAGE / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / PACKAGE / name).write_text(text)
    problems = violations(tmp_path)
    assert len(problems) == len(EXPECTED), problems
    for expected in EXPECTED:
        assert [p for p in problems if p.startswith(expected)], (expected, problems)
