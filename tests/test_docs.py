"""The documents: README.md and docs/ run as written (every Python block executes, every command line parses),
speak of the tool and not of how it was built, and the README stays a front door."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from branchgraph.cli import build_parser
from tests.conftest import REPO

DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]


def _blocks(path: Path, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", path.read_text(), flags=re.S)


CLAIM = re.compile(r"#\s*->\s*(.*?)(?:\s+\(.*\))?\s*$")  # print(x)  # -> what it prints (a note)


@pytest.mark.parametrize("path", [p for p in DOCUMENTS if _blocks(p, "python")], ids=lambda p: p.name)
def test_python_examples_run(path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Every block runs; a ``print`` whose line ends in ``# -> VALUE`` must print VALUE."""
    monkeypatch.chdir(tmp_path)
    for code in _blocks(path, "python"):
        printed: dict[int, str] = {}

        def record(*args: object, store: dict[int, str] = printed, **_: object) -> None:
            store[sys._getframe(1).f_lineno] = " ".join(map(str, args))

        exec(compile(code, str(path.relative_to(REPO)), "exec"), {"print": record})
        for number, line in enumerate(code.splitlines(), 1):
            if line.lstrip().startswith("print(") and (claim := CLAIM.search(line)):
                assert printed.get(number) == claim.group(1), f"{path.name} line {number}: {line.strip()}"


def test_command_lines_parse() -> None:
    parser = build_parser()
    count = 0
    for path in DOCUMENTS:
        lines = [line.split("#")[0].strip() for block in _blocks(path, "sh") for line in block.splitlines()]
        for words in (shlex.split(line) for line in lines if line.startswith(("branchgraph ", "torchrun "))):
            args = words[words.index("branchgraph.cli") + 1:] if words[0] == "torchrun" else words[1:]
            parser.parse_args(args)
            count += 1
    assert count >= 12


# How the tool was built is not the user's business: tickets, work sessions, acceptance targets, internal documents.
# (ONNX Runtime's sessions, ``self.session`` and its ``session.*`` settings, are the engine's, not ours.)
PROCESS_WORDS = re.compile(
    r"\bissues? ?#?\d+|(?<!self\.)(?<!Runtime )\bsessions?\b(?![.\w])|\bseeds? 00\d\b|\bacceptance\b"
    r"|\bthe (?:issue's )?bars?\b|\btickets?\b",
    re.IGNORECASE)


def test_no_development_process_words_in_the_product() -> None:
    """Source files, the README, docs/, the changelog and the contributors' guide speak of the tool: no issue
    numbers, sessions, "bars" (targets) or internal source documents."""
    paths = ["src", "README.md", "docs", "CHANGELOG.md", "CONTRIBUTING.md"]
    tracked = subprocess.run(["git", "ls-files", *paths], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout.split()
    found = []
    for name in tracked:
        path = REPO / name
        if path.suffix not in (".py", ".md", ".txt", ".json") or not path.is_file():
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if match := PROCESS_WORDS.search(line):
                found.append(f"{name}:{number}: {match.group(0)!r}")
    assert not found, "\n".join(found)


def test_the_words_test_can_fail() -> None:
    for text in ("as issue 12 showed", "this session's box", "seed 003's recipe", "the bar is met"):
        assert PROCESS_WORDS.search(text), text


def test_readme_is_a_front_door() -> None:
    """At most 200 lines, and every figure in its table comes from a generated results page."""
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    assert "docs/results/" in readme


def test_results_pages_are_generated_with_their_machine(tmp_path: Path) -> None:
    """A results page is made from its JSON record, headed by the CPU model, ISA class, cores, torch version,
    commit and date; the index lists it."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        from results import machine, write
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    page = write("example", "An example", "python -c pass", ["a", "b"], [["1", "2"]], {"x": 1}, tmp_path)
    info = machine()
    text = page.read_text()
    for value in (info["cpu"], info["isa"], f"{info['cores']} cores", info["torch"], info["commit"], info["date"]):
        assert str(value) in text
    assert "| 1 | 2 |" in text and page.with_suffix(".json").is_file()
    assert page.name in (tmp_path / "index.md").read_text()


def test_readme_figures_come_from_the_results_pages() -> None:
    """The README's zoo figures are those of the generated page: the command count and each BN-folding cell."""
    import json

    readme = (REPO / "README.md").read_text()
    pages = sorted(set(re.findall(r"docs/results/(zoo-\w+)\.md", readme)))
    assert pages
    cells: dict[str, str] = {}
    for page in pages:
        record = json.loads((REPO / "docs" / "results" / f"{page}.json").read_text())
        cells |= {row[0]: " | ".join(row[1:]) for row in record["rows"]}
        commands = [result for per_model in record["data"].values() for result in per_model.values()]
        ran, total = sum(result["ok"] for result in commands), len(commands)
        assert f"{ran} of {total} commands ran" in readme, page
    for claim in re.findall(r"(\w+) (\d+ BN folded, \d+ kept)", readme):
        assert claim[1] in cells[claim[0]], claim


def test_readme_ratios_come_from_the_results_pages() -> None:
    """Every speed-up the README's table states ("1.83x") is a cell of a generated results page."""
    import json

    readme = (REPO / "README.md").read_text()
    table = readme[readme.index("## Measured"):readme.index("More measurements")]
    cells = {cell for path in (REPO / "docs" / "results").glob("*.json")
             for row in json.loads(path.read_text())["rows"] for cell in row}
    ratios = re.findall(r"\b\d+\.\d+x\b", table)
    assert ratios and all(r in cells for r in ratios), [r for r in ratios if r not in cells]


RATIO = re.compile(r"(?<![\w.])(\d+\.\d+)(?:[\u2013-](\d+\.\d+))? ?(?:\u00d7|x\b)")  # 1.35x, 1.30-1.41x
CITED = {("optimisation.md", "1.6")}  # a figure another project published, cited by name where it is given


def _numbers(value: object) -> list[float]:
    """Every number in a results record: its values and those written in its table's cells."""
    if isinstance(value, dict):
        return [n for v in value.values() for n in _numbers(v)]
    if isinstance(value, list):
        return [n for v in value for n in _numbers(v)]
    if isinstance(value, bool) or value is None:
        return []
    if isinstance(value, (int, float)):
        return [float(value)]
    return [float(n) for n in re.findall(r"\d+\.\d+", str(value))]


def test_every_ratio_in_the_docs_comes_from_a_results_page() -> None:
    """A speed or cost ratio the documents state ("1.35x", "1.30-1.41x", with a multiplication sign) is a value of a
    generated results page that the same section links, at the precision written: a re-measured page cannot leave
    a stale figure behind."""
    import json

    stale = []
    for path in DOCUMENTS:
        if path.parent.name == "results" or path.name == "changelog.md":
            continue
        for section in re.split(r"\n(?=#+ )", path.read_text()):
            pages = set(re.findall(r"results/([\w-]+)\.md", section)) - {"index"}
            values = [n for page in pages
                      for n in _numbers(json.loads((REPO / "docs" / "results" / f"{page}.json").read_text()))]
            for figure in (g for m in RATIO.finditer(section) for g in m.groups() if g):
                digits = len(figure.split(".")[1])
                if (path.name, figure) not in CITED and not any(round(v, digits) == float(figure) for v in values):
                    stale.append(f"{path.name}: {figure}x (pages linked in its section: {sorted(pages)})")
    assert not stale, "\n".join(stale)


def test_the_architecture_page_names_every_source_file() -> None:
    """docs/architecture.md's file map stays the tree's: a module added, moved or renamed must be described there."""
    files = (REPO / "docs" / "architecture.md").read_text().split("## Files", 1)[1]
    src = REPO / "src" / "branchgraph"
    missing = [str(p.relative_to(src)) for p in sorted(src.rglob("*.py")) if p.name != "__init__.py"
               and not re.search(rf"\b{re.escape(p.name)}\b", files)]
    assert not missing, f"not described in docs/architecture.md: {missing}"


def test_the_command_line_page_is_generated_from_the_parser() -> None:
    """docs/reference/cli.md is what ``branchgraph.cli.reference()`` writes (``make docs`` regenerates it)."""
    from branchgraph.cli import reference

    assert (REPO / "docs" / "reference" / "cli.md").read_text() == reference()

