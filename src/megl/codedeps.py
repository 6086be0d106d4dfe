"""Which package files a `megl` command runs: the code inputs of its workflow step (Snakemake and DVC).

Static analysis with `ast`, nothing is imported: a command is `python -m megl COMMAND`, so it runs
`megl/__main__.py`, `megl/cli.py` at module level, `build_parser` (and its one parser helper per
command) and `main`, and its handler (`set_defaults(func=...)` in those parser helpers) with the cli.py
helpers the handler calls. Every `megl` module these import is then followed transitively, each module
as a whole: every `import` / `from` statement in it counts, also the ones inside functions (lazy
imports), and importing `megl.a.b` also runs `megl/a/__init__.py`. A string literal naming a
non-Python file beside a module in the package (e.g.
`Path(__file__).with_name("config.schema.yaml")`) is package data the command reads.

The result is a small over-approximation (a module counts when any of its functions imports
another) and never misses a statically written import. Dynamic imports (`importlib.import_module`
with a computed name) are not followed; the package has none (tests/test_codedeps.py checks).

    megl code-deps run-cell                  # the files, one a line, relative to the repository root
    megl code-deps --dvc-yaml dvc.yaml --write   # refresh the generated `deps:` blocks of dvc.yaml
"""
from __future__ import annotations

import ast
import re
from functools import lru_cache
from pathlib import Path

PACKAGE = "megl"
PACKAGE_DIR = Path(__file__).resolve().parent
# The repository layout the workflow files use: paths relative to the repository root.
SRC_PREFIX = f"src/{PACKAGE}"
# cli.py functions every command runs, besides its handler.
ALWAYS = ("build_parser", "main")
CLI = f"{PACKAGE}.cli"


@lru_cache(maxsize=None)
def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _module_file(root: Path, name: str) -> Path | None:
    """The file of module `name` (megl.a.b) below the package folder `root`, or None."""
    parts = name.split(".")
    if parts[0] != PACKAGE:
        return None
    base = root.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _module_name(root: Path, path: Path) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = [PACKAGE, *rel.parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _with_parents(name: str) -> list[str]:
    """megl.a.b -> [megl, megl.a, megl.a.b]: importing a module runs its packages' __init__ first."""
    parts = name.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def _imported_names(node: ast.AST, module: str, is_package: bool) -> set[str]:
    """Module names (within and outside the package) that the import statements below `node` name;
    for `from X import y` both X and X.y (y may be a submodule)."""
    names: set[str] = set()
    for sub in ast.walk(node):
        if isinstance(sub, ast.Import):
            names.update(alias.name for alias in sub.names)
        elif isinstance(sub, ast.ImportFrom):
            if sub.level:  # relative: resolved against the importing module's package
                package = module.split(".") if is_package else module.split(".")[:-1]
                package = package[: len(package) - (sub.level - 1)]
                base = ".".join(package + ([sub.module] if sub.module else []))
            else:
                base = sub.module or ""
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in sub.names if alias.name != "*")
    return names


def _data_files(root: Path, path: Path) -> set[Path]:
    """Package data a module names: string literals that are non-Python files beside it."""
    found = set()
    for sub in ast.walk(_tree(path)):
        if isinstance(sub, ast.Constant) and isinstance(sub.value, str) and 0 < len(sub.value) < 200:
            if "\n" in sub.value or "/" in sub.value or sub.value.startswith("."):
                continue
            candidate = path.parent / sub.value
            if candidate.suffix != ".py" and candidate.is_file():
                found.add(candidate)
    return found


def _closure(root: Path, seeds: set[str]) -> set[Path]:
    """Files of the package modules `seeds` name, their packages' __init__, and everything they import
    (except what megl.cli imports: `_cli_seeds` has chosen the part of it the command runs)."""
    todo = [n for seed in seeds for n in _with_parents(seed)]
    seen: set[str] = set()
    files: set[Path] = set()
    while todo:
        name = todo.pop()
        if name in seen or name.split(".")[0] != PACKAGE:
            continue
        seen.add(name)
        path = _module_file(root, name)
        if path is None:  # an attribute (from megl.x import function), not a module
            continue
        files.add(path)
        files.update(_data_files(root, path))
        if name == CLI:
            continue
        imported = _module_imports(root, path)
        todo.extend(n for name in imported for n in _with_parents(name))
    return files


@lru_cache(maxsize=None)
def _module_imports(root: Path, path: Path) -> frozenset[str]:
    """Every module `path` imports (cached: the workflow asks once per rule, at parse time)."""
    return frozenset(_imported_names(_tree(path), _module_name(root, path), path.name == "__init__.py"))


def _cli_functions(root: Path) -> dict[str, ast.FunctionDef]:
    return {n.name: n for n in _tree(root / "cli.py").body if isinstance(n, ast.FunctionDef)}


def _parser_functions(root: Path) -> list[ast.FunctionDef]:
    """build_parser, then the cli.py functions it calls (one parser helper per command), in call order."""
    functions = _cli_functions(root)
    build = functions["build_parser"]
    called = [n.func.id for n in ast.walk(build) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)]
    return [build, *(functions[name] for name in dict.fromkeys(called) if name in functions)]


def _command_name(call: ast.Call) -> str | None:
    """The sub-command a `command("name", ...)` / `_command(sub, "name", ...)` call adds, else None."""
    if isinstance(call.func, ast.Name) and call.func.id in ("command", "_command"):
        for arg in call.args:
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                return arg.value
    return None


def command_handlers(root: Path = PACKAGE_DIR) -> dict[str, str]:
    """megl command -> name of its handler in cli.py, read from the set_defaults(func=...) of build_parser
    and of the parser helpers it calls."""
    handlers: dict[str, str] = {}
    for function in _parser_functions(root):
        current = None
        for node in ast.walk(function):
            if not isinstance(node, ast.Call):
                continue
            name = _command_name(node)
            if name is not None:
                current = name
            elif isinstance(node.func, ast.Attribute) and node.func.attr == "set_defaults":
                for kw in node.keywords:
                    if kw.arg == "func" and isinstance(kw.value, ast.Name) and current:
                        handlers[current] = kw.value.id
    return handlers


def _cli_seeds(root: Path, handler: str) -> set[str]:
    """Modules cli.py imports when it runs `handler`: its module level, build_parser, main, the handler
    and the cli.py helpers these call (by name, transitively)."""
    functions = _cli_functions(root)
    other_handlers = set(command_handlers(root).values()) - {handler}
    module_level = ast.Module(body=[n for n in _tree(root / "cli.py").body if not isinstance(n, ast.FunctionDef)],
                              type_ignores=[])
    seeds = _imported_names(module_level, CLI, False)
    todo, done = [handler, *ALWAYS], set()
    while todo:
        name = todo.pop()
        if name in done:
            continue
        done.add(name)
        seeds |= _imported_names(functions[name], CLI, False)
        # build_parser names every handler (set_defaults): only this command's one runs
        todo.extend(n.id for n in ast.walk(functions[name])
                    if isinstance(n, ast.Name) and n.id in functions and n.id not in other_handlers)
    return seeds | {f"{PACKAGE}.__main__", CLI}


def code_deps(command: str, root: Path | str = PACKAGE_DIR, prefix: str = SRC_PREFIX) -> list[str]:
    """Sorted package files (`src/megl/...` paths, or below `prefix`) that `megl COMMAND` imports or reads.

    `root` is the package folder analysed (default: this package's own folder)."""
    return list(_code_deps(command, Path(root), prefix))


@lru_cache(maxsize=None)
def _code_deps(command: str, root: Path, prefix: str) -> tuple[str, ...]:
    handlers = command_handlers(root)
    if command not in handlers:
        raise KeyError(f"unknown megl command {command!r}; commands: {', '.join(sorted(handlers))}")
    files = _closure(root, _cli_seeds(root, handlers[command]))
    return tuple(sorted(f"{prefix}/{p.relative_to(root).as_posix()}" for p in files))


# ------------------------------------------------------------------ dvc.yaml's generated deps blocks
MARKER = re.compile(r"^(?P<indent>\s*)# code of `megl (?P<command>[\w-]+)`")
MARKER_TEXT = "# code of `megl {command}` (generated: megl code-deps --dvc-yaml dvc.yaml --write)"


def update_dvc_yaml(text: str, root: Path | str = PACKAGE_DIR, prefix: str = SRC_PREFIX) -> str:
    """`text` of a dvc.yaml with each marked block of code deps (a marker comment, then `- src/megl/...`
    lines at its indentation) replaced by the current `code_deps` of the marker's command."""
    lines = text.splitlines(keepends=True)
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        out.append(line)
        i += 1
        m = MARKER.match(line)
        if not m:
            continue
        indent = m.group("indent")
        out[-1] = f"{indent}{MARKER_TEXT.format(command=m.group('command'))}\n"
        while i < len(lines) and lines[i].startswith(f"{indent}- {prefix}/"):
            i += 1
        out.extend(f"{indent}- {path}\n" for path in code_deps(m.group("command"), root, prefix))
    return "".join(out)


def megl_command(cmd: str) -> str | None:
    """The megl command a stage's `cmd` runs (`python -m megl run-cell ...` -> run-cell)."""
    m = re.search(rf"-m {PACKAGE} ([\w-]+)", cmd)
    return m.group(1) if m else None
