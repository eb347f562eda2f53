"""The compare report: ``report.md`` and a self-contained ``report.html`` generated from results.json.

Every sentence that states a result is computed from the numbers in the results: verdicts are
"held", "did not hold", "mixed" or "not measured", with the measurements that decided them next
to the claim. Plots are matplotlib PNGs, written to ``DIR/plots/`` for the Markdown and embedded
as base64 ``data:`` URLs in the HTML, which loads nothing from anywhere else.
"""
from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path
from typing import Optional

from .gradflow import by_distance

ARCH_ORDER = ("rnn", "lstm", "gru", "transformer")
COLORS = {"rnn": "#d62728", "lstm": "#1f77b4", "gru": "#2ca02c", "transformer": "#9467bd"}

# Bai, Kolter & Koltun (2018), Table 1: the tasks that match seqlab's generators.
REFERENCE = {
    ("adding", 600): {"lstm": 0.164, "gru": 5.3e-5, "rnn": 0.177, "metric": "MSE", "params": "about 70K",
                      "n_params": 70_000},
    ("copy", 1000): {"lstm": 0.0204, "gru": 0.0197, "rnn": 0.0202, "metric": "loss", "params": "about 16K",
                     "n_params": 16_000},
}


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
    import re

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


# ----------------------------------------------------------------------------
# Sections


def _setup(doc: Doc, results: dict) -> None:
    prof, env = results.get("profile", {}), results.get("environment", {})
    doc.h(2, "Set-up")
    doc.p(f"Profile **{prof.get('profile')}**: copy memory lags T = {prof.get('copy_T')}, adding-problem "
          f"lengths T = {prof.get('adding_T')}; training budget {prof.get('budget')} s per (task, arch, T) cell "
          f"(training time only, evaluation excluded; a cell stops early once solved), batch {prof.get('batch_size')}, "
          f"Adam lr {prof.get('lr')} (transformer × {prof.get('transformer_lr_scale', 0.5)}), constant, "
          f"gradient clipping at norm 1, parameters matched at {prof.get('copy_params')} (copy) and "
          f"{prof.get('adding_params')} (adding), "
          f"LSTM forget-gate bias {prof.get('forget_bias')}, seed {prof.get('seed')}. Fresh random batches every step; "
          f"evaluation on 256 held-out sequences. The recurrent models are one layer; the transformer is "
          f"2 pre-norm causal layers, 4 heads, feed-forward 2·d_model, sinusoidal positions.")
    doc.p(f"Machine: torch {env.get('torch')}, Python {env.get('python')}, {env.get('cpus')} CPUs, "
          f"{prof.get('threads')} torch thread(s); {env.get('platform')}. Wall time of the last run: "
          f"{_fmt(results.get('wall_time'))} s.")
    doc.p("Solved means: copy memory, accuracy on the 10 recalled symbols >= 99%; adding problem, MSE <= 0.01. "
          "Baselines: copy memory 10 ln 8 / (T + 20) (blank, then a uniform guess), adding 1/6 (always answer 1).")
    rows = []
    for task in ("copy", "adding"):
        mem = _memory(results, task)
        for arch in _archs(results):
            if arch in mem:
                any_rec = next(iter(mem[arch].values()))
                rows.append([task, arch, str(any_rec["params"]), str(any_rec["width"])])
    if rows:
        doc.p(f"Parameters, matched to {prof.get('copy_params')} (copy) and {prof.get('adding_params')} (adding) "
              "by choosing each architecture's width (the transformer's d_model moves in steps of 4, so it lands "
              "further from the target):")
        doc.table(["task", "arch", "parameters", "width (hidden size / d_model)"], rows)


def _memory_section(doc: Doc, results: dict, plots: dict) -> None:
    import matplotlib.pyplot as plt

    doc.h(2, "Memory range")
    any_task = False
    for task, title in (("copy", "Copy memory"), ("adding", "Adding problem")):
        mem = _memory(results, task)
        if not mem:
            continue
        any_task = True
        Ts = sorted({T for byT in mem.values() for T in byT})
        archs = [a for a in _archs(results) if a in mem]
        doc.h(3, title)
        rows = []
        for arch in archs:
            row = [arch]
            for T in Ts:
                r = mem[arch].get(T)
                if r is None:
                    row.append("-")
                    continue
                f = r["best"]
                val = f"acc {f['accuracy']:.1%}" if task == "copy" else f"MSE {_fmt(f['mse'])}"
                when = (f", {r['solved_at']['time']:.0f} s, {r['solved_at']['step']} steps" if r.get("solved_at")
                        else f", {r['steps']} steps")
                row.append(("**solved** " if r["solved"] else "no: ") + val + when)
            ls = longest_solved(results, task).get(arch)
            row.append(str(ls) if ls is not None else "none")
            rows.append(row)
        doc.p("Who solved which lag: the best held-out score within the budget, and the training time and steps "
              "to solve (or the steps done in the budget). How many steps fit in a budget depends on the machine's "
              "load, so a rerun on a busy machine can move a borderline cell either way.")
        doc.table(["arch"] + [f"T={T}" for T in Ts] + ["longest T solved"], rows)
        fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
        for arch in archs:
            xs = sorted(mem[arch])
            if task == "copy":
                axes[0].plot(xs, [mem[arch][T]["best"]["accuracy"] for T in xs], "o-", color=COLORS[arch], label=arch)
                axes[1].plot(xs, [mem[arch][T]["best"]["loss"] / mem[arch][T]["baseline"] for T in xs], "o-",
                             color=COLORS[arch], label=arch)
            else:
                axes[0].plot(xs, _positive([mem[arch][T]["best"]["mse"] for T in xs]), "o-", color=COLORS[arch],
                             label=arch)
                hist = mem[arch][xs[-1]]["history"]
                axes[1].plot([h["time"] for h in hist], _positive([h["mse"] for h in hist]), color=COLORS[arch],
                             label=f"{arch}, T={xs[-1]}")
        if task == "copy":
            axes[0].axhline(0.99, ls="--", color="k", lw=0.8, label="solved (99%)")
            axes[0].axhline(1 / 8, ls=":", color="gray", lw=0.8, label="chance (1/8)")
            axes[0].set(xscale="log", xlabel="lag T", ylabel="recalled-symbol accuracy", title="Copy memory")
            axes[1].axhline(1.0, ls="--", color="k", lw=0.8, label="memoryless baseline")
            axes[1].set(xscale="log", xlabel="lag T", ylabel="loss / baseline", title="Loss relative to 10 ln 8/(T+20)")
        else:
            for ax in axes:
                ax.axhline(1 / 6, ls="--", color="k", lw=0.8, label="baseline 1/6")
                ax.axhline(0.01, ls=":", color="gray", lw=0.8, label="solved (0.01)")
                ax.set_yscale("log")
            axes[0].set(xscale="log", xlabel="length T", ylabel="MSE", title="Adding problem")
            axes[1].set(xlabel="training seconds", ylabel="held-out MSE", title="Learning curves at the longest T")
        for ax in axes:
            _legend(ax)
        plots[f"memory_{task}"] = _png(fig)
        doc.img(f"memory_{task}", plots[f"memory_{task}"], f"{title}: held-out score against the lag, per architecture.")
        for (rtask, rT), ref in REFERENCE.items():
            if rtask != task:
                continue
            rows = []
            for arch in ("lstm", "gru", "rnn"):
                r = mem.get(arch, {}).get(rT)
                ours = "not run in this profile" if r is None else _fmt(r["best"]["mse" if task == "adding" else "loss"])
                verdict = ""
                if r is not None:
                    verdict = _reference_verdict(r["best"]["mse" if task == "adding" else "loss"], ref[arch],
                                                 r["baseline"])
                rows.append([arch, _fmt(ref[arch]), ours, verdict])
            doc.p(f"Reference: Bai, Kolter & Koltun (2018), Table 1, {title.lower()} T={rT} ({ref['metric']}, "
                  f"{ref['params']} parameters), next to seqlab's best held-out {ref['metric']} at the same T "
                  f"({results['profile'].get('copy_params' if task == 'copy' else 'adding_params')} parameters):")
            doc.table(["arch", f"Bai et al. {ref['metric']}", f"seqlab {ref['metric']}", ""], rows)
            better = [row[0] for row in rows if row[3] == "better than published"]
            ours_n = results["profile"].get("copy_params" if task == "copy" else "adding_params")
            size = ""
            if ours_n and abs(ours_n / ref["n_params"] - 1) > 0.2:
                size = f", and {ours_n / ref['n_params']:.1f}x the published parameter count"
            if better:
                abl = {r["T"]: r for r in ablation_rows(results) if r["task"] == task}
                note = ""
                if "lstm" in better and rT in abl:
                    d = abl[rT]["default"]
                    note = (f" The ablation below measures one of them for the LSTM at T={rT}: with torch.nn's "
                            f"forget-gate init its MSE was {_fmt(d['best']['mse'])} "
                            f"({'solved' if d['solved'] else 'not solved'}).")
                doc.p(f"seqlab's {', '.join(better)} did better than the published baseline here. The set-up "
                      "differs in: LSTM forget-gate bias "
                      f"{results['profile'].get('forget_bias')} (torch.nn's init leaves it near 0), "
                      "gradient clipping at norm 1, Adam at the learning rate above, fresh batches every step and a "
                      "time budget instead of a fixed number of epochs" + size + "." + note)
    if not any_task:
        doc.p("Not measured in this run (the copy and adding tasks were not selected).")


# A score within 10% of the memoryless baseline (or above it) has learned nothing about the task.
AT_BASELINE = 0.9


def _reference_verdict(ours: float, published: float, baseline: float) -> str:
    """seqlab's score against a published one (lower is better), with the memoryless baseline in view:
    two models that both sit at the baseline differ by noise, and neither is 'better'."""
    learned = lambda v: v < AT_BASELINE * baseline  # noqa: E731
    if ours > baseline / AT_BASELINE:
        return f"worse than the memoryless baseline ({_fmt(baseline)})"
    if not learned(ours) and not learned(published):
        return f"both at the memoryless baseline ({_fmt(baseline)})"
    if ours < published and learned(ours):
        return "better than published"
    return "not better than published"


def ablation_rows(results: dict) -> list[dict]:
    """Per adding length: the LSTM with the configured forget-gate bias and with torch.nn's init."""
    rows = []
    for key, rec in sorted(_cells(results, "ablation").items(), key=lambda kv: int(kv[0].rsplit("T", 1)[1])):
        _, task, arch, t = key.split("/")
        main = results["cells"].get(f"{task}/{arch}/{t}")
        if main is not None:
            rows.append({"task": task, "T": int(t[1:]), "tuned": main, "default": rec,
                         "forget_bias": main["config"]["forget_bias"]})
    return rows


def _ablation_section(doc: Doc, results: dict) -> None:
    rows = ablation_rows(results)
    if not rows:
        return
    doc.h(3, "Ablation: the LSTM's forget-gate bias")
    fb = rows[0]["forget_bias"]
    doc.p(f"The adding-problem LSTM trained twice with everything else equal: forget-gate bias {fb} "
          "(Jozefowicz, Zaremba & Sutskever 2015) and torch.nn's initialisation (all biases U(-1/√H, 1/√H), so the "
          "forget gate starts near 0.5).")

    def cell(r: dict) -> str:
        s = f"MSE {_fmt(r['best']['mse'])}"
        return (f"**solved** in {r['solved_at']['time']:.0f} s, " + s) if r.get("solved_at") else "no: " + s

    doc.table(["T", f"forget_bias = {fb}", "torch.nn init"], [[str(r["T"]), cell(r["tuned"]), cell(r["default"])]
                                                              for r in rows])
    only_tuned = [r["T"] for r in rows if r["tuned"]["solved"] and not r["default"]["solved"]]
    only_default = [r["T"] for r in rows if r["default"]["solved"] and not r["tuned"]["solved"]]
    if only_tuned:
        doc.p(f"Within the same budget the forget-gate bias made the difference at T = {', '.join(map(str, only_tuned))}: "
              "solved with it, not without.")
    if only_default:
        doc.p(f"At T = {', '.join(map(str, only_default))} the torch.nn init solved the task and the forget-gate bias "
              "did not.")
    if not only_tuned and not only_default:
        doc.p("The forget-gate bias did not change which lengths were solved in this run.")


def _gradflow_section(doc: Doc, results: dict, plots: dict) -> None:
    import matplotlib.pyplot as plt

    cells = _cells(results, "gradflow")
    doc.h(2, "Gradient flow")
    if not cells:
        doc.p("Not measured in this run.")
        return
    any_cell = next(iter(cells.values()))
    T = any_cell["config"]["T"]
    doc.p(f"||dL/dh_t|| (the total derivative of the adding-problem loss, read at the last step, with respect to "
          f"the recurrent state at step t; for the LSTM the state is (h_t, c_t)) against the distance T - t, on 16 "
          f"sequences of length T = {T}. For the transformer: the gradient with respect to the first layer's input "
          f"at each position. Measured at initialisation and after training (the adding model of the same T).")
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    rows = []
    for arch in _archs(results):
        rec = cells.get(f"gradflow/{arch}")
        if rec is None:
            continue
        init = by_distance(rec["init"])
        axes[0].plot(range(len(init)), _positive(init), color=COLORS[arch], label=arch)
        tr = by_distance(rec["trained"]) if rec.get("trained") else None
        if tr:
            axes[1].plot(range(len(tr)), _positive(tr), color=COLORS[arch], label=arch)
        rows.append([arch, _fmt(init[-1] / init[0] if init[0] else float("nan")),
                     _fmt(tr[-1] / tr[0] if tr and tr[0] else None) if tr else "not trained in this run"])
    rnn = cells.get("gradflow/rnn")
    if rnn and rnn.get("sigma"):
        for s, prof in sorted(rnn["sigma"].items(), key=lambda kv: float(kv[0])):
            d = by_distance(prof)
            axes[2].plot(range(len(d)), _positive(d), label=f"σ_max(W_hh) = {s}")
            rows.append([f"rnn, σ_max(W_hh) = {s}", _fmt(d[-1] / d[0] if d[0] else float("nan")), ""])
        axes[2].set_title(f"RNN at init, W_hh rescaled (default σ_max {_fmt(rnn.get('sigma_init'))})")
    axes[0].set_title("at initialisation")
    axes[1].set_title("after training")
    for ax in axes:
        ax.set(yscale="log", xlabel="distance T - t", ylabel="||dL/dh_t||")
        _legend(ax)
    plots["gradflow"] = _png(fig)
    doc.img("gradflow", plots["gradflow"], "Gradient norm against distance from the loss (log scale).")
    doc.p(f"Ratio ||dL/dh_1|| / ||dL/dh_T|| (distance {T - 1}); below 1 the gradient vanishes with distance, above 1 it "
          "explodes (0 means it underflowed float32):")
    doc.table(["model", "at initialisation", "after training"], rows)


def _speed_section(doc: Doc, results: dict, plots: dict) -> None:
    import matplotlib.pyplot as plt

    cells = _cells(results, "speed")
    doc.h(2, "Speed and memory")
    if not cells:
        doc.p("Not measured in this run.")
        return
    one = next(iter(cells.values()))
    doc.p(f"Copy-memory models of matched size (about {one['config']['params']} parameters), batch {one['batch_size']}, "
          f"{one['threads']} torch thread(s), median of {one['repeats']} runs after a warm-up (on a shared machine "
          "single runs can be several times slower; the median resists a minority of such runs, and the fastest "
          "run is kept in results.json as well). Training: one forward + "
          "backward + Adam step, reported as tokens/s. Inference: one no-grad forward over the whole sequence, per "
          "token. Memory: bytes of the tensors autograd saves for the backward pass in one training forward "
          "(activation memory, which is what grows with length; weights, gradients and optimizer state are fixed "
          "by the matched parameter count and left out). The ratio column is tokens/s relative to the LSTM at the "
          "same length, measured in the same run.")
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    lstm = {r["length"]: r for r in cells.get("speed/lstm", {}).get("rows", []) if "skipped" not in r}
    rows = []
    for arch in _archs(results):
        rec = cells.get(f"speed/{arch}")
        if rec is None:
            continue
        ok = [r for r in rec["rows"] if "skipped" not in r]
        L = [r["length"] for r in ok]
        axes[0].plot(L, [r["train_tokens_per_s"] for r in ok], "o-", color=COLORS[arch], label=arch)
        axes[1].plot(L, [r["infer_latency_per_token_s"] * 1e6 for r in ok], "o-", color=COLORS[arch], label=arch)
        axes[2].plot(L, [r["activation_bytes"] / 2**20 for r in ok], "o-", color=COLORS[arch], label=arch)
        for r in rec["rows"]:
            if "skipped" in r:
                rows.append([arch, str(r["length"]), "skipped: " + r["skipped"], "", "", "", ""])
                continue
            base = lstm.get(r["length"])
            ratio = _fmt(r["train_tokens_per_s"] / base["train_tokens_per_s"]) if base else "n/a"
            fb = (f"{r['forward_s'] * 1e3:.3g} / {r['backward_s'] * 1e3:.3g}" if "forward_s" in r else "n/a")
            rows.append([arch, str(r["length"]), f"{r['train_tokens_per_s']:.0f}", ratio, fb,
                         _fmt(r["infer_latency_per_token_s"] * 1e6), _fmt(r["activation_bytes"] / 2**20)])
    axes[0].set(xscale="log", yscale="log", xlabel="sequence length", ylabel="training tokens/s",
                title="training throughput")
    axes[1].set(xscale="log", yscale="log", xlabel="sequence length", ylabel="µs per token",
                title="inference latency per token")
    axes[2].set(xscale="log", yscale="log", xlabel="sequence length", ylabel="MiB saved for backward",
                title="activation memory")
    for ax in axes:
        _legend(ax)
    plots["speed"] = _png(fig)
    doc.img("speed", plots["speed"], "Throughput, latency and activation memory against sequence length.")
    doc.table(["arch", "length", "train tokens/s", "× LSTM", "forward / backward ms", "inference µs/token",
               "activation MiB"], rows)


def _gates_section(doc: Doc, results: dict, plots: dict) -> None:
    import matplotlib.pyplot as plt

    cells = _cells(results, "gates")
    doc.h(2, "Gates")
    if not cells:
        doc.p("Not measured in this run.")
        return
    doc.p("LSTM forget gate f_t (c_t = f_t c_{t-1} + i_t g_t) and GRU update gate z_t (h_t = (1 - z_t) n_t + z_t h_{t-1}, "
          "torch.nn's convention): for both, near 1 means keep the state. Per time step, the mean over 64 held-out "
          "sequences and all units, and the fraction saturated (< 0.1 or > 0.9); read from `seqlab.nn.record_gates` on "
          "the model trained on the longest lag it solved (or the shortest lag run, when it solved none).")
    tasks = sorted({k.split("/")[1] for k in cells})
    fig, axes = plt.subplots(1, len(tasks), figsize=(6.5 * len(tasks), 3.8), squeeze=False)
    rows = []
    for ax, task in zip(axes[0], tasks):
        for arch in ("lstm", "gru"):
            rec = cells.get(f"gates/{task}/{arch}")
            if rec is None:
                continue
            T = rec["config"]["T"]
            for which, style in (("init", ":"), ("trained", "-")):
                st = rec.get(which)
                if not st:
                    continue
                ax.plot(st["mean"], style, color=COLORS[arch], label=f"{arch} {st['gate']} mean, {which}, T={T}")
                if which == "trained":
                    ax.plot(st["frac_high"], "--", color=COLORS[arch], lw=0.8, label=f"{arch} fraction > 0.9")
                o = st["overall"]
                rows.append([task, f"{arch} ({st['gate']})", str(T), which, _fmt(o["mean"]), f"{o['frac_low']:.1%}",
                             f"{o['frac_high']:.1%}", "yes" if rec.get("solved") else "no"])
        ax.set(xlabel="time step", ylabel="gate value / fraction", title=task, ylim=(0, 1))
        _legend(ax)
    plots["gates"] = _png(fig)
    doc.img("gates", plots["gates"], "Memory gates over time: mean (solid trained, dotted init) and fraction above 0.9.")
    doc.table(["task", "gate", "T", "model", "mean", "< 0.1", "> 0.9", "solved this T"], rows)


def _lm_section(doc: Doc, results: dict, plots: dict) -> None:
    import matplotlib.pyplot as plt

    cells = _cells(results, "lm")
    doc.h(2, "Character-level language modelling")
    if not cells:
        doc.p("Not measured in this run.")
        return
    one = next(iter(cells.values()))
    c = one["config"]
    doc.p(f"`seqlab.models.LanguageModel` on the embedded stdlib corpus (first {c['train_chars']} characters of the "
          f"training split, vocabulary {one['vocab_size']}), embedding {c['embed_dim']}, untied output, one recurrent "
          f"layer or {c['transformer_layers']} transformer layers, windows of {c['context']} characters, batch "
          f"{c['batch_size']}, Adam lr {c['lr']} (transformer × {c['transformer_lr_scale']}), {c['budget']} s of "
          f"training per model. Validation bits per character on the first {c['valid_chars']} characters of the "
          "validation split.")
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    rows = []
    for key in sorted(cells, key=lambda k: (ARCH_ORDER.index(k.split("/")[1]), cells[k]["params"])):
        rec = cells[key]
        arch = key.split("/")[1]
        h = rec["history"]
        axes[0].plot([x["time"] for x in h], [x["bpc"] for x in h], color=COLORS[arch],
                     label=f"{arch} ({rec['params']} params)")
        rows.append([arch, str(rec["params"]), str(rec["model_config"]["hidden_size"]), str(rec["steps"]),
                     f"{rec['tokens_per_s']:.0f}", _fmt(rec["final_bpc"]), _fmt(rec["best_bpc"])])
    for arch in _archs(results):
        pts = sorted((r["params"], r["best_bpc"]) for k, r in cells.items() if k.split("/")[1] == arch)
        if pts:
            axes[1].plot([p for p, _ in pts], [b for _, b in pts], "o-", color=COLORS[arch], label=arch)
    axes[0].set(xlabel="training seconds", ylabel="validation bits per char", title="bpc against time")
    axes[1].set(xscale="log", xlabel="parameters", ylabel="best validation bpc", title="bpc against parameters")
    for ax in axes:
        _legend(ax)
    plots["lm"] = _png(fig)
    doc.img("lm", plots["lm"], "Validation bits per character against training time and against parameters.")
    doc.table(["arch", "parameters", "width", "steps", "train tokens/s", "final bpc", "best bpc"], rows)


# ----------------------------------------------------------------------------
# Claims


def claims(results: dict) -> list[dict]:
    """Each textbook claim with what was measured and a verdict computed from the numbers."""
    out = []
    tasks = [t for t in ("copy", "adding") if _memory(results, t)]
    reach = {t: longest_solved(results, t) for t in tasks}

    def r(t: str, a: str) -> int:
        return reach[t].get(a) or 0

    def reach_text(t: str) -> str:
        return ", ".join(f"{a} {reach[t][a] if reach[t].get(a) else 'none'}" for a in _archs(results)
                         if a in reach[t])

    measured_reach = "; ".join(f"longest lag solved on {t}: {reach_text(t)}" for t in tasks) or "memory tasks not run"
    grid = {t: sorted({T for byT in _memory(results, t).values() for T in byT}) for t in tasks}

    def informative(t: str, archs: tuple) -> bool:
        # a task separates nothing when every arch solved no lag, or every arch solved the longest one
        vals = [r(t, a) for a in archs if a in reach[t]]
        return bool(vals) and not (max(vals) == 0 or min(vals) == max(grid[t]))

    def verdict_of(votes: list[bool]) -> str:
        return "held" if all(votes) else ("mixed" if any(votes) else "did not hold")

    # 1. RNN short memory
    claim = "A plain RNN remembers only short-range dependencies."
    tt = [t for t in tasks if "rnn" in reach[t] and ({"lstm", "gru"} & set(reach[t]))]
    useful = [t for t in tt if informative(t, ("rnn", "lstm", "gru"))]
    if useful:
        shorter = [t for t in useful if r(t, "rnn") < max(r(t, "lstm"), r(t, "gru"))]
        verdict = verdict_of([t in shorter for t in useful])
        detail = (f"The plain RNN solved a shorter lag than the best gated RNN on {len(shorter)} of the "
                  f"{len(useful)} task(s) that separate them. ")
    else:
        verdict = "not measured"
        detail = ("No task separated the architectures (all solved none, or all solved the longest lag tried). "
                  if tt else "Needs rnn and lstm or gru on a memory task. ")
    tried = "; ".join(f"{t} T = {', '.join(map(str, grid[t]))}" for t in tasks)
    out.append({"claim": claim, "verdict": verdict, "measured": detail + measured_reach + f" (lags tried: {tried})."})

    # 2. vanishing / exploding through W_hh
    rnn = results["cells"].get("gradflow/rnn")
    if rnn and rnn.get("sigma"):
        ratios = {float(s): (by_distance(p)[-1] / by_distance(p)[0] if by_distance(p)[0] else float("nan"))
                  for s, p in rnn["sigma"].items()}
        below = {s: v for s, v in ratios.items() if s < 1}
        above = {s: v for s, v in ratios.items() if s > 1}
        vanish = bool(below) and all(v < 1e-2 for v in below.values())
        explode = any(v > 1 for v in above.values())
        verdict = "held" if vanish and explode else ("mixed" if vanish or explode else "did not hold")
        T = rnn["config"]["T"]
        txt = "; ".join(f"σ_max = {s}: ||dL/dh_1|| / ||dL/dh_T|| = {_fmt(v)}" for s, v in sorted(ratios.items()))
        notes = []
        if vanish:
            notes.append("with σ_max < 1 the gradient vanished over the sequence (ratio below 1e-2)")
        if explode:
            big = [s for s, v in above.items() if v > 1]
            notes.append(f"it grew with distance (exploded) for σ_max = {', '.join(map(str, sorted(big)))}")
        still = [s for s, v in above.items() if v <= 1]
        if still:
            notes.append(f"with σ_max = {', '.join(map(str, sorted(still)))} > 1 it still decayed: tanh' <= 1 and "
                         "the largest singular value bounds the growth only from above, so σ_max > 1 is necessary "
                         "but not sufficient for explosion")
        out.append({"claim": "The plain RNN's gradients vanish (or explode) through repeated multiplication by W_hh.",
                    "verdict": verdict, "measured": f"Over T = {T} steps: {txt}. " + _sentence("; ".join(notes))})
    else:
        out.append({"claim": "The plain RNN's gradients vanish (or explode) through repeated multiplication by W_hh.",
                    "verdict": "not measured", "measured": "gradflow for rnn was not run."})

    # 3. LSTM/GRU longer via additive updates
    claim = "LSTM and GRU remember longer, because their state is updated by addition through gates."
    gf = {a: results["cells"].get(f"gradflow/{a}") for a in ("rnn", "lstm", "gru")}
    parts, votes = [], []
    for t in tasks:
        if "rnn" not in reach[t]:
            continue
        for a in ("lstm", "gru"):
            if a in reach[t] and informative(t, ("rnn", a)):
                votes.append(r(t, a) > r(t, "rnn"))
                parts.append(f"longest lag solved on {t}: {a} {reach[t][a] or 'none'} vs rnn {reach[t]['rnn'] or 'none'}")
            elif a in reach[t]:
                parts.append(f"{t} does not separate {a} from rnn (both {reach[t][a] or 'none'})")
    if gf["rnn"]:
        d_rnn = by_distance(gf["rnn"]["init"])
        rr = d_rnn[-1] / d_rnn[0] if d_rnn[0] else 0.0
        for a in ("lstm", "gru"):
            if gf[a]:
                d = by_distance(gf[a]["init"])
                ra = d[-1] / d[0] if d[0] else 0.0
                votes.append(ra > rr)
                parts.append(f"gradient ratio ||dL/dh_1|| / ||dL/dh_T|| at init over {len(d) - 1} steps: {a} {_fmt(ra)} "
                             f"vs rnn {_fmt(rr)} ({'slower' if ra > rr else 'not slower'} decay)")
    if votes:
        out.append({"claim": claim, "verdict": verdict_of(votes), "measured": "; ".join(parts) + "."})
    else:
        out.append({"claim": claim, "verdict": "not measured",
                    "measured": ("; ".join(parts) + ". " if parts else "") + "Needs rnn with lstm or gru."})

    # 4. GRU simpler and faster than LSTM
    sp = {a: results["cells"].get(f"speed/{a}") for a in ("lstm", "gru")}
    claim = "GRU is a simpler, faster LSTM."
    if sp["lstm"] and sp["gru"]:
        L = {r_["length"]: r_ for r_ in sp["lstm"]["rows"] if "skipped" not in r_}
        G = {r_["length"]: r_ for r_ in sp["gru"]["rows"] if "skipped" not in r_}
        common = sorted(set(L) & set(G))
        faster = [n for n in common if G[n]["train_tokens_per_s"] > L[n]["train_tokens_per_s"]]
        ratios = [G[n]["train_tokens_per_s"] / L[n]["train_tokens_per_s"] for n in common]
        verdict = "held" if len(faster) == len(common) else ("mixed" if faster else "did not hold")
        msg = (f"Simpler: 3 gate blocks per unit against the LSTM's 4 (at matched parameters the GRU is wider: "
               f"{sp['gru']['width']} vs {sp['lstm']['width']} units). Faster in training tokens/s at "
               f"{len(faster)} of {len(common)} lengths (GRU/LSTM ratio {_fmt(min(ratios))} to {_fmt(max(ratios))}).")
        lmg = _cells(results, "lm")
        for size in sorted({k.split("/")[2] for k in lmg}, key=lambda p: int(p[1:])):
            g, l_ = lmg.get(f"lm/gru/{size}"), lmg.get(f"lm/lstm/{size}")
            if g and l_:
                msg += (f" LM training throughput at about {size[1:]} parameters: GRU {g['tokens_per_s']:.0f} vs "
                        f"LSTM {l_['tokens_per_s']:.0f} tokens/s (bpc {_fmt(g['best_bpc'])} vs {_fmt(l_['best_bpc'])}).")
        out.append({"claim": claim, "verdict": verdict, "measured": msg})
    else:
        out.append({"claim": claim, "verdict": "not measured", "measured": "speed for lstm and gru was not run."})

    # 5. Transformer longest memory
    claim = "The Transformer captures the longest dependencies."
    tt = [t for t in tasks if "transformer" in reach[t] and len(reach[t]) > 1 and informative(t, tuple(reach[t]))]
    if tt:
        ok = [t for t in tt if r(t, "transformer") >= max(r(t, a) for a in reach[t])]
        strict = [t for t in tt if r(t, "transformer") > max(r(t, a) for a in reach[t] if a != "transformer")]
        verdict = "held" if len(ok) == len(tt) else ("mixed" if ok else "did not hold")
        msg = (f"The transformer reached the longest solved lag (ties included) on {len(ok)} of {len(tt)} tasks, "
               f"strictly longer than every recurrent model on {len(strict)}. " + measured_reach + ".")
        out.append({"claim": claim, "verdict": verdict, "measured": msg})
    else:
        out.append({"claim": claim, "verdict": "not measured",
                    "measured": "Needs the transformer and another arch on a task that separates them. "
                                + measured_reach + "."})

    # 6. Transformer trains fastest
    claim = "The Transformer trains fastest, because it processes all positions in parallel."
    parts, votes = [], []
    spd = {a: results["cells"].get(f"speed/{a}") for a in _archs(results)}
    if spd.get("transformer") and len([a for a in spd if spd[a]]) > 1:
        rows = {a: {r_["length"]: r_["train_tokens_per_s"] for r_ in rec["rows"] if "skipped" not in r_}
                for a, rec in spd.items() if rec}
        lengths = sorted(set.intersection(*(set(v) for v in rows.values())))
        top = [n for n in lengths if max(rows, key=lambda a: rows[a][n]) == "transformer"]
        votes.append(len(top) * 2 > len(lengths))
        parts.append(f"highest training tokens/s at {len(top)} of {len(lengths)} lengths "
                     f"({', '.join(str(n) for n in top) or 'none'})")
    lm = _cells(results, "lm")
    for size in sorted({k.split("/")[2] for k in lm}, key=lambda p: int(p[1:])):
        same = {k.split("/")[1]: v for k, v in lm.items() if k.split("/")[2] == size}
        if "transformer" in same and len(same) > 1:
            best = min(same, key=lambda a: same[a]["best_bpc"])
            votes.append(best == "transformer")
            parts.append(f"lowest validation bpc after the same training time at about {size[1:]} parameters: "
                         f"{best} ({_fmt(same[best]['best_bpc'])} bpc; "
                         f"transformer {_fmt(same['transformer']['best_bpc'])})")
    solved_first = []
    for t in tasks:
        for T in grid[t]:
            times = {a: byT[T]["solved_at"]["time"] for a, byT in _memory(results, t).items()
                     if T in byT and byT[T].get("solved_at")}
            if "transformer" in times and len(times) > 1:
                solved_first.append(min(times, key=times.get) == "transformer")
    if solved_first:
        votes.append(sum(solved_first) * 2 > len(solved_first))
        parts.append(f"first to solve in {sum(solved_first)} of {len(solved_first)} memory cells that it and another "
                     "arch solved")
    if votes:
        verdict = "held" if all(votes) else ("mixed" if any(votes) else "did not hold")
        prof = results.get("profile", {})
        out.append({"claim": claim, "verdict": verdict,
                    "measured": "The transformer: " + "; ".join(parts) +
                    f". Measured on {prof.get('threads')} CPU thread(s): there is little hardware parallelism here "
                    "for processing positions at once to use."})
    else:
        out.append({"claim": claim, "verdict": "not measured", "measured": "needs speed or lm with the transformer."})
    return out


def _claims_section(doc: Doc, results: dict) -> list[dict]:
    doc.h(2, "The claims against the measurements")
    cs = claims(results)
    doc.table(["claim", "verdict", "what was measured"], [[c["claim"], f"**{c['verdict']}**", c["measured"]] for c in cs])
    return cs


def build(results: dict) -> tuple[Doc, dict, list[dict]]:
    doc, plots = Doc(), {}
    doc.h(1, "seqlab compare: do the textbook claims hold?")
    doc.p("Every introduction to sequence models makes the same claims. This report measures each one on this "
          "machine. All text below that states a result is generated from results.json; a claim is marked "
          "**did not hold** or **mixed** wherever the numbers say so, and **not measured** where this run did not "
          "include what it needs. Small budgets (the quick profile) test the claims only at short lags.")
    body = Doc()
    _setup(body, results)
    _memory_section(body, results, plots)
    _ablation_section(body, results)
    _gradflow_section(body, results, plots)
    _speed_section(body, results, plots)
    _gates_section(body, results, plots)
    _lm_section(body, results, plots)
    cs = _claims_section(doc, results)  # the verdicts first, then the evidence
    doc.blocks.extend(body.blocks)
    return doc, plots, cs


def write_report(results: dict, out: str | Path) -> dict:
    """Write ``report.md``, ``report.html`` and ``plots/*.png`` into ``out``; returns the claims."""
    import matplotlib

    matplotlib.use("Agg")
    out = Path(out)
    doc, plots, cs = build(results)
    (out / "plots").mkdir(parents=True, exist_ok=True)
    for name, png in plots.items():
        (out / "plots" / f"{name}.png").write_bytes(png)
    _write_text(out / "report.md", doc.markdown())
    _write_text(out / "report.html", doc.html("seqlab compare"))
    return {"claims": cs, "plots": sorted(plots)}


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
