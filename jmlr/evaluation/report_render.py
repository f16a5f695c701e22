"""The run report's rendering: HTML tables and Markdown twins, escaping, the page shell.

Content (which tables and text the report holds) lives in :mod:`jmlr.evaluation.report`.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from typing import Any

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.8em 0;font-size:.92em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}
.note{color:#666;font-style:italic}.plots img{max-width:48%;margin:.3em}
.example{border:1px solid #ddd;border-radius:6px;padding:.6em 1em;margin:1em 0}
.passage{font-size:.88em;color:#333;margin:.3em 0}.gold{background:#fff3c4}
.ok{color:#1a7f37;font-weight:600}.bad{color:#b42318;font-weight:600}
mark.matched{background:#a8e6a3}mark.missed{background:#ffd08a}mark.extra{background:#f7a6a6}
.legend mark{padding:0 .3em}
"""



@dataclass
class Section:
    """One part of the report, in both renderings."""

    title: str
    html: str
    markdown: str
    figures: list[str] = field(default_factory=list)  # base64 PNGs, HTML only
    # Sections appear by this number, then in the order the stages contributed them.
    order: int = 100


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


_MD_ACTIVE = re.compile(r"([\\`*_\[\]#])")


def md_text(value: Any) -> str:
    """Text for the Markdown report: HTML's special characters as entities (many Markdown
    viewers render raw HTML, so a ``<script>`` in a question must not survive) and
    Markdown's own (emphasis, links, headings, code) backslash-escaped.

    >>> print(md_text("<script>alert('x')</script> & [link](y) *b*"))
    &lt;script&gt;alert('x')&lt;/script&gt; &amp; \\[link\\](y) \\*b\\*
    """
    return _MD_ACTIVE.sub(r"\\\1", html.escape(str(value), quote=False))


def md_code(value: Any) -> str:
    """An inline code span (its content is shown as is, never rendered) around ``value``.

    >>> md_code("p<1>`x")
    "`p<1>'x`"
    """
    return "`" + str(value).replace("`", "'").replace("\n", " ") + "`"


def html_table(header: list[str], rows: list[list[Any]], numeric_from: int = 1) -> str:
    """A plain HTML table; cells escaped, columns from ``numeric_from`` right-aligned.

    >>> html_table(["a", "b"], [["x<y", 1.5]])
    '<table><tr><th>a</th><th>b</th></tr><tr><td>x&lt;y</td><td class="num">1.5</td></tr></table>'
    """
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f'<td class="num">{esc(c)}</td>' if i >= numeric_from else f"<td>{esc(c)}</td>"
                         for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def md_table(header: list[str], rows: list[list[Any]]) -> str:
    """A Markdown table; pipes and HTML in cells escaped.

    >>> print(md_table(["a", "b"], [["x|y", "<b>"]]))
    | a | b |
    |---|---|
    | x\\|y | &lt;b&gt; |
    """
    def cell(value: Any) -> str:
        return html.escape(str(value), quote=False).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def missing(text: str) -> tuple[str, str]:
    return f'<p class="note">{esc(text)}</p>', f"_{text}_"


def render_html(title: str, sections: list[Section]) -> str:
    nav = " · ".join(f'<a href="#s{i}">{esc(s.title)}</a>' for i, s in enumerate(sections))
    body = []
    for i, s in enumerate(sections):
        figs = "".join(f'<img alt="{esc(s.title)} plot" src="data:image/png;base64,{png}">'
                       for png in s.figures)
        body.append(f'<h2 id="s{i}">{esc(s.title)}</h2>{s.html}'
                    + (f'<div class="plots">{figs}</div>' if figs else ""))
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
            f"<h1>{esc(title)}</h1><p>{nav}</p>{''.join(body)}</body></html>\n")


def render_markdown(title: str, sections: list[Section]) -> str:
    parts = [f"# {md_text(title)}", "_Plots are in report.html._"]
    parts += [f"## {s.title}\n\n{s.markdown}" for s in sections]
    return "\n\n".join(parts) + "\n"
