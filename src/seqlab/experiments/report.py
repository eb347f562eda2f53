"""The compare report: ``report.md`` and a self-contained ``report.html`` generated from results.json.

Every sentence that states a result is computed from the numbers in the results: verdicts are
"held", "did not hold", "mixed" or "not measured", with the measurements that decided them next
to the claim. Plots are matplotlib PNGs, written to ``DIR/plots/`` for the Markdown and embedded
as base64 ``data:`` URLs in the HTML, which loads nothing from anywhere else.

The claims are data: each is a function from the results to a ``Claim`` (the claim, its verdict
and what was measured), and ``CLAIMS`` lists them in the report's order. Adding a claim is
adding a function to that list. The evidence sections live in ``sections.py``; the document
model and the accessors both use live in ``document.py``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from .document import Doc, _archs, _cells, _fmt, _memory, _sentence, longest_solved
from .gradflow import by_distance
from .sections import (_ablation_section, _gates_section, _gradflow_section, _lm_section, _memory_section,
                       _reference_verdict, _setup, _speed_section, ablation_rows)

__all__ = ["Claim", "CLAIMS", "claims", "build", "write_report", "longest_solved", "ablation_rows",
           "_reference_verdict"]

VERDICTS = ("held", "mixed", "did not hold", "not measured")


@dataclass(frozen=True)
class Claim:
    """One textbook claim, the verdict the numbers give it, and the measurements that decided it."""

    claim: str
    verdict: str  # one of VERDICTS
    measured: str

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"expected a verdict in {VERDICTS}, got {self.verdict!r}")

    def as_dict(self) -> dict:
        return asdict(self)


def verdict_of(votes: list[bool]) -> str:
    """'held' when every vote agrees, 'did not hold' when none does, else 'mixed'."""
    return "held" if all(votes) else ("mixed" if any(votes) else "did not hold")


class Evidence:
    """What the memory claims read from the results: the lags run and the longest each arch solved."""

    def __init__(self, results: dict) -> None:
        self.results = results
        self.tasks = [t for t in ("copy", "adding") if _memory(results, t)]
        self.reach = {t: longest_solved(results, t) for t in self.tasks}
        self.grid = {t: sorted({T for byT in _memory(results, t).values() for T in byT}) for t in self.tasks}
        self.measured_reach = ("; ".join(f"longest lag solved on {t}: {self.reach_text(t)}" for t in self.tasks)
                               or "memory tasks not run")

    def r(self, t: str, a: str) -> int:
        """The longest lag ``a`` solved on ``t`` (0: none)."""
        return self.reach[t].get(a) or 0

    def reach_text(self, t: str) -> str:
        return ", ".join(f"{a} {self.reach[t][a] if self.reach[t].get(a) else 'none'}" for a in _archs(self.results)
                         if a in self.reach[t])

    def informative(self, t: str, archs: tuple) -> bool:
        # a task separates nothing when every arch solved no lag, or every arch solved the longest one
        vals = [self.r(t, a) for a in archs if a in self.reach[t]]
        return bool(vals) and not (max(vals) == 0 or min(vals) == max(self.grid[t]))


# ----------------------------------------------------------------------------
# The claims, one function each


def rnn_short_memory(ev: Evidence) -> Claim:
    claim = "A plain RNN remembers only short-range dependencies."
    tt = [t for t in ev.tasks if "rnn" in ev.reach[t] and ({"lstm", "gru"} & set(ev.reach[t]))]
    useful = [t for t in tt if ev.informative(t, ("rnn", "lstm", "gru"))]
    if useful:
        shorter = [t for t in useful if ev.r(t, "rnn") < max(ev.r(t, "lstm"), ev.r(t, "gru"))]
        verdict = verdict_of([t in shorter for t in useful])
        detail = (f"The plain RNN solved a shorter lag than the best gated RNN on {len(shorter)} of the "
                  f"{len(useful)} task(s) that separate them. ")
    else:
        verdict = "not measured"
        detail = ("No task separated the architectures (all solved none, or all solved the longest lag tried). "
                  if tt else "Needs rnn and lstm or gru on a memory task. ")
    tried = "; ".join(f"{t} T = {', '.join(map(str, ev.grid[t]))}" for t in ev.tasks)
    return Claim(claim, verdict, detail + ev.measured_reach + f" (lags tried: {tried}).")


def rnn_gradients_vanish(ev: Evidence) -> Claim:
    claim = "The plain RNN's gradients vanish (or explode) through repeated multiplication by W_hh."
    rnn = ev.results["cells"].get("gradflow/rnn")
    if not (rnn and rnn.get("sigma")):
        return Claim(claim, "not measured", "gradflow for rnn was not run.")
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
    return Claim(claim, verdict, f"Over T = {T} steps: {txt}. " + _sentence("; ".join(notes)))


def gated_remember_longer(ev: Evidence) -> Claim:
    claim = "LSTM and GRU remember longer, because their state is updated by addition through gates."
    gf = {a: ev.results["cells"].get(f"gradflow/{a}") for a in ("rnn", "lstm", "gru")}
    parts, votes = [], []
    for t in ev.tasks:
        if "rnn" not in ev.reach[t]:
            continue
        for a in ("lstm", "gru"):
            if a in ev.reach[t] and ev.informative(t, ("rnn", a)):
                votes.append(ev.r(t, a) > ev.r(t, "rnn"))
                parts.append(f"longest lag solved on {t}: {a} {ev.reach[t][a] or 'none'} vs rnn "
                             f"{ev.reach[t]['rnn'] or 'none'}")
            elif a in ev.reach[t]:
                parts.append(f"{t} does not separate {a} from rnn (both {ev.reach[t][a] or 'none'})")
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
        return Claim(claim, verdict_of(votes), "; ".join(parts) + ".")
    return Claim(claim, "not measured", ("; ".join(parts) + ". " if parts else "") + "Needs rnn with lstm or gru.")


def gru_simpler_faster(ev: Evidence) -> Claim:
    claim = "GRU is a simpler, faster LSTM."
    sp = {a: ev.results["cells"].get(f"speed/{a}") for a in ("lstm", "gru")}
    if not (sp["lstm"] and sp["gru"]):
        return Claim(claim, "not measured", "speed for lstm and gru was not run.")
    L = {r_["length"]: r_ for r_ in sp["lstm"]["rows"] if "skipped" not in r_}
    G = {r_["length"]: r_ for r_ in sp["gru"]["rows"] if "skipped" not in r_}
    common = sorted(set(L) & set(G))
    faster = [n for n in common if G[n]["train_tokens_per_s"] > L[n]["train_tokens_per_s"]]
    ratios = [G[n]["train_tokens_per_s"] / L[n]["train_tokens_per_s"] for n in common]
    verdict = "held" if len(faster) == len(common) else ("mixed" if faster else "did not hold")
    msg = (f"Simpler: 3 gate blocks per unit against the LSTM's 4 (at matched parameters the GRU is wider: "
           f"{sp['gru']['width']} vs {sp['lstm']['width']} units). Faster in training tokens/s at "
           f"{len(faster)} of {len(common)} lengths (GRU/LSTM ratio {_fmt(min(ratios))} to {_fmt(max(ratios))}).")
    lmg = _cells(ev.results, "lm")
    for size in sorted({k.split("/")[2] for k in lmg}, key=lambda p: int(p[1:])):
        g, l_ = lmg.get(f"lm/gru/{size}"), lmg.get(f"lm/lstm/{size}")
        if g and l_:
            msg += (f" LM training throughput at about {size[1:]} parameters: GRU {g['tokens_per_s']:.0f} vs "
                    f"LSTM {l_['tokens_per_s']:.0f} tokens/s (bpc {_fmt(g['best_bpc'])} vs {_fmt(l_['best_bpc'])}).")
    return Claim(claim, verdict, msg)


def transformer_longest_memory(ev: Evidence) -> Claim:
    claim = "The Transformer captures the longest dependencies."
    tt = [t for t in ev.tasks
          if "transformer" in ev.reach[t] and len(ev.reach[t]) > 1 and ev.informative(t, tuple(ev.reach[t]))]
    if not tt:
        return Claim(claim, "not measured",
                     "Needs the transformer and another arch on a task that separates them. " + ev.measured_reach + ".")
    ok = [t for t in tt if ev.r(t, "transformer") >= max(ev.r(t, a) for a in ev.reach[t])]
    strict = [t for t in tt if ev.r(t, "transformer") > max(ev.r(t, a) for a in ev.reach[t] if a != "transformer")]
    verdict = "held" if len(ok) == len(tt) else ("mixed" if ok else "did not hold")
    return Claim(claim, verdict, f"The transformer reached the longest solved lag (ties included) on {len(ok)} of "
                                 f"{len(tt)} tasks, strictly longer than every recurrent model on {len(strict)}. "
                                 + ev.measured_reach + ".")


def transformer_trains_fastest(ev: Evidence) -> Claim:
    claim = "The Transformer trains fastest, because it processes all positions in parallel."
    results = ev.results
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
    for t in ev.tasks:
        for T in ev.grid[t]:
            times = {a: byT[T]["solved_at"]["time"] for a, byT in _memory(results, t).items()
                     if T in byT and byT[T].get("solved_at")}
            if "transformer" in times and len(times) > 1:
                solved_first.append(min(times, key=times.get) == "transformer")
    if solved_first:
        votes.append(sum(solved_first) * 2 > len(solved_first))
        parts.append(f"first to solve in {sum(solved_first)} of {len(solved_first)} memory cells that it and another "
                     "arch solved")
    if not votes:
        return Claim(claim, "not measured", "needs speed or lm with the transformer.")
    threads = results.get("profile", {}).get("threads")
    return Claim(claim, verdict_of(votes),
                 "The transformer: " + "; ".join(parts) + f". Measured on {threads} CPU thread(s): there is little "
                 "hardware parallelism here for processing positions at once to use.")


#: the claims in the report's order
CLAIMS: tuple[Callable[[Evidence], Claim], ...] = (
    rnn_short_memory, rnn_gradients_vanish, gated_remember_longer, gru_simpler_faster,
    transformer_longest_memory, transformer_trains_fastest,
)


def claims(results: dict) -> list[Claim]:
    """Each textbook claim with what was measured and a verdict computed from the numbers."""
    ev = Evidence(results)
    return [judge(ev) for judge in CLAIMS]


# ----------------------------------------------------------------------------
# The report


def _claims_section(doc: Doc, results: dict) -> list[Claim]:
    doc.h(2, "The claims against the measurements")
    cs = claims(results)
    doc.table(["claim", "verdict", "what was measured"], [[c.claim, f"**{c.verdict}**", c.measured] for c in cs])
    return cs


def build(results: dict) -> tuple[Doc, dict, list[Claim]]:
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
    """Write ``report.md``, ``report.html`` and ``plots/*.png`` into ``out``; returns the claims (as dicts)."""
    import matplotlib

    matplotlib.use("Agg")
    out = Path(out)
    doc, plots, cs = build(results)
    (out / "plots").mkdir(parents=True, exist_ok=True)
    for name, png in plots.items():
        (out / "plots" / f"{name}.png").write_bytes(png)
    _write_text(out / "report.md", doc.markdown())
    _write_text(out / "report.html", doc.html("seqlab compare"))
    return {"claims": [c.as_dict() for c in cs], "plots": sorted(plots)}


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
