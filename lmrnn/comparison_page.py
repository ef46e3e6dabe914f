"""lmrnn report COMPARISON: one self-contained HTML page of a finished comparison (images inline,
no script, nothing fetched): report.md's tables and plots, then the probes of the comparison's
runs that have been measured, each figure with the command that made it.

The probes of a comparison live in COMPARISON/probes/<probe>.json and .png, for the first seed's
run of every recurrent cell; `lmrnn report --probe` measures the ones missing.
"""

from __future__ import annotations

import base64
import html
import json
import re
from pathlib import Path

from lmrnn.comparison_report import report_markdown
from lmrnn.errors import UserError
from lmrnn.files import atomic_write

RESULTS, PROBES, PAGE = "results.json", "probes", "report.html"
RECURRENT = ("rnn", "rnn_relu", "lstm", "gru")
# probe -> (the cells it reads, what its figure shows)
PROBE_NAMES = {"gradients": (RECURRENT, "how far back the loss at a window's end still moves the state"),
               "context": (RECURRENT, "loss against the number of tokens of context seen"),
               "gates": (("lstm", "gru"), "how often each gate is shut or open, per unit"),
               "recall": (RECURRENT, "naming the hero of a story, against the words since it was named")}

STYLE = """body { font: 15px/1.5 system-ui, sans-serif; margin: 2em auto; max-width: 70em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; } td, th { border: 1px solid #ccc; padding: 0.25em 0.6em; }
td { text-align: right; } td:first-child { text-align: left; } img { max-width: 100%; }
code { background: #f4f4f4; padding: 0.1em 0.3em; }"""


def probe_runs(folder: Path, results: dict, probe: str) -> list[Path]:
    """The first seed's run of each cell the probe reads."""
    cells = [cell for cell in results["cells"] if cell in PROBE_NAMES[probe][0]]
    return [folder / f"{cell}-seed{results['seeds'][0]}" for cell in cells]


def probe_command(folder: Path, results: dict, probe: str) -> str:
    runs = " ".join(str(run) for run in probe_runs(folder, results, probe))
    out = folder / PROBES / probe
    return f"lmrnn probe {probe} {runs} --plot {out}.png --json > {out}.json"


def measure_probes(folder: Path, results: dict, device: str = "auto") -> list[str]:
    """Run every probe whose figure the folder lacks; returns the ones measured."""
    from lmrnn.gates import probe_gates
    from lmrnn.probes import probe_context, probe_gradients, probe_recall

    functions = {"gradients": probe_gradients, "context": probe_context, "gates": probe_gates, "recall": probe_recall}
    measured = []
    for probe, run in functions.items():
        runs = probe_runs(folder, results, probe)
        target = folder / PROBES / probe
        if not runs or target.with_suffix(".json").is_file() or (probe == "recall" and results["corpus"] != "stories"):
            continue  # nothing to probe, already measured, or (recall) not the stories grammar
        rows = run(runs, device=device, plot=target.with_suffix(".png"))
        atomic_write(target.with_suffix(".json"), json.dumps(rows, indent=2) + "\n")
        measured.append(probe)
    return measured


def markdown_to_html(text: str, folder: Path) -> str:
    """The markdown report.md is written in (headings, paragraphs, pipe tables, images of files
    in `folder`) as HTML, the images inline."""
    blocks, out = re.split(r"\n\s*\n", text.strip()), []
    for block in blocks:
        lines = block.strip().split("\n")
        if lines[0].startswith("#"):
            level = len(lines[0]) - len(lines[0].lstrip("#"))
            out.append(f"<h{level}>{_inline(lines[0][level:].strip())}</h{level}>")
            lines = lines[1:]
        if lines and all(line.startswith("|") for line in lines):
            rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines if not set(line) <= set("|-: ")]
            head, body = rows[0], rows[1:]
            out.append("<table><tr>" + "".join(f"<th>{_inline(c)}</th>" for c in head) + "</tr>"
                       + "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>" for row in body)
                       + "</table>")
        elif lines:
            image = re.fullmatch(r"!\[(.*)\]\((.*)\)", " ".join(lines).strip())
            out.append(_image(folder / image[2], image[1]) if image else f"<p>{_inline(' '.join(lines))}</p>")
    return "\n".join(out)


def _inline(text: str) -> str:
    """`code` and **bold**; the rest escaped."""
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", text).replace("\\*", "*")


def _image(path: Path, alt: str) -> str:
    if not path.is_file():
        return f"<p>({html.escape(path.name)} has not been drawn)</p>"
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def comparison_page(folder: Path, probe: bool = False, device: str = "auto") -> Path:
    """Write folder/report.html; with `probe`, first measure the probes it lacks."""
    path = folder / RESULTS
    if not path.is_file():
        raise UserError(f"{folder} holds no finished comparison ({RESULTS} is missing); run lmrnn compare first")
    results = json.loads(path.read_text(encoding="utf-8"))
    if probe:
        measure_probes(folder, results, device)
    body = [markdown_to_html(report_markdown(results), folder)]
    shown = [name for name in PROBE_NAMES if (folder / PROBES / f"{name}.png").is_file()]
    body.append("<h2>Probes</h2>")
    if not shown:
        body.append(f"<p>No probe has been measured for this comparison: <code>lmrnn report {html.escape(str(folder))} "
                    f"--probe</code> measures them.</p>")
    for name in shown:
        body.append(f"<h3>{name}: {html.escape(PROBE_NAMES[name][1])}</h3>"
                    + _image(folder / PROBES / f"{name}.png", name)
                    + f"<p><code>{html.escape(probe_command(folder, results, name))}</code></p>")
    title = html.escape(f"{', '.join(results['cells'])} on {results['corpus']}")
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
            f"<style>{STYLE}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n")
    atomic_write(folder / PAGE, page)
    return folder / PAGE
