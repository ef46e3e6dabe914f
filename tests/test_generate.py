import logging

import pytest
import torch

import lmrnn
from lmrnn.errors import UserError
from lmrnn.generate import TextGenerator
from lmrnn.text_stream import TextStream
from lmrnn.sampling import Decoding


@pytest.fixture(scope="module")
def generator(tiny_run) -> TextGenerator:
    return TextGenerator(tiny_run, "cpu")


def one(generator: TextGenerator, prompt: str, seed: int = 0, **options):
    stream_options = {k: options.pop(k) for k in ("stops", "stop_at_eos", "max_seconds") if k in options}
    return generator.generate(prompt, Decoding(**options), generator.random_generator(seed), **stream_options).continuations[0]


def test_greedy_equals_a_step_by_step_argmax_by_hand(generator):
    """Re-read the whole sequence at every step (no carried state) and take the argmax."""
    tokenizer, model = generator.tokenizer, generator.model
    ids = [tokenizer.eos_id] + tokenizer.encode("the king")
    new, logprob = [], 0.0
    with torch.inference_mode():
        while len(new) < 25:
            logprobs = model(torch.tensor([ids + new]))[0][0, -1].log_softmax(dim=-1)
            new.append(int(logprobs.argmax()))
            logprob += logprobs[new[-1]].item()
            if new[-1] == tokenizer.eos_id:
                break
    greedy = one(generator, "the king", temperature=0, max_new_tokens=25)
    text_ids = new[:-1] if new[-1] == tokenizer.eos_id else new
    assert greedy.text == tokenizer.decode(ids[1:] + text_ids)[len("the king"):]
    assert greedy.tokens == len(new) and greedy.logprob == pytest.approx(logprob, abs=1e-4)
    assert greedy.finish_reason == ("eos" if new[-1] == tokenizer.eos_id else "length")
    assert one(generator, "the king", top_k=1, max_new_tokens=25).text == greedy.text
    assert one(generator, "the king", top_p=1e-9, max_new_tokens=25, seed=4).text == greedy.text


def test_same_seed_same_text_different_seed_different_text(generator, tiny_run):
    def text(seed):
        return one(generator, "the fox", seed=seed, max_new_tokens=40, stop_at_eos=False).text
    assert text(3) == text(3) and text(3) != text(4)
    assert lmrnn.load(tiny_run, device="cpu").generate("the fox", max_new_tokens=40, seed=3, stop_at_eos=False) == text(3)


def test_samples_are_one_batch_of_independent_draws(generator):
    decoding = Decoding(temperature=1.0, num_samples=16, max_new_tokens=30)
    generation = generator.generate("the", decoding, generator.random_generator(1), stop_at_eos=False)
    texts = [c.text for c in generation.continuations]
    assert len(texts) == 16 and len(set(texts)) > 8
    assert all(c.tokens == 30 and c.finish_reason == "length" for c in generation.continuations)
    assert generation.prompt_tokens == len(generator.tokenizer.encode("the"))


def test_stop_strings_cut_the_text_and_end_it(generator):
    full = one(generator, "the king", seed=7, max_new_tokens=40, stop_at_eos=False).text
    stop = full[15:18]  # same seed: the same draws up to the stop
    cut = one(generator, "the king", seed=7, max_new_tokens=40, stop_at_eos=False, stops=["@@@", stop])
    assert cut.text == full[:full.index(stop)] and cut.finish_reason == "stop" and cut.tokens < 40


def test_time_limit_and_length_limit(generator):
    assert one(generator, "the", max_new_tokens=500, max_seconds=1e-9, stop_at_eos=False).finish_reason == "time"
    assert one(generator, "the", max_new_tokens=3, stop_at_eos=False).tokens == 3
    with pytest.raises(UserError, match="--stop must not be empty"):
        one(generator, "the", stops=[""])


def test_beam_search_through_the_generator(generator):
    decoding = Decoding(beams=4, num_return=3, max_new_tokens=20)
    beams = generator.generate("the king", decoding).continuations
    assert len(beams) == 3 and beams[0].score >= beams[1].score >= beams[2].score


def test_prompt_lines_are_documents_and_an_empty_prompt_starts_the_text(generator, caplog):
    tok = generator.tokenizer
    eos = tok.eos_id
    assert generator.prompt_ids("the king\nthe fox") == [eos] + tok.encode("the king") + [eos] + tok.encode("the fox")
    with caplog.at_level(logging.INFO, logger="lmrnn"):
        assert generator.prompt_ids("") == [eos]
    assert "empty prompt: generating from the start-of-text state" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="lmrnn"):
        ids = generator.prompt_ids("the ж king")
    assert "never saw, read as UTF-8 byte pieces: 'ж'" in caplog.text
    assert tok.decode(ids[1:]) == "the ж king"


def test_stream_releases_whole_characters_and_decodes_like_the_tokenizer(generator):
    """Pieces pushed one at a time: nothing broken is released, and the pieces join into exactly
    what decoding the ids at once gives (the end-of-sequence as a newline)."""
    tok = generator.tokenizer
    lines = ["the old king ran", "ж€ over the 😀 hill", "fox"]
    ids = [i for n, line in enumerate(lines) for i in ([tok.eos_id] if n else []) + tok.encode(line)]
    assert any(tok.sp.is_byte(i) for i in ids)
    stream = TextStream(tok)
    pieces = [stream.push(i) for i in ids] + [stream.finish()]
    assert not any("\ufffd" in p for p in pieces) and "".join(pieces) == "\n".join(lines) == stream.text
    # continuing a prompt: the first piece carries its space
    prompt = tok.encode("the old")
    stream = TextStream(tok, context=prompt)
    assert "".join([stream.push(i) for i in tok.encode("the old king")[len(prompt):]] + [stream.finish()]) == " king"


def test_stream_holds_back_a_possible_stop_string(generator):
    tok = generator.tokenizer
    stream = TextStream(tok, stops=["king ran"])
    released = []
    for i in tok.encode("the old king ran over the hill"):
        released.append(stream.push(i))
        if stream.stopped:
            break
    assert "".join(released) + stream.finish() == "the old " == stream.text and stream.stopped
    assert not any("king" in piece for piece in released)


def test_a_stop_string_made_of_byte_pieces_stops_at_its_last_byte(generator):
    """'ж' is two byte pieces for this tokenizer: the stop string is found once its second byte
    arrives (not before, when the text ends in half a character), with or without text before."""
    tok = generator.tokenizer
    for stop in ("ж", "kingж"):
        stream = TextStream(tok, stops=[stop])
        released = []
        ids = tok.encode("the kingж hill")
        assert sum(tok.sp.is_byte(i) for i in ids) == 2
        for n, i in enumerate(ids):
            released.append(stream.push(i))
            if stream.stopped:
                break
        assert tok.sp.is_byte(ids[n]) and not tok.sp.is_byte(ids[n + 1])  # stopped at the second byte
        assert "".join(released) + stream.finish() == "the kingж hill"[:"the kingж hill".index(stop)] == stream.text


def test_stream_of_random_pieces_equals_decoding_them_at_once(generator):
    """Any ids at all (space-only pieces, stray or split byte pieces), with or without a context:
    the released text is what the tokenizer decodes, character for character."""
    tok = generator.tokenizer
    rng = torch.Generator().manual_seed(0)
    pieces = [i for i in range(tok.vocab_size) if i not in (tok.eos_id, 0)]
    space = tok.sp.piece_to_id("\u2581")
    for trial in range(300):
        ids = [pieces[j] for j in torch.randint(len(pieces), (int(torch.randint(1, 30, ())),), generator=rng)]
        if trial % 3 == 0:
            ids[len(ids) // 2:len(ids) // 2] = [space] * 3
        context = tok.encode("the old") if trial % 2 else []
        stream = TextStream(tok, context=context)
        text = "".join([stream.push(i) for i in ids] + [stream.finish()])
        assert text == tok.decode(context + ids)[len(tok.decode(context)):], (context, ids)


def test_penalties_keep_the_text_from_repeating(generator):
    prompt = generator.prompt_ids("the king")
    bigrams = one(generator, "the king", temperature=0, max_new_tokens=60, stop_at_eos=False, no_repeat_ngram=2).ids
    sequence = prompt + bigrams
    assert len(set(zip(sequence, sequence[1:]))) == len(sequence) - 1  # no bigram twice
    plain = one(generator, "the king", temperature=0, max_new_tokens=40, stop_at_eos=False).ids
    penalised = one(generator, "the king", temperature=0, max_new_tokens=40, stop_at_eos=False, repetition_penalty=3.0).ids
    assert len(set(plain)) < 10 < len(set(penalised))  # the tiny model loops on a few tokens unless penalised


def test_the_prompt_is_read_in_one_call_and_each_token_costs_one_step(generator, monkeypatch):
    calls = []
    forward = generator.model.forward
    monkeypatch.setattr(generator.model, "forward", lambda ids, hidden=None: calls.append(tuple(ids.shape)) or forward(ids, hidden))
    prompt = "the old king ran over the hill"
    continuation = one(generator, prompt, max_new_tokens=5, stop_at_eos=False)
    assert continuation.tokens == 5
    assert calls == [(1, 1 + len(generator.tokenizer.encode(prompt)))] + [(1, 1)] * 4


def test_a_sample_whose_every_next_token_is_banned_ends_without_emitting_one(generator, caplog):
    """no-repeat-ngram 1 bans every token already in the sequence: the continuation runs through
    the unseen tokens once each, then ends with its own reason. Unfixed, greedy kept emitting
    banned id 0 and sampling the last id, both already seen."""
    prompt = generator.prompt_ids("the king")
    vocab = generator.model.cfg.vocab_size
    for options in ({"temperature": 0}, {"temperature": 1.0}, {"temperature": 0.7, "top_k": 5}):
        with caplog.at_level(logging.WARNING, logger="lmrnn.generate"):
            ended = one(generator, "the king", max_new_tokens=vocab + 5, no_repeat_ngram=1, **options)
        assert ended.finish_reason == "no_allowed_token" and "--no-repeat-ngram" in caplog.text
        assert len(set(ended.ids)) == len(ended.ids) == vocab - len(set(prompt))
        assert not set(ended.ids) & set(prompt)


def test_only_the_sample_at_a_dead_end_ends(generator, monkeypatch):
    """Row 0 finds every token banned after three tokens; rows 1 and 2 go on to the length limit,
    and row 0's log-probability counts its three tokens only."""
    import lmrnn.generate

    class DeadEndForRowZero(lmrnn.generate.NgramBlocker):
        def ban(self, logits):
            logits = super().ban(logits)
            if len(self.sequences[0]) == self.start + 3:
                logits = logits.clone()
                logits[0] = float("-inf")
            return logits

    DeadEndForRowZero.start = len(generator.prompt_ids("the"))
    monkeypatch.setattr(lmrnn.generate, "NgramBlocker", DeadEndForRowZero)
    decoding = Decoding(temperature=1.0, num_samples=3, max_new_tokens=12, no_repeat_ngram=9)
    rows = generator.generate("the", decoding, generator.random_generator(2), stop_at_eos=False).continuations
    assert [(r.tokens, r.finish_reason) for r in rows] == [(3, "no_allowed_token"), (12, "length"), (12, "length")]
    ids = generator.prompt_ids("the") + rows[0].ids
    with torch.inference_mode():
        logprobs = generator.model(torch.tensor([ids]))[0][0].log_softmax(dim=-1)
    start = len(ids) - 3
    assert rows[0].logprob == pytest.approx(sum(logprobs[start - 1 + i, t].item() for i, t in enumerate(rows[0].ids)), abs=1e-4)


def test_beam_search_at_a_dead_end_says_so(generator, caplog):
    decoding = Decoding(beams=2, num_return=2, max_new_tokens=400, no_repeat_ngram=1)
    with caplog.at_level(logging.WARNING, logger="lmrnn.generate"):
        beams = generator.generate("the king", decoding).continuations
    assert [b.finish_reason for b in beams] == ["no_allowed_token"] and beams[0].text == ""
    assert "nothing was generated" in caplog.text


def test_a_model_with_broken_weights_is_refused_not_sampled(tiny_run):
    broken = TextGenerator(tiny_run, "cpu")
    with torch.no_grad():
        next(broken.model.parameters()).fill_(float("nan"))
    for decoding in (Decoding(), Decoding(temperature=0), Decoding(beams=2)):
        with pytest.raises(UserError, match="not finite"):
            broken.generate("the king", decoding)
