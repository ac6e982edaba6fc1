"""The annotation pages: a pair to rate (with keyboard shortcuts), the batch's statistics, and the
short pages that say why nothing is shown. Rendered by Jinja with autoescaping: prompts and answers
are model output and user text, never markup."""

from __future__ import annotations

from typing import Any

import jinja2

from operators.annotate.store import RATING_LEVELS, SAFETY_LABELS, TASKS

LEVEL_TEXT = {"significantly_better": "significantly better", "better": "better", "slightly_better": "slightly better",
              "negligibly_better": "negligibly better / unsure"}
LEVEL_KEYS = dict(zip(RATING_LEVELS, "asdf"))
TASK_KEYS = {"helpfulness": "h", "safety": "j"}
SAFETY_KEYS = dict(zip(SAFETY_LABELS, "zxc"))

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 72em; padding: 0 1em; color: #222; }
header { display: flex; justify-content: space-between; align-items: baseline; border-bottom: 1px solid #ccc; }
.turn { white-space: pre-wrap; margin: .3em 0; padding: .5em .7em; border-radius: 6px; background: #f3f3f3; }
.turn.user { background: #e8f0fe; }
.answers { display: grid; grid-template-columns: 1fr 1fr; gap: 1em; margin: 1em 0; }
.answer { border: 2px solid #ccc; border-radius: 8px; padding: .7em; white-space: pre-wrap; cursor: pointer; }
.answer.picked { border-color: #1a73e8; background: #f5f9ff; }
fieldset { border: 1px solid #ddd; border-radius: 6px; margin: .6em 0; }
kbd { border: 1px solid #aaa; border-radius: 3px; padding: 0 .3em; font-size: .85em; background: #fafafa; }
.saved { color: #0a7d28; } .problem { color: #b00020; }
button { font-size: 1.05em; padding: .4em 1.2em; }
table { border-collapse: collapse; } td, th { border: 1px solid #ddd; padding: .25em .6em; text-align: right; }
"""

_BASE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{ title }}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{{ style }}</style></head>
<body><header><h1>{{ title }}</h1>{% if annotator %}<span>{{ annotator }} ·
<a href="/">rate</a> · <a href="/stats">statistics</a></span>{% endif %}</header>
{% block body %}{% endblock %}</body></html>"""

_PAIR = """{% extends "base" %}{% block body %}
<p id="progress">{{ stats.rated }} of {{ stats.candidates }} candidates rated · you: {{ mine }}</p>
{% if notice %}<p id="notice" class="{{ notice_class }}">{{ notice }}</p>{% endif %}
<section id="dialog">{% for turn in dialog %}<div class="turn {{ turn.role }}"><b>{{ turn.role }}</b>: {{ turn.content }}</div>{% endfor %}</section>
<form method="post" action="/rate" id="rating">
<input type="hidden" name="form_key" value="{{ form_key }}">
<input type="hidden" name="candidate_id" value="{{ candidate_id }}">
<div class="answers">
{% for shown, answer in answers %}<label class="answer" id="answer-{{ shown }}"><input type="radio" name="better"
 value="{{ shown }}" required> <kbd>{{ shown }}</kbd> <b>Answer {{ shown }}</b><div>{{ answer }}</div></label>{% endfor %}
</div>
<fieldset><legend>How much better is the chosen answer?</legend>
{% for level in levels %}<label><input type="radio" name="rating" value="{{ level }}" required> <kbd>{{ level_keys[level] }}</kbd>
{{ level_text[level] }}</label> {% endfor %}</fieldset>
<fieldset><legend>Task</legend>
{% for task in tasks %}<label><input type="radio" name="task" value="{{ task }}"{% if task == default_task %} checked{% endif %}>
<kbd>{{ task_keys[task] }}</kbd> {{ task }}</label> {% endfor %}</fieldset>
<fieldset id="safety"><legend>Safety (for the safety task)</legend>
{% for label, text in safety_labels.items() %}<label><input type="radio" name="safety_label" value="{{ label }}">
<kbd>{{ safety_keys[label] }}</kbd> {{ text }}</label> {% endfor %}</fieldset>
<button type="submit" id="save">Save <kbd>Enter</kbd></button>
</form>
<script>
const form = document.getElementById("rating");
const keys = {"1": ["better", "1"], "2": ["better", "2"],
  {% for level, key in level_keys.items() %}"{{ key }}": ["rating", "{{ level }}"], {% endfor %}
  {% for task, key in task_keys.items() %}"{{ key }}": ["task", "{{ task }}"], {% endfor %}
  {% for label, key in safety_keys.items() %}"{{ key }}": ["safety_label", "{{ label }}"], {% endfor %}};
function mark() {
  for (const box of document.querySelectorAll(".answer")) {
    box.classList.toggle("picked", box.querySelector("input").checked);
  }
}
form.addEventListener("change", mark);
document.addEventListener("keydown", (event) => {
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  if (event.key === "Enter") { event.preventDefault(); form.requestSubmit(); return; }
  const hit = keys[event.key];
  if (!hit) return;
  const input = form.querySelector(`input[name="${hit[0]}"][value="${hit[1]}"]`);
  if (input) { input.checked = true; mark(); }
});
</script>
{% endblock %}"""

_STATS = """{% extends "base" %}{% block body %}
<p id="progress">{{ stats.rated }} of {{ stats.candidates }} candidates rated; {{ stats.ratings }} ratings</p>
<h2>Per annotator</h2><table id="annotators"><tr><th>annotator</th><th>ratings</th></tr>
{% for name, n in stats.per_annotator.items() %}<tr><td>{{ name }}</td><td>{{ n }}</td></tr>{% endfor %}</table>
<h2>Ratings by task and level</h2><table id="levels"><tr><th>task</th>{% for level in levels %}<th>{{ level_text[level] }}</th>{% endfor %}</tr>
{% for task, counts in stats.levels.items() %}<tr><td>{{ task }}</td>{% for level in levels %}<td>{{ counts[level] }}</td>{% endfor %}</tr>{% endfor %}</table>
<h2>Safety labels</h2><table id="safety"><tr>{% for label, text in safety_labels.items() %}<th>{{ text }}</th>{% endfor %}</tr>
<tr>{% for label in safety_labels %}<td>{{ stats.safety_labels[label] }}</td>{% endfor %}</tr></table>
<h2>Agreement</h2><p id="agreement">{% if stats.doubly_rated %}{{ stats.doubly_rated }} pairs rated by two annotators:
the same answer preferred in {{ "%.0f" | format(100 * stats.agreement_answer) }}%, the same answer and level in
{{ "%.0f" | format(100 * stats.agreement_answer_and_level) }}%.{% else %}No pair has two ratings yet.{% endif %}</p>
{% endblock %}"""

_MESSAGE = """{% extends "base" %}{% block body %}<p id="message" class="{{ kind }}">{{ message }}</p>{% endblock %}"""

_ENV = jinja2.Environment(
    loader=jinja2.DictLoader({"base": _BASE, "pair": _PAIR, "stats": _STATS, "message": _MESSAGE}),
    autoescape=True, undefined=jinja2.StrictUndefined,
)
_COMMON = {"style": _STYLE, "levels": RATING_LEVELS, "level_text": LEVEL_TEXT, "level_keys": LEVEL_KEYS,
           "tasks": TASKS, "task_keys": TASK_KEYS, "safety_labels": SAFETY_LABELS, "safety_keys": SAFETY_KEYS}


def render(page: str, **values: Any) -> str:
    """One of the pages ("pair", "stats", "message") with its values."""
    values.setdefault("annotator", None)
    return _ENV.get_template(page).render(**_COMMON, **values)
