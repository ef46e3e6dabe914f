"""A load test of `lmrnn serve`, on loopback only, bounded in requests and time.

    python benchmarks/serve_load.py RUN [--requests 64] [--max-tokens 32] [--clients 1,8,32] [--seconds 120]
        [--batch-rows 64,0]

For each `--batch-rows` (the server's option: completions in flight decoded together; 0 decodes
each request alone) starts the server on a free loopback port, then for each number of
concurrent clients sends `--requests` completions (seeded, `--max-tokens` each; a client sends
its next request when its last one is answered) and reports requests/s, p50 and p99 latency and
the errors. A level stops early after `--seconds`. Writes benchmarks/results/serve-load.json.
Timings need a quiet machine.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import json
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def completion(url: str, seed: int, max_tokens: int) -> tuple[float, bool]:
    body = json.dumps({"prompt": "the company said", "max_tokens": max_tokens, "seed": seed}).encode()
    request = urllib.request.Request(url + "/v1/completions", data=body, headers={"Content-Type": "application/json"})
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            ok = response.status == 200 and bool(json.loads(response.read())["choices"])
    except (urllib.error.URLError, OSError, ValueError, KeyError):
        ok = False
    return time.perf_counter() - start, ok


def level(url: str, clients: int, requests: int, max_tokens: int, seconds: float) -> dict:
    deadline = time.perf_counter() + seconds
    latencies, errors = [], 0
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        futures = [pool.submit(lambda s=seed: completion(url, s, max_tokens) if time.perf_counter() < deadline else None)
                   for seed in range(requests)]
        for future in futures:
            result = future.result()
            if result is None:
                continue
            latency, ok = result
            latencies.append(latency)
            errors += not ok
    wall = time.perf_counter() - start
    ordered = sorted(latencies)
    return {"clients": clients, "requests": len(latencies), "errors": errors, "requests_per_second": len(latencies) / wall,
            "p50_ms": 1000 * statistics.median(ordered), "p99_ms": 1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]}


def serve_and_load(run: Path, batch_rows: int, args: argparse.Namespace) -> list[dict]:
    """One server with this --batch-rows, each level of clients in turn, then the server stopped."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "lmrnn", "serve", str(run), "--port", str(port), "--device", "cpu",
                               "--batch-rows", str(batch_rows)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        for _ in range(600):
            try:
                with urllib.request.urlopen(url + "/health", timeout=1):
                    break
            except OSError:
                time.sleep(0.2)
        else:
            raise SystemExit("the server did not start: " + server.stderr.read().decode()[-500:])
        completion(url, 0, args.max_tokens)  # warm-up
        return [level(url, clients, args.requests, args.max_tokens, args.seconds) for clients in args.clients]
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--clients", type=lambda s: [int(c) for c in s.split(",")], default=[1, 8, 32])
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--batch-rows", type=lambda s: [int(b) for b in s.split(",")], default=[64, 0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "serve-load.json")
    args = parser.parse_args()
    rows = [{"batch_rows": batch_rows, **row} for batch_rows in args.batch_rows
            for row in serve_and_load(args.run, batch_rows, args)]
    print(f"{'batch rows':>10} {'clients':>8} {'requests':>9} {'errors':>7} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}")
    for r in rows:
        print(f"{r['batch_rows']:>10} {r['clients']:>8} {r['requests']:>9} {r['errors']:>7} "
              f"{r['requests_per_second']:>8.2f} {r['p50_ms']:>8.0f} {r['p99_ms']:>8.0f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"run": str(args.run), "max_tokens": args.max_tokens, "rows": rows,
                                    "date": datetime.date.today().isoformat(),
                                    "command": "python benchmarks/serve_load.py " + " ".join(sys.argv[1:])}, indent=2) + "\n")


if __name__ == "__main__":
    main()
