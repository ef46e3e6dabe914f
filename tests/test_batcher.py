import threading
import time

import pytest
import torch

import lmrnn
from lmrnn.batcher import Batcher, join_states
from lmrnn.errors import UserError
from lmrnn.sampling import Decoding

REQUESTS = [  # (prompt, options): sampled and greedy, several samples, a stop string, different lengths
    ("the king", {"temperature": 0.8, "top_p": 0.9, "seed": 1, "max_new_tokens": 24}),
    ("the", {"temperature": 0.0, "max_new_tokens": 12}),
    ("the old fox", {"temperature": 1.0, "num_samples": 3, "seed": 7, "max_new_tokens": 30, "stop_at_eos": False}),
    ("", {"temperature": 1.2, "seed": 3, "max_new_tokens": 16, "stop": ["e"]}),
    ("the fox sang", {"temperature": 0.7, "repetition_penalty": 1.3, "no_repeat_ngram": 2, "seed": 5,
                      "max_new_tokens": 20}),
]


@pytest.fixture(scope="module")
def alone(tiny_run):
    return lmrnn.load(tiny_run, device="cpu")


def continuations(generation):
    return [(c.text, c.ids, c.finish_reason) for c in generation.continuations]


def test_join_states_puts_the_rows_side_by_side():
    h = [torch.randn(2, b, 3) for b in (1, 3)]
    assert torch.equal(join_states(h), torch.cat(h, dim=1))
    c = [torch.randn(2, b, 3) for b in (1, 3)]
    joined = join_states([(h[0], c[0]), (h[1], c[1])])
    assert torch.equal(joined[0], torch.cat(h, dim=1)) and torch.equal(joined[1], torch.cat(c, dim=1))


def test_concurrent_requests_share_model_steps_and_each_gets_its_own_text(tiny_run, alone):
    lm = lmrnn.load(tiny_run, device="cpu", batch_rows=64)
    batcher = lm.batcher
    results, errors = [None] * len(REQUESTS), []
    first_piece = threading.Event()

    def hold(piece):  # the first request's first piece waits, so that the others join its batch
        if not first_piece.is_set():
            first_piece.set()
            time.sleep(0.5)

    def run(i):
        prompt, options = REQUESTS[i]
        try:
            results[i] = lm.complete(prompt, on_text=hold if i == 0 else None, **options)
        except Exception as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=run, args=(0,))]
    threads[0].start()
    first_piece.wait(timeout=30)
    threads += [threading.Thread(target=run, args=(i,)) for i in range(1, len(REQUESTS))]
    for thread in threads[1:]:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors
    for (prompt, options), got in zip(REQUESTS, results):
        expected = alone.complete(prompt, **options)
        assert continuations(got) == continuations(expected)
        assert [c.logprob for c in got.continuations] == pytest.approx([c.logprob for c in expected.continuations], rel=1e-5)
    assert batcher.rows_stepped > 2 * batcher.steps  # the requests rode together, not one after another


def test_one_failing_request_leaves_the_others_served(tiny_run, alone):
    batcher = Batcher(alone._generator, max_rows=8)
    decoding = Decoding(temperature=0.0, max_new_tokens=40)
    outcome = {}

    def broken(piece):
        raise RuntimeError("the reader left")

    def run(name, on_text):
        try:
            outcome[name] = batcher.generate("the king", decoding, stop_at_eos=False, on_text=on_text)
        except RuntimeError as err:
            outcome[name] = err

    threads = [threading.Thread(target=run, args=(name, on_text)) for name, on_text in (("ok", None), ("broken", broken))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert isinstance(outcome["broken"], RuntimeError)
    expected = alone.complete("the king", temperature=0.0, max_new_tokens=40, stop_at_eos=False)
    assert continuations(outcome["ok"]) == continuations(expected)
    with pytest.raises(UserError, match="--stop must not be empty"):  # an option's error reaches its caller
        batcher.generate("the", decoding, stops=[""])
    assert batcher.generate("the", Decoding(temperature=0.0, max_new_tokens=5)).continuations[0].tokens == 5


def test_requests_past_the_rows_wait_their_turn(tiny_run, alone):
    batcher = Batcher(alone._generator, max_rows=4)
    decoding = Decoding(temperature=1.0, num_samples=3, max_new_tokens=10)
    with pytest.raises(ValueError, match="more than the batch's 4 rows"):
        batcher.generate("the", Decoding(num_samples=5))
    results = [None] * 3
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(
        i, batcher.generate("the", decoding, torch.Generator().manual_seed(i), stop_at_eos=False))) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    for i, got in enumerate(results):
        expected = alone.complete("the", temperature=1.0, num_samples=3, max_new_tokens=10, seed=i, stop_at_eos=False)
        assert continuations(got) == continuations(expected)
    assert batcher.rows_stepped <= 4 * batcher.steps  # never more than max_rows in one call
