"""A page opened in a real headless Chromium over the DevTools protocol: its console errors, uncaught exceptions,
failed loads (images, styles), whether every image decoded, and a full-page screenshot.

Chromium is Debian's ``chromium`` (``.ci/run`` installs it); ``chromium_path`` is None where there is none. The
browser listens on a port of its own choosing on 127.0.0.1 and is ended by the helper, whatever happens.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field

import aiohttp

START_TIMEOUT_S = 90.0
LOAD_TIMEOUT_S = 90.0
_LISTENING = re.compile(r"DevTools listening on (ws://\S+)")


def chromium_path() -> str | None:
    """The Chromium executable, if one is installed."""
    return next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


@dataclass
class PageCheck:
    """What the browser saw of a page."""

    errors: list[str] = field(default_factory=list)
    images: int = 0
    broken_images: list[str] = field(default_factory=list)
    screenshot: bytes = b""


def _devtools_url(proc: subprocess.Popen) -> str:
    """The browser's DevTools websocket address, read from its stderr (which is drained afterwards)."""
    found: list[str] = []
    ready = threading.Event()
    lines: list[str] = []

    def read() -> None:
        for line in proc.stderr:
            lines.append(line)
            m = _LISTENING.search(line)
            if m and not found:
                found.append(m.group(1))
                ready.set()
        ready.set()

    threading.Thread(target=read, daemon=True).start()
    if not ready.wait(START_TIMEOUT_S) or not found:
        raise RuntimeError(f"chromium did not start its DevTools server:\n{''.join(lines[-20:])}")
    return found[0]


async def _inspect(ws_url: str, url: str, width: int, height: int) -> PageCheck:
    check = PageCheck()
    ids = itertools.count(1)
    pending: dict[int, asyncio.Future] = {}
    loaded = asyncio.Event()
    async with aiohttp.ClientSession() as http, http.ws_connect(ws_url, max_msg_size=0) as ws:

        async def pump() -> None:
            async for msg in ws:
                data = msg.json()
                if "id" in data and data["id"] in pending:
                    pending.pop(data["id"]).set_result(data)
                    continue
                method, params = data.get("method"), data.get("params", {})
                if method == "Page.loadEventFired":
                    loaded.set()
                elif method == "Runtime.exceptionThrown":
                    details = params["exceptionDetails"]
                    check.errors.append(details.get("exception", {}).get("description") or details.get("text"))
                elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                    check.errors.append(" ".join(str(a.get("value", a.get("description"))) for a in params["args"]))
                elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
                    entry = params["entry"]
                    check.errors.append(f"{entry.get('text')} {entry.get('url', '')}".strip())

        async def call(method: str, session: str | None = None, **params: object) -> dict:
            n = next(ids)
            pending[n] = asyncio.get_running_loop().create_future()
            await ws.send_json({"id": n, "method": method, "params": params,
                                **({"sessionId": session} if session else {})})
            reply = await asyncio.wait_for(pending[n], LOAD_TIMEOUT_S)
            if "error" in reply:
                raise RuntimeError(f"{method}: {reply['error']}")
            return reply["result"]

        reader = asyncio.create_task(pump())
        try:
            target = (await call("Target.createTarget", url="about:blank"))["targetId"]
            session = (await call("Target.attachToTarget", targetId=target, flatten=True))["sessionId"]
            for domain in ("Page", "Runtime", "Log"):
                await call(f"{domain}.enable", session)
            await call("Emulation.setDeviceMetricsOverride", session, width=width, height=height,
                       deviceScaleFactor=1, mobile=False)
            await call("Page.navigate", session, url=url)
            await asyncio.wait_for(loaded.wait(), LOAD_TIMEOUT_S)
            probe = ("JSON.stringify(Array.from(document.images).map(i => [i.getAttribute('src'), "
                     "i.complete && i.naturalWidth > 0]))")
            result = await call("Runtime.evaluate", session, expression=probe, returnByValue=True)
            images = json.loads(result["result"]["value"])
            check.images = len(images)
            check.broken_images = [src for src, ok in images if not ok]
            shot = await call("Page.captureScreenshot", session, format="png", captureBeyondViewport=True)
            check.screenshot = base64.b64decode(shot["data"])
            await call("Runtime.evaluate", session, expression="0")   # events sent before this have arrived
        finally:
            reader.cancel()
    return check


def check_page(url: str, width: int = 1280, height: int = 900) -> PageCheck:
    """Open ``url`` in headless Chromium and report what it saw (the browser is ended before returning)."""
    exe = chromium_path()
    if exe is None:
        raise RuntimeError("no chromium installed (apt-get install chromium)")
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        proc = subprocess.Popen(
            [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
             "--hide-scrollbars", "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
             f"--user-data-dir={profile}", f"--window-size={width},{height}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            start_new_session=True)  # its own process group: the browser and the processes it starts
        try:
            return asyncio.run(_inspect(_devtools_url(proc), url, width, height))
        finally:
            _end_group(proc)


def _end_group(proc: subprocess.Popen) -> None:
    """End the browser and every process of its group, and wait until none is left: a renderer or utility process
    outliving the browser for a moment would still write into the profile folder being removed."""
    group = proc.pid
    _signal_group(group, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        _signal_group(group, signal.SIGKILL)
        proc.wait()
    deadline = time.monotonic() + 30  # a net: the group empties within a moment of its leader
    while _signal_group(group, 0) and time.monotonic() < deadline:
        time.sleep(0.05)
    _signal_group(group, signal.SIGKILL)  # what is left (a zombie no one reaps is harmless)


def _signal_group(group: int, sig: int) -> bool:
    """Send ``sig`` to process group ``group`` (0: only look); False when no process is left in it."""
    try:
        os.killpg(group, sig)
    except ProcessLookupError:
        return False
    return True
