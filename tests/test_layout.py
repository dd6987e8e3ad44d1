"""The package's shape: imports point one way, and every module says what it is."""

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("import_graph", ROOT / "tools" / "import_graph.py")
import_graph = importlib.util.module_from_spec(spec)
spec.loader.exec_module(import_graph)


def test_cycles_are_found_with_every_member():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}, "f": set()}
    assert import_graph.cycles(graph) == [["a", "b", "c"], ["e"]]
    assert import_graph.cycles({"a": {"b"}, "b": set()}) == []


def test_a_local_import_counts_as_an_edge_and_a_heavy_one_is_allowed(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("import os\n\ndef g():\n    import matplotlib\n    from hafrm.config import HafConfig\n")
    edges, local = import_graph.imports(f, {"hafrm.config"})
    assert edges == {"hafrm.config"}
    assert local == [(5, "hafrm.config")]


def test_hafrm_has_no_import_cycle_and_no_stray_local_import():
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "import_graph.py")], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout


def test_every_module_opens_with_a_docstring():
    missing = [
        str(p.relative_to(ROOT))
        for p in sorted((ROOT / "src" / "hafrm").rglob("*.py"))
        if not ast.get_docstring(ast.parse(p.read_text()))
    ]
    assert not missing
