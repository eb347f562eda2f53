"""``seqlab explain``: colour each character of a text by one recurrent unit's activation or gate value.

After Karpathy, Johnson & Fei-Fei (2015), "Visualizing and Understanding Recurrent Networks": the
character-level language model reads the text, :func:`seqlab.nn.record_gates` records every
layer's per-step states and gates, and the page colours character t by the chosen value *after*
the model has read it. A selector (plain JavaScript inside the page, nothing loaded from elsewhere)
picks the layer, the unit and the quantity: ``h`` (and ``c`` for the LSTM) in a blue–white–red
scale, gates (LSTM ``i f g o``, GRU ``r z n``) in white–green for [0, 1] (``g`` and ``n`` are tanh
outputs and use the signed scale).

The run directory is one written by ``seqlab train lm`` (:mod:`seqlab.train.checkpoint` layout):
``state.json``'s config holds ``kind`` and the ``model`` ModelConfig, and its ``extra["vocab"]["text"]``
the character vocabulary. Only the recurrent archs (rnn, lstm, gru) have units to show; a
transformer (or minGRU/minLSTM) run is refused with a clear error.
"""
from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Optional

import torch

from ..data import EOS, Vocab
from ..nn import record_gates
from ..train.checkpoint import atomic_write_text

RECURRENT = ("rnn", "lstm", "gru")
SIGNED = {"h", "c", "g", "n"}  # tanh-valued (c unbounded): the diverging scale, scaled per unit
MAX_CHARS = 5000


class ExplainError(ValueError):
    """The run or the text cannot be explained (wrong kind, a non-recurrent arch, empty text)."""


def load_lm_run(run_dir: str | Path):
    """The language model (eval mode) and character vocabulary of a ``seqlab train lm`` run directory."""
    from ..models import ModelConfig, build_model
    from ..train.checkpoint import load_checkpoint

    ckpt = load_checkpoint(run_dir)
    cfg = ckpt.config
    if not isinstance(cfg, dict) or cfg.get("kind") != "lm":
        got = cfg.get("kind") if isinstance(cfg, dict) else type(cfg).__name__
        raise ExplainError(f"{run_dir}: expected a language-model run (seqlab train lm), got kind {got!r}")
    try:
        mcfg = ModelConfig.from_dict(cfg["model"])
        vocab = Vocab.from_dict(ckpt.state["extra"]["vocab"]["text"])
    except (KeyError, TypeError, ValueError) as e:
        raise ExplainError(f"{ckpt.path}: expected the model config and extra['vocab']['text'] of a "
                           f"seqlab train lm run, got {type(e).__name__}: {e}") from None
    check_arch(mcfg.arch)
    model = build_model(mcfg)
    model.load_state_dict(ckpt.model_state)
    model.eval()
    return model, vocab


def check_arch(arch: str) -> None:
    if arch not in RECURRENT:
        raise ExplainError(f"explain colours the units of a recurrent layer, expected arch in {list(RECURRENT)}, "
                           f"got {arch!r}" + (": a transformer has no recurrent state or gates to show"
                                              if arch == "transformer" else ""))


@torch.no_grad()
def activations(model, vocab: Vocab, text: str) -> dict:
    """Per layer, per recorded quantity, per unit: the value after reading each character of ``text``.

    Returns ``{"chars": [...], "layers": [{"name", "values": {q: [[v_t for t] for unit]}}]}``.
    The model reads ``EOS`` first (the separator its training stream puts between documents), and
    the EOS step is dropped, so entry t belongs to character t.
    """
    arch = getattr(getattr(model, "config", None), "arch", None)
    check_arch(arch)
    if not text:
        raise ExplainError("expected a non-empty --text, got an empty string")
    if len(text) > MAX_CHARS:
        raise ExplainError(f"expected at most {MAX_CHARS} characters of text (the page holds every unit's value "
                           f"per character), got {len(text)}")
    if vocab.level != "char":
        raise ExplainError(f"explain colours characters, expected a char-level vocabulary, got {vocab.level!r}")
    ids = torch.tensor([[EOS] + vocab.encode(text)])  # (1, T+1)
    rnn = model.encoder.rnn
    with record_gates() as rec:
        model(ids)
    layers = []
    for layer in range(rnn.num_layers):
        rec_l = rec.get(rnn, layer=layer)
        values = {}
        for q, v in rec_l.items():
            v = v[0, 1:]  # (1, T+1, H) -> (T, H): batch_first layer, EOS step dropped
            values[q] = [[round(float(x), 3) for x in v[:, u]] for u in range(v.shape[1])]  # (H, T)
        layers.append({"name": f"layer {layer}", "values": values})
    return {"chars": list(text), "arch": arch, "layers": layers}


_JS = r"""
(function () {
  var data = JSON.parse(document.getElementById('explain-data').textContent);
  var SIGNED = {h: 1, c: 1, g: 1, n: 1};
  var layerSel = document.getElementById('layer'), qSel = document.getElementById('quantity');
  var unitSel = document.getElementById('unit'), spans = document.querySelectorAll('#text span');
  function opt(sel, items, value) {
    sel.innerHTML = '';
    items.forEach(function (it) {
      var o = document.createElement('option'); o.value = it[0]; o.textContent = it[1]; sel.appendChild(o);
    });
    if (value !== undefined && value !== null) { sel.value = String(value); }
  }
  function colour(v, signed, scale) {
    if (!isFinite(v)) { return 'rgb(255,255,255)'; }
    if (signed) {
      var x = Math.max(-1, Math.min(1, v / scale)), a = Math.round(255 * (1 - Math.abs(x)));
      return x >= 0 ? 'rgb(255,' + a + ',' + a + ')' : 'rgb(' + a + ',' + a + ',255)';
    }
    var y = Math.max(0, Math.min(1, v)), b = Math.round(255 * (1 - y));
    return 'rgb(' + b + ',255,' + b + ')';
  }
  function paint() {
    var layer = data.layers[+layerSel.value], q = qSel.value, u = +unitSel.value;
    var vals = layer.values[q][u], signed = !!SIGNED[q], scale = 1;
    if (q === 'c') {  // the cell is unbounded: scale by its largest magnitude in this text
      scale = 0;
      vals.forEach(function (v) { scale = Math.max(scale, Math.abs(v)); });
      if (scale === 0) { scale = 1; }
    }
    for (var t = 0; t < spans.length; t++) {
      spans[t].style.backgroundColor = colour(vals[t], signed, scale);
      spans[t].title = q + '[' + u + '] = ' + vals[t];
    }
    document.getElementById('status').textContent = data.layers[+layerSel.value].name + ', ' + q +
      ', unit ' + u + (signed ? ' (blue negative, red positive' + (q === 'c' ? ', scaled by max |c| = ' +
      scale.toFixed(3) : '') + ')' : ' (white 0, green 1)');
    document.body.setAttribute('data-painted', String(spans.length));
  }
  function fillQuantities() {
    var layer = data.layers[+layerSel.value], keep = qSel.value;
    opt(qSel, Object.keys(layer.values).map(function (k) { return [k, k]; }), layer.values[keep] ? keep : 'h');
    fillUnits();
  }
  function fillUnits() {
    var layer = data.layers[+layerSel.value], n = layer.values[qSel.value].length, keep = +unitSel.value || 0;
    var items = [];
    for (var i = 0; i < n; i++) { items.push([i, String(i)]); }
    opt(unitSel, items, keep < n ? keep : 0);
    paint();
  }
  opt(layerSel, data.layers.map(function (l, i) { return [i, l.name]; }), data.initial.layer);
  opt(qSel, Object.keys(data.layers[+layerSel.value].values).map(function (k) { return [k, k]; }), data.initial.quantity);
  var n0 = data.layers[+layerSel.value].values[qSel.value].length, items0 = [];
  for (var i = 0; i < n0; i++) { items0.push([i, String(i)]); }
  opt(unitSel, items0, data.initial.unit);
  layerSel.addEventListener('change', fillQuantities);
  qSel.addEventListener('change', fillUnits);
  unitSel.addEventListener('change', paint);
  paint();
})();
"""


def render_page(acts: dict, *, title: str = "seqlab explain", layer: int = 0, quantity: str = "h",
                unit: int = 0) -> str:
    """The self-contained HTML page for ``activations(...)``: text spans, selectors, data, script."""
    if not 0 <= layer < len(acts["layers"]):
        raise ExplainError(f"expected --layer in [0, {len(acts['layers']) - 1}], got {layer}")
    values = acts["layers"][layer]["values"]
    if quantity not in values:
        raise ExplainError(f"expected --gate in {sorted(values)} for a {acts['arch']} layer, got {quantity!r}")
    n_units = len(values[quantity])
    if not 0 <= unit < n_units:
        raise ExplainError(f"expected --unit in [0, {n_units - 1}], got {unit}")
    # a newline is drawn as a line break but still needs its own span, so the indices stay aligned
    spans = "".join((f"<span>\u21b5</span><br>" if ch == "\n" else
                     f"<span>{html.escape(ch) if ch != ' ' else '&nbsp;'}</span>") for ch in acts["chars"])
    payload = dict(acts, initial={"layer": layer, "quantity": quantity, "unit": unit})
    # '</' cannot appear inside a script element; the JSON escapes it
    blob = json.dumps(payload, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")
    style = ("body{font-family:sans-serif;max-width:1000px;margin:2em auto;padding:0 1em}"
             "#text{font-family:monospace;font-size:15px;line-height:1.7;word-wrap:break-word}"
             "#text span{padding:1px 0}label{margin-right:1em}#status{color:#444;margin:.5em 0}")
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head>\n<body>\n<h1>{html.escape(title)}</h1>\n"
            f"<p>Each character is coloured by the chosen unit's value after the {html.escape(acts['arch'])} "
            "language model has read it (Karpathy, Johnson &amp; Fei-Fei 2015). Hover a character for the value.</p>\n"
            "<div><label>layer <select id=\"layer\"></select></label>"
            "<label>quantity <select id=\"quantity\"></select></label>"
            "<label>unit <select id=\"unit\"></select></label></div>\n<div id=\"status\"></div>\n"
            f"<div id=\"text\">{spans}</div>\n"
            f"<script type=\"application/json\" id=\"explain-data\">{blob}</script>\n"
            f"<script>{_JS}</script>\n</body></html>\n")


def explain(run_dir: str | Path, text: str, out: Optional[str | Path] = None, *, layer: int = 0,
            quantity: str = "h", unit: int = 0) -> Path:
    """Write the explain page for ``text`` read by the LM of ``run_dir``; returns its path."""
    model, vocab = load_lm_run(run_dir)
    return write_page(model, vocab, text, Path(out) if out else Path(run_dir) / "explain.html", layer=layer,
                      quantity=quantity, unit=unit, title=f"seqlab explain: {Path(run_dir).name}")


def write_page(model, vocab: Vocab, text: str, out: str | Path, *, layer: int = 0, quantity: str = "h",
               unit: int = 0, title: str = "seqlab explain") -> Path:
    """The same as :func:`explain` for a model and vocabulary already in memory."""
    acts = activations(model, vocab, text)
    page = render_page(acts, title=title, layer=layer, quantity=quantity, unit=unit)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, page)  # a uniquely named temporary: two writers of one page never share it
    return out

