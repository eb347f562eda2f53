r"""Encoder-decoder: a source sequence in, a target sequence out."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor, nn

from ..nn import (BahdanauAttention, Dropout, LuongAttention, SinusoidalPositionalEncoding, Transformer,
                  TransformerCache, causal_mask, padding_mask)
from .config import ModelConfig
from .encoders import (SequenceEncoder, check_lengths, check_tokens, index_state, make_embedding,
                       set_attention_dropout)

__all__ = ["Seq2Seq", "Seq2SeqState"]


@dataclass
class Seq2SeqState:
    """What the decoder carries between steps; ``reorder`` keeps batch rows (beam search).

    hidden: the recurrent decoder's state (L, B, H) (or (h, c)), or the
    transformer decoder's TransformerCache. memory: the encoder's states the
    decoder attends to (B, S, ·), None for the plain context-vector model.
    keys: the attention's projection of memory, computed once per source.
    mask: (B, S) True at padded source positions.
    """

    hidden: Any
    memory: Optional[Tensor] = None
    keys: Optional[Tensor] = None
    mask: Optional[Tensor] = None

    def reorder(self, index: Tensor) -> "Seq2SeqState":
        hidden = self.hidden.reorder(index) if isinstance(self.hidden, TransformerCache) else \
            index_state(self.hidden, index, dim=1)  # (L, B, H): batch is dim 1
        return Seq2SeqState(hidden, index_state(self.memory, index), index_state(self.keys, index),
                            index_state(self.mask, index))


class Seq2Seq(nn.Module):
    r"""Encoder-decoder with teacher forcing; ``config.attention`` picks the decoder's view of the source.

    Recurrent archs. The encoder (bidirectional by default) reads the source,
    h_{1..S}, s_enc = Enc(x_{1..S}). The decoder starts from the encoder's
    final state: unidirectional, s_0 = s_enc per layer; bidirectional,
    s_0 = tanh(W_b [s^{fwd}_enc; s^{rev}_enc] + b_b) (the LSTM's cell:
    c_0 = W_c' [c^{fwd}; c^{rev}] + b_c', no squashing). It reads <sos> y_1 ...
    and predicts y_1 y_2 ... <eos>:

    - ``none`` (Sutskever et al. 2014; Cho et al. 2014): s_t = Dec(y_{t-1}, s_{t-1}),
      p(y_t) = softmax(W_o s_t + b_o). s_0 is the decoder's only view of the source.
    - ``luong-dot`` / ``luong-general`` (Luong et al. 2015): s_t = Dec(y_{t-1}, s_{t-1}),
      c_t = Attn(s_t, h), h̃_t = tanh(W_c [c_t; s_t]), p(y_t) = softmax(W_o h̃_t + b_o).
      Our choice: the context is concatenated to the output before the
      projection, without Luong's input feeding, so a teacher-forced decoder
      runs over all T steps at once and attends for all of them in one product.
      For the dot score with a bidirectional encoder, h is first mapped to the
      decoder's size by W_m (no bias), since s_t^T h_j needs equal sizes.
    - ``bahdanau`` (Bahdanau et al. 2015): c_t = Attn(s_{t-1}, h) with the top
      layer's previous state as the query, s_t = Dec([y_{t-1}; c_t], s_{t-1}),
      h̃_t = tanh(W_c [c_t; s_t]), p(y_t) = softmax(W_o h̃_t + b_o). The
      context enters the recurrence, so training runs step by step.

    Attention weights are zero at padded source positions (``src_lengths``).

    Transformer (Vaswani et al. 2017): seqlab.nn.Transformer, pre-norm,
    sinusoidal positions; m = Enc(x) once in ``encode``, and the decoder's
    causal self-attention and cross-attention on m are cached between
    ``step`` calls (constant cost per token beyond the attention itself).

    Teacher forcing: ``forward(..., teacher_forcing=r)`` feeds the gold y_{t-1}
    at each step with probability r and the model's own argmax otherwise (one
    draw per step for the whole batch, from torch's RNG so a resumed run draws
    the same); the transformer always teacher-forces. Where training runs step
    by step (bahdanau, or a ratio below 1), each step is its own call of the
    recurrent layer, so ``recurrent_dropout`` draws a fresh mask per step
    rather than one per sequence.
    """

    kind = "seq2seq"

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if config.kind != self.kind:
            raise ValueError(f"Seq2Seq: expected a config of kind 'seq2seq', got {config.kind!r}")
        self.config = config
        V_tgt, E, H = config.target_vocab_size, config.embed_dim, config.hidden_size
        self.dropout = Dropout(config.dropout)
        if config.arch == "transformer":
            if config.bidirectional is False:
                raise ValueError("the transformer seq2seq encoder attends both ways: expected bidirectional true or "
                                 "null, got false")
            self.src_embedding = make_embedding(config.vocab_size, E)
            self.tgt_embedding = make_embedding(V_tgt, E)
            # shared by source and target
            self.in_proj = nn.Linear(E, H, bias=config.bias) if E != H else nn.Identity()
            self.positions = SinusoidalPositionalEncoding(H, dropout=config.dropout, max_len=config.max_len,
                                                          batch_first=True)
            self.transformer = Transformer(H, config.nhead, config.num_layers, config.num_layers,
                                           config.feedforward_size, config.dropout, activation=config.activation,
                                           batch_first=True, norm_first=True, bias=config.bias)
            set_attention_dropout(self.transformer, config)
            self.output = nn.Linear(H, V_tgt)
            return

        D = 2 if config.is_bidirectional else 1
        self.encoder = SequenceEncoder(config, config.vocab_size, bidirectional=D == 2)
        self.is_lstm = config.arch == "lstm"
        if D == 2:
            self.bridge_h = nn.Linear(2 * H, H)
            self.bridge_c = nn.Linear(2 * H, H) if self.is_lstm else None
        attention = config.attention
        key_size = D * H
        self.memory_proj = None
        if attention == "luong-dot" and key_size != H:
            self.memory_proj = nn.Linear(key_size, H, bias=False)
            key_size = H
        if attention == "bahdanau":
            self.attention = BahdanauAttention(H, key_size, H, batch_first=True)
        elif attention in ("luong-dot", "luong-general"):
            self.attention = LuongAttention(H, key_size, score=attention.split("-")[1], batch_first=True)
        else:
            self.attention = None
        extra = key_size if attention == "bahdanau" else 0
        self.decoder = SequenceEncoder(config, V_tgt, bidirectional=False, extra_input=extra)
        self.combine = nn.Linear(key_size + H, H) if self.attention is not None else None
        self.output = nn.Linear(H, V_tgt)

    @property
    def is_transformer(self) -> bool:
        return self.config.arch == "transformer"

    # -- encoder ---------------------------------------------------------------

    def _embed(self, embedding: nn.Embedding, tokens: Tensor, offset: int = 0) -> Tensor:
        x = embedding(tokens) * math.sqrt(self.config.embed_dim)  # (B, T, E)
        return self.positions(self.in_proj(x), offset=offset)  # (B, T, H)

    def encode(self, src: Tensor, src_lengths: Tensor) -> Seq2SeqState:
        """src (B, S), src_lengths (B,) -> the decoder's starting state (memory computed once)."""
        check_tokens("Seq2Seq.encode src", src)
        src_lengths = check_lengths(src_lengths, src)
        mask = padding_mask(src_lengths.to(src.device), src.size(1))  # (B, S), True = padding
        if self.is_transformer:
            memory = self.transformer.encoder(self._embed(self.src_embedding, src), src_key_padding_mask=mask)
            return Seq2SeqState(TransformerCache(), memory, None, mask)  # memory (B, S, H)
        out, state = self.encoder(src, src_lengths)  # (B, S, D·H)
        hidden = self._bridge(state)
        if self.attention is None:
            return Seq2SeqState(hidden)  # the context vector s_0 is all the decoder sees
        memory = out if self.memory_proj is None else self.memory_proj(out)  # (B, S, Dk)
        return Seq2SeqState(hidden, memory, self.attention.project_keys(memory), mask)

    def _bridge(self, state: Any) -> Any:
        """Encoder final state (D·L, B, H) -> decoder initial state (L, B, H)."""
        if not self.encoder.bidirectional:
            return state
        L, H = self.config.num_layers, self.config.hidden_size

        def join(s: Tensor) -> Tensor:
            s = s.view(L, 2, s.size(1), H)  # (L·2, B, H) -> (L, 2, B, H): layer-major, then direction
            return torch.cat([s[:, 0], s[:, 1]], dim=-1)  # (L, B, 2H)

        if self.is_lstm:
            h, c = state
            return torch.tanh(self.bridge_h(join(h))), self.bridge_c(join(c))
        return torch.tanh(self.bridge_h(join(state)))

    # -- decoder ---------------------------------------------------------------

    def _top(self, hidden: Any) -> Tensor:
        """The top layer's h (B, H) of a recurrent decoder state."""
        return self.decoder.recurrent_final(hidden)[-1]

    def _attentional(self, s: Tensor, context: Tensor) -> Tensor:
        """h̃ = tanh(W_c [c; s]), (…, Dk) and (…, H) -> (…, H)."""
        return torch.tanh(self.combine(torch.cat([context, s], dim=-1)))

    def step(self, tokens: Tensor, state: Seq2SeqState) -> tuple[Tensor, Seq2SeqState]:
        """tokens (B,) (the previous target token; <sos> first) -> (logits (B, V), state)."""
        check_tokens("Seq2Seq.step tokens", tokens, dim=1)
        if not isinstance(state, Seq2SeqState):
            raise TypeError(f"Seq2Seq.step: expected the Seq2SeqState from encode(), got {type(state).__name__}")
        if self.is_transformer:
            cache = state.hidden
            x = self._embed(self.tgt_embedding, tokens.unsqueeze(1), offset=cache.length)  # (B, 1, H)
            y = self.transformer.decoder(x, state.memory, memory_key_padding_mask=state.mask, tgt_is_causal=True,
                                         cache=cache)  # (B, 1, H)
            return self.output(self.dropout(y[:, 0])), state
        extra = None
        if self.config.attention == "bahdanau":
            context, _ = self.attention(self._top(state.hidden), state.memory, key_padding_mask=state.mask,
                                        projected_keys=state.keys)  # (B, Dk)
            extra = context.unsqueeze(1)  # (B, 1, Dk)
        out, hidden = self.decoder(tokens.unsqueeze(1), None, state.hidden, extra=extra)  # (B, 1, H)
        s = out[:, 0]  # (B, H)
        if self.config.attention in ("luong-dot", "luong-general"):
            context, _ = self.attention(s, state.memory, key_padding_mask=state.mask, projected_keys=state.keys)
        if self.attention is not None:
            s = self._attentional(s, context)
        return self.output(self.dropout(s)), Seq2SeqState(hidden, state.memory, state.keys, state.mask)

    def reorder(self, state: Seq2SeqState, index: Tensor) -> Seq2SeqState:
        return state.reorder(index)

    # -- training ----------------------------------------------------------------

    def forward(self, src: Tensor, src_lengths: Tensor, tgt_in: Tensor, teacher_forcing: float = 1.0) -> Tensor:
        """src (B, S), src_lengths (B,), tgt_in (B, T) starting with <sos> -> logits (B, T, V)."""
        check_tokens("Seq2Seq.forward tgt_in", tgt_in)
        if not 0.0 <= float(teacher_forcing) <= 1.0:
            raise ValueError(f"teacher_forcing: expected a ratio in [0, 1], got {teacher_forcing!r}")
        if tgt_in.size(0) != src.size(0):
            raise ValueError(f"src and tgt_in: expected the same batch size, got {src.size(0)} and {tgt_in.size(0)}")
        state = self.encode(src, src_lengths)
        T = tgt_in.size(1)
        if self.is_transformer:
            y = self.transformer.decoder(self._embed(self.tgt_embedding, tgt_in), state.memory,
                                         tgt_mask=causal_mask(T, device=tgt_in.device, dtype=state.memory.dtype),
                                         tgt_is_causal=True, memory_key_padding_mask=state.mask)  # (B, T, H)
            return self.output(self.dropout(y))  # (B, T, V)
        if teacher_forcing >= 1.0 and self.config.attention != "bahdanau":
            # every input is known: run the decoder over all T steps at once
            s, _ = self.decoder(tgt_in, None, state.hidden)  # (B, T, H)
            if self.attention is not None:
                context, _ = self.attention(s, state.memory, key_padding_mask=state.mask,
                                            projected_keys=state.keys)  # (B, T, Dk)
                s = self._attentional(s, context)
            return self.output(self.dropout(s))  # (B, T, V)
        logits, tokens = [], tgt_in[:, 0]
        for t in range(T):
            if t > 0:
                tokens = tgt_in[:, t]
                if teacher_forcing < 1.0 and float(torch.rand(())) >= teacher_forcing:
                    tokens = logits[-1].argmax(-1)  # the model's own previous guess
            step_logits, state = self.step(tokens, state)  # (B, V)
            logits.append(step_logits)
        return torch.stack(logits, dim=1)  # T x (B, V) -> (B, T, V)
