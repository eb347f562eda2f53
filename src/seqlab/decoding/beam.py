r"""Batched beam search with the length penalty of Wu et al. (2016).

Each of the B sequences keeps K hypotheses. A hypothesis is scored by

.. math::
    s(Y) = \log P(Y \mid X) / lp(Y), \qquad lp(Y) = \frac{(5 + |Y|)^\alpha}{(5 + 1)^\alpha}

(α = 0 gives plain log-probability). Hypotheses that emit ``<eos>`` are
finished; a sequence stops when it holds K finished hypotheses and no live
one can still beat the worst of them (log-probabilities only fall, so the
best a live hypothesis can reach is its current log-probability over
lp(max_len) when α ≥ 0). With K = 1 and α = 0 this is greedy decoding.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor

from .greedy import _check_common


def length_penalty(length: int, alpha: float) -> float:
    return ((5.0 + length) / 6.0) ** alpha


@dataclass
class Hypothesis:
    tokens: list[int]  # without the start token; ends with eos when finished
    logprob: float
    score: float  # logprob / length_penalty


def beam_search(step: Callable, reorder: Callable, state: Any, start: Tensor, *, eos: int, beam_size: int,
                max_len: int, alpha: float = 0.0, n_best: int = 1) -> list[list[Hypothesis]]:
    """Return, per sequence, its ``n_best`` hypotheses, best first.

    ``state`` holds B rows; ``reorder(state, index)`` must return a state whose
    rows are ``index`` of the given one (it expands B rows to B*K and follows
    the beams).
    """
    _check_common(start, max_len)
    if beam_size < 1:
        raise ValueError(f"beam_size should be >= 1, got {beam_size}")
    if not 1 <= n_best <= beam_size:
        raise ValueError(f"n_best should be in [1, beam_size={beam_size}], got {n_best}")
    if alpha < 0:
        raise ValueError(f"alpha (length penalty) should be >= 0, got {alpha}")
    B, K = start.shape[0], beam_size
    device = start.device
    state = reorder(state, torch.arange(B, device=device).repeat_interleave(K))  # B -> B*K rows
    tokens = start.repeat_interleave(K)  # (B*K,)
    logp_beam = torch.zeros(B, K, device=device)
    logp_beam[:, 1:] = float("-inf")  # at first all K beams are the same: let only one live
    history = [[] for _ in range(B * K)]  # tokens of each live beam
    finished: list[list[Hypothesis]] = [[] for _ in range(B)]
    done = [False] * B
    bound_lp = length_penalty(max_len, alpha)

    for t in range(max_len):
        logits, state = step(tokens, state)  # (B*K, V)
        V = logits.shape[-1]
        cand = logp_beam.reshape(B * K, 1) + logits.float().log_softmax(dim=-1)  # (B*K, V)
        top_lp, top_ix = cand.reshape(B, K * V).topk(min(2 * K, K * V), dim=-1)  # (B, 2K)
        top_lp, top_ix = top_lp.tolist(), top_ix.tolist()
        new_rows, new_tokens, new_lp, new_hist = [], [], [], []
        for b in range(B):
            kept = 0
            for lp_, ix in zip(top_lp[b], top_ix[b]):
                if kept == K:
                    break
                beam, tok = divmod(ix, V)
                row = b * K + beam
                if lp_ == float("-inf"):
                    break
                seq = history[row] + [tok]
                if tok == eos or t == max_len - 1:
                    if not done[b]:
                        finished[b].append(Hypothesis(seq, lp_, lp_ / length_penalty(len(seq), alpha)))
                    if tok == eos:
                        continue
                new_rows.append(row)
                new_tokens.append(tok)
                new_lp.append(lp_)
                new_hist.append(seq)
                kept += 1
            while kept < K:  # fewer than K live candidates: pad with dead beams
                new_rows.append(b * K)
                new_tokens.append(eos)
                new_lp.append(float("-inf"))
                new_hist.append([])
                kept += 1
            if not done[b] and len(finished[b]) >= K:
                finished[b].sort(key=lambda h: h.score, reverse=True)
                best_live = max(new_lp[-K:])
                if best_live == float("-inf") or best_live / bound_lp <= finished[b][K - 1].score:
                    done[b] = True
        if all(done):
            break
        index = torch.tensor(new_rows, device=device)
        state = reorder(state, index)
        tokens = torch.tensor(new_tokens, device=device, dtype=torch.long)
        logp_beam = torch.tensor(new_lp, device=device).reshape(B, K)
        history = new_hist
    return [sorted(f, key=lambda h: h.score, reverse=True)[:n_best] for f in finished]
