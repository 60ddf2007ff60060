"""The README's "Set up" section: the install and test commands CI runs, and how to get the CPU build
of PyTorch on a machine without a GPU (issue 28, point 5)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def _setup_section() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    return readme.split("## Set up\n", 1)[1].split("\n## ", 1)[0]


def _bash_blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, flags=re.S)


def test_setup_keeps_the_install_and_test_commands():
    blocks = _bash_blocks(_setup_section())
    assert blocks[0] == "pip install -e . && bench run suites/quickstart.yaml\n"
    assert any(b.rstrip().endswith('pip install -e ".[dev]" && python -m pytest -q') for b in blocks)
    assert 'pip install -e ".[dev]" && python -m pytest -q' in (ROOT / ".ci" / "run").read_text()


def test_setup_says_how_to_install_the_cpu_build_of_torch():
    section = _setup_section()
    assert f"pip install torch torchvision --index-url {CPU_INDEX}\n" in _bash_blocks(section)
    assert f"pip install -e . --extra-index-url {CPU_INDEX}" in section
    assert section.index(CPU_INDEX) < section.index('pip install -e ".[dev]"')  # next to the install command


def test_setup_states_the_torch_range_of_pyproject():
    torch = re.search(r'"(torch>=[^"]+)"', (ROOT / "pyproject.toml").read_text()).group(1)
    assert f"`{torch}`" in _setup_section()
