import json
import subprocess

import pytest
from typer.testing import CliRunner

from lmrnn.cli import app
from lmrnn.compare import compare
from lmrnn.comparison_page import markdown_to_html
from lmrnn.console import ComparisonProgress
from tests.conftest import write_corpus
from tests.test_compare import PNG, tiny_cfg
from tests.test_inspector import BROWSER


def test_markdown_to_html_by_hand(tmp_path):
    (tmp_path / "plot.png").write_bytes(PNG + b"rest")
    text = ("# rnn, gru on ptb\n\nBudget `8` minutes.\n\n| cell | ppl |\n|---|---:|\n| rnn | 1 < 2 |\n\n"
            "\\* Shared. **At the edge:** widen it.\n\n![curves](plot.png)\n\n![missing](none.png)\n")
    assert markdown_to_html(text, tmp_path).split("\n") == [
        "<h1>rnn, gru on ptb</h1>", "<p>Budget <code>8</code> minutes.</p>",
        "<table><tr><th>cell</th><th>ppl</th></tr><tr><td>rnn</td><td>1 &lt; 2</td></tr></table>", "<p>* Shared. <strong>At the edge:</strong> widen it.</p>",
        '<img alt="curves" src="data:image/png;base64,iVBORw0KGgpyZXN0">', "<p>(none.png has not been drawn)</p>"]


@pytest.fixture(scope="module")
def comparison(tmp_path_factory):
    root = tmp_path_factory.mktemp("comparison")
    corpus = write_corpus(root / "corpus", {"train": 300, "valid": 200, "test": 30})
    out = root / "cmp"
    compare(tiny_cfg(corpus), ["rnn", "gru"], [1], "params", out, progress=ComparisonProgress(2, enabled=False))
    return out


def test_report_writes_one_page_with_the_tables_plots_and_measured_probes(comparison):
    plain = CliRunner().invoke(app, ["report", str(comparison)])
    assert plain.exit_code == 0, plain.output
    page = (comparison / "report.html").read_text()
    assert "<td>rnn</td>" in page and "<td>gru</td>" in page and "data:image/png;base64," in page
    assert "No probe has been measured" in page and "<script" not in page and "src=\"http" not in page
    probed = CliRunner().invoke(app, ["report", str(comparison), "--probe", "--device", "cpu"])
    assert probed.exit_code == 0, probed.output
    page = (comparison / "report.html").read_text()
    for probe in ("gradients", "context", "gates"):
        assert f"<h3>{probe}:" in page and f"lmrnn probe {probe} " in page
        assert (comparison / "probes" / f"{probe}.png").read_bytes().startswith(PNG)
    assert "recall" not in page.split("<h2>Probes</h2>")[1]  # the made-up corpus is not the stories grammar
    gates = json.loads((comparison / "probes" / "gates.json").read_text())
    assert [row["cell"] for row in gates] == ["gru"]  # the gate probe reads the gated cells only


def test_report_needs_a_finished_comparison(tmp_path):
    refused = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert refused.exit_code == 1 and "holds no finished comparison" in refused.stderr


@pytest.mark.browser
@pytest.mark.skipif(BROWSER is None, reason="needs a headless Chromium (apt install chromium)")
def test_the_report_renders_in_a_browser(comparison):
    CliRunner().invoke(app, ["report", str(comparison)])
    shown = subprocess.run([BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0",
                            "--dump-dom", f"file://{comparison / 'report.html'}"], capture_output=True, text=True, timeout=120)
    assert "<table>" in shown.stdout and "<img" in shown.stdout and "Uncaught" not in shown.stderr
