"""lmrnn: recurrent language models (RNN, LSTM, GRU) from the command line and from Python.

    import lmrnn
    lm = lmrnn.load("checkpoints/stories-lstm")
    print(lm.generate("long ago mira", max_new_tokens=40, temperature=0.8, seed=1))

The API (lmrnn.api: load, fit, LanguageModel) is imported on first use, so `import lmrnn` and
the command line's help stay free of torch.
"""

__version__ = "0.1.0"
__all__ = ["LanguageModel", "fit", "load"]


def __getattr__(name: str):
    if name in __all__:
        from lmrnn import api
        return getattr(api, name)
    raise AttributeError(f"module 'lmrnn' has no attribute {name!r}")
