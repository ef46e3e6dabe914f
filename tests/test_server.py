import concurrent.futures
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

import lmrnn

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, body, raw: bool = False):
    data = body if raw else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


@pytest.fixture(scope="module")
def server(tiny_run):
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "lmrnn", "serve", str(tiny_run), "--port", str(port),
                                "--device", "cpu", "--max-tokens", "64"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            with urllib.request.urlopen(url + "/health", timeout=1) as response:
                if response.status == 200:
                    break
        except OSError:
            time.sleep(0.2)
    else:
        process.kill()
        pytest.fail("the server did not start: " + process.stderr.read().decode()[-1000:])
    yield url
    process.terminate()
    process.wait(timeout=30)


def test_completions_are_the_apis_text(server, tiny_run):
    lm = lmrnn.load(tiny_run, device="cpu")
    status, text = post(server + "/v1/completions", {"prompt": "the king", "max_tokens": 20, "temperature": 0.8,
                                                      "top_p": 0.9, "seed": 4})
    body = json.loads(text)
    assert status == 200 and body["object"] == "text_completion"
    generation = lm.complete("the king", max_new_tokens=20, temperature=0.8, top_p=0.9, seed=4)
    expected = generation.continuations[0]
    [choice] = body["choices"]
    assert choice["text"] == expected.text and choice["finish_reason"] == {"eos": "stop", "length": "length"}[expected.finish_reason]
    assert body["usage"]["completion_tokens"] == expected.tokens and body["usage"]["prompt_tokens"] == generation.prompt_tokens
    status, text = post(server + "/v1/completions", {"prompt": "the", "max_tokens": 8, "n": 3, "seed": 1, "stop": "\n"})
    assert status == 200 and len(json.loads(text)["choices"]) == 3


def test_streaming_sends_the_same_text_as_events(server):
    request = {"prompt": "the fox", "max_tokens": 30, "temperature": 0.7, "seed": 2}
    whole = json.loads(post(server + "/v1/completions", request)[1])["choices"][0]["text"]
    status, text = post(server + "/v1/completions", {**request, "stream": True})
    events = [line.removeprefix("data: ") for line in text.split("\n\n") if line]
    assert status == 200 and events[-1] == "[DONE]"
    chunks = [json.loads(e)["choices"][0] for e in events[:-1]]
    assert "".join(c["text"] for c in chunks) == whole and chunks[-1]["finish_reason"] in ("stop", "length")


def test_score_endpoint_is_the_apis(server, tiny_run):
    lines = ["the old fox sang .", "sang fox old the ."]
    status, text = post(server + "/v1/score", {"lines": lines})
    got = json.loads(text)["scores"]
    expected = lmrnn.load(tiny_run, device="cpu").score(lines)
    assert status == 200 and [s["logprob"] for s in got] == pytest.approx([s.logprob for s in expected])


@pytest.mark.parametrize("body, status, message", [
    (b"{not json", 400, "JSON"),
    ({"prompt": "the", "max_tokens": 65}, 400, "over this server's limit of 64"),
    ({"prompt": "the", "temperature": -1}, 400, "temperature"),
    ({"prompt": "the", "top_p": 0}, 400, "top_p"),
    ({"prompt": "x" * 20_001}, 413, "characters"),
    ({"prompt": "the", "n": 2, "stream": True}, 400, "1 with stream"),
    ({"prompt": "the", "stop": [""]}, 400, "must not be empty"),
    ({"lines": []}, 400, "1 to 1000 lines"),
])
def test_bad_requests_get_a_one_line_json_error_and_the_server_keeps_serving(server, body, status, message):
    path = "/v1/score" if isinstance(body, dict) and "lines" in body else "/v1/completions"
    got, text = post(server + path, body, raw=isinstance(body, bytes))
    assert got == status and "\n" not in text.strip()
    assert message in json.loads(text)["error"]["message"]
    with urllib.request.urlopen(server + "/health", timeout=10) as response:
        assert json.loads(response.read())["status"] == "ok"


def test_concurrent_requests_are_all_served(server):
    def one(seed):
        return post(server + "/v1/completions", {"prompt": "the king", "max_tokens": 30, "seed": seed})

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(16)))
    assert [status for status, _ in results] == [200] * 16
    assert len({json.loads(text)["choices"][0]["text"] for _, text in results}) > 1
