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
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and message in result.stderr
    assert result.stderr.strip().count("\n") == 0  # one line


def test_help_and_version():
    for flag in ("--help", "-h"):
        result = run(flag)
        assert result.exit_code == 0 and "train" in result.stdout and "generate" in result.stdout
    assert run("--version").stdout.strip().startswith("lmrnn ")
    assert "Precedence" in run("train", "-h").stdout
    out = subprocess.run([sys.executable, "-m", "lmrnn", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("lmrnn ")


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
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
    assert row["words"] == 3 * (8 + 1)  # 5% of 60 lines, each 8 words + end of line


def test_eval_batch_size_changes_only_the_row_starts(tiny_run):
    [wide] = json.loads(run("eval", tiny_run, "--json").stdout)
    [single] = json.loads(run("eval", tiny_run, "--json", "--batch-size", "1").stdout)
    assert single["tokens"] == wide["tokens"]  # every token still scored once
    assert single["nll"] == pytest.approx(wide["nll"], rel=0.05)  # only the 8 row starts differ
    assert_fails_cleanly(run("eval", tiny_run, "--batch-size", "0"), "--batch-size must be >= 1")


def test_tokenizer_train_then_reuse(corpus_dir, tmp_path):
    model = tmp_path / "tok.model"
    result = run("tokenizer", "train", corpus_dir, "--out", model, "--vocab-size", "300", "--model-type", "unigram")
    assert result.exit_code == 0 and model.is_file(), result.output
    assert_fails_cleanly(run("tokenizer", "train", corpus_dir, "--out", model), "already exists")
    out = tmp_path / "run"
    assert run("train", corpus_dir, *TINY, "--out", out, "-s", f"tokenizer.path={model}", "-s", "train.max_steps=2").exit_code == 0
    assert (out / "tokenizer.model").read_bytes() == model.read_bytes()


def test_user_errors_are_one_clean_line(tmp_path, tiny_run):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert_fails_cleanly(run("train", tmp_path / "missing.txt"), "no such file or folder")
    assert_fails_cleanly(run("train", empty, "--out", tmp_path / "r"), "is empty")
    assert_fails_cleanly(run("train", *TINY, "-s", "model.hiden_size=3"), "did you mean model.hidden_size")
    assert_fails_cleanly(run("train", *TINY, "-s", "train.bptt=abc"), "train.bptt must be an integer")
    assert_fails_cleanly(run("train", "--config", tmp_path / "nope.yaml"), "config file not found")
    assert_fails_cleanly(run("train", *TINY, "--out", tiny_run), "already holds a run")
    assert_fails_cleanly(run("train", "--resume", "--overwrite", "--out", tiny_run), "exclude each other")
    assert_fails_cleanly(run("train", "--resume", "--out", tiny_run, "-s", "model.hidden_size=8"), "cannot change model.hidden_size")
    assert_fails_cleanly(run("generate", tiny_run, "--temperature", "-1"), "--temperature must be >= 0")
    assert_fails_cleanly(run("generate", tiny_run, "--top-p", "0"), "--top-p must be in")
    assert_fails_cleanly(run("generate", tmp_path / "nothing"), "run directory not found")
    assert_fails_cleanly(run("eval", tmp_path), "incomplete: missing config.yaml, tokenizer.model, model.safetensors")


def test_corrupted_weights_are_reported_not_raised(tiny_run, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_run, broken)
    (broken / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{bad")
    assert_fails_cleanly(run("eval", broken), "model.safetensors is truncated, corrupted")
    assert_fails_cleanly(run("generate", broken, "-p", "x"), "model.safetensors is truncated, corrupted")


def test_compare_command_prints_the_table_and_writes_the_report(corpus_dir, tmp_path):
    out = tmp_path / "cmp"
    args = ["compare", corpus_dir, *TINY, "--cells", "rnn,gru", "--max-steps", "4", "--out", out, "-s", "device=cpu"]
    result = run(*args)
    assert result.exit_code == 0, result.output
    assert "rnn" in result.stdout and "gru" in result.stdout and "test word ppl" in result.stdout
    assert (out / "report.md").is_file() and (out / "curves.png").is_file()
    assert "finished earlier, kept" in run(*args).stderr  # a second call retrains nothing
    assert_fails_cleanly(run("compare", corpus_dir, "--cells", "lstm,cnn", "--out", tmp_path / "x"), "--cells")
    assert_fails_cleanly(run("compare", corpus_dir, "--max-steps", "0", "--out", tmp_path / "x"), "--max-steps must be > 0")
    assert_fails_cleanly(run("compare", corpus_dir, *TINY, "--cells", "rnn", "--max-steps", "4", "--out", out),
                         "different settings")


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
