"""The compare report's sections, one function per section, each drawing from results.json only.

==================  =====================================================================
section             what it shows
==================  =====================================================================
_setup              the profile, the machine, what "solved" means, the matched sizes
_memory_section     per memory task: who solved which lag (_memory_table), the scores
                    against the lag (_memory_plot), Bai et al.'s figures (_published)
_ablation_section   the LSTM's forget-gate bias against torch.nn's init
_gradflow_section   ||dL/dh_t|| against the distance to the loss
_speed_section      throughput, latency and activation memory against length
_gates_section      LSTM forget and GRU update gates over time
_lm_section         character-level bits per character against time and size
==================  =====================================================================

Each takes the document, the results and (where it plots) the dict of PNGs it adds to; a
section whose cells were not run says so instead of drawing empty axes.
"""
from __future__ import annotations

from .document import (ARCH_ORDER, COLORS, Doc, _archs, _cells, _fmt, _legend, _memory, _png, _positive,
                       longest_solved)
from .gradflow import by_distance

# Bai, Kolter & Koltun (2018), Table 1: the tasks that match seqlab's generators.
REFERENCE = {
    ("adding", 600): {"lstm": 0.164, "gru": 5.3e-5, "rnn": 0.177, "metric": "MSE", "params": "about 70K",
                      "n_params": 70_000},
    ("copy", 1000): {"lstm": 0.0204, "gru": 0.0197, "rnn": 0.0202, "metric": "loss", "params": "about 16K",
                     "n_params": 16_000},
}


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
    doc.h(2, "Memory range")
    any_task = False
    for task, title in (("copy", "Copy memory"), ("adding", "Adding problem")):
        mem = _memory(results, task)
        if not mem:
            continue
        any_task = True
        archs = [a for a in _archs(results) if a in mem]
        doc.h(3, title)
        _memory_table(doc, results, task, mem, archs)
        _memory_plot(doc, plots, task, title, mem, archs)
        _published(doc, results, task, title, mem)
    if not any_task:
        doc.p("Not measured in this run (the copy and adding tasks were not selected).")


def _memory_table(doc: Doc, results: dict, task: str, mem: dict, archs: list[str]) -> None:
    """Who solved which lag: one row per arch, one column per T."""
    Ts = sorted({T for byT in mem.values() for T in byT})
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


def _memory_plot(doc: Doc, plots: dict, task: str, title: str, mem: dict, archs: list[str]) -> None:
    """The held-out score against the lag, and (adding) the learning curves at the longest T."""
    import matplotlib.pyplot as plt

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


def _published(doc: Doc, results: dict, task: str, title: str, mem: dict) -> None:
    """Bai et al.'s figures next to seqlab's at the same T, and what differs in the set-up where seqlab did better."""
    metric = "mse" if task == "adding" else "loss"
    ours_n = results["profile"].get("copy_params" if task == "copy" else "adding_params")
    for (rtask, rT), ref in REFERENCE.items():
        if rtask != task:
            continue
        rows = []
        for arch in ("lstm", "gru", "rnn"):
            r = mem.get(arch, {}).get(rT)
            ours = "not run in this profile" if r is None else _fmt(r["best"][metric])
            verdict = "" if r is None else _reference_verdict(r["best"][metric], ref[arch], r["baseline"])
            rows.append([arch, _fmt(ref[arch]), ours, verdict])
        doc.p(f"Reference: Bai, Kolter & Koltun (2018), Table 1, {title.lower()} T={rT} ({ref['metric']}, "
              f"{ref['params']} parameters), next to seqlab's best held-out {ref['metric']} at the same T "
              f"({ours_n} parameters):")
        doc.table(["arch", f"Bai et al. {ref['metric']}", f"seqlab {ref['metric']}", ""], rows)
        better = [row[0] for row in rows if row[3] == "better than published"]
        if not better:
            continue
        size = ""
        if ours_n and abs(ours_n / ref["n_params"] - 1) > 0.2:
            size = f", and {ours_n / ref['n_params']:.1f}x the published parameter count"
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
