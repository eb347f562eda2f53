r"""Gradient flow through time: :math:`\lVert \partial L / \partial h_t \rVert` against the distance T - t.

For a recurrence :math:`h_t = \phi(W_{hh} h_{t-1} + W_{ih} x_t + b)` and a loss read at the
last step, the chain rule gives

.. math::
    \frac{\partial L}{\partial h_t} = \Big(\prod_{k=t+1}^{T} J_k^\top\Big) \frac{\partial L}{\partial h_T},
    \qquad J_k = \operatorname{diag}(\phi'(a_k))\, W_{hh},

so the norm shrinks or grows geometrically with T - t unless the Jacobians stay near norm 1. For
the identity activation this is exactly :math:`(W_{hh}^\top)^{T-t}\, \partial L/\partial h_T`,
which the tests check. LSTM and GRU carry their state through an additive path
(:math:`c_t = f_t \odot c_{t-1} + i_t \odot g_t`), whose Jacobian is the forget gate itself.

The measurement runs the model one step at a time so that every :math:`h_t` is a node of the
graph, and reads the *total* derivative (through all later steps) with ``retain_grad``. For an
LSTM the state is ``(h_t, c_t)`` and the norm reported is that of the pair's gradient. For the
transformer, which has no state carried in time, the same plot uses the gradient with respect to
the first layer's input at each position (embedding plus position).
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor

from .tasks import MemoryModel, make_batch, task_loss

Step = Callable[[Tensor, object], tuple[Tensor, object]]


def _state_tensors(state) -> list[Tensor]:
    return list(state) if isinstance(state, (tuple, list)) else [state]


def hidden_gradients(step: Step, xs: Tensor, h0, loss_fn: Callable[[list[Tensor]], Tensor]) -> list[float]:
    """Run ``h_t, s_t = step(x_t, s_{t-1})`` over ``xs`` (T, B, F) and return ``||dL/ds_t||`` for t = 1..T.

    ``loss_fn`` gets the list of outputs ``h_1..h_T``. ``s_t`` may be a tensor or a tuple of
    tensors (the norm is then over all of them). The norm is the Frobenius norm over the batch,
    divided by sqrt(B) so that it does not depend on the batch size.
    """
    if xs.dim() != 3:
        raise ValueError(f"expected xs of shape (T, B, F), got {tuple(xs.shape)}")
    # h0 joins the graph so every later state does, even when no weight requires a gradient
    state = tuple(s.detach().clone().requires_grad_(True) for s in h0) if isinstance(h0, (tuple, list)) \
        else h0.detach().clone().requires_grad_(True)
    states, outs = [], []
    for t in range(xs.shape[0]):
        out, state = step(xs[t], state)
        for s in _state_tensors(state):
            s.retain_grad()
        states.append(state)
        outs.append(out)
    loss = loss_fn(outs)
    loss.backward()
    B = xs.shape[1]
    norms = []
    for state in states:
        grads = [s.grad if s.grad is not None else torch.zeros_like(s) for s in _state_tensors(state)]
        norms.append(float(torch.sqrt(sum(g.pow(2).sum() for g in grads)) / B ** 0.5))
    return norms


def layer_step(model: MemoryModel) -> Step:
    """A step function that runs the model's own seqlab recurrent layer on one time step.

    The state passed on is the same tensor that is returned as the output, so its gradient is the
    total one (through the output head and through all later steps).
    """
    body = model.body
    lstm = model.arch == "lstm"

    def step(x_t: Tensor, state):
        if lstm:
            h, c = state
            _, (h_n, c_n) = body(x_t.unsqueeze(1), (h.unsqueeze(0), c.unsqueeze(0)))  # (B, F) -> (B, 1, F)
            h, c = h_n[0], c_n[0]  # (1, B, H) -> (B, H)
            return h, (h, c)
        _, h_n = body(x_t.unsqueeze(1), state.unsqueeze(0))  # (B, F) -> (B, 1, F)
        h = h_n[0]  # (1, B, H) -> (B, H)
        return h, h

    return step


def _zero_state(model: MemoryModel, B: int):
    h = torch.zeros(B, model.width, dtype=model.head.weight.dtype)
    return (h, torch.zeros_like(h)) if model.arch == "lstm" else h


def recurrent_profile(model: MemoryModel, task: str, x: Tensor, y: Tensor) -> list[float]:
    """``||dL/dh_t||`` for t = 1..L of a recurrent memory model on a batch, loss as in training."""
    model.zero_grad(set_to_none=True)
    xs = model.embed(x).transpose(0, 1)  # (B, L, F) -> (L, B, F)

    def loss_fn(outs: list[Tensor]) -> Tensor:
        h = torch.stack(outs, dim=1)  # (B, L, H)
        return task_loss(task, model.head(h), y)

    return hidden_gradients(layer_step(model), xs.detach(), _zero_state(model, x.shape[0]), loss_fn)


def transformer_profile(model: MemoryModel, task: str, x: Tensor, y: Tensor) -> list[float]:
    """``||dL/du_t||`` for the transformer's layer input ``u`` (projection plus position) at each position."""
    model.zero_grad(set_to_none=True)
    u = model.embed(x).detach().requires_grad_(True)  # (B, L, H)
    loss = task_loss(task, model.head(model.run_body(u)), y)
    loss.backward()
    B = x.shape[0]
    return [float(v) for v in (u.grad.pow(2).sum(dim=(0, 2)).sqrt() / B ** 0.5)]


def gradient_profile(model: MemoryModel, task: str, T: int, *, batch_size: int = 16, seed: int = 123) -> list[float]:
    """The profile for any architecture; index i is position t = i + 1."""
    x, y = make_batch(task, batch_size, T, seed=seed)
    if model.recurrent:
        return recurrent_profile(model, task, x, y)
    return transformer_profile(model, task, x, y)


def scale_spectral_norm(model: MemoryModel, sigma: float) -> float:
    """Rescale the RNN's W_hh in place so that its largest singular value is ``sigma``; returns the old one."""
    if model.arch != "rnn":
        raise ValueError(f"spectral scaling is for the plain RNN, got arch {model.arch!r}")
    w = model.body.weight_hh_l0
    with torch.no_grad():
        old = float(torch.linalg.matrix_norm(w, ord=2))
        w.mul_(sigma / old)
    return old


def by_distance(profile: list[float]) -> list[float]:
    """Reorder a profile (index t - 1) by distance T - t: element d is ``||dL/dh_{T-d}||``."""
    return list(reversed(profile))


def decay_ratio(profile: list[float], distance: Optional[int] = None) -> float:
    """``||dL/dh_{T-d}|| / ||dL/dh_T||`` at distance d (default the farthest): < 1 vanishing, > 1 exploding."""
    d = by_distance(profile)
    k = len(d) - 1 if distance is None else min(distance, len(d) - 1)
    if d[0] == 0:
        return float("nan")
    return d[k] / d[0]
