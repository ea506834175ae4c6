"""`iclgd report`: one self-contained HTML page holding, for every run folder, its figure (embedded),
summary, config and versions, and nothing fetched from elsewhere."""
import base64
import html.parser
import json
import os
import re

from tests.conftest import ROOT, cli_subprocess


class Page(html.parser.HTMLParser):
    """The parts of the page a test reads: images, outside references, sections, pre texts."""

    def __init__(self):
        super().__init__()
        self.images, self.outside, self.sections, self.pres, self._pre = [], [], [], [], None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for key in ("src", "href"):
            if key in attrs and not attrs[key].startswith(("data:", "#")):
                self.outside.append(attrs[key])
        if tag in ("script", "link", "iframe"):
            self.outside.append(tag)
        if tag == "img":
            self.images.append(attrs["src"])
        if tag == "section":
            self.sections.append(attrs["id"])
        if tag == "pre":
            self._pre = []

    def handle_data(self, data):
        if self._pre is not None:
            self._pre.append(data)

    def handle_endtag(self, tag):
        if tag == "pre":
            self.pres.append("".join(self._pre))
            self._pre = None


def test_report_of_the_committed_results_is_self_contained_and_complete(tmp_path):
    proc = cli_subprocess("report", "--out", tmp_path / "r.html", cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    page = Page()
    page.feed((tmp_path / "r.html").read_text())
    experiments = sorted(n for n in os.listdir(os.path.join(ROOT, "results"))
                         if os.path.isfile(os.path.join(ROOT, "results", n, "results.json")))
    from tests.app.test_summary_and_config import COMMITTED  # every experiment but those not run yet
    runs = {n: json.loads(open(os.path.join(ROOT, "results", n, "results.json")).read())["experiment"]
            for n in experiments}
    assert set(runs.values()) == set(COMMITTED) and set(COMMITTED) <= set(experiments)
    for folder, name in runs.items():  # a second run of an experiment is named EXPERIMENT-WHAT (fig4-coupled)
        assert folder == name or folder.startswith(name + "-"), folder
    assert len(page.sections) == len(experiments) == len(page.images)
    assert page.outside == []  # no script, stylesheet, image or link from elsewhere
    for src in page.images:
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    text = "\n".join(page.pres)
    for name in experiments:
        r = json.loads(open(os.path.join(ROOT, "results", name, "results.json")).read())
        assert f"{r['experiment']} ({r['figure']})" in text  # the summary's header line
        assert json.dumps(r["config"], indent=1) in text and r["versions"]["numpy"] in text
    assert re.search(r"loss: trained TF vs 1 GD step\s+0\.2082\s+0\.2077", text)


def test_report_marks_quick_and_diverged_runs_and_refuses_a_folder_without_results(tmp_path):
    r = json.loads(open(os.path.join(ROOT, "results", "fig2", "results.json")).read())
    (tmp_path / "q").mkdir()
    (tmp_path / "q" / "results.json").write_text(json.dumps({**r, "quick": True}))
    (tmp_path / "d").mkdir()
    diverged = {**r, "status": "diverged", "final": {}, "per_seed": [],
                "diverged": {"step": 2, "tensor": "loss", "reason": "the loss is nan", "model_tag": "lsa1",
                             "seed": 0, "checkpoint_step": 0}}
    (tmp_path / "d" / "results.json").write_text(json.dumps(diverged))
    proc = cli_subprocess("report", tmp_path / "q", tmp_path / "d", "--out", tmp_path / "r.html")
    assert proc.returncode == 0, proc.stderr
    text = (tmp_path / "r.html").read_text()
    assert "QUICK run: reduced settings" in text and "DIVERGED at step 2" in text
    assert "no figure: run <code>iclgd plot</code>" in text
    bad = cli_subprocess("report", tmp_path / "nothing", "--out", tmp_path / "x.html")
    assert bad.returncode == 2 and "results.json" in bad.stderr and not (tmp_path / "x.html").exists()
