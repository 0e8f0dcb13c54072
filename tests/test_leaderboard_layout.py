"""The leaderboard as a reader sees it: seeds counted, train time with its device, and the HTML page at
1280 px in headless Chromium measured with JavaScript: no two scatter labels overlap (nor a label and
a point), no table or plot is wider than its card, the recipe column is in view."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path
from typing import Any

import pytest

from kdbench.cli import main
from kdbench.leaderboard import build_boards, collect
from kdbench.leaderboard.formats import render_csv, render_json
from kdbench.leaderboard.html import render_html
from kdbench.leaderboard.label_layout import place_label, text_width
from kdbench.leaderboard.readings import train_device
from kdbench.leaderboard.render import cell, choose_columns

from .conftest import minimal_result
from .leaderboard_runs import CHROMIUM, chromium, write_run


def _patch_result(run: Path, **extra: Any) -> None:
    """Add keys to a run's result.json (the device tables `kdbench.run` records)."""
    path = run / "result.json"
    data = json.loads(path.read_text())
    for key, value in extra.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    path.write_text(json.dumps(data))


def _boards(runs: Path):
    return build_boards(collect([runs], report=None).runs)


def _variant(boards, label: str):
    return next(v for b in boards for v in b.variants if v.label == label)


# ------------------------------------------------------------------------------------ seeds, device


def test_the_seeds_column_counts_seeds(tmp_path):
    for seed in (0, 1, 2):
        write_run(tmp_path, f"rslad-seed{seed}", method="rslad", seed=seed)
    write_run(tmp_path, "kd", method="kd", seed=0)  # a single run, seed 0: one seed, not "0"
    write_run(tmp_path, "ard", method="ard", seed=7)
    boards = _boards(tmp_path)
    assert cell(_variant(boards, "rslad"), "seeds") == "3"
    assert cell(_variant(boards, "kd"), "seeds") == "1"
    assert cell(_variant(boards, "ard"), "seeds") == "1"
    page = render_html(boards, choose_columns(boards, fmt="html"), out_file=tmp_path / "lb.html")
    assert '<td class="num" data-v="1" title="seeds 0">1</td>' in page
    assert '<td class="num" data-v="3" title="seeds 0, 1, 2">3</td>' in page
    row = next(r for r in csv.DictReader(io.StringIO(render_csv(boards, ["seeds"]))) if r["variant"] == "ard")
    assert (row["n_seeds"], row["seeds"]) == ("1", "7")  # CSV keeps both the count and the values


def test_train_device_reads_env_and_cost():
    assert train_device(minimal_result(env={"device": "NVIDIA H200"})) == "NVIDIA H200"
    assert train_device(minimal_result(env={"device": "NVIDIA H200"}, cost={"devices": 4})) == "4 x NVIDIA H200"
    assert train_device(minimal_result(env={"device": "cpu (2 threads)"}, cost={"devices": 1})) == "cpu (2 threads)"
    assert train_device(minimal_result(cost={"device": "NVIDIA A100-SXM4-80GB"})) == "NVIDIA A100-SXM4-80GB"
    assert train_device(minimal_result(env={})) is None
    assert train_device(minimal_result()) is None


def test_train_time_is_shown_with_its_device(tmp_path):
    for seed in (0, 1):
        run = write_run(tmp_path, f"rslad-s{seed}", method="rslad", seed=seed, seconds=5400)
        _patch_result(run, env={"device": "NVIDIA H200"}, cost={"devices": 1, "device": "NVIDIA H200"})
    run = write_run(tmp_path, "ddp", method="ard", seconds=1800)
    _patch_result(run, env={"device": "NVIDIA H200"}, cost={"devices": 4, "total_device_seconds": 7300.0})
    write_run(tmp_path, "mixed-s0", method="kd", seed=0, seconds=60)  # env.device "cpu"
    run = write_run(tmp_path, "mixed-s1", method="kd", seed=1, seconds=60)
    _patch_result(run, env={"device": "NVIDIA H200"})
    old = write_run(tmp_path, "old", method="trades", seconds=90)
    _patch_result(old, env={"device": None})  # an old result without the device: just the time
    boards = _boards(tmp_path)
    assert cell(_variant(boards, "rslad"), "time") == "90.0 min on NVIDIA H200"
    assert cell(_variant(boards, "ddp"), "time") == "30.0 min on 4 x NVIDIA H200"
    assert cell(_variant(boards, "mixed"), "time") == "60 s on mixed devices"
    assert cell(_variant(boards, "old"), "time") == "90 s"

    page = render_html(boards, choose_columns(boards, fmt="html"), out_file=tmp_path / "lb.html")
    assert '>90.0 min<span class="dev">NVIDIA H200</span></td>' in page
    assert 'title="trained on cpu, NVIDIA H200">60 s<span class="dev">mixed devices</span></td>' in page
    assert 'title="device time on ?">2.0 h</td>' in page  # cost: device-seconds, its device in the tooltip
    row = next(r for r in csv.DictReader(io.StringIO(render_csv(boards, ["time"]))) if r["variant"] == "ddp")
    assert (row["train_seconds_mean"], row["train_device"]) == ("1800.0", "4 x NVIDIA H200")
    variants = json.loads(render_json(boards))["boards"][0]["variants"]
    assert {v["label"]: v["train_devices"] for v in variants}["mixed"] == ["cpu", "NVIDIA H200"]


# ------------------------------------------------------------------------------------ label placement


def test_labels_never_overlap_in_a_crowd():
    """Placed boxes are pairwise disjoint, avoid every point and stay in the plot; names that find no
    room get None (they become numbers)."""
    area = (0.0, 0.0, 400.0, 300.0)
    points = [(200.0 + 3 * (i % 5), 150.0 + 2 * (i // 5)) for i in range(25)]  # a tight cluster
    taken = [(x - 7, y - 7, 14.0, 14.0) for x, y in points]
    obstacles = len(taken)
    placed = [place_label(f"a-long-recipe-name-{i}", 11.5, x, y, 6, area, taken) for i, (x, y) in enumerate(points)]
    boxes = [b for b in placed if b is not None]
    assert 0 < len(boxes) < len(points)  # some fit, the rest do not
    assert taken[obstacles:] == boxes
    for i, a in enumerate(boxes):  # against the other labels and every point
        for b in [*taken[:obstacles], *boxes[i + 1 :]]:
            assert not (a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3])
    assert all(b[0] >= 0 and b[0] + b[2] <= 400 and b[1] >= 0 and b[1] + b[3] <= 300 for b in boxes)
    assert text_width("mmmm", 10) > text_width("iiii", 10) > 0


# ------------------------------------------------------------------------------------ in a browser

#: Collects, after layout, what the assertions need: label / point / plot boxes per scatter, the
#: table's and the cards' extents. Appended to a copy of the page, so the page itself stays as shipped.
MEASURE_JS = """
(function () {
  function box(el) { var r = el.getBoundingClientRect(); return [r.left, r.top, r.width, r.height]; }
  var out = {viewport: window.innerWidth, boards: []};
  document.querySelectorAll('section.board').forEach(function (sec) {
    var wrap = sec.querySelector('.scroll'), table = sec.querySelector('table.lb');
    var heads = {};
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th) { heads[th.dataset.key] = box(th); });
    var svg = sec.querySelector('svg.scatter'), plot = svg.querySelector('rect');
    out.boards.push({
      card: box(sec), main: box(document.querySelector('main')), heads: heads,
      wrapScroll: wrap.scrollWidth, wrapClient: wrap.clientWidth, wrap: box(wrap),
      figures: Array.prototype.map.call(sec.querySelectorAll('figure'), box),
      plot: box(plot),
      labels: Array.prototype.map.call(svg.querySelectorAll('text.label'), function (t) {
        return {text: t.textContent, box: box(t), variant: t.parentNode.dataset.variant};
      }),
      points: Array.prototype.map.call(svg.querySelectorAll('g.point circle'), box),
      bars: Array.prototype.map.call(svg.querySelectorAll('g.point line:not(.leader)'), box),
      groups: Array.prototype.map.call(svg.querySelectorAll('g.point'), function (g) { return g.dataset.variant; }),
      key: Array.prototype.map.call(sec.querySelectorAll('ol.key li'), function (li) {
        return [li.querySelector('b').textContent, li.dataset.variant];
      })
    });
  });
  var pre = document.createElement('pre'); pre.id = 'geometry'; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
})();
"""

LONG = "distill_wrn34-10_to_resnet18_cifar10_linf_eps8_sweep"
VARIANTS = 24


def crowded_runs(root: Path) -> Path:
    """A sweep a real user makes: 24 variants with long recipe names, most within a point of each other
    (their labels collide; not all fit), 1-3 seeds, GPU times; and a second, small setting."""
    runs = root / "runs"
    for k in range(VARIANTS):
        method = ("rslad", "ard", "gacd", "crd", "iad", "adaad", "mtard")[k % 7]
        for seed in range(1 + k % 3):
            clean = 0.83 + 0.001 * k + 0.001 * seed if k < 22 else 0.9 + 0.005 * k - 0.12
            aa = 0.50 + 0.001 * (k % 6) + 0.0005 * seed if k < 22 else 0.01 * k - 0.2
            run = write_run(
                runs,
                f"{LONG}_{method}_T{k}_s{seed}",
                method=method,
                options={"temperature": float(k)},  # one recipe per k (names alone do not make variants)
                seed=seed,
                clean=clean,
                robust={"fgsm": aa + 0.1, "pgd20": aa + 0.04, "cw": aa + 0.02, "autoattack": aa},
                flags=["PGD-20 accuracy is above FGSM accuracy: possible gradient masking"] if k == 3 else [],
                teacher="wrn_34_10",
                student="resnet18",
                seconds=5400.0 + 60 * k,
            )
            _patch_result(run, env={"device": "NVIDIA H200"}, cost={"devices": 1, "total_device_seconds": 6000.0})
    for seed in range(2):
        write_run(runs, f"pgd_at_resnet18_s{seed}", method="pgd_at", seed=seed, teacher=None, student="resnet18")
    return runs


def _measure(page: Path, tmp_path: Path, width: int = 1280) -> dict[str, Any]:
    measured = tmp_path / "measured.html"
    measured.write_text(page.read_text().replace("</body>", f"<script>{MEASURE_JS}</script></body>"))
    proc = chromium([f"--window-size={width},2000", "--dump-dom", measured.as_uri()], tmp_path)
    found = re.search(r'<pre id="geometry">(.*?)</pre>', proc.stdout, re.S)
    assert found, proc.stderr[-2000:]
    geometry = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    assert geometry["viewport"] == width
    return geometry


def _overlap(a: list[float], b: list[float]) -> bool:
    return (
        a[0] < b[0] + b[2] - 0.5 and b[0] < a[0] + a[2] - 0.5 and a[1] < b[1] + b[3] - 0.5 and b[1] < a[1] + a[3] - 0.5
    )


def _right(b: list[float]) -> float:
    return b[0] + b[2]


@pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium not found (Debian: apt-get install -y chromium)")
def test_page_geometry_at_1280_px(tmp_path):
    runs = crowded_runs(tmp_path)
    out = tmp_path / "leaderboard.html"
    assert main(["leaderboard", str(runs), "--out", str(out)]) == 0
    geometry = _measure(out, tmp_path)
    crowded = max(geometry["boards"], key=lambda b: len(b["groups"]))
    assert len(crowded["groups"]) == VARIANTS
    for board in geometry["boards"]:
        labels = board["labels"]
        for i, a in enumerate(labels):
            for b in labels[i + 1 :]:
                assert not _overlap(a["box"], b["box"]), f"labels {a['text']!r} and {b['text']!r} overlap"
            for point in board["points"]:
                assert not _overlap(a["box"], point), f"label {a['text']!r} covers a point"
            for bar in board["bars"]:
                assert not _overlap(a["box"], bar), f"label {a['text']!r} covers an error bar"
            plot = board["plot"]
            assert plot[0] <= a["box"][0] and _right(a["box"]) <= _right(plot) + 0.5, a["text"]
        # every point is named: by its label beside it, or by its number in the key under the plot
        named = {la["variant"] for la in labels if not la["text"].isdigit()}
        keyed = {variant for _, variant in board["key"]}
        assert named | keyed == set(board["groups"]) and not named & keyed
        assert {la["text"] for la in labels if la["text"].isdigit()} <= {n for n, _ in board["key"]}
        # nothing wider than its card; the table fits without scrolling, recipe links in view
        card = board["card"]
        assert _right(card) <= _right(board["main"]) + 0.5
        assert board["wrapScroll"] <= board["wrapClient"], "the table is wider than its card"
        assert _right(board["wrap"]) <= _right(card)
        assert _right(board["heads"]["recipe"]) <= _right(card) and _right(board["heads"]["seeds"]) <= _right(card)
        assert all(_right(f) <= _right(card) + 0.5 for f in board["figures"])
    assert crowded["key"], "the crowded scatter needs its key"


@pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium not found (Debian: apt-get install -y chromium)")
def test_a_table_too_wide_scrolls_inside_its_card(tmp_path):
    runs = crowded_runs(tmp_path)
    for run in runs.glob("*/*/result.json"):
        _patch_result(run.parent, analysis={"cka_clean": 0.8, "cka_adv": 0.7, "class_corr_distance": 0.1})
    out = tmp_path / "leaderboard.html"
    assert main(["leaderboard", str(runs), "--out", str(out)]) == 0
    geometry = _measure(out, tmp_path, width=1000)  # a narrower window and three more columns
    for board in geometry["boards"]:
        card = board["card"]
        assert _right(card) <= _right(board["main"]) + 0.5  # the card keeps its width ...
        assert _right(board["wrap"]) <= _right(card)  # ... and the table scrolls inside it
        assert _right(board["heads"]["recipe"]) <= _right(card)  # the recipe column is in view
        assert all(_right(f) <= _right(card) + 0.5 for f in board["figures"])
