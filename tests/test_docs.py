"""The README and docs/ stand on their own: every link points at a file of the repository,
none leaves it (no web addresses, nothing above the checkout)."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)|<img[^>]*src=\"([^\"]+)\"")


def links(path: pathlib.Path):
    for match in LINK.finditer(path.read_text()):
        yield match.group(1) or match.group(2)


def test_no_web_addresses():
    for path in DOCS:
        text = path.read_text()
        assert not re.search(r"https?://|www\.", text), path.name


def test_every_link_is_a_file_of_the_repository():
    checked = 0
    for path in DOCS:
        for target in links(path):
            file = (path.parent / target.split("#", 1)[0]).resolve()
            assert file.is_relative_to(ROOT), f"{path.name}: {target} leaves the repository"
            assert file.exists(), f"{path.name}: {target} does not exist"
            checked += 1
    assert checked >= 3  # the README links its pictures and docs


#: A repository path in backticks: `csrc/concentration.cpp`, `scops_fast/train/trainer.py`.
CODE_PATH = re.compile(
    r"`((?:csrc|scops_fast|scripts|benchmarks|tests|docs|\.ci)/[\w./*-]+?)[`:( ]"
)


def test_every_path_in_backticks_is_in_the_repository():
    checked = 0
    for path in DOCS:
        for match in CODE_PATH.finditer(path.read_text()):
            name = match.group(1).rstrip(".")
            found = list(ROOT.glob(name)) if "*" in name else (ROOT / name).exists()
            assert found, f"{path.name}: `{name}` is not in the repository"
            checked += 1
    assert checked >= 50
