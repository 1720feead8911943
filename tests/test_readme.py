"""The README's Hugging Face example runs as written (a new user copies it)."""
from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).parent.parent / "README.md"


def test_readme_llama_example_runs(tmp_path, monkeypatch) -> None:
    text = README.read_text()
    marker = text.index("<!-- README example")
    block = re.search(r"```python\n(.*?)```", text[marker:], re.S).group(1)
    monkeypatch.chdir(tmp_path)
    exec(compile(block, "README.md", "exec"), {})
    assert (tmp_path / "llama-pruned-uniform" / "config.json").exists()
