"""Drive a real ComfyUI server from tests: start it in a temporary base directory, talk HTTP.

Only the standard library is used here (urllib, subprocess), so the test interpreter needs
nothing from ComfyUI; the server runs under its own interpreter (COMFYUI_PYTHON).

Layout of the base directory made by :func:`make_base_dir` (ComfyUI's ``--base-directory``), as a fresh
install has it: the pack, and nothing else; the pack lists its bundled starter model and places its example
painting in input/ itself when ComfyUI loads it.

    custom_nodes/comfyui-inverse-painting  -> symlink (or copy) of this repository
    input/                                 test images (+ inverse_painting_example.png, placed by the pack)
    output/, temp/, user/                  written by ComfyUI
"""
from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
PACK_DIR_NAME = "comfyui-inverse-painting"
STARTER = "starter_model"  # the bundled model the example workflows use
MODEL_FOLDER = "inverse_painting"
MIN_VERSION = (0, 3, 64)  # the oldest ComfyUI the suite is run against (also run on 0.28.0)

# Node ids of the pack (stable: saved workflows reference them).
PACK_NODE_IDS = (
    "InversePaintingLoader",
    "InversePaintingTextModelLoader",
    "InversePaintingTextInstruction",
    "InversePaintingDifferenceMask",
    "InversePaintingMaskGenerator",
    "InversePaintingRenderKeyframe",
    "InversePaintingScheduler",
    "InversePaintingTimelapse",
    "InversePaintingSaveProcess",
    "InversePaintingTimeMap",
    "InversePaintingEvaluate",
)
PACK_CATEGORY = "Inverse Painting"
EXAMPLE_IMAGE = "inverse_painting_example.png"  # placed in input/ by the pack; the example workflows load it
SMALL_IMAGE = "ip_small.png"    # 96x80 synthetic gradient for fast core-node checks


class ComfyError(RuntimeError):
    """A prompt failed to queue or to execute; carries the server's JSON and log tail."""

    def __init__(self, message: str, payload=None, log_tail: str = ""):
        super().__init__(message + (f"\n--- server log tail ---\n{log_tail}" if log_tail else ""))
        self.payload = payload


def parse_version(text: str) -> tuple[int, ...]:
    """'0.28.0' -> (0, 28, 0); a suffix after the numbers ('0.3.64-rc1') is ignored."""
    import re

    parts = []
    for p in text.split("."):
        m = re.match(r"\d+", p)
        if m is None:
            break
        parts.append(int(m.group()))
        if m.end() < len(p):
            break
    return tuple(parts)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_base_dir(base: Path, release_src: Path | None = None, images: dict[str, Path] | None = None,
                  link_pack: bool = True) -> Path:
    """Populate a ComfyUI base directory (see module docstring); ``release_src``: an extra model folder."""
    base.mkdir(parents=True, exist_ok=True)
    # ComfyUI's prestartup scan lists custom_nodes/ and crashes if it is missing.
    (base / "custom_nodes").mkdir(exist_ok=True)
    for sub in ("input", "output", "temp", "user"):
        (base / sub).mkdir(exist_ok=True)
    pack = base / "custom_nodes" / PACK_DIR_NAME
    if not pack.exists():
        if link_pack:
            pack.symlink_to(REPO_ROOT, target_is_directory=True)
        else:  # a copy without the venv and caches, for hosts where symlinks are unwanted
            shutil.copytree(REPO_ROOT, pack, ignore=shutil.ignore_patterns(
                ".git", ".venv", "__pycache__", "*.egg-info", ".pytest_cache", "out", "output"))
    if release_src is not None:
        dst = base / "models" / MODEL_FOLDER / release_src.name
        if not dst.exists():
            shutil.copytree(release_src, dst)
            # the shared fixtures are read-only; ComfyUI (or a converter) may want to write beside them
            for p in [dst, *dst.rglob("*")]:
                p.chmod(p.stat().st_mode | 0o200)
    for name, src in (images or {}).items():
        shutil.copyfile(src, base / "input" / name)
    return base


class ComfyServer:
    """One ComfyUI server process on 127.0.0.1 with a private base directory."""

    def __init__(self, comfy_path: Path, python: str, base_dir: Path, port: int | None = None,
                 extra_args: tuple[str, ...] = (), env: dict[str, str] | None = None):
        self.comfy_path = Path(comfy_path)
        self.python = python
        self.base_dir = Path(base_dir)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.extra_args = tuple(extra_args)
        self.env = env or {}
        self.log_path = self.base_dir / "server.log"
        self.proc: subprocess.Popen | None = None
        self.client_id = uuid.uuid4().hex
        self.startup_s: float | None = None

    # -- process ----------------------------------------------------------------------------
    def start(self, timeout: float = 180.0) -> "ComfyServer":
        cmd = [self.python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
               "--disable-auto-launch", "--base-directory", str(self.base_dir),
               # the default database lives inside the ComfyUI checkout; keep the checkout clean
               "--database-url", "sqlite:///:memory:", *self.extra_args]
        env = dict(os.environ)
        env.update({"HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"})
        # small ops are much slower with 2 OpenMP threads on the 2-vCPU hosts (deps.md §0)
        env.setdefault("OMP_NUM_THREADS", "1")
        # the test venv's variables must not leak into the server's interpreter
        for k in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME"):
            env.pop(k, None)
        env.update(self.env)
        self._log = open(self.log_path, "ab")
        t0 = time.monotonic()
        self.proc = subprocess.Popen(cmd, cwd=self.comfy_path, stdout=self._log, stderr=subprocess.STDOUT,
                                     env=env, start_new_session=True)
        # the server runs in its own session (a Ctrl-C in pytest must not reach it mid-test), so make
        # sure it does not outlive this interpreter
        atexit.register(self.stop)
        deadline = t0 + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ComfyError(f"ComfyUI exited with {self.proc.returncode} during start-up",
                                 log_tail=self.log_tail())
            try:
                self.get("/system_stats", timeout=2)
                self.startup_s = time.monotonic() - t0
                return self
            except (OSError, urllib.error.URLError):
                time.sleep(0.25)
        self.stop()
        raise ComfyError(f"ComfyUI did not answer /system_stats within {timeout:.0f} s", log_tail=self.log_tail())

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            # SIGINT is ComfyUI's normal shutdown (about 2 s); escalate only if it hangs.
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
        self.proc = None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n_chars: int = 6000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n_chars:]
        except OSError:
            return ""

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- HTTP ---------------------------------------------------------------------------------
    def request(self, method: str, path: str, body=None, timeout: float = 30.0):
        """Return (HTTP status, decoded JSON or raw text). Non-2xx statuses do not raise."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"} if data else {})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                status, raw = r.status, r.read()
        except urllib.error.HTTPError as e:
            status, raw = e.code, e.read()
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, raw.decode(errors="replace")

    def get_bytes(self, path: str, timeout: float = 30.0) -> tuple[int, str, bytes]:
        """(HTTP status, content type, body) of a GET, for files (thumbnails, images)."""
        try:
            with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
                return r.status, r.headers.get("Content-Type", ""), r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.headers.get("Content-Type", ""), e.read()

    def get(self, path: str, timeout: float = 30.0):
        status, body = self.request("GET", path, timeout=timeout)
        if status != 200:
            raise ComfyError(f"GET {path} -> {status}: {body}")
        return body

    def object_info(self, node_class: str | None = None) -> dict:
        info = self.get("/object_info" + (f"/{urllib.parse.quote(node_class)}" if node_class else ""))
        return info[node_class] if node_class else info

    def queue_raw(self, prompt: dict):
        """POST /prompt; returns (status, body) without judging it (validation tests use this)."""
        return self.request("POST", "/prompt", {"prompt": prompt, "client_id": self.client_id})

    def queue(self, prompt: dict) -> str:
        status, body = self.queue_raw(prompt)
        if status != 200:
            raise ComfyError(f"prompt rejected ({status}): {json.dumps(body, indent=1)[:4000]}", body)
        return body["prompt_id"]

    def history(self, prompt_id: str) -> dict | None:
        return self.get(f"/history/{prompt_id}").get(prompt_id)

    def wait(self, prompt_id: str, timeout: float = 600.0, poll: float = 0.25) -> dict:
        """Poll /history/<id> until the prompt finished (success, error or interrupt)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            entry = self.history(prompt_id)
            if entry and entry.get("status", {}).get("completed") is not None and (
                    entry["status"].get("status_str") in ("success", "error")):
                return entry
            if not self.alive():
                raise ComfyError("ComfyUI died while executing", log_tail=self.log_tail())
            time.sleep(poll)
        raise ComfyError(f"prompt {prompt_id} not finished after {timeout:.0f} s", log_tail=self.log_tail())

    def run(self, prompt: dict, timeout: float = 600.0) -> dict:
        """Queue, wait, demand success; return the history ``outputs`` (node id -> ui dict)."""
        entry = self.wait(self.queue(prompt), timeout)
        status = entry["status"]
        if status.get("status_str") != "success":
            raise ComfyError(f"prompt failed: {json.dumps(status.get('messages'), indent=1)[:6000]}",
                             entry, log_tail=self.log_tail())
        return entry["outputs"]

    def running(self) -> list:
        return self.get("/queue").get("queue_running", [])

    def wait_until_running(self, prompt_id: str, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(item[1] == prompt_id for item in self.running()):
                return
            if self.history(prompt_id):
                raise ComfyError(f"prompt {prompt_id} finished before it was seen running")
            time.sleep(0.05)
        raise ComfyError(f"prompt {prompt_id} not running after {timeout:.0f} s")

    def interrupt(self) -> None:
        status, body = self.request("POST", "/interrupt", {})
        if status != 200:
            raise ComfyError(f"/interrupt -> {status}: {body}")

    def free(self, unload_models: bool = True) -> None:
        self.request("POST", "/free", {"unload_models": unload_models, "free_memory": True})

    def output_file(self, item: dict) -> Path:
        """Path on disk of one ``{"filename", "subfolder", "type"}`` entry of a ui dict."""
        folder = {"output": "output", "temp": "temp", "input": "input"}[item.get("type", "output")]
        return self.base_dir / folder / item.get("subfolder", "") / item["filename"]


class WsListener:
    """Minimal stdlib WebSocket client for ComfyUI's /ws: collects JSON events and binary previews.

    ComfyUI sends ``progress`` events and preview images only to the client id that queued the prompt,
    so connect with the server's ``client_id`` before queueing.
    """

    def __init__(self, server: "ComfyServer", timeout: float = 10.0):
        import base64
        import threading

        self.events: list[dict] = []
        self.binary: list[tuple[int, bytes]] = []  # (event type, payload after the 4-byte type)
        self._lock = threading.Lock()
        self._sock = socket.create_connection(("127.0.0.1", server.port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self._sock.sendall((f"GET /ws?clientId={server.client_id} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
                            f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                            "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self._sock.recv(1)
            if not chunk:
                raise ComfyError("websocket handshake failed")
            head += chunk
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise ComfyError(f"websocket handshake refused: {head[:200]!r}")
        self._sock.settimeout(None)
        self._closed = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _recv(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self._sock.recv(n - len(buf))
            if not chunk:
                raise EOFError
            buf += chunk
        return buf

    def _send(self, opcode: int, payload: bytes = b"") -> None:
        mask = os.urandom(4)  # client frames must be masked
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self._sock.sendall(bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked)

    def _run(self) -> None:
        message, kind = b"", 0
        try:
            while not self._closed:
                b0, b1 = self._recv(2)
                opcode, n = b0 & 0x0F, b1 & 0x7F
                if n == 126:
                    n = int.from_bytes(self._recv(2), "big")
                elif n == 127:
                    n = int.from_bytes(self._recv(8), "big")
                payload = self._recv(n)
                if opcode == 8:
                    break
                if opcode == 9:
                    self._send(10, payload)
                    continue
                if opcode in (1, 2):
                    message, kind = payload, opcode
                elif opcode == 0:
                    message += payload
                if not b0 & 0x80:
                    continue  # fragmented: wait for the final frame
                with self._lock:
                    if kind == 1:
                        self.events.append(json.loads(message))
                    else:
                        self.binary.append((int.from_bytes(message[:4], "big"), message[4:]))
        except (OSError, EOFError, ValueError):
            pass

    def of_type(self, kind: str) -> list[dict]:
        with self._lock:
            return [e["data"] for e in self.events if e.get("type") == kind]

    def close(self) -> None:
        self._closed = True
        try:
            self._send(8)
            self._sock.close()
        except OSError:
            pass


def messages(entry: dict) -> list[str]:
    """Event names in a history entry's status messages (execution_start, execution_error ...)."""
    return [m[0] for m in entry.get("status", {}).get("messages", [])]


def load_api_workflow(path: Path, **overrides) -> dict:
    """Read an API-format workflow; ``overrides`` maps "node_id.input" -> value."""
    prompt = json.loads(Path(path).read_text())
    for key, value in overrides.items():
        node, inp = key.split(".", 1)
        prompt[node]["inputs"][inp] = value
    return prompt


if __name__ == "__main__":  # manual use: python tests/host/comfy_host.py  (serves until Ctrl-C)
    import tempfile

    cp = os.environ.get("COMFYUI_PATH") or sys.exit("set COMFYUI_PATH")
    base = Path(tempfile.mkdtemp(prefix="comfy_base_"))
    make_base_dir(base)
    srv = ComfyServer(Path(cp), os.environ.get("COMFYUI_PYTHON", sys.executable), base,
                      port=int(os.environ.get("COMFYUI_PORT", "8199")))
    def _on_term(*_):
        raise KeyboardInterrupt  # `timeout`/`kill` stop the server too, like Ctrl-C

    signal.signal(signal.SIGTERM, _on_term)
    srv.start()
    print(f"ComfyUI at {srv.url} (base {base}, started in {srv.startup_s:.1f} s); Ctrl-C stops it")
    try:
        while srv.alive():
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        srv.stop()
