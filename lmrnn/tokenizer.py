"""SentencePiece tokenizers: train on a split's documents, load from a run, encode and decode.

Ids: 0 = <unk>, 1 = end of sequence (joins documents in a token stream; also the start-of-text
context for generation). No BOS or PAD piece: the token stream never needs them. With byte
fallback (the default for bpe and unigram), unseen characters become their UTF-8 byte pieces
instead of <unk>; without it, a char or word model has exactly its symbols.

A char model reads the text exactly as char-rnn does: no Unicode normalisation, no space added
at the start of a line, runs of spaces kept, so its tokens are the text's characters (and one
end-of-sequence per line) and bits per character follow from its perplexity.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import hashlib
import io
import logging
import os
import random
import re
from pathlib import Path
from typing import Iterable

import sentencepiece as spm

from lmrnn.config import TokenizerConfig
from lmrnn.errors import UserError

log = logging.getLogger(__name__)

UNK_ID, EOS_ID = 0, 1
# SentencePiece skips training lines longer than this many bytes (its default is 4192)
MAX_LINE_BYTES = 1 << 16


class Tokenizer:
    """A loaded SentencePiece model plus its serialized bytes (what goes into a run directory)."""

    def __init__(self, model_bytes: bytes):
        self.model_bytes = model_bytes
        self.sp = spm.SentencePieceProcessor(model_proto=model_bytes)

    @classmethod
    def load(cls, path: str | Path) -> "Tokenizer":
        path = Path(path)
        if not path.is_file():
            raise UserError(f"tokenizer model not found: {path}")
        try:
            return cls(path.read_bytes())
        except RuntimeError:
            raise UserError(f"{path} is not a SentencePiece model (corrupted or wrong file)") from None

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    @property
    def eos_id(self) -> int:
        return self.sp.eos_id()

    @property
    def fingerprint(self) -> str:
        """Content hash: part of the token-cache key, so a new tokenizer never reuses old ids."""
        return hashlib.blake2b(self.model_bytes, digest_size=8).hexdigest()

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text, out_type=int)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.sp.encode(texts, out_type=int, num_threads=os.cpu_count() or 1)

    def decode(self, ids: list[int]) -> str:
        return self.sp.decode(ids)

    @functools.cached_property
    def piece_texts(self) -> list[str | None]:
        """Per id, the text decoding appends for it after visible text: the piece with '▁' as a
        space; None for byte, unknown and control pieces, which need the decoder itself."""
        sp = self.sp
        return [None if sp.is_byte(i) or sp.is_unknown(i) or sp.is_control(i) else sp.id_to_piece(i).replace("\u2581", " ")
                for i in range(self.vocab_size)]


def train_tokenizer(documents: Iterable[str], cfg: TokenizerConfig) -> Tokenizer:
    """Train a SentencePiece model on `documents` (the train split, read once). Memory holds at
    most tokenizer.input_sentence_size sampled lines or, at word level, one count per distinct word.

    A vocabulary larger than the corpus can fill is capped to the largest size SentencePiece
    accepts, with a warning; one too small to hold every character is a UserError. Word and
    char models of vocab_size 0 hold every word or every character of the text.
    """
    if cfg.every_symbol and cfg.model_type == "word":  # every whitespace word of the text, exactly
        counts = collections.Counter(word for doc in documents for word in doc.split())
        if not counts:
            raise UserError("the training text is empty: nothing to train a tokenizer on")
        return Tokenizer(_train_words(counts, cfg.uses_byte_fallback))
    lines = sample_lines(documents, cfg.input_sentence_size)
    if not lines:
        raise UserError("the training text is empty: nothing to train a tokenizer on")
    # every character: more pieces than there can be, which SentencePiece caps to exactly them
    wanted = 1 << 20 if cfg.every_symbol else cfg.pieces
    try:
        model = _train(lines, cfg, wanted)
    except RuntimeError as err:
        message = str(err)
        too_high = re.search(r"Vocabulary size too high \(\d+\)\. Please set it to a value <= (\d+)", message)
        if not too_high:
            raise _too_small(lines, cfg, message) from None
        model = _train(lines, cfg, int(too_high[1]))
    tokenizer = Tokenizer(model)
    warn_if_capped(tokenizer, cfg)  # the char trainer shrinks to the characters it saw, silently
    return tokenizer


def sample_lines(documents: Iterable[str], size: int, seed: int = 0) -> list[str]:
    """The non-blank lines in order when there are at most `size` (0 = no limit); otherwise a
    uniform sample of `size` of them, drawn in one pass (reservoir sampling, Vitter's algorithm R)."""
    sample: list[str] = []
    rng = random.Random(seed)
    seen = 0
    for doc in documents:
        if not doc.strip():
            continue
        seen += 1
        if not size or len(sample) < size:
            sample.append(doc)
        else:
            slot = rng.randrange(seen)
            if slot < size:
                sample[slot] = doc
    return sample


def warn_if_capped(tokenizer: Tokenizer, cfg: TokenizerConfig) -> None:
    if tokenizer.vocab_size < cfg.pieces and not cfg.every_symbol:
        log.warning("tokenizer.vocab_size=%d is more than this corpus can fill; capped at %d",
                    cfg.pieces, tokenizer.vocab_size)


@contextlib.contextmanager
def _native_stderr_silenced():
    """SentencePiece's C++ trainer logs to file descriptor 2. Its own `logstream` option needs
    sys.stderr.fileno(), which fails wherever stderr is not an OS file (notebooks, test runners),
    so point descriptor 2 itself at /dev/null for the duration."""
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _train(lines: list[str], cfg: TokenizerConfig, vocab_size: int) -> bytes:
    buffer = io.BytesIO()
    exact = {"normalization_rule_name": "identity", "add_dummy_prefix": False,
             "remove_extra_whitespaces": False} if cfg.model_type == "char" else {}
    with _native_stderr_silenced():
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines), model_writer=buffer, **exact,
            model_type=cfg.model_type, vocab_size=vocab_size,
            character_coverage=cfg.character_coverage, byte_fallback=cfg.uses_byte_fallback,
            input_sentence_size=cfg.input_sentence_size, shuffle_input_sentence=True,
            max_sentence_length=MAX_LINE_BYTES, num_threads=os.cpu_count() or 1,
            unk_id=UNK_ID, eos_id=EOS_ID, bos_id=-1, pad_id=-1,
            # a word piece may be as long as a word; the default 16 would split long words
            max_sentencepiece_length=64 if cfg.model_type == "word" else 16,
        )
    return buffer.getvalue()


def _train_words(counts: collections.Counter, byte_fallback: bool) -> bytes:
    """A SentencePiece word model whose pieces are exactly the text's whitespace words (and the
    256 byte pieces with byte fallback): no normalisation, no splitting of numbers or scripts, and the unknown piece
    renamed so that a literal "<unk>" in the data (PTB has 45k) is an ordinary word. Otherwise
    SentencePiece would merge runs of unknown words into one id and the token count would no
    longer be the word count that published perplexities divide by. The trainer reads the word
    counts as TSV ("word<TAB>count"), so ids follow frequency and memory follows the vocabulary."""
    buffer = io.BytesIO()
    with _native_stderr_silenced():
        spm.SentencePieceTrainer.train(
            sentence_iterator=(f"{word}\t{count}" for word, count in counts.most_common()), input_format="tsv",
            model_writer=buffer, model_type="word", vocab_size=len(counts) + 2 + 256 * byte_fallback,
            use_all_vocab=True, byte_fallback=byte_fallback, normalization_rule_name="identity", character_coverage=1.0,
            split_by_number=False, split_by_unicode_script=False, split_digits=False, input_sentence_size=0,
            max_sentencepiece_length=max(map(len, counts)) + 1, max_sentence_length=MAX_LINE_BYTES,
            num_threads=os.cpu_count() or 1, unk_id=UNK_ID, eos_id=EOS_ID, bos_id=-1, pad_id=-1,
            unk_piece="<unknown word>", unk_surface=" \u2047 ")
    return buffer.getvalue()


def _too_small(lines: list[str], cfg: TokenizerConfig, message: str) -> Exception:
    """Explain a vocabulary too small for the corpus's characters, or pass on another error."""
    needed = re.search(r"smaller than required_chars\. \d+ vs (\d+)", message)
    if needed:
        minimum = int(needed[1])
    elif "(vocab_size) >= (0)" in message:  # the char and word trainers' way of saying it
        characters = set().union(*map(set, lines)) - {" "}
        minimum = len(characters) + 1 + 2 + (256 if cfg.uses_byte_fallback else 0)  # ▁, <unk>, eos
    else:
        return RuntimeError(message)  # not a user error: let it raise as a bug
    fallback = " plus 256 byte pieces; tokenizer.byte_fallback=false drops them" if cfg.uses_byte_fallback else ""
    return UserError(f"tokenizer.vocab_size={cfg.vocab_size} is too small for this corpus: a "
                     f"{cfg.model_type} model needs at least {minimum} pieces (its characters{fallback})")
