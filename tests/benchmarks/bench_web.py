"""The status page at 4,000 agents and 1,000 VNIs: `python -m tests.benchmarks.bench_web`.

A real registry (SQLite file in a temporary directory) gets 4,000 agents, each in
5 of 1,000 VNIs (20 members per VNI), written through the store's batch path.
vxsnd's API (vxsnd.api.start_api, with the status page) serves it on 127.0.0.1.

Printed, each the median of several runs, with the baseline measured in the same run:
- server: GET /v1/vnis + GET /v1/nodes (what a script or dashboard reads for the same
  overview; the baseline), GET /ui (whole overview page), a live poll with nothing new,
  and the monitor's full registry read;
- update: a join written to the registry until the page's live poll returns it;
- browser (Debian's chromium through playwright, when present): page load to the
  load event, a join until it is in the DOM, and search-as-you-type until the table
  shows the result.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

from tests.integration.apiharness import Harness, sqlite_url
from tests.integration.browser import CHROMIUM, CHROMIUM_ARGS, appears
from vxsnd import api
from vxsnd import registry as st
from vxsnd.web.handlers import PAGE


def address(i: int) -> str:
    return f"198.18.{i // 250}.{i % 250 + 1}"


async def fill(store: st.Store, agents: int, vnis: int, per_agent: int) -> None:
    now = time.time()
    for start in range(0, agents, 250):
        batch = st.Batch()
        for i in range(start, min(agents, start + 250)):
            mine = {1 + (i + 211 * k) % vnis: address(i) for k in range(per_agent)}
            batch.register(st.Registration(f"hv-{i:05d}", 7, address(i), 10002, 3600, mine))
        await store.apply(batch, now)
    # every agent has applied every generation, as after convergence
    generations = await store.generations()
    acks = st.Batch()
    for i in range(agents):
        for k in range(per_agent):
            vni = 1 + (i + 211 * k) % vnis
            acks.ack(f"hv-{i:05d}", vni, generations[vni])
    await store.apply(acks, now)


async def timed(fn: Callable[[], Awaitable[Any]], runs: int) -> tuple[float, Any]:
    times = []
    result = None
    for _ in range(runs):
        t0 = time.perf_counter()
        result = await fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


async def join(store: st.Store, n: int) -> None:
    batch = st.Batch()
    batch.register(
        st.Registration(
            f"new-{n:03d}", 9, f"198.19.0.{n + 1}", 10002, 3600, {1: f"198.19.0.{n + 1}"}
        )
    )
    await store.apply(batch, time.time())


async def server_side(base: str, store: st.Store, runner: Any, runs: int) -> dict[str, float]:
    out: dict[str, float] = {}
    monitor = runner.app[PAGE].monitor
    async with aiohttp.ClientSession() as http:

        async def fetch(path: str) -> bytes:
            async with http.get(base + path) as r:
                assert r.status == 200, (path, r.status)
                return await r.read()

        async def rest() -> int:
            return len(await fetch("/v1/vnis")) + len(await fetch("/v1/nodes"))

        out["rest"], size = await timed(rest, runs)
        out["rest_bytes"] = size
        await fetch("/ui")  # warm: the first request reads the snapshot
        out["page"], body = await timed(lambda: fetch("/ui"), runs)
        out["page_bytes"] = len(body)
        version = monitor.version
        out["poll"], _ = await timed(lambda: fetch(f"/ui/live?since={version}"), runs)
        out["snapshot"], _ = await timed(monitor.refresh, runs)

        latencies = []
        for n in range(runs):
            version = monitor.version
            t0 = time.perf_counter()
            await join(store, n)
            while True:
                async with http.get(f"{base}/ui/live?since={version}&aq=new-{n:03d}") as r:
                    data = await r.json()
                if data["changed"] and f"new-{n:03d}" in data["html"]["agent-table"]:
                    break
                await asyncio.sleep(0.01)
            latencies.append(time.perf_counter() - t0)
        out["update"] = statistics.median(latencies)
    return out


def have_chromium() -> bool:
    return CHROMIUM.is_file()


async def browser_side(base: str, store: st.Store, runs: int) -> dict[str, float] | None:
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        return None
    if not have_chromium():
        return None
    out: dict[str, float] = {}
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = await browser.new_page(viewport={"width": 1400, "height": 1000})
        loads = []
        for _ in range(runs):
            await page.goto(base + "/ui")
            loads.append(
                await page.evaluate(
                    "performance.getEntriesByType('navigation')[0].loadEventEnd / 1000"
                )
            )
        out["load"] = statistics.median(loads)
        joins, searches = [], []
        for n in range(runs):
            await page.goto(f"{base}/ui?aq=b-{n:03d}")
            seen = asyncio.ensure_future(appears(page, f'tr[data-node="b-{n:03d}"]'))
            t0 = time.perf_counter()
            await join_b(store, n)
            assert await seen
            joins.append(time.perf_counter() - t0)
            seen = asyncio.ensure_future(appears(page, f'tr[data-node="hv-{n:03d}99"]'))
            t0 = time.perf_counter()
            await page.fill("#aq", f"hv-{n:03d}9")
            assert await seen
            searches.append(time.perf_counter() - t0)
        out["join"] = statistics.median(joins)
        out["search"] = statistics.median(searches)
        await browser.close()
    return out


async def join_b(store: st.Store, n: int) -> None:
    batch = st.Batch()
    addr = f"198.19.1.{n + 1}"
    batch.register(st.Registration(f"b-{n:03d}", 9, addr, 10002, 3600, {2: addr}))
    await store.apply(batch, time.time())


async def main(agents: int, vnis: int, per_agent: int, runs: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = await st.Store.open(sqlite_url(Path(tmp)))
        try:
            t0 = time.perf_counter()
            await fill(store, agents, vnis, per_agent)
            print(
                f"registry: {agents} agents x {per_agent} of {vnis} VNIs "
                f"({agents * per_agent} memberships), written in {time.perf_counter() - t0:.1f} s"
            )
            runner = await api.start_api(Harness(store), "127.0.0.1", 0, None)
            base = f"http://127.0.0.1:{api.bound_port(runner)}"
            try:
                s = await server_side(base, store, runner, runs)
                b = await browser_side(base, store, runs)
            finally:
                await runner.cleanup()
        finally:
            await store.close()
    ms = 1000.0
    print(
        f"baseline  GET /v1/vnis + /v1/nodes   {s['rest'] * ms:8.1f} ms  "
        f"{s['rest_bytes'] / 1024:8.0f} KiB  (1.00x)"
    )
    print(
        f"page      GET /ui (overview)         {s['page'] * ms:8.1f} ms  "
        f"{s['page_bytes'] / 1024:8.0f} KiB  ({s['page'] / s['rest']:.2f}x)"
    )
    print(
        f"poll      GET /ui/live, no change    {s['poll'] * ms:8.1f} ms  "
        f"           ({s['poll'] / s['rest']:.3f}x)"
    )
    print(
        f"snapshot  monitor's registry read    {s['snapshot'] * ms:8.1f} ms  "
        f"           ({s['snapshot'] / s['rest']:.2f}x)"
    )
    print(
        f"update    join -> live poll has it   {s['update'] * ms:8.1f} ms  "
        f"           ({s['update'] / s['rest']:.2f}x)"
    )
    if b is None:
        print("browser   skipped: no chromium at /usr/bin/chromium or no playwright")
        return
    print(
        f"browser   page load (load event)     {b['load'] * ms:8.1f} ms  "
        f"           ({b['load'] / s['rest']:.2f}x)"
    )
    print(
        f"browser   join -> row in the DOM     {b['join'] * ms:8.1f} ms  "
        f"           ({b['join'] / s['rest']:.2f}x)"
    )
    print(
        f"browser   search typed -> result     {b['search'] * ms:8.1f} ms  "
        f"           ({b['search'] / s['rest']:.2f}x)"
    )


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=4000)
    parser.add_argument("--vnis", type=int, default=1000)
    parser.add_argument("--per-agent", type=int, default=5)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    asyncio.run(main(args.agents, args.vnis, args.per_agent, args.runs))


if __name__ == "__main__":
    cli()
