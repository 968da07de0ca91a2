"""The documentation holds together: README.md stays short and keeps the two-command quick start,
every ```python block of README.md and docs/*.md runs as written, every relative link resolves
(file and heading), and every ``python -m <module>`` and ``make <target>`` it names exists."""

import importlib.util
import pathlib
import re

import pytest

pytestmark = pytest.mark.usefixtures("fast_compile")  # compile-bound: see conftest

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
# The pages a user reads: the README, docs/ by topic, and the two measurement notebooks.
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PAGES += [ROOT / "BENCHMARKS.md", ROOT / "FIDELITY.md"]
# Pages whose ```python blocks are examples to run (the notebooks only quote commands).
EXAMPLE_PAGES = [p for p in PAGES if p.name not in ("BENCHMARKS.md", "FIDELITY.md")]
BLOCKS = [
    (page, i, block)
    for page in EXAMPLE_PAGES
    for i, block in enumerate(re.findall(r"```python\n(.*?)```", page.read_text(), re.DOTALL))
]
README_MAX_LINES = 300


def _rel(path: pathlib.Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path: pathlib.Path) -> set[str]:
    """Every heading anchor of a Markdown file (repeated headings get -1, -2, … as on GitHub)."""
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.DOTALL)
    seen: dict[str, int] = {}
    anchors = set()
    for heading in re.findall(r"^#{1,6} (.+)$", text, flags=re.MULTILINE):
        slug = _slug(heading)
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        anchors.add(slug if n == 0 else f"{slug}-{n}")
    return anchors


def _links(path: pathlib.Path) -> list[str]:
    """The relative link targets of a Markdown file (not URLs, not inside code blocks)."""
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.DOTALL)
    targets = re.findall(r"\]\(([^)\s]+)\)", text)
    return [t for t in targets if not re.match(r"[a-z]+:", t)]


def _code(path: pathlib.Path) -> str:
    """The code of a Markdown file: its fenced blocks and inline `code` spans."""
    text = path.read_text()
    blocks = re.findall(r"```[^\n]*\n(.*?)```", text, flags=re.DOTALL)
    inline = re.findall(r"`([^`]+)`", re.sub(r"```.*?```", "", text, flags=re.DOTALL))
    return "\n".join(blocks + inline)


def test_readme_has_python_examples():
    assert any(page.name == "README.md" and page.parent == ROOT for page, _, _ in BLOCKS), (
        "README.md has no ```python example"
    )


@pytest.mark.parametrize("page,index,block", BLOCKS, ids=[f"{_rel(p)}[{i}]" for p, i, _ in BLOCKS])
def test_doc_example_runs(page, index, block, capsys):
    exec(compile(block, f"{_rel(page)}[python block {index}]", "exec"), {})
    assert capsys.readouterr().out, "a documentation example should print what it computed"


def test_readme_is_at_most_300_lines():
    lines = len(README.splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move detail to docs/"


def test_readme_quick_start_is_make_demo_and_make_test():
    quick_start = README[README.index("\n## Quick start\n") :]
    first_block = re.search(r"```\n(.*?)```", quick_start, flags=re.DOTALL).group(1)
    assert first_block.split("\n")[:-1] == ["make demo", "make test"]


def test_readme_links_every_doc():
    for doc in sorted((ROOT / "docs").glob("*.md")):
        assert f"({_rel(doc)})" in README, f"README.md does not link {_rel(doc)}"
    for page in ("BENCHMARKS.md", "FIDELITY.md", "CHANGELOG.md"):
        assert f"({page})" in README, f"README.md does not link {page}"


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_relative_links_resolve(page):
    broken = []
    for target in _links(page):
        file_part, _, anchor = target.partition("#")
        dest = (page.parent / file_part).resolve() if file_part else page
        if not dest.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{target} (no such heading)")
    assert not broken, f"{_rel(page)}: broken links: {broken}"


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_python_m_modules_exist(page):
    modules = set(re.findall(r"python -m\s+([A-Za-z_][\w.]*\w)", page.read_text()))
    missing = [m for m in sorted(modules) if importlib.util.find_spec(m) is None]
    assert not missing, f"{_rel(page)} names modules that do not exist: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_make_targets_exist(page):
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([\w-]+):", makefile, flags=re.MULTILINE))
    named = set(re.findall(r"(?:^|[\s;`(])make ([a-z][\w-]*)", _code(page), flags=re.MULTILINE))
    missing = sorted(named - targets)
    assert not missing, f"{_rel(page)} names make targets that do not exist: {missing}"
