"""Headless Chromium driven over the DevTools protocol (websocket-client): open a page, run a
script in it, collect its console errors and uncaught exceptions, take a screenshot.

Chromium is Debian's ``chromium`` package (``.ci/run`` installs it when missing); the network
is closed, so it starts with everything that would reach out switched off and a fresh profile.
"""
import base64
import json
import os
import shutil
import subprocess
import time
import urllib.request

import websocket

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync")


def find_chromium():
    """Path of a Chromium binary, or None."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


class Browser:
    """One headless Chromium with a fresh profile in ``profile``; use as a context manager."""

    def __init__(self, binary: str, profile: str, timeout: float = 60.0):
        self.timeout = timeout
        self.events = []
        self._id = 0
        self.proc = subprocess.Popen(
            [binary, *FLAGS, "--user-data-dir=%s" % profile, "--remote-debugging-port=0",
             "--window-size=1280,1000", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port = self._port(os.path.join(profile, "DevToolsActivePort"))
        with urllib.request.urlopen("http://127.0.0.1:%d/json/list" % port, timeout=10) as r:
            target = next(t for t in json.load(r) if t["type"] == "page")
        self.ws = websocket.create_connection(target["webSocketDebuggerUrl"], timeout=timeout,
                                              suppress_origin=True)
        for domain in ("Page", "Runtime", "Log"):
            self.send(domain + ".enable")

    def _port(self, path: str) -> int:
        end = time.time() + self.timeout
        while time.time() < end:
            if self.proc.poll() is not None:
                raise RuntimeError("chromium exited with code %s" % self.proc.returncode)
            if os.path.isfile(path):
                with open(path) as f:
                    first = f.readline().strip()
                if first.isdigit():
                    return int(first)
            time.sleep(0.1)
        raise TimeoutError("chromium did not open its DevTools port in %.0f s" % self.timeout)

    def send(self, method: str, **params):
        """Call a DevTools method; returns its result (events seen meanwhile are kept)."""
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self._id:
                if "error" in msg:
                    raise RuntimeError("%s: %s" % (method, msg["error"]))
                return msg.get("result", {})
            self.events.append(msg)

    def wait_for(self, method: str):
        end = time.time() + self.timeout
        while time.time() < end:
            for e in self.events:
                if e.get("method") == method:
                    return e
            self.events.append(json.loads(self.ws.recv()))
        raise TimeoutError("no %s event in %.0f s" % (method, self.timeout))

    def open(self, url: str) -> None:
        self.send("Page.navigate", url=url)
        self.wait_for("Page.loadEventFired")

    def evaluate(self, expression: str):
        """The JSON value of ``expression`` (a promise is awaited)."""
        out = self.send("Runtime.evaluate", expression=expression, returnByValue=True,
                        awaitPromise=True)
        if "exceptionDetails" in out:
            raise RuntimeError("script failed: %s" % out["exceptionDetails"])
        return out["result"].get("value")

    def errors(self):
        """Console errors, failed loads and uncaught exceptions seen so far."""
        out = []
        for e in self.events:
            method, p = e.get("method"), e.get("params", {})
            if method == "Runtime.exceptionThrown":
                out.append(p["exceptionDetails"].get("text", "exception"))
            elif method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append(" ".join(str(a.get("value", a.get("description"))) for a in p["args"]))
            elif method == "Log.entryAdded" and p["entry"].get("level") == "error":
                out.append(p["entry"].get("text", ""))
        return out

    def screenshot(self, path: str) -> None:
        """A PNG of the whole page (not just the window)."""
        size = self.send("Page.getLayoutMetrics")["cssContentSize"]
        shot = self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                         clip={"x": 0, "y": 0, "width": size["width"],
                               "height": size["height"], "scale": 1})
        with open(path, "wb") as f:
            f.write(base64.b64decode(shot["data"]))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        try:
            self.ws.close()
        finally:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
