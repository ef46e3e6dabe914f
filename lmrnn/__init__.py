"""lmrnn: recurrent language models (RNN, LSTM, GRU) from the command line."""

__version__ = "0.1.0"
