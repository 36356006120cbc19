"""API server memory under rejected large request bodies: RSS of a live ``cola-workbench api`` process.

    python benchmarks/api_body_rss.py                               # tiny fixture, 200 requests per case
    python benchmarks/api_body_rss.py --requests 76 --json benchmarks/results/api_body_rss_cpu.json

Each case starts a fresh server (default 1 MiB body cap) and sends the same rejected request again and
again from ``--clients`` parallel connections, reading the server's VmRSS every ``--every`` requests.
Cases: a 10 MB body declared by Content-Length (413), a 2 MB chunked body (413 while streaming), bodies
just under the cap that are rejected (five ~200k-character stop strings, ASCII and CJK; a chat message
with a lone surrogate; a valid 1 MB chat message), and a valid 64k-character chat message that is
tokenised and then found too long for the model's context.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "visible_a"
CAP = 1 << 20


def _stops_body(char: str) -> bytes:
    """A valid JSON request just under the cap whose five long stop strings the schema rejects."""
    size = (CAP - 200) // 5 // len(char.encode())
    return json.dumps({"model": "cola-dlm", "prompt": "x", "n": 8, "max_tokens": 1024,
                       "stop": [char * size] * 5}, ensure_ascii=False).encode()


def _surrogate_chat_body() -> bytes:
    """A chat request just under the cap whose message holds a lone surrogate (not valid Unicode)."""
    text = "a" * (CAP - 200) + "\\ud800"
    head = b'{"model": "cola-dlm", "max_tokens": 4, "messages": [{"role": "user", "content": "'
    return head + text.encode() + b'"}]}'


def _long_chat_body(chars: int) -> bytes:
    """A valid chat request with a message of about ``chars`` characters, too long for the model's context."""
    text = "The cat sat on the mat. " * (chars // 24)
    return json.dumps({"model": "cola-dlm", "max_tokens": 4, "messages": [{"role": "user", "content": text}]}).encode()


COMPLETIONS, CHAT = "/v1/completions", "/v1/chat/completions"
CASES = {   # name: (route, body, chunked)
    "declared_10mb_413": (COMPLETIONS, b"x" * (10 * CAP), False),
    "chunked_2mb_413": (COMPLETIONS, b"x" * (2 * CAP), True),
    "stops_1mb_ascii_rejected": (COMPLETIONS, _stops_body("a"), False),
    "stops_1mb_cjk_rejected": (COMPLETIONS, _stops_body("\u65e5"), False),
    "surrogate_chat_1mb_rejected": (CHAT, _surrogate_chat_body(), False),
    "long_chat_1mb_rejected": (CHAT, _long_chat_body(CAP - 200), False),
    "long_chat_64k_rejected": (CHAT, _long_chat_body(64_000), False),
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def send(port: int, route: str, body: bytes, chunked: bool) -> int:
    """POST ``body`` to ``route``; the status, or 0 when the server closed the connection first."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        pieces = (body[i:i + 65536] for i in range(0, len(body), 65536)) if chunked else body
        conn.request("POST", route, body=pieces, encode_chunked=chunked,
                     headers={"Content-Type": "application/json"})
        return conn.getresponse().status
    except (BrokenPipeError, ConnectionResetError):
        return 0
    finally:
        conn.close()


def start_server(checkpoint: Path, port: int) -> subprocess.Popen:
    command = [sys.executable, "-m", "apps.cli", "api", "--checkpoint", str(checkpoint), "--port", str(port),
               "--threads", "1", "--log-level", "warning"]
    server = subprocess.Popen(command, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.monotonic() + 120
    while True:
        try:
            http.client.HTTPConnection("127.0.0.1", port, timeout=1).request("GET", "/health")
            return server
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the API server did not start")
            time.sleep(0.2)


def run_case(checkpoint: Path, route: str, body: bytes, chunked: bool, requests: int, clients: int,
             every: int) -> dict:
    port = free_port()
    server = start_server(checkpoint, port)
    try:
        time.sleep(1.0)
        samples = [(0, rss_mb(server.pid))]
        statuses: dict[int, int] = {}
        with ThreadPoolExecutor(max_workers=clients) as pool:
            for done in range(0, requests, every):
                for status in pool.map(lambda _: send(port, route, body, chunked), range(min(every, requests - done))):
                    statuses[status] = statuses.get(status, 0) + 1
                samples.append((min(done + every, requests), rss_mb(server.pid)))
        return {"route": route, "body_bytes": len(body), "chunked": chunked, "statuses": statuses,
                "rss_start_mb": samples[0][1], "rss_end_mb": samples[-1][1],
                "rss_peak_mb": max(mb for _, mb in samples), "growth_mb": samples[-1][1] - samples[0][1],
                "samples": samples}
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=FIXTURE)
    parser.add_argument("--requests", type=int, default=200, help="requests per case")
    parser.add_argument("--clients", type=int, default=4, help="parallel connections")
    parser.add_argument("--every", type=int, default=20, help="read RSS after this many requests")
    parser.add_argument("--case", action="append", choices=sorted(CASES), help="run only these cases")
    parser.add_argument("--label", default="", help="free text stored with the results (e.g. the commit)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args()
    results = {"label": args.label, "cpu_count": os.cpu_count(), "checkpoint": str(args.checkpoint),
               "requests": args.requests, "clients": args.clients, "cases": {}}
    for name in args.case or list(CASES):
        r = run_case(args.checkpoint, *CASES[name], args.requests, args.clients, args.every)
        results["cases"][name] = r
        print(f"{name}: {r['body_bytes'] / CAP:.2f} MiB x {args.requests} -> statuses {r['statuses']}; RSS "
              f"{r['rss_start_mb']:.0f} -> {r['rss_end_mb']:.0f} MB (peak {r['rss_peak_mb']:.0f}, "
              f"growth {r['growth_mb']:+.0f})", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
