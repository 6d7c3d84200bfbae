"""The page `catsdogs serve` shows at /: drop photos, see each one's class and heat map; one self-contained file."""

from __future__ import annotations

from typing import Any

from catsdogs.inference.webpage import STYLE, esc, table

# Nothing from anywhere else: the page's own script and style, the server's API, pictures made in the page.
POLICY = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data: blob:; "
          "connect-src 'self'; base-uri 'none'; form-action 'none'")
PAGE_STYLE = """
#drop { border: 2px dashed #8a9bb0; border-radius: 8px; padding: 1.6em; text-align: center; margin: 1em 0;
        background: #f7f9fb; } #drop.over { background: #e6f0fb; border-color: #2f6fb5; }
.result { display: flex; gap: 16px; align-items: flex-start; margin: .8em 0; padding: .6em;
          border: 1px solid #d8dee6; border-radius: 6px; } .result img { width: 224px; }
.label { font-size: 1.2em; font-weight: 600; } .error { color: #a3231f; }
"""
SCRIPT = """
const drop = document.getElementById('drop'), input = document.getElementById('files');
const results = document.getElementById('results');
function add(text, cls) { const p = document.createElement('p'); p.textContent = text; if (cls) p.className = cls;
  return p; }
async function answer(response) {
  if (response.ok) return response;
  let message = response.status + ' ' + response.statusText;
  try { message = (await response.json()).error; } catch (e) {}
  throw new Error(message);
}
async function classify(file) {
  const box = document.createElement('div'); box.className = 'result';
  const pictures = document.createElement('div'), words = document.createElement('div');
  words.appendChild(add(file.name)); box.append(pictures, words); results.prepend(box);
  const type = file.type || 'application/octet-stream';
  try {
    const response = await answer(await fetch('predict', {method: 'POST', headers: {'Content-Type': type},
                                                          body: file}));
    const photo = (await response.json()).photos[0];
    const label = add(photo.class + ' ' + (100 * photo.probability).toFixed(1) + '%', 'label');
    label.dataset.testid = 'label'; words.appendChild(label);
    words.appendChild(add(Object.entries(photo.probabilities).map(([k, v]) => k + ' ' + v.toFixed(3)).join(', ')
                          + ' in ' + photo.ms.toFixed(1) + ' ms'));
    const heat = await fetch('explain', {method: 'POST', headers: {'Content-Type': type}, body: file});
    if (heat.ok) {
      const img = document.createElement('img'); img.alt = 'heat map of ' + file.name;
      img.src = URL.createObjectURL(await heat.blob()); pictures.appendChild(img);
    } else { words.appendChild(add('no heat map: ' + (await heat.json()).error)); }
  } catch (error) { words.appendChild(add(String(error.message || error), 'error')); }
}
function classifyAll(files) { for (const file of files) classify(file); }
input.addEventListener('change', () => classifyAll(input.files));
drop.addEventListener('dragover', e => { e.preventDefault(); drop.classList.add('over'); });
drop.addEventListener('dragleave', () => drop.classList.remove('over'));
drop.addEventListener('drop', e => { e.preventDefault(); drop.classList.remove('over');
  classifyAll(e.dataTransfer.files); });
"""


def _accuracy(value: Any) -> str:
    return f"{100 * value:.2f}%" if isinstance(value, (int, float)) else "not measured (run `catsdogs evaluate`)"


def _verification(value: Any) -> str:
    if not value:
        return "none (served from the checkpoint)" if value is None else "no figures recorded"
    state = "passed" if value.get("passed") else "FAILED"
    return (f"{state} on {value.get('photos')} photos of {value.get('source')}: largest probability difference "
            f"{value.get('max_prob_diff', 0):.1e}, {value.get('class_differs')} with another class")


def render_page(info: dict[str, Any]) -> str:
    """The whole page for the model `info` describes (GET /model's answer)."""
    rows = [("classes", ", ".join(info["classes"])), ("image size", f"{info['image_size']} px"),
            ("model", info.get("model") or "unknown"), ("run", info.get("run") or "none"),
            ("served from", f"{info['served_from']} through {info['engine']}"),
            ("test accuracy", _accuracy(info.get("test_accuracy"))),
            ("export verification", _verification(info.get("verification")))]
    heat = "" if info.get("heat_maps") else "<p>Heat maps need a run's checkpoint; this server has none.</p>"
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<meta http-equiv=\"Content-Security-Policy\" content=\"{POLICY}\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>catsdogs: {esc(' or '.join(info['classes']))}?</title>\n"
            f"<style>{STYLE}{PAGE_STYLE}</style>\n</head>\n<body>\n"
            f"<h1>{esc(' or '.join(info['classes']))}?</h1>\n"
            "<div id=\"drop\"><p>Drop photos here, or <label>choose them: "
            "<input id=\"files\" type=\"file\" accept=\"image/*\" multiple></label></p></div>\n"
            f"{heat}<div id=\"results\"></div>\n<h2>The model</h2>\n{table(('', ''), rows)}\n"
            "<p class=\"muted\">The API: <code>POST predict</code>, <code>POST explain</code>, <code>GET model</code>, "
            "<code>GET health</code>; described in <code>openapi.json</code> (readable at <code>docs</code>).</p>\n"
            f"<script>{SCRIPT}</script>\n</body>\n</html>\n")
