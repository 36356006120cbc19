"""API throughput under load: requests/s at 1, 8 and 32 concurrent clients, batched server vs one sampler per request.

    python benchmarks/api_throughput.py                      # pocket checkpoint on the CPU, a few minutes
    python benchmarks/api_throughput.py --json benchmarks/results/api_throughput_pocket_cpu.json

One live ``cola-workbench api`` process per mode (the shipped pocket checkpoint, ``--threads`` torch threads each,
1 by default: on a shared machine more threads per process mostly wait on each other) serves seeded
``/v1/completions`` requests (different prompts and seeds, ``--max-tokens`` tokens, the default 16 steps, greedy)
from 1, 8 and 32 client threads, ``--requests`` x clients requests per level (at least ``--min-requests``). All
servers run side by side and the modes take turns at each level, ``--repeats`` times (the median is reported), so
a change in the machine's load hits every mode alike. Modes: ``batched`` (``--max-batch 32 --concurrency 32``:
requests join one sampler batch at block boundaries) and ``per_request`` (``--max-batch 1``: a sampler per
request, the earlier mode; ``--concurrency 1``, the earlier default, and 4). Every mode's answers are checked
against the first mode's.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["The cat", "A dog is a kind of animal that", "hello there my friend, what", "green", "a sea of light",
           "small house on the", "the tree", "Once upon a time"]
MODES = {   # name: server flags
    "per_request_c1": ["--max-batch", "1", "--concurrency", "1"],
    "per_request_c4": ["--max-batch", "1", "--concurrency", "4"],
    "batched": ["--max-batch", "32", "--concurrency", "32"],
}
CLIENTS = (1, 8, 32)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _post(port: int, body: dict) -> tuple[float, str]:
    """One completion: (seconds, text)."""
    start = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    try:
        conn.request("POST", "/v1/completions", json.dumps(body).encode(), {"Content-Type": "application/json"})
        response = conn.getresponse()
        data = json.loads(response.read())
    finally:
        conn.close()
    if response.status != 200:
        raise RuntimeError(f"HTTP {response.status}: {data}")
    return time.perf_counter() - start, data["choices"][0]["text"]


def _request(i: int, max_tokens: int) -> dict:
    return {"model": "cola-dlm", "prompt": PROMPTS[i % len(PROMPTS)], "max_tokens": max_tokens, "seed": 1000 + i,
            "temperature": 0.0}


def _server(flags: list[str], threads: int) -> tuple[subprocess.Popen, int]:
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([sys.executable, "-m", "apps.cli", "api", "--checkpoint", "pocket", "--port", str(port),
                                "--threads", str(threads), "--queue-size", "64", "--log-level", "warning", *flags],
                               cwd=ROOT, env=env)
    deadline = time.monotonic() + 120
    while True:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return process, port
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"server with {flags} did not start")
        time.sleep(0.2)


def _level(port: int, clients: int, count: int, max_tokens: int) -> tuple[dict, list[str]]:
    """``count`` requests from ``clients`` threads: throughput, latency, and the answers in request order."""
    _post(port, _request(0, max_tokens))   # warm-up (first-call allocations)
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        results = list(pool.map(lambda i: _post(port, _request(i, max_tokens)), range(count)))
    wall = time.perf_counter() - start
    latencies = sorted(seconds for seconds, _ in results)
    return ({"clients": clients, "requests": count, "wall_s": round(wall, 3), "requests_per_s": round(count / wall, 2),
             "latency_median_s": round(statistics.median(latencies), 3),
             "latency_p90_s": round(latencies[int(0.9 * (len(latencies) - 1))], 3)},
            [text for _, text in results])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2, help="requests per client at each level")
    parser.add_argument("--min-requests", type=int, default=16, help="fewest requests at a level")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each server")
    parser.add_argument("--repeats", type=int, default=2, help="turns of every mode at each level (median kept)")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    report = {"benchmark": "api_throughput", "checkpoint": "pocket", "device": "cpu", "cpu_count": os.cpu_count(),
              "platform": platform.platform(), "load_average_before": list(os.getloadavg()),
              "server_threads": args.threads, "max_tokens": args.max_tokens, "steps": 16, "repeats": args.repeats,
              "modes": {mode: {"server_flags": MODES[mode], "levels": []} for mode in args.modes}}
    servers = {mode: _server(MODES[mode], args.threads) for mode in args.modes}
    try:
        for clients in CLIENTS:
            count = max(args.min_requests, args.requests * clients)
            runs: dict[str, list[dict]] = {mode: [] for mode in args.modes}
            reference = None
            for _ in range(args.repeats):
                for mode, (_, port) in servers.items():
                    level, texts = _level(port, clients, count, args.max_tokens)
                    reference = texts if reference is None else reference
                    level["answers_equal_reference"] = texts == reference
                    runs[mode].append(level)
            for mode, levels in runs.items():
                rates = [level["requests_per_s"] for level in levels]
                best = sorted(levels, key=lambda level: level["requests_per_s"])[len(levels) // 2]
                summary = {**best, "requests_per_s": round(statistics.median(rates), 2), "runs_requests_per_s": rates,
                           "answers_equal_reference": all(level["answers_equal_reference"] for level in levels)}
                report["modes"][mode]["levels"].append(summary)
                print(mode, json.dumps(summary), flush=True)
    finally:
        for process, _ in servers.values():
            process.terminate()
            process.wait(timeout=30)
    report["load_average_after"] = list(os.getloadavg())
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return 0 if all(level["answers_equal_reference"] for m in report["modes"].values() for level in m["levels"]) else 1


if __name__ == "__main__":
    sys.exit(main())
