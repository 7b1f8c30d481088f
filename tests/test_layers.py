"""No two packages of scops_fast import each other, at module level or inside functions:
the layers stay a directed graph (the command-line programs of `scops_fast.cli` sit on top,
nothing imports them)."""

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "scops_fast"


def unit_of(path: pathlib.Path) -> str:
    """The top-level package or module of scops_fast that a file belongs to."""
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def imported_units(path: pathlib.Path) -> set[str]:
    units = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
            if node.module == "scops_fast":
                names = [f"scops_fast.{a.name}" for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "scops_fast" and len(parts) > 1:
                units.add(parts[1])
    return units


def import_graph() -> dict[str, set[str]]:
    """Who imports whom, leaving out `__main__.py` files: entry points that nothing imports
    (`python -m scops_fast.train` runs scops_fast.cli.train, which torchrun needs)."""
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        if path.name == "__main__.py":
            continue
        unit = unit_of(path)
        graph.setdefault(unit, set()).update(imported_units(path) - {unit})
    return graph


def test_every_command_lives_in_the_cli_package():
    """The console scripts and the `python -m` entry points all lead into scops_fast.cli."""
    import tomllib

    root = PACKAGE.parent
    scripts = tomllib.loads((root / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts and all(target.startswith("scops_fast.cli.") for target in scripts.values())
    for main in PACKAGE.rglob("__main__.py"):
        assert imported_units(main) <= {"cli"}, main
    mains = {
        p.relative_to(PACKAGE).as_posix()
        for p in PACKAGE.rglob("*.py")
        if "def main(" in p.read_text()
    }
    # Outside cli/ only the developers' generators: docs/config.md and the Triton AOT check.
    assert sorted(m for m in mains if not m.startswith("cli/")) == [
        "train/config_reference.py",
        "triton_kernels/aot.py",
    ]


def test_no_two_packages_import_each_other():
    graph = import_graph()
    both_ways = sorted(
        f"{a} <-> {b}" for a, deps in graph.items() for b in deps if a < b and a in graph.get(b, ())
    )
    assert not both_ways, both_ways


def test_nothing_imports_the_command_line_layer():
    graph = import_graph()
    assert [unit for unit, deps in graph.items() if "cli" in deps] == []


def test_the_check_sees_function_level_imports(tmp_path):
    f = tmp_path / "m.py"
    f.write_text(
        "def f():\n    from scops_fast.train.progress import x\n    import scops_fast.eval\n"
    )
    assert imported_units(f) == {"train", "eval"}
