"""The public layers of seqlab, drop-in for their torch.nn namesakes where torch.nn has one.

==================  =========================================================================
module              what lives there
==================  =========================================================================
rnn                 RNN, LSTM, GRU and their cells; record_gates (introspection)
minrnn              MinGRU, MinLSTM: input-only gates, trained by a parallel scan
_driver             the layer driver both recurrent families share: layout, lengths and packing,
                    directions, stacking, state shapes (their time loops are in seqlab.kernels)
attention           MultiheadAttention, masks, the reference attention
transformer         the Transformer family and its key/value cache
positional          sinusoidal and learned positional encodings
dropout             Dropout and dropout(): torch's inverted dropout, with fast CPU masks
seq2seq_attention   Bahdanau (additive) and Luong (dot, general) attention for RNN decoders
==================  =========================================================================

Both recurrent families say ``backend=`` for the path and ``module.last_dispatch``
for the one that ran and why (``seqlab.kernels.dispatch``, the one place that chooses).
"""
from .attention import (KVCache, LayerCache, MultiheadAttention, TransformerCache, attention_reference, causal_mask,
                        padding_mask)
from .dropout import Dropout
from .minrnn import MinGRU, MinLSTM
from .positional import LearnedPositionalEncoding, SinusoidalPositionalEncoding, sinusoidal_table
from .rnn import GRU, GRUCell, LSTM, LSTMCell, RNN, RNNCell, GateRecorder, record_gates
from .seq2seq_attention import BahdanauAttention, LuongAttention
from .transformer import (Transformer, TransformerDecoder, TransformerDecoderLayer, TransformerEncoder,
                          TransformerEncoderLayer)

__all__ = [
    "RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell", "record_gates", "GateRecorder",
    "MinGRU", "MinLSTM",
    "MultiheadAttention", "attention_reference", "causal_mask", "padding_mask",
    "TransformerEncoderLayer", "TransformerDecoderLayer", "TransformerEncoder", "TransformerDecoder",
    "Transformer", "KVCache", "LayerCache", "TransformerCache",
    "SinusoidalPositionalEncoding", "LearnedPositionalEncoding", "sinusoidal_table",
    "BahdanauAttention", "LuongAttention",
    "Dropout",
]
