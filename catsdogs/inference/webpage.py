"""Self-contained HTML pages: one file, figures embedded as data: URIs, nothing fetched from anywhere."""

from __future__ import annotations

import base64
import html
import re
from typing import Iterable, Mapping, Sequence

# The page may load nothing but its own embedded images and style: no script, font or stylesheet
# from anywhere, whatever a class name or a file name in it says.
POLICY = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
STYLE = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; color: #1d2733;
       max-width: 1180px; margin: 0 auto; padding: 1.2em 1.5em 4em; background: #fff; }
h1 { font-size: 1.6em; margin-bottom: .2em; } h2 { font-size: 1.25em; margin-top: 1.8em;
     border-bottom: 1px solid #d8dee6; padding-bottom: .2em; } h3 { font-size: 1.05em; }
table { border-collapse: collapse; margin: .6em 0 1em; font-size: .92em; }
th, td { border: 1px solid #d8dee6; padding: .25em .6em; text-align: left; vertical-align: top; }
th { background: #f2f5f8; } td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; height: auto; border: 1px solid #e4e8ee; }
figure { margin: .8em 0 1.2em; } figcaption { font-size: .88em; color: #4a5664; margin-top: .3em; }
code { background: #f2f5f8; padding: 0 .25em; border-radius: 3px; font-size: .92em; }
.headline { font-size: 1.15em; margin: .4em 0 1em; } .headline b { font-size: 1.25em; }
.missing { background: #fff7e0; border-left: 4px solid #e6b422; padding: .5em .8em; margin: .6em 0; }
.grid { display: flex; flex-wrap: wrap; gap: 12px; } .grid figure { margin: 0; flex: 0 1 520px; }
.muted { color: #5d6b7a; font-size: .9em; } nav a { margin-right: 1em; }
"""


_NUM = ' class="num"'


class Raw(str):
    """HTML already made safe (a link, an image), placed as it is where text would be escaped."""


def esc(value: object) -> str:
    return value if isinstance(value, Raw) else html.escape(str(value), quote=True)


def data_uri(content: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(content).decode('ascii')}"


def image(content: bytes, alt: str, caption: str = "", mime: str = "image/png") -> Raw:
    """A figure with the picture embedded in the page."""
    text = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return Raw(f'<figure><img src="{data_uri(content, mime)}" alt="{esc(alt)}">{text}</figure>')


def table(header: Sequence[str], rows: Iterable[Sequence[object]], numeric: Iterable[int] = ()) -> Raw:
    """A table of text cells (escaped); columns in `numeric` are aligned right."""
    right = set(numeric)

    def cell(tag: str, index: int, value: object) -> str:
        return f"<{tag}{_NUM if index in right else ''}>{esc(value)}</{tag}>"

    head = "".join(cell("th", i, name) for i, name in enumerate(header))
    body = "".join("<tr>" + "".join(cell("td", i, value) for i, value in enumerate(row)) + "</tr>" for row in rows)
    return Raw(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")


def missing(text: str, command: str = "") -> Raw:
    """A part that cannot be shown yet, and the command that makes its input."""
    run = f" Run <code>{esc(command)}</code>." if command else ""
    return Raw(f'<p class="missing">{esc(text)}{run}</p>')


def page(title: str, body: Iterable[str]) -> str:
    """The whole document around `body` (pieces of HTML)."""
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<meta http-equiv=\"Content-Security-Policy\" content=\"{POLICY}\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{esc(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
            + "\n".join(body) + "\n</body>\n</html>\n")


# ---- the Markdown that catsdogs itself writes (report.md), as HTML ---------------------------------

_CODE = re.compile(r"`([^`]+)`")
_IMAGE = re.compile(r"^!\[([^\]]*)\]\(([^)]+)\)$")
_LINK = re.compile(r"\[([^\]]+)\]\(([^)\s]+)\)")
_BOLD = re.compile(r"\*\*(.+?)\*\*")


def inline(text: str) -> str:
    """Code spans, bold and links of one line of Markdown, the rest escaped."""
    pieces = _CODE.split(text)  # odd positions are the insides of code spans
    out = []
    for index, piece in enumerate(pieces):
        if index % 2:
            out.append(f"<code>{esc(piece)}</code>")
            continue
        piece = esc(piece)
        piece = _LINK.sub(lambda m: f'<a href="{m.group(2)}">{m.group(1)}</a>', piece)
        out.append(_BOLD.sub(r"<strong>\1</strong>", piece))
    return "".join(out)


def _table_lines(lines: list[str]) -> Raw:
    def cells(line: str) -> list[str]:
        return [cell.strip() for cell in line.strip().strip("|").split("|")]

    align = ["num" if rule.endswith(":") else "" for rule in cells(lines[1])]

    def row(line: str, tag: str) -> str:
        return "<tr>" + "".join(f"<{tag}{_NUM if i < len(align) and align[i] else ''}>{inline(c)}</{tag}>"
                                for i, c in enumerate(cells(line))) + "</tr>"

    body = "".join(row(line, "td") for line in lines[2:])
    return Raw(f"<table><thead>{row(lines[0], 'th')}</thead><tbody>{body}</tbody></table>")


def markdown_to_html(text: str, images: Mapping[str, bytes]) -> list[str]:
    """Headings, paragraphs, lists, tables, images, bold, code and links: what report.md uses.

    An image whose file is in `images` is embedded; any other is named, never fetched.
    """
    out: list[str] = []
    block: list[str] = []

    def flush() -> None:
        if not block:
            return
        if block[0].startswith("|") and len(block) > 1 and set(block[1].replace("|", "").strip()) <= set("-: "):
            out.append(_table_lines(block))
        elif all(line.startswith("- ") for line in block):
            out.append("<ul>" + "".join(f"<li>{inline(line[2:])}</li>" for line in block) + "</ul>")
        else:
            out.append(f"<p>{inline(' '.join(block))}</p>")
        block.clear()

    for line in text.splitlines():
        heading = re.match(r"^(#{1,3}) (.*)$", line)
        picture = _IMAGE.match(line.strip())
        if not line.strip():
            flush()
        elif heading:
            flush()
            level = len(heading.group(1))
            out.append(f"<h{level}>{inline(heading.group(2))}</h{level}>")
        elif picture:
            flush()
            alt, source = picture.groups()
            out.append(image(images[source], alt) if source in images else missing(f"{alt}: {source} is missing."))
        else:
            block.append(line)
    flush()
    return out
