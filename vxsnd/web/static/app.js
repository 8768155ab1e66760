// vxsnd status page: live updates and search-as-you-type on top of a page that works
// without this script. It polls the page's /ui/live endpoint with the version it shows;
// the server answers "unchanged" from memory, or the changed parts as HTML to swap in.
"use strict";
(function () {
  const body = document.body;
  let live = body.dataset.live;
  if (!live) return;
  let version = body.dataset.version;
  const state = document.getElementById("live-state");
  const POLL_MS = 250;
  let timer = null;
  let inflight = null;

  function setState(on, text) {
    state.textContent = text;
    state.className = "live-state " + (on ? "on" : "off");
  }

  function apply(data) {
    const focused = document.activeElement && document.activeElement.id;
    for (const [id, html] of Object.entries(data.html)) {
      const el = document.getElementById(id);
      if (el) el.innerHTML = html;
    }
    if (focused) {
      const again = document.getElementById(focused);
      if (again && again !== document.activeElement) again.focus();
    }
    version = String(data.version);
    body.dataset.version = version;
  }

  // A forced poll (new search, sort or page) replaces any poll in flight; a timed poll
  // never replaces a forced one, or the new view could be lost.
  async function poll(force) {
    if (inflight) {
      if (!force) return;
      inflight.abort();
    }
    const controller = new AbortController();
    inflight = controller;
    const sep = live.includes("?") ? "&" : "?";
    const url = live + sep + "since=" + (force ? "" : encodeURIComponent(version));
    try {
      const r = await fetch(url, { cache: "no-store", signal: controller.signal,
                                   credentials: "same-origin" });
      if (!r.ok) throw new Error("HTTP " + r.status);
      const data = await r.json();
      if (data.changed) apply(data);
      setState(true, "Live");
    } catch (e) {
      if (e.name !== "AbortError") setState(false, "Not updating: " + e.message);
    } finally {
      if (inflight === controller) inflight = null;
    }
  }

  function schedule() {
    clearTimeout(timer);
    timer = setTimeout(async function tick() {
      if (!document.hidden) await poll(false);
      timer = setTimeout(tick, POLL_MS);
    }, POLL_MS);
  }

  // Overview only: search, sort and paging fetch the changed tables instead of a reload.
  function navigate(href) {
    const url = new URL(href, location.href);
    history.replaceState(null, "", url.pathname + url.search);
    live = "/ui/live" + url.search;
    poll(true);
  }

  document.addEventListener("click", function (ev) {
    const a = ev.target.closest && ev.target.closest("#vni-table a, #agent-table a");
    if (!a || ev.ctrlKey || ev.metaKey || ev.shiftKey) return;
    const url = new URL(a.href, location.href);
    if (url.pathname === "/ui" && location.pathname === "/ui" && url.origin === location.origin) {
      ev.preventDefault();
      navigate(url.href);
    }
  });

  for (const form of document.querySelectorAll("form.search")) {
    const input = form.querySelector("input[type=search]");
    let debounce = null;
    const go = function () {
      const params = new URLSearchParams(location.search);
      params.set(input.name, input.value);
      params.delete(input.name === "vq" ? "vp" : "ap");
      for (const [k, v] of [...params]) if (!v) params.delete(k);
      navigate("/ui?" + params.toString());
    };
    input.addEventListener("input", function () {
      clearTimeout(debounce);
      debounce = setTimeout(go, 150);
    });
    form.addEventListener("submit", function (ev) { ev.preventDefault(); go(); });
  }

  setState(true, "Live");
  schedule();
})();
