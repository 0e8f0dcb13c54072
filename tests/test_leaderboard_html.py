"""`kdbench leaderboard --format html`: a self-contained page, rendered in headless Chromium."""

from __future__ import annotations

import re

import pytest

from kdbench.cli import main

from .leaderboard_runs import CHROMIUM, chromium, demo_runs

# ------------------------------------------------------------------------------------ HTML


def test_html_is_self_contained(tmp_path):
    runs = demo_runs(tmp_path)
    out = tmp_path / "site" / "index.html"
    assert main(["leaderboard", str(runs), "--out", str(out)]) == 0
    page = out.read_text()
    # no CDN, no fetches: the only URLs are the paper links a reader may follow
    assert not re.search(
        r"https?://",
        re.sub(
            r'<a href="https://arxiv\.org/abs/[0-9.]+">',
            "",
            re.sub(r'data-v="https://arxiv\.org/abs/[0-9.]+"', "", page),
        ),
    )
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=", page)
    assert page.count("<svg") == 4  # scatter + bars per setting
    assert page.count('<tr class="flagged"') == 1
    href = re.search(r'<a href="([^"]+)">s0</a>', page).group(1)
    assert (out.parent / href).resolve() == next((runs / "rslad-seed0").iterdir()) / "recipe.toml"
    assert "2 result files skipped" in page


@pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium not found (Debian: apt-get install -y chromium)")
def test_html_renders_in_headlesschromium(tmp_path):
    runs = demo_runs(tmp_path)
    out = tmp_path / "leaderboard.html"
    assert main(["leaderboard", str(runs), "--out", str(out)]) == 0

    proc = chromium(["--dump-dom", out.as_uri()], tmp_path)
    dom = proc.stdout
    assert 'data-ready="1"' in dom, proc.stderr[-2000:]  # the inline script ran
    tables = re.findall(r"<tbody>(.*?)</tbody>", dom, re.S)
    assert [t.count("<tr") for t in tables] == [2, 3]
    assert dom.count("<svg") == 4
    assert len(re.findall(r'<g class="point', dom)) == 4  # sat-noaa has no AutoAttack number to plot
    assert 'title="no AutoAttack: not ranked (ordered by PGD-20)">†</td>' in dom  # the marked section
    assert '<a href="https://arxiv.org/abs/1706.06083">1706.06083</a>' in dom  # the paper column
    assert len(re.findall(r'<g class="point flagged"', dom)) == 1
    assert dom.count('<rect class="bar"') == 6 + 5 + 3 * 6  # one bar per variant and metric evaluated
    order = re.findall(r'<tr[^>]*data-variant="([^"]+)"', tables[1])
    assert order == ["rslad", "ard", "kd"]

    # the sort script works in a real browser: sort the distillation table by clean accuracy, best first
    proc = chromium(["--dump-dom", out.as_uri() + "#sort=1:clean:desc"], tmp_path)
    tables = re.findall(r"<tbody>(.*?)</tbody>", proc.stdout, re.S)
    assert re.findall(r'<tr[^>]*data-variant="([^"]+)"', tables[1]) == ["kd", "ard", "rslad"]
    assert 'data-key="clean" data-type="num" data-first="desc" class="num" aria-sort="descending"' in proc.stdout

    shot = tmp_path / "shot.png"
    proc = chromium(["--window-size=1280,1400", "--hide-scrollbars", f"--screenshot={shot}", out.as_uri()], tmp_path)
    assert shot.is_file(), proc.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert shot.stat().st_size > 20_000
