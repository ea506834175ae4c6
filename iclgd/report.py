"""`iclgd report`: one self-contained HTML page for run folders (each holding results.json and its
figure): per run the summary table (iclgd/summary.py), the figure embedded as a PNG data URI, the
status, the resolved config and the versions. Nothing is fetched: no scripts, styles or images from
elsewhere, so the page opens anywhere and can be mailed or archived as one file.
"""
import base64
import html
import json
import os

from iclgd.results import read_results
from iclgd.summary import summary_lines

STYLE = """body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
h2{border-bottom:1px solid #ccc;padding-bottom:.2em}pre{background:#f6f6f6;padding:.6em;overflow-x:auto}
img{max-width:100%}.quick{color:#b00;font-weight:bold}.diverged{color:#b00;font-weight:bold}
details{margin:.5em 0}table{border-collapse:collapse}td,th{padding:.1em .6em;text-align:left}"""


def _figure(folder, experiment):
    path = os.path.join(folder, f"{experiment}.png")
    if not os.path.isfile(path):
        return "<p>(no figure: run <code>iclgd plot</code> on this folder)</p>"
    with open(path, "rb") as f:
        data = base64.b64encode(f.read()).decode("ascii")
    return f'<img alt="{html.escape(experiment)} figure" src="data:image/png;base64,{data}">'


def run_section(folder, anchor):
    """The HTML of one run folder, under the id `anchor`."""
    r = read_results(folder)
    name = html.escape(r["experiment"])
    flags = []
    if r.get("quick"):
        flags.append('<span class="quick">QUICK run: reduced settings, not the paper\'s</span>')
    if r.get("status", "complete") != "complete":
        flags.append(f'<span class="diverged">{html.escape(str(r["status"]).upper())}</span>')
    config = html.escape(json.dumps(r["config"], indent=1))
    versions = html.escape(json.dumps(r["versions"], indent=1))
    return (f'<section id="{anchor}"><h2>{name}: {html.escape(str(r["figure"]))} '
            f'<small>({html.escape(folder)})</small></h2>{" ".join(flags)}'
            f'<pre>{html.escape(chr(10).join(summary_lines(r)))}</pre>{_figure(folder, r["experiment"])}'
            f'<details><summary>config</summary><pre>{config}</pre></details>'
            f'<details><summary>versions</summary><pre>{versions}</pre></details></section>')


def report_html(folders, title="iclgd report"):
    sections = [run_section(f, f"run{i}") for i, f in enumerate(folders)]
    toc = "".join(f'<li><a href="#run{i}">{html.escape(read_results(f)["experiment"])}: {html.escape(f)}</a></li>'
                  for i, f in enumerate(folders))
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f'<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1><ul>{toc}</ul>'
            f'{"".join(sections)}</body></html>\n')
