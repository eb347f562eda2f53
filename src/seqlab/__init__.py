"""seqlab: RNN, LSTM, GRU and the Transformer from their equations, drop-in for torch.nn."""

__version__ = "0.1.0"
