import collections
import logging

import pytest

from lmrnn.config import TokenizerConfig
from lmrnn.errors import UserError
from lmrnn.tokenizer import EOS_ID, UNK_ID, Tokenizer, sample_lines, train_tokenizer

DOCS = ["the king had a sword .", "the queen had a lamp .", "a fox ran into the woods ."] * 40


def test_bpe_round_trip_and_ids():
    tok = train_tokenizer(DOCS, TokenizerConfig(vocab_size=300))
    assert tok.vocab_size == 300 and tok.eos_id == EOS_ID == 1
    ids = tok.encode("the king had a lamp .")
    assert tok.decode(ids) == "the king had a lamp ."
    assert tok.encode_batch(["the fox", "a lamp"]) == [tok.encode("the fox"), tok.encode("a lamp")]


def test_byte_fallback_never_makes_unknowns():
    tok = train_tokenizer(DOCS, TokenizerConfig(vocab_size=300, byte_fallback=True))
    ids = tok.encode("the 漢 king ë")
    assert UNK_ID not in ids
    assert tok.decode(ids) == "the 漢 king ë"
    plain = train_tokenizer(DOCS, TokenizerConfig(vocab_size=40, byte_fallback=False))
    assert UNK_ID in plain.encode("漢")  # what byte_fallback prevents


def test_too_large_vocabulary_is_capped_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING):
        tok = train_tokenizer(DOCS, TokenizerConfig(vocab_size=5000))
    assert 256 < tok.vocab_size < 5000
    assert f"capped at {tok.vocab_size}" in caplog.text


@pytest.mark.parametrize("model_type", ["bpe", "unigram", "char", "word"])
def test_too_small_vocabulary_names_the_minimum(model_type):
    # byte fallback's 256 pieces are named, and how to drop them
    with pytest.raises(UserError, match=r"=40 is too small .* at least 2\d\d pieces .*plus 256 byte pieces; tokenizer.byte_fallback=false"):
        train_tokenizer(DOCS, TokenizerConfig(vocab_size=40, model_type=model_type, byte_fallback=True))
    if model_type in ("bpe", "unigram"):  # subwords need every character as a piece
        with pytest.raises(UserError, match=r"tokenizer.vocab_size=8 is too small .* at least \d+ pieces"):
            train_tokenizer(DOCS, TokenizerConfig(vocab_size=8, model_type=model_type, byte_fallback=False))
    else:  # without byte pieces, a cap keeps the most frequent symbols; the rest are <unk>
        capped = train_tokenizer(DOCS, TokenizerConfig(vocab_size=8, model_type=model_type))
        assert capped.vocab_size == 8 and UNK_ID in capped.encode("the king")


def test_char_and_word_models():
    char = train_tokenizer(DOCS, TokenizerConfig(model_type="char", vocab_size=1000))
    assert len(char.encode("king")) == 4  # one piece per character, no space added in front
    assert char.decode(char.encode("  the  king ")) == "  the  king "  # the text exactly, spaces and all
    word = train_tokenizer(DOCS, TokenizerConfig(model_type="word", vocab_size=14))
    assert len(word.encode("the king had a sword")) == 5
    assert word.decode(word.encode("the king had a sword")) == "the king had a sword"


def test_vocab_size_zero_means_every_symbol_for_char_and_word_and_a_default_for_subwords():
    characters = set("".join(DOCS)) - {" "}
    char = train_tokenizer(DOCS, TokenizerConfig(model_type="char"))  # vocab_size 0, byte fallback off
    assert char.vocab_size == len(characters) + 3  # + the space piece, <unk> and eos
    assert all(char.sp.is_unknown(i) or char.sp.is_control(i) or len(char.sp.id_to_piece(i)) == 1
               for i in range(char.vocab_size))
    assert char.encode("kë") == [char.encode("k")[0], UNK_ID]  # unseen: <unk>, no byte pieces
    with_bytes = train_tokenizer(DOCS, TokenizerConfig(model_type="char", byte_fallback="true"))
    assert with_bytes.vocab_size == len(characters) + 3 + 256 and UNK_ID not in with_bytes.encode("kë")
    assert TokenizerConfig().pieces == TokenizerConfig(model_type="unigram").pieces == 1000
    assert TokenizerConfig().uses_byte_fallback and not TokenizerConfig(model_type="word").uses_byte_fallback
    assert not TokenizerConfig(byte_fallback=False).uses_byte_fallback
    for bad in (-1, 2):
        with pytest.raises(UserError, match="at least 4, or 0"):
            TokenizerConfig(vocab_size=bad)


def test_empty_text_is_refused():
    with pytest.raises(UserError, match="empty"):
        train_tokenizer(["", "   "], TokenizerConfig())


def test_load_errors_and_fingerprint(tmp_path):
    with pytest.raises(UserError, match="not found"):
        Tokenizer.load(tmp_path / "missing.model")
    (tmp_path / "junk.model").write_bytes(b"not a protobuf at all")
    with pytest.raises(UserError, match="not a SentencePiece model"):
        Tokenizer.load(tmp_path / "junk.model")
    a = train_tokenizer(DOCS, TokenizerConfig(vocab_size=300))
    (tmp_path / "a.model").write_bytes(a.model_bytes)
    assert Tokenizer.load(tmp_path / "a.model").fingerprint == a.fingerprint
    assert train_tokenizer(DOCS, TokenizerConfig(vocab_size=290)).fingerprint != a.fingerprint


def test_word_level_mode_keeps_every_word_as_one_id():
    """tokenizer.vocab_size=0: the corpus's own words; a literal <unk> is a word, and runs of it
    stay one id per word (SentencePiece's own unknown handling would merge them)."""
    lines = ["the <unk> <unk> cat sat", "a cat 's hat N N", "<unk> sat"]
    tokenizer = train_tokenizer(lines, TokenizerConfig(model_type="word", vocab_size=0))
    words = {w for line in lines for w in line.split()}
    assert tokenizer.vocab_size == len(words) + 2  # + <unknown word> and eos
    for line in lines:
        ids = tokenizer.encode(line)
        assert len(ids) == len(line.split()) and 0 not in ids and tokenizer.decode(ids) == line
    assert tokenizer.encode("<unk> <unk>")[0] == tokenizer.encode("<unk> <unk>")[1] != 0
    assert tokenizer.encode("dog") == [0]  # a word never seen
    # ids follow frequency: <unk> (3 times), then N, cat, sat (twice each), then the rest
    assert tokenizer.encode("<unk>") == [2] and sorted(tokenizer.encode("N cat sat")) == [3, 4, 5]


def test_tokenizer_training_samples_lines_in_one_pass():
    """At most input_sentence_size lines are held: all of them in order when they fit, otherwise
    a uniform sample (reservoir sampling), the same one on every run."""
    lines = [f"line {i}" for i in range(1000)]
    assert sample_lines(lines + ["", "  "], 1000) == lines == sample_lines(lines, 0)  # blank lines skipped
    sample = sample_lines(iter(lines), 100)
    assert len(sample) == 100 == len(set(sample)) and set(sample) <= set(lines)
    assert sample == sample_lines(lines, 100)
    # uniform: over 200 draws, each tenth of the lines holds a tenth of the sample (2000 +- 4 sd)
    tenths = collections.Counter(int(line.split()[1]) // 100 for seed in range(200)
                                 for line in sample_lines(lines, 100, seed=seed))
    assert all(abs(count - 2000) < 180 for count in tenths.values()) and len(tenths) == 10
