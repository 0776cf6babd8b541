"""setup.py names every distribution the package imports, pinned as constraints.txt (the lock) pins it."""

import ast
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
SOURCES = ("animerec", "pipeline", "components", "serving", "kubeflow")
FIRST_PARTY = {"animerec", "pipeline", "components", "serving", "kubeflow", "tests"}
# Import names whose distribution is named otherwise.
DISTRIBUTION = {
    "absl": "absl-py",
    "google": "protobuf",  # google.protobuf only (checked below)
    "grpc": "grpcio",
    "sklearn": "scikit-learn",
    "tensorflow_serving": "tensorflow-serving-api",
    "yaml": "pyyaml",
}


def _imports() -> dict[str, str]:
    """Top-level third-party modules imported by the package's sources, with a file each."""
    found = {}
    for folder in SOURCES:
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top == "google":
                        assert name.startswith("google.protobuf"), f"{path}: imports {name}"
                    if top not in sys.stdlib_module_names and top not in FIRST_PARTY and top != "__future__":
                        found.setdefault(top, str(path.relative_to(ROOT)))
    return found


def _pins(lines) -> dict[str, str]:
    pins = {}
    for line in lines:
        match = re.match(r"^\s*([A-Za-z0-9_.-]+)(\[[^\]]*\])?==([^\s;#]+)", line)
        if match:
            pins[match[1].lower().replace("_", "-")] = match[3]
    return pins


def _install_requires() -> list[str]:
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "install_requires":
            return ast.literal_eval(node.value)
    raise AssertionError("setup.py has no install_requires")


def test_every_imported_distribution_is_declared_with_the_locked_version():
    declared = _pins(_install_requires())
    locked = _pins((ROOT / "constraints.txt").read_text().splitlines())
    for module, where in _imports().items():
        distribution = DISTRIBUTION.get(module, module.replace("_", "-")).lower()
        assert distribution in declared, f"{where} imports {module}: setup.py's install_requires lacks {distribution}"
    for distribution, version in declared.items():
        assert (
            locked.get(distribution) == version
        ), f"setup.py pins {distribution}=={version}, constraints.txt {locked.get(distribution)}"
    for distribution, version in _pins((ROOT / "requirements.txt").read_text().splitlines()).items():
        assert (
            locked.get(distribution) == version
        ), f"requirements.txt pins {distribution}=={version}, constraints.txt {locked.get(distribution)}"
