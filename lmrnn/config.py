"""Run configuration: what each key means, its type and default, and the defaults resolved when
a run starts. Reading, writing and migrating configs: lmrnn.config_parser.

This module imports neither torch nor anything else from lmrnn but `errors`, so `lmrnn --help`
stays fast.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from lmrnn.errors import UserError

Cell = Literal["rnn", "rnn_relu", "lstm", "gru", "ffnn", "ngram"]


@dataclass
class DataConfig:
    # A text file, a folder of .txt files (train/valid/test.txt are used as splits), a folder of
    # json/csv/parquet files, or a Hugging Face dataset `name[:config]`. "" = the shipped corpus.
    source: str = ""
    text_column: str = "text"  # the column holding text, for datasets with several
    valid_fraction: float = 0.05  # used only when the data has no validation split of its own
    test_fraction: float = 0.05  # likewise for test; the split is contiguous, by document
    cache_dir: str = ""  # token-id cache; "" = $LMRNN_CACHE or ~/.cache/lmrnn
    streaming: bool = False  # datasets sources: stream rows (hub: over the network) instead of an Arrow copy

    def __post_init__(self) -> None:
        for key in ("valid_fraction", "test_fraction"):
            if not 0.0 < getattr(self, key) < 0.5:
                raise UserError(f"data.{key} must be between 0 and 0.5, got {getattr(self, key)}")


SUBWORD_PIECES = 1000  # tokenizer.vocab_size 0 for bpe and unigram


@dataclass
class TokenizerConfig:
    model_type: Literal["bpe", "unigram", "char", "word"] = "bpe"
    # 0 = every symbol of the train split for word and char, one id each (for an already-tokenized
    # corpus such as PTB a literal <unk> stays a word), and 1000 pieces for bpe and unigram. A
    # size the corpus cannot fill is capped with a warning.
    vocab_size: int = 0
    character_coverage: float = 1.0  # SentencePiece's name; 1.0 keeps every character
    # true: unseen characters become UTF-8 byte pieces, never <unk> (256 pieces); false: a model
    # of exactly its symbols, unseen ones read as <unk> and counted on stderr; auto: true for bpe
    # and unigram, false for char and word
    byte_fallback: Literal["auto", "true", "false"] = "auto"
    input_sentence_size: int = 1_000_000  # lines sampled to train the tokenizer; 0 = all
    path: str = ""  # an existing tokenizer.model (from `lmrnn tokenizer train`) to reuse

    def __post_init__(self) -> None:
        if isinstance(self.byte_fallback, bool):  # TokenizerConfig(byte_fallback=True) from Python
            self.byte_fallback = str(self.byte_fallback).lower()
        if 0 < self.vocab_size < 4 or self.vocab_size < 0:
            raise UserError(f"tokenizer.vocab_size must be at least 4, or 0 (every word or character; "
                            f"{SUBWORD_PIECES} pieces for bpe and unigram), got {self.vocab_size}")
        if not 0.9 <= self.character_coverage <= 1.0:
            raise UserError("tokenizer.character_coverage must be between 0.9 and 1.0")
        if self.input_sentence_size < 0:
            raise UserError("tokenizer.input_sentence_size must be >= 0 (0 = all lines)")

    @property
    def subword(self) -> bool:
        return self.model_type in ("bpe", "unigram")

    @property
    def every_symbol(self) -> bool:
        """One id for every word (word) or character (char) of the train split."""
        return self.vocab_size == 0 and not self.subword

    @property
    def pieces(self) -> int:
        """The vocabulary size asked for: vocab_size, SUBWORD_PIECES for 0 with bpe and unigram."""
        return SUBWORD_PIECES if self.vocab_size == 0 and self.subword else self.vocab_size

    @property
    def uses_byte_fallback(self) -> bool:
        return self.byte_fallback == "true" or (self.byte_fallback == "auto" and self.subword)


@dataclass
class ModelConfig:
    cell: Cell = "lstm"  # rnn = Elman RNN with tanh; rnn_relu = with ReLU
    embedding_dim: int = 256
    hidden_size: int = 256
    num_layers: int = 2
    dropout: float = 0.25  # on embeddings, between layers and before the decoder (Zaremba 2014)
    # regularisers of AWD-LSTM (Merity, Keskar & Socher 2017), each 0 / false = off:
    locked_dropout: bool = False  # `dropout` with one mask per sequence for all time steps (Gal & Ghahramani 2016)
    embedding_dropout: float = 0.0  # drops whole words: every occurrence of a word type in the batch
    weight_drop: float = 0.0  # DropConnect on the hidden-to-hidden weights, a new mask per window
    layer_norm: bool = False  # layer-normalised recurrent cells (Ba, Kiros & Hinton 2016)
    tie_weights: bool = True  # decoder shares the embedding matrix (Press & Wolf 2016)
    # initialisation: the embedding (and an untied decoder) ~ U(-init_range, init_range); the
    # hidden-to-hidden matrices PyTorch's U(+-1/sqrt(H)) ("uniform") or one orthogonal matrix per
    # gate block ("orthogonal", Saxe et al. 2014). 0.3 serves every cell at a comparison's budget
    # (benchmarks/init_at_budget.py: 0.1 saturates the LSTM, 1 holds back the others; docs/results.md)
    init_range: float = 0.3
    recurrent_init: Literal["uniform", "orthogonal"] = "uniform"
    # the input embeddings are multiplied by this: with tied weights, the decoder's scale (set by
    # init_range) and the recurrent inputs' scale apart (as Vaswani et al. 2017 scale by sqrt(E))
    embedding_scale: float = 1.0
    # adaptive: the adaptive softmax of Grave et al. 2017 (untied), for vocabularies of 30k and more
    output: Literal["softmax", "adaptive"] = "softmax"
    vocab_size: int = 0  # derived from the tokenizer when training starts
    order: int = 5  # cell ngram: the n of the Kneser-Ney n-gram model (the other keys do not apply)
    context: int = 5  # cell ffnn: how many previous tokens the feed-forward model sees (Bengio et al. 2003)

    def __post_init__(self) -> None:
        for key in ("embedding_dim", "hidden_size", "num_layers"):
            if getattr(self, key) < 1:
                raise UserError(f"model.{key} must be >= 1, got {getattr(self, key)}")
        for key in ("init_range", "embedding_scale"):
            if not getattr(self, key) > 0:
                raise UserError(f"model.{key} must be > 0, got {getattr(self, key)}")
        for key in ("dropout", "embedding_dropout", "weight_drop"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise UserError(f"model.{key} must be in [0, 1), got {getattr(self, key)}")
        if self.cell in ("ffnn", "ngram"):
            recurrent_only = [key for key in ("locked_dropout", "embedding_dropout", "weight_drop", "layer_norm")
                              if getattr(self, key)]
            if recurrent_only:
                raise UserError(f"model.{recurrent_only[0]} applies to the recurrent cells (rnn, rnn_relu, lstm, "
                                f"gru), not to cell {self.cell}")
        if self.output == "adaptive" and self.tie_weights:
            raise UserError("model.output=adaptive has its own output matrices and cannot share the embedding; "
                            "set model.tie_weights=false")
        if not 1 <= self.order <= 10:
            raise UserError(f"model.order must be between 1 and 10, got {self.order}")
        if self.context < 1:
            raise UserError(f"model.context must be >= 1, got {self.context}")


@dataclass
class TrainConfig:
    batch_size: int = 16  # B contiguous streams trained side by side
    eval_batch_size: int = 16
    # evaluation: each of the eval_batch_size rows first reads this many tokens before it in the
    # stream, unscored, so that the figure does not depend on eval_batch_size (lmrnn.evaluate)
    eval_burn_in: int = 256
    bptt: int = 70  # window length T for truncated backpropagation through time
    # a window length drawn per step around bptt (half of it 5% of the time), the lr scaled by
    # length / bptt, so that every position is sometimes a window start (Merity et al. 2017)
    variable_bptt: bool = False
    # nt_asgd: SGD that starts averaging the weights once validation stops improving for
    # asgd_patience evaluations; the average is what is evaluated and saved (Merity et al. 2017)
    optimizer: Literal["adamw", "sgd", "nt_asgd"] = "adamw"
    asgd_patience: int = 5  # nt_asgd: the non-monotone interval n, in evaluations
    lr: float = 0.0  # 0 = the cell's own AdamW default (DEFAULT_LR), set in the run's config.yaml when it starts
    momentum: float = 0.0  # sgd and nt_asgd
    weight_decay: float = 0.0
    clip_grad_norm: float = 1.0  # global L2 norm; 0 disables clipping
    ar: float = 0.0  # activation regularisation: ar * mean(top layer's dropped output^2) (Merity 2017's alpha)
    tar: float = 0.0  # temporal AR: tar * mean((h_t - h_{t-1})^2) of the top layer, undropped (beta)
    lr_schedule: Literal["constant", "cosine", "plateau"] = "cosine"
    warmup_steps: int = 100  # linear warm-up, for every schedule
    min_lr_ratio: float = 0.1  # cosine ends at lr * min_lr_ratio
    plateau_factor: float = 4.0  # plateau: divide lr by this when validation does not improve
    epochs: int = 20  # stop limits: whichever comes first; 0 disables that limit
    max_steps: int = 0
    max_minutes: float = 0.0
    eval_every: int = 500  # steps between validations (also at each epoch end); 0 = epoch ends
    save_every: int = 200  # steps between train_state.pt saves for --resume; 0 = at evals only
    save_minutes: float = 10.0  # also save when this many minutes passed since the last save; 0 = off
    max_bad_steps: int = 10  # stop after this many steps in a row with a non-finite loss or gradient
    log_every: int = 50
    # auto = bf16 autocast on capable CUDA; fp16 = autocast with a gradient scaler, for GPUs without bf16
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"

    def __post_init__(self) -> None:
        for key in ("batch_size", "eval_batch_size", "bptt", "log_every", "max_bad_steps", "asgd_patience"):
            if getattr(self, key) < 1:
                raise UserError(f"train.{key} must be >= 1, got {getattr(self, key)}")
        for key in ("eval_burn_in", "epochs", "max_steps", "max_minutes", "eval_every", "save_every", "save_minutes",
                    "warmup_steps", "weight_decay", "clip_grad_norm", "momentum", "ar", "tar"):
            if getattr(self, key) < 0:
                raise UserError(f"train.{key} must be >= 0, got {getattr(self, key)}")
        if self.lr < 0:
            raise UserError(f"train.lr must be > 0 (or 0: the cell's default for adamw), got {self.lr}")
        if self.lr == 0 and self.optimizer != "adamw":
            raise UserError(f"train.lr=0 (the cell's default) is for adamw; set train.lr for {self.optimizer}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise UserError("train.min_lr_ratio must be in [0, 1]")
        if self.plateau_factor < 1.0:
            raise UserError("train.plateau_factor must be >= 1 (the lr is divided by it)")
        if not (self.epochs or self.max_steps or self.max_minutes):
            raise UserError("set at least one stop limit: train.epochs, train.max_steps or train.max_minutes")


@dataclass
class RunConfig:
    seed: int = 1337
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"  # auto = CUDA, then MPS, then CPU
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        if (self.train.ar or self.train.tar) and self.model.cell in ("ffnn", "ngram"):
            raise UserError(f"train.ar and train.tar apply to the recurrent cells (rnn, rnn_relu, lstm, gru), "
                            f"not to cell {self.model.cell}")


# Each cell's AdamW learning rate when train.lr is 0 (the default): the rates chosen per cell by
# successive halving over the same 9 rates, 1e-4 to 3e-2, on PTB words at an equal budget
# (benchmarks/results/lr-search-ptb, docs/results.md "Defaults that train"); rnn_relu takes the tanh
# RNN's (not searched). One shared rate trained some cells badly: the LSTM wants 6x the RNN's.
DEFAULT_LR = {"rnn": 1.5e-3, "rnn_relu": 1.5e-3, "lstm": 8.7e-3, "gru": 6.5e-3, "ffnn": 1.5e-3, "ngram": 0.0}


def resolve_defaults(cfg: RunConfig) -> RunConfig:
    """The config a run saves and trains with: train.lr 0 replaced by the cell's default, the
    tokenizer's automatic size and byte fallback by what they mean for its model type."""
    if cfg.train.lr == 0 and cfg.model.cell != "ngram":
        cfg.train.lr = DEFAULT_LR[cfg.model.cell]
    tokenizer = cfg.tokenizer
    tokenizer.vocab_size = tokenizer.pieces
    tokenizer.byte_fallback = str(tokenizer.uses_byte_fallback).lower()
    return cfg


# Keys that may change when a run is resumed: the budgets (to extend a finished run), how often
# it logs and saves, and the two knobs that rescue a diverging run (lr, clip norm).
RESUMABLE_KEYS = {"train.epochs", "train.max_steps", "train.max_minutes", "device", "train.log_every",
                  "train.save_every", "train.save_minutes", "train.max_bad_steps", "train.lr",
                  "train.clip_grad_norm"}
