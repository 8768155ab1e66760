"""Driving Debian's chromium with playwright: shared by the browser test and the benchmark."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

CHROMIUM = Path(os.environ.get("VXFLOOD_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

# Resolves as soon as `selector` matches (a MutationObserver: playwright's own waits poll
# with a back-off of up to 500 ms, too coarse to time this), false after `ms`.
APPEARS = """([selector, ms]) => new Promise(resolve => {
  let timer = null;
  const observer = new MutationObserver(() => check());
  const check = () => {
    if (!document.querySelector(selector)) return;
    observer.disconnect();
    clearTimeout(timer);
    resolve(true);
  };
  observer.observe(document.body, {childList: true, subtree: true});
  timer = setTimeout(() => { observer.disconnect(); resolve(false); }, ms);
  check();
})"""


async def appears(page: Any, selector: str, seconds: float = 10.0) -> bool:
    return bool(await page.evaluate(APPEARS, [selector, seconds * 1000]))
