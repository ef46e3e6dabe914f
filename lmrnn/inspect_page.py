"""The page `lmrnn inspect` writes: one HTML file with its CSS, script and data inline (nothing is
fetched), so it opens from a disk, an e-mail or a CI artifact alike.

Two views of the text, one span per token: "unit" colours each token by a unit's state after it
(red positive, blue negative, each unit scaled by its largest magnitude in this text), with a
picker for any unit and buttons for the units that track a text feature; "surprisal" colours
by -log p, from pale (0 nats) to red (10 nats or more). Hovering a token shows its surprisal,
the model's five top guesses at that position and the unit's value. The states travel as one
byte per value (int8 of value / the unit's scale, base64): a few thousand tokens of a 650-unit
layer make a page of a few megabytes.

Opened as PAGE.html#selftest, the script switches unit and view, checks that the colours
change, and writes the outcome to <body data-selftest="pass|fail: why"> (the browser test).
"""

from __future__ import annotations

import base64
import html
import json

import numpy as np

PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>lmrnn inspect: {title}</title>
<style>
body {{ font: 14px/1.5 system-ui, sans-serif; margin: 1.5em; color: #222; }}
#text {{ font: 15px/1.9 ui-monospace, monospace; white-space: pre-wrap; border: 1px solid #ccc; padding: 1em; }}
#text span {{ border-radius: 2px; }}
.controls {{ margin: 0.8em 0; display: flex; flex-wrap: wrap; gap: 0.6em; align-items: center; }}
.controls button {{ font: inherit; padding: 0.15em 0.6em; }}
#hover {{ min-height: 1.6em; color: #444; font-size: 13px; }}
</style></head>
<body>
<h1>{title}</h1>
<p>{summary}</p>
<div class="controls">
  <label>view <select id="view"><option value="unit">unit</option><option value="surprisal">surprisal</option></select></label>
  <label>unit <input id="unit" type="number" min="0" max="{last_unit}" value="{first_unit}"></label>
  <span id="tracking"></span>
</div>
<div id="hover">hover a token</div>
<div id="text"></div>
<script>
const DATA = {data};
function decodeStates(b64) {{
  const bytes = atob(b64), out = new Int8Array(bytes.length);
  for (let i = 0; i < bytes.length; i++) out[i] = (bytes.charCodeAt(i) << 24) >> 24;
  return out;
}}
const STATES = decodeStates(DATA.states), H = DATA.hidden_size;
const text = document.getElementById("text"), view = document.getElementById("view");
const unitInput = document.getElementById("unit"), hover = document.getElementById("hover");
const spans = DATA.pieces.map((piece, t) => {{
  const span = document.createElement("span");
  span.textContent = piece === "" ? "\\u00b7" : piece;
  span.dataset.t = t;
  text.appendChild(span);
  return span;
}});
function unitValue(t, unit) {{ return STATES[t * H + unit] / 127; }}
function colour(t) {{
  if (view.value === "surprisal") {{
    const s = Math.min(DATA.surprisal[t] / 10, 1);
    return `rgba(220, 40, 30, ${{s.toFixed(3)}})`;
  }}
  const v = unitValue(t, Number(unitInput.value));
  return v >= 0 ? `rgba(220, 40, 30, ${{v.toFixed(3)}})` : `rgba(30, 90, 220, ${{(-v).toFixed(3)}})`;
}}
function paint() {{
  const unit = Number(unitInput.value);
  if (!(unit >= 0 && unit < H)) return;
  spans.forEach((span, t) => {{ span.style.backgroundColor = colour(t); }});
}}
text.addEventListener("mouseover", event => {{
  const t = Number(event.target.dataset.t);
  if (Number.isNaN(t)) return;
  const guesses = DATA.candidates[t].map(([piece, p]) => `${{JSON.stringify(piece)}} ${{p.toFixed(3)}}`).join(", ");
  hover.textContent = `token ${{t}}: surprisal ${{DATA.surprisal[t].toFixed(2)}} nats; expected ${{guesses}}; ` +
    `unit ${{unitInput.value}} = ${{(unitValue(t, Number(unitInput.value)) * DATA.scales[Number(unitInput.value)]).toFixed(3)}}`;
}});
const tracking = document.getElementById("tracking");
DATA.tracking.forEach(found => {{
  const button = document.createElement("button");
  button.textContent = `${{found.feature}}: unit ${{found.unit}} (r = ${{found.r.toFixed(2)}})`;
  button.addEventListener("click", () => {{ view.value = "unit"; unitInput.value = found.unit; paint(); }});
  tracking.appendChild(button);
}});
view.addEventListener("change", paint);
unitInput.addEventListener("input", paint);
paint();
if (location.hash === "#selftest") {{
  const before = spans.map(span => span.style.backgroundColor);
  unitInput.value = (Number(unitInput.value) + 1) % H;
  paint();
  const unitChanged = spans.some((span, t) => span.style.backgroundColor !== before[t]);
  view.value = "surprisal";
  paint();
  const viewChanged = spans.some((span, t) => span.style.backgroundColor !== before[t]);
  document.body.dataset.selftest = unitChanged && viewChanged ? "pass" :
    `fail: ${{unitChanged ? "" : "the unit picker changed no colour; "}}${{viewChanged ? "" : "the surprisal view changed no colour"}}`;
}}
</script>
</body></html>
"""


def quantised_states(states: np.ndarray) -> tuple[str, list[float]]:
    """(T, H) float -> base64 of int8 round(127 value / scale), and each unit's scale (its largest
    magnitude; 1 for a unit that stays at 0)."""
    scales = np.abs(states).max(0)
    scales[scales == 0] = 1.0
    codes = np.clip(np.rint(127 * states / scales), -127, 127).astype(np.int8)
    return base64.b64encode(codes.tobytes()).decode("ascii"), scales.astype(float).tolist()


def render_page(info: dict, reading) -> str:
    """The page for `info` (inspect_run's summary) and a Reading."""
    states, scales = quantised_states(reading.states)
    tracking = info["tracking"]
    data = {**info, "pieces": reading.pieces, "states": states, "scales": scales,
            "surprisal": [round(float(s), 4) for s in reading.surprisal],
            "candidates": [[[piece, round(p, 4)] for piece, p in guesses] for guesses in reading.candidates]}
    title = f"{info['run']} ({info['cell']}), layer {info['layer']}"
    summary = (f"{info['tokens']:,} tokens, perplexity {info['ppl']:.2f} on this text. Colours: the {info['state']} "
               f"of one unit after each token (red positive, blue negative), or each token's surprisal.")
    return PAGE.format(title=html.escape(title), summary=html.escape(summary), last_unit=info["hidden_size"] - 1,
                       first_unit=tracking[0]["unit"] if tracking else 0,
                       data=json.dumps(data, ensure_ascii=True).replace("</", "<\\/"))
