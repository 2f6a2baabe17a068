"""The import graph of core/ and plugins/: no circles, plugins use only the public API, the host does not reach into tools."""

import ast
from pathlib import Path

import wconv

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"wconv": ROOT / "core", "wconv.plugins": ROOT / "plugins"}


def module_files() -> dict[str, Path]:
    """Every module of wconv and its built-in plugins, by dotted name."""
    modules = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join([package, *parts])] = path
    return modules


def is_type_checking_block(node) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def imports_of(name: str, path: Path) -> set[str]:
    """The wconv modules ``name`` imports (at any depth, lazy imports included; TYPE_CHECKING blocks left out)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()

    def visit(node):
        if is_type_checking_block(node):
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "wconv")
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            if base.split(".")[0] == "wconv":
                found.add(base)
                found.update(f"{base}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return found


def import_graph() -> dict[str, set[str]]:
    modules = module_files()
    return {name: {imported for imported in imports_of(name, path) if imported in modules and imported != name}
            for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    visiting, done = [], set()

    def walk(node):
        if node in visiting:
            return visiting[visiting.index(node):] + [node]
        if node in done:
            return None
        visiting.append(node)
        for nxt in sorted(graph[node]):
            if cycle := walk(nxt):
                return cycle
        visiting.pop()
        done.add(node)
        return None

    for node in sorted(graph):
        if cycle := walk(node):
            return cycle
    return None


def test_there_is_no_import_circle():
    graph = import_graph()
    assert len(graph) > 40
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_a_circle_would_be_found():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_plugins_import_only_the_public_api():
    public = set(wconv.__all__)
    for name, path in module_files().items():
        if not name.startswith("wconv.plugins."):
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == "wconv":
                        assert alias.name == "wconv" or alias.name.startswith("wconv.plugins"), f"{path.name} imports {alias.name}"
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module.split(".")[0] == "wconv":
                assert node.module == "wconv" or node.module.startswith("wconv.plugins"), f"{path.name} imports {node.module}"
                if node.module == "wconv":
                    assert {alias.name for alias in node.names} <= public, f"{path.name} imports a private name of wconv"


def test_the_host_and_its_stages_never_import_the_tools():
    for name, imported in import_graph().items():
        if not name.startswith(("wconv.tools", "wconv.cli", "wconv.plugins")):
            assert not any(module.startswith("wconv.tools") for module in imported), f"{name} imports {imported}"


def test_every_folder_says_what_lives_there():
    for folder in [ROOT / "core", *sorted(p for p in (ROOT / "core").iterdir() if (p / "__init__.py").is_file())]:
        docstring = ast.get_docstring(ast.parse((folder / "__init__.py").read_text()))
        assert docstring, f"{folder.name}/__init__.py has no docstring"
