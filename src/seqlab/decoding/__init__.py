"""Decoding strategies shared by every model: greedy, sampling, beam search.

Every strategy drives a model through one small contract::

    step(tokens: LongTensor (N,), state) -> (logits (N, V), new_state)
    reorder(state, index: LongTensor (M,)) -> state with batch rows index   # beam search only

so recurrent models (state = hidden states) and the cached Transformer
(state = key/value cache) decode the same way, at constant cost per token.
"""
from .beam import Hypothesis, beam_search, length_penalty
from .greedy import greedy
from .sampling import filter_logits, sample

__all__ = ["greedy", "sample", "filter_logits", "beam_search", "length_penalty", "Hypothesis"]
