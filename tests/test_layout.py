"""The code stays easy to read: small modules, short functions, no import-time side effects in the CLI path."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("zoo", "tasks", "router", "demo")
MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 50


def source_files() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def test_there_are_modules_to_check():
    assert len(source_files()) > 40


@pytest.mark.parametrize("path", source_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_module_and_function_sizes(path):
    text = path.read_text()
    assert len(text.splitlines()) <= MAX_MODULE_LINES, f"{path} has {len(text.splitlines())} lines"
    long = [f"{node.name} ({node.end_lineno - node.lineno + 1} lines)" for node in ast.walk(ast.parse(text))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, f"{path}: functions over {MAX_FUNCTION_LINES} lines: {', '.join(long)}"


def test_cli_help_imports_no_heavy_library():
    """`zoo --help` stays instant: torch, transformers, gradio and bitsandbytes load only when a command needs them."""
    code = ("import sys; from zoo.cli import build_parser; build_parser(); "
            "print(','.join(m for m in ('torch', 'transformers', 'gradio', 'bitsandbytes') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr[-1000:]
    assert done.stdout.strip() == ""
