"""The interactive report page, opened in a real headless Chromium (Debian's chromium and chromium-driver, driven
by selenium): the plan's regions highlighted, every block collapsible, the colouring switched, text contrast of at
least 4.5:1 on every node, a node's row on click, the table sorted, and big graphs ready in under 2 s. Skipped
cleanly without the browser; nothing is downloaded."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

import branchgraph as bg
from branchgraph.errors import ConfigError
from branchgraph.interactive.data import layout
from tests.conftest import REPO, run_cli

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
needs_browser = pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="sudo apt-get install chromium chromium-driver")
SCREENSHOTS = REPO / "docs" / "img"


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver")
    if not (CHROMIUM and DRIVER):
        pytest.skip("sudo apt-get install chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1400,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=DRIVER))
    yield driver
    driver.quit()


def _open(driver, path: Path) -> float:
    """Load ``path`` and wait for the page's script; the milliseconds from navigation to ready."""
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(path.as_uri())
    WebDriverWait(driver, 10).until(lambda d: d.execute_script("return document.body.dataset.ready === '1'"))
    return float(driver.execute_script("return document.body.dataset.readyMs"))


def _data(path: Path) -> dict:
    return json.loads(re.search(r'<script type="application/json" id="data">(.*?)</script>', path.read_text(),
                                re.S).group(1).replace("<\\/", "</"))


CONTRAST = """
function lum(rgb){const c=rgb.match(/\\d+/g).slice(0,3).map(v=>v/255)
  .map(v=>v<=0.03928?v/12.92:Math.pow((v+0.055)/1.055,2.4));return 0.2126*c[0]+0.7152*c[1]+0.0722*c[2];}
return Array.from(document.querySelectorAll('.node')).map(el=>{const s=getComputedStyle(el);
  const a=lum(s.backgroundColor), b=lum(s.color);return (Math.max(a,b)+0.05)/(Math.min(a,b)+0.05);});
"""


def test_layout_nests_blocks_and_keeps_every_node_once() -> None:
    from branchgraph.graph.structure import Block, Branch

    outer = Block("outer", "a", "j2", [Branch("o0", ["b", "c", "d", "j1"]), Branch("o1", ["e"])])
    inner = Block("inner", "b", "j1", [Branch("i0", ["c"]), Branch("i1", ["d"])])
    items = layout(["a", "b", "c", "d", "j1", "e", "j2", "out"], [outer, inner])
    assert items[0] == {"node": "a"} and items[1]["block"] == "outer" and items[2:] == [{"node": "j2"},
                                                                                        {"node": "out"}]
    first = items[1]["branches"][0]["items"]
    assert first[0] == {"node": "b"} and first[1]["block"] == "inner" and first[2] == {"node": "j1"}
    assert [b["items"] for b in first[1]["branches"]] == [[{"node": "c"}], [{"node": "d"}]]


@needs_browser
def test_report_with_a_plan_in_the_browser(browser, tmp_path: Path) -> None:
    path = bg.report("googlenet-d2l", output=tmp_path / "r.html", batch=2, budget=0.25, branches=True)
    data = _data(path)
    assert _open(browser, path) < 2000
    plan = data["plan"]
    highlighted = browser.execute_script("return Array.from(new Set(Array.from(document.querySelectorAll("
                                         "'.node.in-region')).flatMap(e=>e.dataset.regions.split(' '))))")
    assert plan["regions"] and len(highlighted) == len(plan["regions"])
    assert all(r["nodes"] for r in plan["regions"])
    assert plan["measured_kept_bytes"] > 0 and "measured" in browser.find_element("id", "plan").text
    blocks = browser.find_elements("css selector", "details.block")
    assert len(blocks) == 9  # d2l's nine Inception blocks, each collapsible
    for block in blocks:
        before = block.get_attribute("open") is not None
        browser.execute_script("arguments[0].querySelector('summary').click()", block)
        assert (block.get_attribute("open") is not None) != before
    browser.execute_script("document.querySelectorAll('details.block').forEach(d=>{d.open=true;})")
    assert browser.find_elements("css selector", "details.block .bars .bar")  # branch gradient shares
    legend = browser.find_element("id", "legend").text
    fills = browser.execute_script("return Array.from(document.querySelectorAll('.node')).map(e=>e.dataset.bg)")
    browser.execute_script("const s=document.getElementById('quantity');s.value='saved_bytes';"
                           "s.dispatchEvent(new Event('change'))")
    assert browser.find_element("id", "legend").text != legend
    assert browser.execute_script(
        "return Array.from(document.querySelectorAll('.node')).map(e=>e.dataset.bg)") != fills
    for quantity in ("macs", "saved_bytes", "time_ms"):
        browser.execute_script(f"const s=document.getElementById('quantity');s.value='{quantity}';"
                               "s.dispatchEvent(new Event('change'))")
        assert min(browser.execute_script(CONTRAST)) >= 4.5, quantity
    node = browser.find_element("css selector", ".node.fork")
    node.click()
    assert node.get_attribute("data-name") in browser.find_element("id", "row").text
    header = browser.find_element("css selector", "#modules th[data-key='macs']")
    header.click()
    macs = [r["macs"] for r in sorted(data["modules"], key=lambda r: r["macs"])]
    first = browser.find_element("css selector", "#modules tbody tr td:nth-child(5)").text
    assert first == f"{macs[0]:,}"
    browser.execute_script("document.querySelectorAll('details.block').forEach((d,i)=>{d.open=i===0;});"
                           "const s=document.getElementById('quantity');s.value='macs';"
                           "s.dispatchEvent(new Event('change'));window.scrollTo(0,0)")
    shot = tmp_path / "report.png"
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
    if os.environ.get("BRANCHGRAPH_SCREENSHOTS"):  # refresh the guide's picture: BRANCHGRAPH_SCREENSHOTS=1
        shutil.copy(shot, SCREENSHOTS / "report-googlenet-d2l.png")


def _synthetic(blocks: int = 100) -> dict:
    """Report data of a synthetic graph: ``blocks`` blocks of four branches (2, 5, 6 and 6 nodes) between a fork
    and a join, 2,000 nodes at 100, with made-up costs (a page-load test needs no model)."""
    nodes, items = {}, []

    def add(name: str, **extra: object) -> dict:
        nodes[name] = {"name": name, "op": "Conv2d", "module": name, "owner": name, "shape": [2, 8, 8, 8],
                       "params": 64, "macs": 1 + 997 * len(nodes) % 10007, "saved_bytes": 4096 * (len(nodes) % 7),
                       "time_ms": 0.01 * (len(nodes) % 13), "fork": False, **extra}
        return {"node": name}

    items.append(add("x", fork=True))
    for b in range(blocks):
        branches = [{"name": f"block{b}.branch{i}", "items": [add(f"b{b}_{i}_{k}") for k in range(n)]}
                    for i, n in enumerate((2, 5, 6, 6))]
        items.append({"block": f"block{b}", "fork": "x" if b == 0 else f"join{b - 1}", "join": f"join{b}",
                      "branches": branches})
        items.append(add(f"join{b}", fork=True, join=True))
    modules = [{"name": n, "type": "Conv2d", "shape": v["shape"], "params": v["params"], "macs": v["macs"],
                "backward_macs": 2 * v["macs"], "saved_bytes": v["saved_bytes"]} for n, v in nodes.items()]
    return {"model": "synthetic", "input": [2, 8, 8, 8], "total": {"params": 0, "macs": 0}, "peak_bytes": None,
            "nodes": nodes, "layout": items, "modules": modules, "plan": None, "branches": None}


@needs_browser
@pytest.mark.parametrize("net", ["synthetic", "inception-v3-like"])
def test_big_graphs_are_ready_in_under_two_seconds(browser, tmp_path: Path, net: str) -> None:
    from branchgraph.interactive.page import render_page
    from tests.nets import InceptionV3Like

    path = tmp_path / "big.html"
    if net == "synthetic":
        path.write_text(render_page(_synthetic()))
    else:
        bg.report(InceptionV3Like(in_chans=1, width=0.125), (1, 75, 75), path)
    data = _data(path)
    assert len(data["nodes"]) >= (2000 if net == "synthetic" else 250)  # both past the size that starts collapsed
    assert _open(browser, path) < 2000
    assert browser.execute_script("return document.querySelectorAll('.node').length") == len(data["nodes"])
    assert not browser.execute_script("return Array.from(document.querySelectorAll('details.block')).some(d=>d.open)")
    assert min(browser.execute_script(CONTRAST)) >= 4.5


def test_report_cli_and_bad_output(tmp_path: Path) -> None:
    r = run_cli("report", "googlenet-fmnist", "-o", str(tmp_path / "f.html"), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["output"] == str(tmp_path / "f.html")
    text = (tmp_path / "f.html").read_text()
    assert "<script src" not in text and "http" not in text.split("<script>")[1]  # nothing fetched when viewed
    with pytest.raises(ConfigError, match=r"should end in \.html"):
        bg.report("googlenet-fmnist", output=tmp_path / "f.svg")
    r = run_cli("report", "googlenet-fmnist", "-o", str(tmp_path / "f.svg"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--output" in r.stderr
