"""The compare report's vocabulary: a tiny document model (Markdown and HTML), and the accessors and
formatting that the sections (``sections.py``) and the claims (``report.py``) share.
"""
from __future__ import annotations

import base64
import html
import io
import math
import re
from typing import Optional

ARCH_ORDER = ("rnn", "lstm", "gru", "transformer")
COLORS = {"rnn": "#d62728", "lstm": "#1f77b4", "gru": "#2ca02c", "transformer": "#9467bd"}


# ----------------------------------------------------------------------------
# A tiny document model rendered to Markdown and HTML


class Doc:
    def __init__(self) -> None:
        self.blocks: list[tuple] = []

    def h(self, level: int, text: str) -> None:
        self.blocks.append(("h", level, text))

    def p(self, text: str) -> None:
        self.blocks.append(("p", text))

    def ul(self, items: list[str]) -> None:
        self.blocks.append(("ul", items))

    def table(self, header: list[str], rows: list[list[str]]) -> None:
        self.blocks.append(("table", header, rows))

    def img(self, name: str, png: bytes, caption: str) -> None:
        self.blocks.append(("img", name, png, caption))

    def markdown(self) -> str:
        out = []
        for b in self.blocks:
            if b[0] == "h":
                out.append("#" * b[1] + " " + b[2])
            elif b[0] == "p":
                out.append(b[1])
            elif b[0] == "ul":
                out.append("\n".join(f"- {i}" for i in b[1]))
            elif b[0] == "table":
                rows = [b[1], ["---"] * len(b[1])] + b[2]
                out.append("\n".join("| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in rows))
            elif b[0] == "img":
                out.append(f"![{b[3]}](plots/{b[1]}.png)\n\n*{b[3]}*")
        return "\n\n".join(out) + "\n"

    def html(self, title: str) -> str:
        e = html.escape
        body = []
        for b in self.blocks:
            if b[0] == "h":
                body.append(f"<h{b[1]}>{e(b[2])}</h{b[1]}>")
            elif b[0] == "p":
                body.append(f"<p>{_inline(b[1])}</p>")
            elif b[0] == "ul":
                body.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in b[1]) + "</ul>")
            elif b[0] == "table":
                head = "".join(f"<th>{_inline(str(c))}</th>" for c in b[1])
                rows = "".join("<tr>" + "".join(f"<td>{_inline(str(c))}</td>" for c in r) + "</tr>" for r in b[2])
                body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
            elif b[0] == "img":
                data = base64.b64encode(b[2]).decode("ascii")
                body.append(f'<figure><img alt="{e(b[3])}" data-plot="{e(b[1])}" src="data:image/png;base64,{data}">'
                            f"<figcaption>{e(b[3])}</figcaption></figure>")
        # The script only records how many plots decoded, so a headless browser can check the page.
        script = ("window.addEventListener('load',function(){var im=document.images,n=0;"
                  "for(var i=0;i<im.length;i++){if(im[i].complete&&im[i].naturalWidth>0){n++;}}"
                  "document.body.setAttribute('data-images-loaded',String(n));"
                  "document.body.setAttribute('data-images-total',String(im.length));});")
        style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;line-height:1.45}"
                 "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:.25em .6em;"
                 "text-align:left}th{background:#eee}img{max-width:100%}figcaption{font-size:.9em;color:#444}"
                 "code{background:#f4f4f4;padding:0 .2em}")
        return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{e(title)}</title>"
                f"<style>{style}</style></head>\n<body>\n" + "\n".join(body) +
                f"\n<script>{script}</script>\n</body></html>\n")



def _inline(text: str) -> str:
    """HTML-escape, then render `code` and **bold** spans (the only Markdown the report uses)."""
    s = html.escape(text)
    s = re.sub(r"`([^`]+)`", r"<code>\1</code>", s)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", s)


# ----------------------------------------------------------------------------
# Helpers


def _fmt(x: Optional[float], digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if x == 0:
        return "0"
    if abs(x) >= 1e4 or abs(x) < 1e-3:
        return f"{x:.{max(1, digits - 1)}e}"
    return f"{x:.{digits}g}"


def _archs(results: dict) -> list[str]:
    archs = results.get("profile", {}).get("archs", ARCH_ORDER)
    return [a for a in ARCH_ORDER if a in archs]


def _cells(results: dict, prefix: str) -> dict:
    return {k: v for k, v in results["cells"].items() if k.startswith(prefix + "/")}


def _memory(results: dict, task: str) -> dict:
    """{arch: {T: record}} of the memory cells of ``task``."""
    out: dict = {}
    for key, rec in _cells(results, task).items():
        _, arch, t = key.split("/")
        out.setdefault(arch, {})[int(t[1:])] = rec
    return out


def longest_solved(results: dict, task: str) -> dict:
    """{arch: longest T solved or None} over the lags run for ``task``."""
    return {arch: max((T for T, r in byT.items() if r.get("solved")), default=None)
            for arch, byT in _memory(results, task).items()}


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def _sentence(text: str) -> str:
    return (text[:1].upper() + text[1:] + ".") if text else ""


def _legend(ax) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    else:  # an empty panel says why rather than showing blank axes
        ax.text(0.5, 0.5, "not measured in this run", ha="center", va="center", transform=ax.transAxes, color="gray")


def _positive(values: list[float]) -> list[float]:
    # log axes cannot show 0 (an underflowed gradient); leave a gap there instead
    return [v if v and v > 0 and math.isfinite(v) else float("nan") for v in values]

