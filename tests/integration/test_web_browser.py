"""The status page in a real browser (Debian's chromium, driven by playwright) against a
real vxsnd with 1,000 simulated agents over UDP (tests/integration/agent_sim.py).

Checks the overview against the REST API, watches a join appear without a reload,
follows a VNI and an agent link, works without JavaScript and by keyboard, and is
refused without a token when a token file is set. Screenshots of the overview and a
VNI page (light and dark) go to artifacts/screenshots/ (or $VXFLOOD_SCREENSHOTS).

Chromium missing fails in CI (tests/conftest.py `missing`), never skips there.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from tests.conftest import missing
from tests.integration.agent_sim import Agent, wait_until
from tests.integration.apiharness import ADMIN_TOKEN, READ_TOKEN, sqlite_url, write_tokens
from tests.integration.browser import CHROMIUM, CHROMIUM_ARGS, appears
from tests.integration.vxsnd_harness import make_config, running, server_addr
from vxsnd import api
from vxsnd.web.model import PAGE_SIZE

ROOT = Path(__file__).resolve().parents[2]
SHOTS = Path(os.environ.get("VXFLOOD_SCREENSHOTS", ROOT / "artifacts" / "screenshots"))
AGENTS = 1000
POOL = 200  # VNIs 5000..5199; each agent serves 3 of them
JOIN_DEADLINE = 1.0  # the "within a second"

# One vxsnd with 1,000 agents and one browser for the module: registering them is the
# slow part. The tests run in file order; only the last one changes the registry.
pytestmark = [pytest.mark.timeout(300), pytest.mark.asyncio(loop_scope="module")]


def vnis_of(i: int) -> dict[int, ipaddress.IPv4Address]:
    address = ipaddress.IPv4Address("198.18.0.1") + i
    return {5000 + (i + 37 * k) % POOL: address for k in range(3)}


@dataclass
class Site:
    base: str
    daemon: Any
    agents: list[Agent]
    http: aiohttp.ClientSession

    async def get(self, path: str) -> Any:
        headers = {"Authorization": f"Bearer {READ_TOKEN}"}
        async with self.http.get(self.base + path, headers=headers) as r:
            assert r.status == 200, (path, r.status)
            return await r.json()


def chromium_present() -> bool:
    return CHROMIUM.is_file()


def make_shots_dir() -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser() -> AsyncIterator[Any]:
    if not chromium_present():
        missing(
            f"the browser test needs Debian's chromium at {CHROMIUM} (apt-get install chromium)"
        )
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        missing(
            "the browser test needs playwright (pip install playwright; never `playwright install`)"
        )
    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            await b.close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def site(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Site]:
    tmp_path = tmp_path_factory.mktemp("web")
    cfg = make_config(sqlite_url(tmp_path), registry_poll=0.0)
    async with running(cfg) as daemon:
        runner = await api.start_api(daemon, "127.0.0.1", 0, str(write_tokens(tmp_path)))
        agents: list[Agent] = []
        try:
            async with aiohttp.ClientSession() as http:
                s = Site(f"http://127.0.0.1:{api.bound_port(runner)}", daemon, agents, http)
                for i in range(AGENTS):
                    agent = await Agent.create(f"hv-{i:04d}", server_addr(daemon), fast=True)
                    agents.append(agent)
                    agent.register(vnis_of(i))
                await wait_until(
                    lambda: all(len(a.applied) == 3 for a in agents), 60, "1,000 agents registered"
                )
                yield s
        finally:
            for agent in agents:
                agent.close()
            await runner.cleanup()


def basic(token: str) -> dict[str, str]:
    return {"username": "operator", "password": token}


async def text_of(page: Any, selector: str) -> str:
    return str(await page.locator(selector).inner_text()).strip()


async def test_refused_without_a_token(site: Site, browser: Any) -> None:
    from playwright.async_api import Error as PlaywrightError

    # The page challenges with HTTP Basic; headless chromium has nobody to type the
    # token, so the navigation ends in an authentication error rather than the page.
    context = await browser.new_context()
    page = await context.new_page()
    with pytest.raises(PlaywrightError, match="ERR_INVALID_AUTH_CREDENTIALS"):
        await page.goto(site.base + "/ui")
    assert await page.locator("#n-agents").count() == 0
    response = await context.request.get(site.base + "/ui")
    assert response.status == 401
    assert response.headers["www-authenticate"].startswith("Basic")
    assert (await response.json())["error"] == "unauthorized"
    await context.close()

    # a wrong token: the server refuses it and chromium shows the refusal

    wrong = await browser.new_context(http_credentials=basic("not-a-token-at-all-1234"))
    page = await wrong.new_page()
    response = await page.goto(site.base + "/ui/vnis/5000")
    assert response is not None and response.status == 401
    assert await page.locator("#member-table").count() == 0
    await wrong.close()

    for path in ("/ui", "/ui/live", "/ui/vnis/5000", "/ui/nodes/hv-0001", "/ui/live/vnis/5000"):
        async with site.http.get(site.base + path) as r:
            assert r.status == 401, path
        async with site.http.get(
            site.base + path, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
        ) as r:
            assert r.status == 200, path
        pair = base64.b64encode(f"x:{READ_TOKEN}".encode()).decode()
        async with site.http.get(site.base + path, headers={"Authorization": f"Basic {pair}"}) as r:
            assert r.status == 200, path
    # Basic is for the page only: the REST API keeps bearer tokens
    async with site.http.get(
        site.base + "/v1/vnis", headers={"Authorization": f"Basic {pair}"}
    ) as r:
        assert r.status == 401


async def test_without_javascript_and_by_keyboard(site: Site, browser: Any) -> None:
    context = await browser.new_context(
        http_credentials=basic(READ_TOKEN), java_script_enabled=False
    )
    page = await context.new_page()
    await page.goto(site.base + "/ui")
    assert await text_of(page, "#n-agents") == str(len((await site.get("/v1/nodes"))["nodes"]))
    assert "Static view" in await text_of(page, "#live-state")
    # search by form submit (a GET navigation), then sort by a header link
    await page.fill("#aq", "hv-012")
    await page.press("#aq", "Enter")
    await page.wait_for_url("**/ui?aq=hv-012")
    ids = await page.locator("#agents tbody tr").evaluate_all(
        "rows => rows.map(r => r.dataset.node)"
    )
    assert ids == [f"hv-{i:04d}" for i in range(120, 130)]
    await page.click("#sort-agent-id")  # already ascending: flips to descending
    await page.wait_for_url("**as=-id**")
    ids = await page.locator("#agents tbody tr").evaluate_all(
        "rows => rows.map(r => r.dataset.node)"
    )
    assert ids == [f"hv-{i:04d}" for i in range(129, 119, -1)]
    # paging without JavaScript
    await page.goto(site.base + "/ui")
    await page.click("#agent-next")
    await page.wait_for_url("**ap=2**")
    first = await page.locator("#agents tbody tr").first.get_attribute("data-node")
    assert first == f"hv-{PAGE_SIZE:04d}"
    await context.close()

    # keyboard: the first Tab reaches the skip link, Enter skips to the content,
    # and the VNI links are reachable and followable with the keyboard alone
    context = await browser.new_context(http_credentials=basic(READ_TOKEN))
    page = await context.new_page()
    await page.goto(site.base + "/ui?vq=5007")
    await page.keyboard.press("Tab")
    assert await page.evaluate("document.activeElement.className") == "skip"
    await page.keyboard.press("Enter")
    await page.keyboard.press("Tab")  # the skip link moved the start of Tab order to main
    assert await page.evaluate("document.activeElement.id") == "vq"
    for _ in range(60):
        await page.keyboard.press("Tab")
        href = await page.evaluate("document.activeElement.getAttribute('href')")
        if href == "/ui/vnis/5007":
            break
    else:
        raise AssertionError("the VNI link is not reachable by Tab")
    await page.keyboard.press("Enter")
    await page.wait_for_url("**/ui/vnis/5007")
    await context.close()


async def test_status_page_in_a_browser(site: Site, browser: Any) -> None:
    from playwright.async_api import expect

    make_shots_dir()
    context = await browser.new_context(
        http_credentials=basic(READ_TOKEN), viewport={"width": 1400, "height": 1000}
    )
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    response = await page.goto(site.base + "/ui")
    assert response is not None and response.status == 200

    # the overview's numbers are the REST API's
    vnis = (await site.get("/v1/vnis"))["vnis"]
    nodes = (await site.get("/v1/nodes"))["nodes"]
    assert await text_of(page, "#n-vnis") == str(len(vnis)) == str(POOL)
    assert await text_of(page, "#n-agents") == str(len(nodes)) == str(AGENTS)
    assert await text_of(page, "#n-members") == str(sum(v["members"] for v in vnis))
    rows = page.locator("#vnis tbody tr")
    assert await rows.count() == PAGE_SIZE  # one page of the 200 VNIs
    by_vni = {v["vni"]: v for v in vnis}
    for i in (0, 17, PAGE_SIZE - 1):
        row = rows.nth(i)
        vni = int(str(await row.get_attribute("data-vni")))
        assert await text_of(row, "td[data-col=members]") == str(by_vni[vni]["members"])
        assert await text_of(row, "td:nth-child(7)") == str(by_vni[vni]["generation"])

    # sort by members, descending, by clicking the header twice (no reload: live script)
    await page.click("#sort-vni-members")
    await page.wait_for_selector('th[aria-sort="ascending"] > #sort-vni-members')
    await page.click("#sort-vni-members")
    await page.wait_for_selector('th[aria-sort="descending"] > #sort-vni-members')
    top = max(v["members"] for v in vnis)
    assert await text_of(page, "#vnis tbody tr:first-child td[data-col=members]") == str(top)

    # a join appears without reload within a second of the registry change
    await page.fill("#aq", "hv-new")
    await page.wait_for_selector("#agents td.empty")
    # hv-0000 (in VNI 5000) stops hearing vxsnd: it will not ack the join's generation
    deaf = site.agents[0]
    assert 5000 in deaf.vnis
    deaf.loss = 1.0
    on_page = asyncio.ensure_future(
        appears(page, '#agents tr[data-node="hv-new"]', seconds=JOIN_DEADLINE + 10)
    )
    joiner = await Agent.create("hv-new", server_addr(site.daemon), fast=True)
    site.agents.append(joiner)
    joiner.register({5000: ipaddress.IPv4Address("198.19.0.1")})

    async def registered() -> bool:
        headers = {"Authorization": f"Bearer {READ_TOKEN}"}
        async with site.http.get(site.base + "/v1/nodes/hv-new", headers=headers) as r:
            return r.status == 200

    for _ in range(1000):
        if await registered():
            break
        await asyncio.sleep(0.01)
    else:
        raise AssertionError("hv-new never reached the registry")
    # the wait's deadline is the second, counted from the registry change
    assert await asyncio.wait_for(on_page, JOIN_DEADLINE), "the join did not appear in 1 s"
    await expect(page.locator("#n-agents")).to_have_text(
        str(AGENTS + 1), timeout=JOIN_DEADLINE * 1000
    )
    assert "aq=hv-new" in page.url  # the search went into the URL without a reload

    # follow a VNI link, then an agent link from the VNI page
    await page.fill("#aq", "")
    await page.fill("#vq", "5000")
    link = page.locator('#vnis a[href="/ui/vnis/5000"]')
    await link.wait_for()
    await link.click()
    await page.wait_for_url("**/ui/vnis/5000")
    detail = await site.get("/v1/vnis/5000")
    assert await text_of(page, "h1") == "VNI 5000"
    assert await page.locator("#member-table tbody tr").count() == len(detail["members"])
    assert await text_of(page, "#vni-generation") == str(detail["generation"])
    assert await page.locator('#member-table tr[data-address="198.19.0.1"]').count() == 1
    # the member that did not ack is marked, as the REST API says
    lagging = page.locator('#member-table tr.lag[data-address="198.18.0.1"]')
    await lagging.wait_for(timeout=5000)
    assert await page.locator("#member-table tr.lag").count() == 1
    deaf_vnis = (await site.get("/v1/nodes/hv-0000"))["vnis"]
    behind = [v["vni"] for v in deaf_vnis if v["applied_generation"] < v["generation"]]
    assert behind == [5000]
    await page.screenshot(path=str(SHOTS / "vni.png"), full_page=False)

    agent_link = page.locator('#member-table a[href="/ui/nodes/hv-new"]')
    await agent_link.click()
    await page.wait_for_url("**/ui/nodes/hv-new")
    node = await site.get("/v1/nodes/hv-new")
    assert await text_of(page, "h1") == "Agent hv-new"
    shown = [
        int(str(v))
        for v in await page.locator("#node-vni-table tr").evaluate_all(
            "rows => rows.map(r => r.dataset.vni).filter(Boolean)"
        )
    ]
    assert shown == [v["vni"] for v in node["vnis"]] == [5000]

    # a second VNI shows up on the agent page live as well
    joiner.register(
        {5000: ipaddress.IPv4Address("198.19.0.1"), 5001: ipaddress.IPv4Address("198.19.0.1")}
    )
    await page.wait_for_selector('#node-vni-table tr[data-vni="5001"]', timeout=5000)

    await page.goto(site.base + "/ui?vs=-health&as=-behind")
    # VNI 5001's members ack its new generation within moments (acks are written in
    # batches): the live page settles on the one deaf member
    await expect(page.locator("#n-lagging")).to_have_text("1", timeout=5000)
    assert await page.locator('#agents tbody tr:first-child[data-node="hv-0000"]').count() == 1
    await page.screenshot(path=str(SHOTS / "overview.png"), full_page=False)
    await page.screenshot(path=str(SHOTS / "overview-full.png"), full_page=True)

    dark = await browser.new_context(
        http_credentials=basic(READ_TOKEN),
        viewport={"width": 1400, "height": 1000},
        color_scheme="dark",
    )
    dark_page = await dark.new_page()
    await dark_page.goto(site.base + "/ui/vnis/5000")
    await dark_page.screenshot(path=str(SHOTS / "vni-dark.png"))
    await dark_page.goto(site.base + "/ui?vs=-health")
    await dark_page.screenshot(path=str(SHOTS / "overview-dark.png"))
    await dark.close()
    assert errors == []
    await context.close()
