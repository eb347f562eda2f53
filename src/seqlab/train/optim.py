r"""The optimizers the trainer builds: AdamW, or Muon for the hidden matrices with AdamW for the rest.

``optimizer = "adamw"``: every parameter by AdamW (Loshchilov & Hutter 2019), weight decay on
matrices only.

``optimizer = "muon"``: Muon (Jordan et al. 2024; ``torch.optim.Muon``) for the 2D weights of
the sequence layers (the recurrent layers' W_ih, W_hh, W_hr; the attention and feed-forward
matrices), AdamW for everything else: embeddings, output layers, biases and norm gains, as
Muon's authors prescribe. Muon replaces a matrix's momentum-averaged gradient M by its nearest
semi-orthogonal matrix, computed by five Newton–Schulz iterations,

.. math::
    B_t = \mu B_{t-1} + g_t, \qquad
    W_t = (1 - \eta\lambda) W_{t-1} - 0.2\,\eta\sqrt{\max(A, B)}\,\mathrm{NS}_5(g_t + \mu B_t)

(Nesterov momentum μ = 0.95; the 0.2 √max(A, B) factor is Moonshot's "match_rms_adamw", which
gives the update AdamW's RMS, so Muon takes AdamW's learning rate and weight decay λ). Every
direction of the update then moves at the same rate, where AdamW's are dominated by a few;
on a small character language model it reaches a given loss in far fewer steps, for about
7-15% more time per step at a million parameters (the iterations' products; less with larger
batches).

:class:`MuonAdamW` is one ``torch.optim.Optimizer`` over both parameter sets, so the schedule,
clipping, ``zero_grad`` and the checkpoint's optimizer state treat it as one: its
``param_groups`` are Muon's groups then AdamW's (the same dicts, so a schedule's rates reach
both), and its ``state_dict`` is torch's format over that order.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["OPTIMIZERS", "MuonAdamW", "build_optimizer", "hidden_matrices"]

OPTIMIZERS = ("adamw", "muon")


def _hidden_layer_types() -> tuple[type, ...]:
    from ..nn._driver import StackedRecurrent
    from ..nn.attention import MultiheadAttention
    from ..nn.rnn import _CellBase
    from ..nn.transformer import TransformerDecoderLayer, TransformerEncoderLayer

    return (StackedRecurrent, _CellBase, MultiheadAttention, TransformerEncoderLayer, TransformerDecoderLayer,
            nn.RNNBase, nn.RNNCellBase, nn.MultiheadAttention, nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)


def hidden_matrices(model: nn.Module) -> list[nn.Parameter]:
    """The trainable 2D weights of ``model``'s recurrent, attention and transformer layers (listed once)."""
    types = _hidden_layer_types()
    seen: dict[int, nn.Parameter] = {}
    for module in model.modules():
        if isinstance(module, types):
            for p in module.parameters():
                if p.dim() == 2 and p.requires_grad:
                    seen.setdefault(id(p), p)
    return list(seen.values())


class MuonAdamW(torch.optim.Optimizer):
    """Muon over ``muon_params`` (2D), AdamW over ``adamw_groups``; one optimizer to the trainer."""

    def __init__(self, muon_params: list[nn.Parameter], adamw_groups: list[dict], lr: float, weight_decay: float):
        if not muon_params:
            raise ValueError("MuonAdamW: expected at least one hidden matrix for Muon, got none")
        self.muon = torch.optim.Muon(muon_params, lr=lr, weight_decay=weight_decay, adjust_lr_fn="match_rms_adamw")
        self.adamw = torch.optim.AdamW(adamw_groups, lr=lr)
        # the inner optimizers' own group dicts: a rate set here is the rate they use
        super().__init__([*self.muon.param_groups, *self.adamw.param_groups], {})

    def _groups(self) -> None:
        self.param_groups = [*self.muon.param_groups, *self.adamw.param_groups]

    @torch.no_grad()
    def step(self, closure=None):
        if closure is not None:
            raise ValueError("MuonAdamW.step: expected no closure (the trainer computes the loss itself)")
        self.muon.step()
        self.adamw.step()

    def _offset(self) -> int:
        return sum(len(g["params"]) for g in self.muon.param_groups)

    def state_dict(self) -> dict:
        m, a = self.muon.state_dict(), self.adamw.state_dict()
        off = self._offset()
        state = {**m["state"], **{i + off: s for i, s in a["state"].items()}}
        groups = m["param_groups"] + [{**g, "params": [i + off for i in g["params"]]} for g in a["param_groups"]]
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        groups, n_muon, off = state_dict["param_groups"], len(self.muon.param_groups), self._offset()
        if len(groups) != n_muon + len(self.adamw.param_groups):
            raise ValueError(f"MuonAdamW.load_state_dict: expected {n_muon} Muon and {len(self.adamw.param_groups)} "
                             f"AdamW parameter groups, got {len(groups)} groups in all (a state saved by another "
                             f"optimizer or model?)")
        state = {int(i): s for i, s in state_dict["state"].items()}
        self.muon.load_state_dict({"state": {i: s for i, s in state.items() if i < off},
                                   "param_groups": groups[:n_muon]})
        self.adamw.load_state_dict({"state": {i - off: s for i, s in state.items() if i >= off},
                                    "param_groups": [{**g, "params": [i - off for i in g["params"]]}
                                                     for g in groups[n_muon:]]})
        self._groups()  # load_state_dict gave the inner optimizers new group dicts


def build_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW or MuonAdamW (see the module docstring) over ``model``'s trainable parameters.

    Weight decay acts on matrices (linear, embedding, recurrent weights), not on vectors (biases,
    norm gains): shrinking a gain or bias towards 0 is not regularisation, as nanoGPT notes.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer: expected one of {list(OPTIMIZERS)}, got {name!r}")
    muon = hidden_matrices(model) if name == "muon" else []
    taken = {id(p) for p in muon}
    decay, no_decay = [], []
    for _, p in model.named_parameters():  # shared (tied) parameters are listed once
        if p.requires_grad and id(p) not in taken:
            (decay if p.dim() >= 2 else no_decay).append(p)
    if not muon and not decay and not no_decay:
        raise ValueError("expected a model with trainable parameters, got none")
    groups = [{"params": ps, "weight_decay": wd} for ps, wd in ((decay, weight_decay), (no_decay, 0.0)) if ps]
    if name == "muon":
        if not muon:
            raise ValueError("optimizer 'muon' trains the 2D weights of recurrent, attention and transformer layers; "
                             "expected a model with such layers, found none (use optimizer 'adamw')")
        return MuonAdamW(muon, groups, lr=lr, weight_decay=weight_decay)
    return torch.optim.AdamW(groups, lr=lr)
