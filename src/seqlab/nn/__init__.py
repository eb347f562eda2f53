"""The public layers of seqlab, drop-in for their torch.nn namesakes where torch.nn has one."""
from .rnn import GRU, GRUCell, LSTM, LSTMCell, RNN, RNNCell, GateRecorder, record_gates

__all__ = ["RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell", "record_gates", "GateRecorder"]
