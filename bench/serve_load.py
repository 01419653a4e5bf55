"""Load test for `tpuchat serve`: N concurrent clients x M requests each, against 1 and 2 engines.

Bounded in requests (clients x requests) and in time (--time-limit: clients stop sending after
it), and loopback only.  Each client sends streaming chat requests one after another over its own
connection and records: the outcome (completed, 429, error), the time to the first content chunk
(TTFT, which includes the queue wait), and the queue wait the server reports (`tpuchat.queue_s`).
The engines' busy time comes from /health before and after.

  # scheduling, with scripted engines in this process (no device): 1 and 2 engines
  python bench/serve_load.py --fake --engines 1,2 --clients 4 --requests 5

  # a running server (e.g. `tpuchat serve --model M --devid 0 --devid 0` on the simulator)
  python bench/serve_load.py --url http://127.0.0.1:8000/v1 --clients 2 --requests 2 --max-tokens 4

The fake engine takes --prefill-s before its first token and --token-s per token (defaults are
board-like figures for a ~1.5B model, see the README); it exercises the HTTP layer, the queue and
the routing exactly as a device would, without the device.
"""

from __future__ import annotations

import argparse
import http.client
import ipaddress
import json
import socket
import statistics
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parents[1]


def pct(values, p):
    if not values:
        return float("nan")
    v = sorted(values)
    k = max(0, min(len(v) - 1, int(round(p / 100 * (len(v) - 1)))))
    return v[k]


def loopback_only(host: str) -> None:
    addrs = {i[4][0] for i in socket.getaddrinfo(host, None)}
    if not all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addrs):
        sys.exit(f"serve_load: {host} is not a loopback address; this load test only targets this machine")


class Target:
    def __init__(self, host, port, api_key=None, model=None):
        self.host, self.port, self.api_key, self.model = host, port, api_key, model

    def headers(self):
        h = {"Content-Type": "application/json"}
        if self.api_key:
            h["Authorization"] = "Bearer " + self.api_key
        return h

    def get(self, path):
        c = http.client.HTTPConnection(self.host, self.port, timeout=30)
        c.request("GET", path, headers=self.headers())
        body = json.loads(c.getresponse().read())
        c.close()
        return body


def one_request(conn, target, text, max_tokens):
    """Send one streaming request; returns (outcome, ttft_s, queue_s)."""
    body = {"messages": [{"role": "user", "content": text}], "max_tokens": max_tokens, "stream": True}
    if target.model:
        body["model"] = target.model
    t0 = time.monotonic()
    conn.request("POST", "/v1/chat/completions", json.dumps(body), target.headers())
    r = conn.getresponse()
    if r.status != 200:
        r.read()
        return ("429" if r.status == 429 else f"error {r.status}"), None, None
    ttft = queue_s = None
    outcome = "error stream"
    while True:
        line = r.readline()
        if not line:
            break
        line = line.decode("utf-8", "replace").strip()
        if not line.startswith("data: "):
            continue
        data = line[6:]
        if data == "[DONE]":
            outcome = "completed"
            continue
        obj = json.loads(data)
        if "error" in obj:
            outcome = "error " + str(obj["error"].get("code"))
            continue
        ch = obj.get("choices") or []
        if ch and ch[0].get("delta", {}).get("content") and ttft is None:
            ttft = time.monotonic() - t0
        if "tpuchat" in obj:
            queue_s = obj["tpuchat"].get("queue_s")
    r.read()
    return outcome, ttft, queue_s


def rss_mb(pid):
    """Resident memory of a process on this machine (the server is on loopback), in MB."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except (OSError, TypeError):
        pass
    return float("nan")


def run_load(target, clients, requests, max_tokens, time_limit):
    h0 = target.get("/health")
    results = []
    lock = threading.Lock()
    stop_at = time.monotonic() + time_limit

    def client(ci):
        conn = http.client.HTTPConnection(target.host, target.port, timeout=600)
        for ri in range(requests):
            if time.monotonic() > stop_at:
                break
            try:
                res = one_request(conn, target, f"client {ci} request {ri}: tell me a story", max_tokens)
            except (OSError, http.client.HTTPException, ValueError) as e:
                res = (f"error {type(e).__name__}", None, None)
                conn.close()
                conn = http.client.HTTPConnection(target.host, target.port, timeout=600)
            with lock:
                results.append(res)
            if res[0] == "429":
                time.sleep(0.05)  # a real client would honour Retry-After; keep the test short
        conn.close()

    t0 = time.monotonic()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - t0
    h1 = target.get("/health")
    busy = [e1["busy_s"] - e0["busy_s"] for e0, e1 in zip(h0["engines"], h1["engines"])]
    done = [r for r in results if r[0] == "completed"]
    return {
        "engines": len(h1["engines"]),
        "sent": len(results),
        "completed": len(done),
        "429": sum(1 for r in results if r[0] == "429"),
        "errors": sum(1 for r in results if r[0].startswith("error")),
        "wall_s": wall,
        "req_per_s": len(done) / wall if wall else 0.0,
        "queue_p50": pct([r[2] for r in done if r[2] is not None], 50),
        "queue_p95": pct([r[2] for r in done if r[2] is not None], 95),
        "ttft_p50": pct([r[1] for r in done if r[1] is not None], 50),
        "ttft_p95": pct([r[1] for r in done if r[1] is not None], 95),
        "busy_s": busy,
        "utilisation": statistics.mean(busy) / wall if wall and busy else 0.0,
    }


def fake_server(engines, token_s, prefill_s, queue):
    sys.path.insert(0, str(ROOT))
    from tests.unit.server.fakes import FakeModel
    from tpuchat.server import make_server

    models = [FakeModel(token_s=token_s, prefill_s=prefill_s, seq_len=512, kv_len=1024) for _ in range(engines)]
    srv = make_server(models, "127.0.0.1", 0, max_waiting=queue)
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return srv


def table(rows, clients, requests, max_tokens):
    head = (f"| engines | clients x requests | completed | 429s | errors | wall s | req/s | queue wait p50 / p95 s "
            f"| TTFT p50 / p95 s | engine busy s | utilisation |")
    out = [head, "|" + "---|" * 11]
    for r in rows:
        out.append(f"| {r['engines']} | {clients} x {requests} | {r['completed']} | {r['429']} | {r['errors']} "
                   f"| {r['wall_s']:.2f} | {r['req_per_s']:.2f} | {r['queue_p50']:.3f} / {r['queue_p95']:.3f} "
                   f"| {r['ttft_p50']:.3f} / {r['ttft_p95']:.3f} | {' + '.join(f'{b:.2f}' for b in r['busy_s'])} "
                   f"| {r['utilisation']:.0%} |")
    return "\n".join(out) + f"\n({max_tokens} tokens per answer)"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--fake", action="store_true", help="scripted engines in this process")
    src.add_argument("--url", help="a running loopback server, e.g. http://127.0.0.1:8000/v1")
    ap.add_argument("--engines", default="1,2", help="--fake: engine counts to compare (default 1,2)")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--requests", type=int, default=5, help="per client")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--queue", type=int, default=4, help="--fake: the server's --queue")
    ap.add_argument("--token-s", type=float, default=0.04, help="--fake: seconds per token")
    ap.add_argument("--prefill-s", type=float, default=0.3, help="--fake: seconds before the first token")
    ap.add_argument("--time-limit", type=float, default=300, help="clients stop sending after this many seconds")
    ap.add_argument("--api-key", default=None)
    a = ap.parse_args(argv)
    if a.clients * a.requests > 1000:
        sys.exit("serve_load: at most 1000 requests per run")
    rows = []
    if a.fake:
        for n in [int(x) for x in a.engines.split(",")]:
            srv = fake_server(n, a.token_s, a.prefill_s, a.queue)
            try:
                host, port = srv.server_address[:2]
                rows.append(run_load(Target(host, port), a.clients, a.requests, a.max_tokens, a.time_limit))
            finally:
                srv.shutdown()
                srv.close()
        print(f"fake engines: prefill {a.prefill_s} s, {a.token_s} s/token, queue {a.queue}")
    else:
        u = urlparse(a.url)
        loopback_only(u.hostname)
        target = Target(u.hostname, u.port or 80, a.api_key)
        target.model = target.get("/v1/models")["data"][0]["id"]
        rows.append(run_load(target, a.clients, a.requests, a.max_tokens, a.time_limit))
        pids = [e.get("pid") for e in target.get("/health")["engines"]]
        print("engine worker RSS after the run (MB): " + ", ".join(f"{rss_mb(p):.0f}" for p in pids))
    print(table(rows, a.clients, a.requests, a.max_tokens))


if __name__ == "__main__":
    main()
