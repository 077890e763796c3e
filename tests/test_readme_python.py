"""The README's Python example runs as written (on the bundled sample, in a fresh directory)."""

import re
import runpy
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_readme_python_example_runs(tmp_path, monkeypatch, capsys):
    text = (REPO / "README.md").read_text()
    block = re.search(r"<!-- python-example:start -->\s*```python\n(.*?)```\s*<!-- python-example:end -->", text, re.S)
    assert block, "README.md has no python-example block"
    code = block.group(1)
    script = tmp_path / "example.py"
    script.write_text(code)
    monkeypatch.chdir(tmp_path)
    ns = runpy.run_path(str(script), run_name="__main__")
    out = capsys.readouterr().out
    assert (tmp_path / "shop.duckdb").exists() and (tmp_path / "models" / "shop" / "config.json").exists()
    assert len(ns["top"][0]) == 10 and "stage" in out
    stages = ns["stages"]
    assert len(stages) == len(ns["histories"]) and stages["stage"].notna().all()
    assert len(ns["chosen"][0]) == 3 and (ns["value"]["expected_value"] >= 0).all()
