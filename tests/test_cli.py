import json
import math
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from lmrnn.cli import app
from tests.conftest import TINY

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def assert_fails_cleanly(result, message):
    """Exit 1, no traceback, and one error line holding `message` (progress log lines aside)."""
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if not line.startswith(("INFO:", "WARNING:"))]
    assert len(errors) == 1 and errors[0].startswith("error: ") and message in errors[0], result.stderr


def test_help_and_version():
    for flag in ("--help", "-h"):
        result = run(flag)
        assert result.exit_code == 0 and "train" in result.stdout and "generate" in result.stdout
    assert run("--version").stdout.strip().startswith("lmrnn ")
    assert "Precedence" in run("train", "-h").stdout
    out = subprocess.run([sys.executable, "-m", "lmrnn", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("lmrnn ")


def test_a_torchrun_worker_leaves_without_finalizing_and_keeps_its_exit_code(monkeypatch, capsys):
    """Under torchrun (RANK set) the process ends through os._exit with the command's exit code;
    otherwise the SystemExit goes on as usual."""
    from lmrnn import cli

    class Left(Exception):
        pass

    def fake_exit(code):
        raise Left(code)

    monkeypatch.setattr(cli.os, "_exit", fake_exit)
    for argv, code in ((["lmrnn", "--version"], 0), (["lmrnn", "train", "--no-such-option"], 2)):
        monkeypatch.setattr(sys, "argv", argv)
        monkeypatch.delenv("RANK", raising=False)
        with pytest.raises(SystemExit) as done:
            cli.run()
        assert done.value.code == code
        monkeypatch.setenv("RANK", "1")
        with pytest.raises(Left) as left:
            cli.run()
        assert left.value.args == (code,)
    capsys.readouterr()


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru", "ffnn"])
def test_train_generate_eval_end_to_end(cell, tmp_path):
    """The shipped corpus (no DATA), the tiny preset, each cell: train -> generate -> eval."""
    out = tmp_path / cell
    result = run("train", *TINY, "--cell", cell, "--out", out, "-s", "device=cpu")
    assert result.exit_code == 0, result.output
    assert "test word ppl" in result.stdout and cell in result.stdout

    greedy = run("generate", out, "--prompt", "the king", "--temperature", "0", "-n", "12")
    assert greedy.exit_code == 0 and greedy.stdout.startswith("the king")
    assert greedy.stdout == run("generate", out, "--prompt", "the king", "--temperature", "0", "-n", "12").stdout
    sampled = [run("generate", out, "-p", "long ago", "-t", "0.8", "--seed", "1", "--top-p", "0.9").stdout for _ in range(2)]
    assert sampled[0] == sampled[1]

    result = run("eval", out, "--json")
    assert result.exit_code == 0, result.output
    [row] = json.loads(result.stdout)
    assert set(row) >= {"run", "split", "tokens", "words", "bytes", "nll", "ppl", "word_ppl", "bits_per_byte"}
    assert row["split"] == "test" and row["ppl"] == pytest.approx(math.exp(row["nll"] / row["tokens"]))
    summary = json.loads((out / "summary.json").read_text())
    assert row["ppl"] == pytest.approx(summary["test_ppl"], rel=1e-6)  # eval reproduces train's test figure


def test_eval_compares_runs_and_other_data(tiny_run, tmp_path):
    result = run("eval", tiny_run, tiny_run, "--split", "validation")
    assert result.exit_code == 0 and result.stdout.count(str(tiny_run)[:20]) >= 2
    other = tmp_path / "other.txt"
    other.write_text("".join(f"the crow sang over the hill {i} .\n" for i in range(60)))
    [row] = json.loads(run("eval", tiny_run, "--data", other, "--json").stdout)
    # the whole file (it once scored only its last 5%, the test split carved off it)
    assert row["split"] == "whole" and row["words"] == 60 * (8 + 1)  # each line 8 words + end of line
    as_test = tmp_path / "as-test"
    as_test.mkdir()
    (as_test / "train.txt").write_text("the king .\n")
    (as_test / "valid.txt").write_text("the fox .\n")
    (as_test / "test.txt").write_text(other.read_text())
    [same] = json.loads(run("eval", tiny_run, "--data", as_test, "--json").stdout)
    assert same["split"] == "test" and (same["tokens"], same["nll"]) == (row["tokens"], pytest.approx(row["nll"], rel=1e-9))
    assert "all of" in run("eval", tiny_run, "--data", other).stdout
    refused = invoke("eval", tiny_run, "--data", other, "--split", "test")
    assert refused.exit_code != 0 and "no splits of its own" in refused.stderr


def test_eval_does_not_depend_on_the_batch_size(tiny_run):
    [wide] = json.loads(run("eval", tiny_run, "--json", "--batch-size", "32").stdout)
    [single] = json.loads(run("eval", tiny_run, "--json", "--batch-size", "1").stdout)
    [cold] = json.loads(run("eval", tiny_run, "--json", "--batch-size", "32", "--burn-in", "0").stdout)
    [short] = json.loads(run("eval", tiny_run, "--json", "--batch-size", "32", "--burn-in", "16").stdout)
    assert single["tokens"] == wide["tokens"] == cold["tokens"] == short["tokens"]  # every token scored once
    # this under-trained run (40 steps): 32 rows from the zero state are 4% off one stream ...
    assert cold["ppl"] > 1.02 * single["ppl"]
    # ... 16 tokens of burn-in (less than a row) bring them within 1% ...
    assert short["ppl"] == pytest.approx(single["ppl"], rel=0.01)
    # ... and the default 256 covers this short split whole: one stream exactly
    assert wide["nll"] == pytest.approx(single["nll"], rel=1e-5)
    assert_fails_cleanly(run("eval", tiny_run, "--batch-size", "0"), "--batch-size must be >= 1")


def test_tokenizer_train_then_reuse(corpus_dir, tmp_path):
    model = tmp_path / "tok.model"
    result = run("tokenizer", "train", corpus_dir, "--out", model, "--vocab-size", "300", "--model-type", "unigram")
    assert result.exit_code == 0 and model.is_file(), result.output
    assert_fails_cleanly(run("tokenizer", "train", corpus_dir, "--out", model), "already exists")
    out = tmp_path / "run"
    assert run("train", corpus_dir, *TINY, "--out", out, "-s", f"tokenizer.path={model}", "-s", "train.max_steps=2").exit_code == 0
    assert (out / "tokenizer.model").read_bytes() == model.read_bytes()


class Payload:
    """Unpickling this opens (creates) the file `marker`: code a tampered train_state.pt would run."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def runs(tiny_run, tmp_path):
    """Copies of a good run and of runs broken in every way a user may meet."""
    import os
    import shutil
    import socket

    import torch

    made = {}
    for name in ("run", "weights", "newer", "mismatch", "missing_key", "tampered", "locked", "tokenizer"):
        made[name] = tmp_path / name
        shutil.copytree(tiny_run, made[name])
    config = (tiny_run / "config.yaml").read_text()
    (made["weights"] / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{bad")
    (made["newer"] / "config.yaml").write_text(config.replace("format: 8", "format: 9"))
    (made["mismatch"] / "config.yaml").write_text(config.replace("vocab_size: 300", "vocab_size: 299"))
    (made["missing_key"] / "config.yaml").write_text(config.replace("  num_layers: 1\n", ""))
    torch.save({"step": 1, "model": {}, "optimizer": {}, "rng": {}, "x": Payload(str(tmp_path / "pwned"))},
               made["tampered"] / "train_state.pt")
    (made["locked"] / ".lock").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    (made["tokenizer"] / "tokenizer.model").write_bytes(b"not a sentencepiece model")
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "a_file").write_text("x")
    return made


# (command line with {placeholders}, the message stderr must hold)
BAD_INPUTS = [
    ("train {tmp}/missing.txt", "no such file or folder"),
    ("train {tmp}/empty.txt --out {tmp}/new", "is empty"),
    ("train {tiny} -s model.hiden_size=3", "did you mean model.hidden_size"),
    ("train {tiny} -s train.bptt=abc", "train.bptt must be an integer"),
    ("train {tiny} -s train.lr=nan", "train.lr must be a finite number"),
    ("train {tiny} -s model", "must look like key.path=value"),
    ("train {tiny} -s model=3", "'model' is a section"),
    ("train {tiny} -s train.epochs=0 -s train.max_steps=0", "set at least one stop limit"),
    ("train {tiny} -s tokenizer.vocab_size=2", "tokenizer.vocab_size must be at least 4"),
    ("train {tiny} -s model.weight_drop=1", "model.weight_drop must be in [0, 1)"),
    ("train {tiny} --cell ffnn -s model.layer_norm=true", "model.layer_norm applies to the recurrent cells"),
    ("train {tiny} --cell ngram -s train.tar=1", "train.ar and train.tar apply to the recurrent cells"),
    ("train {tiny} -s train.optimizer=asgd", "train.optimizer must be one of adamw, sgd, nt_asgd"),
    ("train --resume --out {run} -s model.weight_drop=0.5", "cannot change model.weight_drop"),
    ("train {corpus} {tiny} -s tokenizer.vocab_size=100 --out {tmp}/new", "too small for this corpus"),
    ("train {corpus} {tiny} -s train.bptt=5000 --out {tmp}/new", "too few for train.batch_size"),
    ("train --config {tmp}/nope.yaml", "config file not found"),
    ("train {corpus} {tiny} --out {run}", "already holds a run"),
    ("train {corpus} {tiny} --out {tmp}/a_file", "is a file, not a folder"),
    ("train --resume --overwrite --out {run}", "exclude each other"),
    ("train --resume --out {run} {tiny}", "drop --config"),
    ("train --resume --out {run} -s model.hidden_size=8", "cannot change model.hidden_size"),
    ("train --resume --out {run}", "already reached its stop limit"),
    ("train --resume --out {tampered} -s train.max_steps=50", "objects other than tensors and plain data; refused"),
    ("train --resume --out {locked} -s train.max_steps=50", "is being trained by process"),
    ("train --resume --out {mismatch} -s train.max_steps=50", "tokenizer.model has 300 pieces but config.yaml"),
    ("train --resume --out {tmp}/nothing", "run directory not found"),
    ("generate {run} --temperature -1", "--temperature must be >= 0"),
    ("generate {run} --top-p 0", "--top-p must be in"),
    ("generate {run} --top-k -2", "--top-k must be >= 0"),
    ("generate {run} -n 0", "--max-new-tokens must be >= 1"),
    ("generate {run} --min-p 1", "--min-p must be in [0, 1)"),
    ("generate {run} --repetition-penalty 0", "--repetition-penalty must be > 0"),
    ("generate {run} --no-repeat-ngram -1", "--no-repeat-ngram must be >= 0"),
    ("generate {run} --beams 0", "--beams must be >= 1"),
    ("generate {run} --beams 3 --top-p 0.9 -t 0.7", "does not combine with --temperature, --top-p"),
    ("generate {run} --beams 2 --num-return 3", "--num-return 3 needs at least as many --beams"),
    ("generate {run} --num-return 2", "--num-return needs --beams > 1"),
    ("generate {run} --length-penalty 2", "applies to beam search only"),
    ("generate {run} --num-samples 3 -t 0", "gives identical texts"),
    ("generate {run} --beams 2 --no-stop-at-eos", "drop --no-stop-at-eos"),
    ("generate {run} --max-seconds 0", "--max-seconds must be > 0"),
    ("generate {run} -p x --prompt-file {tmp}/a_file", "give the prompt once"),
    ("generate {run} --prompt-file {tmp}/missing.txt", "no such file"),
    ("generate {run} --interactive -p x", "--interactive reads its prompts"),
    ("generate {tmp}/nothing", "run directory not found"),
    ("generate {weights} -p x", "model.safetensors is truncated, corrupted"),
    ("generate {newer}", "written by a newer lmrnn (run format 9"),
    ("generate {missing_key}", "is missing model.num_layers"),
    ("generate {tokenizer}", "is not a SentencePiece model"),
    ("score {run} --text-file {tmp}/missing.txt", "no such file"),
    ("score {run} --text-file {tmp}/empty.txt", "nothing to score"),
    ("score {run} --text-file {tmp}/a_file --batch-size 0", "--batch-size must be >= 1"),
    ("score {tmp}/nothing --text-file {tmp}/a_file", "run directory not found"),
    ("eval {tmp}", "incomplete: missing config.yaml, tokenizer.model, model.safetensors"),
    ("eval {weights}", "model.safetensors is truncated, corrupted"),
    ("eval {mismatch}", "tokenizer.model has 300 pieces but config.yaml says model.vocab_size=299"),
    ("eval {run} --batch-size 0", "--batch-size must be >= 1"),
    ("eval {run} --burn-in -1", "--burn-in must be >= 0"),
    ("eval {run} --data {tmp}/missing.txt", "no such file or folder"),
    ("compare {corpus} --cells lstm,cnn --out {tmp}/cmp", "--cells"),
    ("compare {corpus} --max-steps 0 --out {tmp}/cmp", "--max-steps must be > 0"),
    ("compare {corpus} --tune model.cell --out {tmp}/cmp", "--tune model.cell: not a key a comparison can tune"),
    ("compare {corpus} --tune train.lr=1:0.1 --out {tmp}/cmp", "LOW must be below HIGH"),
    ("compare {corpus} --tune train.lr --trials 0 --out {tmp}/cmp", "--trials must be >= 1"),
    ("compare {corpus} --cells lstm,ffnn --tune model.weight_drop --max-steps 3 --out {tmp}/cmp",
     "does not suit cell ffnn"),
    ("probe context {run} --max-context 0 --plot {tmp}/c.png", "--max-context and --targets must be >= 1"),
    ("probe gradients {tmp}/nothing --plot {tmp}/g.png", "run directory not found"),
    ("tokenizer train {corpus} --out {run}/config.yaml", "already exists"),
    ("serve {run} --batch-rows -1", "--batch-rows >= 0"),
]


@pytest.mark.parametrize("line, message", BAD_INPUTS, ids=[line.split(" {")[0] + f" #{i}" for i, (line, _) in enumerate(BAD_INPUTS)])
def test_bad_input_fails_cleanly_and_changes_no_run(runs, corpus_dir, tmp_path, line, message):
    """Non-zero exit, one clear line on stderr, no traceback, every run directory byte-identical."""
    def snapshot():
        return {p: p.read_bytes() for d in runs.values() for p in sorted(d.iterdir()) if p.is_file()}

    before = snapshot()
    args = line.format(tmp=tmp_path, tiny=" ".join(TINY), corpus=corpus_dir, **runs).split()
    assert_fails_cleanly(run(*args), message)
    assert snapshot() == before
    assert not (tmp_path / "pwned").exists()


def test_compare_command_prints_the_table_and_writes_the_report(corpus_dir, tmp_path):
    out = tmp_path / "cmp"
    args = ["compare", corpus_dir, *TINY, "--cells", "rnn,gru", "--max-steps", "4", "--out", out, "-s", "device=cpu"]
    result = run(*args)
    assert result.exit_code == 0, result.output
    assert "rnn" in result.stdout and "gru" in result.stdout and "test word ppl" in result.stdout
    assert json.loads((out / "results.json").read_text())["seeds"] == [1, 2, 3]  # three seeds by default
    assert (out / "report.md").is_file() and (out / "curves.png").is_file()
    assert "finished earlier, kept" in run(*args).stderr  # a second call retrains nothing
    assert_fails_cleanly(run("compare", corpus_dir, "--cells", "lstm,cnn", "--out", tmp_path / "x"), "--cells")
    assert_fails_cleanly(run("compare", corpus_dir, "--max-steps", "0", "--out", tmp_path / "x"), "--max-steps must be > 0")
    assert_fails_cleanly(run("compare", corpus_dir, *TINY, "--cells", "rnn", "--max-steps", "4", "--out", out),
                         "different settings")


def invoke(*args, input=None):
    return runner.invoke(app, [str(a) for a in args], input=input)


def test_generate_streams_the_prompt_and_continuation_and_nothing_else(tiny_run, tmp_path):
    import lmrnn

    expected = "the king" + lmrnn.load(tiny_run, device="cpu").generate("the king", max_new_tokens=20, seed=5)
    result = run("generate", tiny_run, "-p", "the king", "-n", "20", "--seed", "5", "--device", "cpu")
    assert result.exit_code == 0 and result.stdout == expected + "\n"
    assert run("generate", tiny_run, "-p", "the king", "-n", "20", "--seed", "5", "--no-echo").stdout == expected[8:] + "\n"
    # the prompt from a file (one final newline dropped) or from piped stdin
    (tmp_path / "prompt.txt").write_text("the king\n")
    assert run("generate", tiny_run, "--prompt-file", tmp_path / "prompt.txt", "-n", "20", "--seed", "5").stdout == expected + "\n"
    assert invoke("generate", tiny_run, "-n", "20", "--seed", "5", input="the king\n").stdout == expected + "\n"
    assert invoke("generate", tiny_run, "--prompt-file", "-", "-n", "20", "--seed", "5", input="the king").stdout == expected + "\n"


def test_generate_json_samples_and_beams(tiny_run):
    result = run("generate", tiny_run, "-p", "the", "-n", "8", "--num-samples", "3", "--seed", "1", "--json",
                 "--stop", "\\n", "--no-stop-at-eos")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["prompt"] == "the" and out["seed"] == 1 and out["decoding"]["num_samples"] == 3
    assert len(out["continuations"]) == 3
    for c in out["continuations"]:
        assert "\n" not in c["text"] and c["logprob"] < 0 and 1 <= c["tokens"] <= 8
        assert c["finish_reason"] in ("stop", "length")
    beams = json.loads(run("generate", tiny_run, "-p", "the", "-n", "8", "--beams", "3", "--num-return", "2", "--json").stdout)
    first, second = beams["continuations"]
    assert first["score"] >= second["score"] and "score" in first
    plain = run("generate", tiny_run, "-p", "the", "-n", "8", "--beams", "3", "--num-return", "2").stdout
    assert plain == f"the{first['text']}\n\nthe{second['text']}\n"


def test_interactive_generation_keeps_the_model_loaded(tiny_run):
    result = invoke("generate", tiny_run, "--interactive", "-t", "0", "-n", "6", input="the king\n\nthe fox\n")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    single = run("generate", tiny_run, "-p", "the fox", "-t", "0", "-n", "6").stdout
    assert len(lines) == 3 and lines[0].startswith("the king") and lines[2] + "\n" == single
    assert "Ctrl-D quits" in result.stderr


def test_score_prints_each_line_and_matches_eval(tiny_run, tmp_path):
    """The score of a line equals `eval`'s NLL of a split made of that line alone."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.txt").write_text("the king ran over the hill .\n")
    (tmp_path / "data" / "valid.txt").write_text("the crow .\n")
    (tmp_path / "data" / "test.txt").write_text("the old fox sang .\n")
    [evaluated] = json.loads(run("eval", tiny_run, "--data", tmp_path / "data", "--json", "--batch-size", "1").stdout)
    result = invoke("score", tiny_run, "--json", input="the old fox sang .\nthe king\n\n")
    assert result.exit_code == 0, result.output
    first, second, empty = json.loads(result.stdout)
    assert first["logprob"] == pytest.approx(-evaluated["nll"], rel=1e-6) and first["tokens"] == evaluated["tokens"]
    assert first["ppl"] == pytest.approx(evaluated["ppl"], rel=1e-6)
    assert second["text"] == "the king" and empty["tokens"] == 1  # an empty line: only its end
    table = invoke("score", tiny_run, input="the old fox sang .\n")
    assert table.exit_code == 0 and "the old fox sang" in table.stdout and "ppl" in table.stdout


def test_eval_plot_and_probe_commands(tiny_run, tmp_path):
    curves = tmp_path / "curves.png"
    result = run("eval", tiny_run, "--plot", curves)
    assert result.exit_code == 0 and curves.read_bytes().startswith(b"\x89PNG"), result.output
    gradients = run("probe", "gradients", tiny_run, "--length", "12", "--windows", "3", "--burn-in", "4",
                    "--plot", tmp_path / "g.png", "--device", "cpu")
    assert gradients.exit_code == 0, gradients.output
    assert "trained" in gradients.stdout and "init" in gradients.stdout and "vanished at" in gradients.stdout
    context = run("probe", "context", tiny_run, "--max-context", "8", "--targets", "10", "--json", "--plot", tmp_path / "c.png")
    [row] = json.loads(context.stdout)
    assert row["ks"] == [1, 2, 4, 8] and (tmp_path / "c.png").is_file()
    recall = run("probe", "recall", tiny_run, "--max-fillers", "1", "--stories", "2", "--plot", tmp_path / "r.png")
    assert recall.exit_code == 0 and "words" in recall.stdout
    assert_fails_cleanly(run("probe", "context", tiny_run, "--max-context", "0", "--plot", tmp_path / "c.png"),
                         "--max-context and --targets must be >= 1")
    assert_fails_cleanly(run("probe", "gradients", tmp_path / "none", "--plot", tmp_path / "g.png"), "run directory not found")
