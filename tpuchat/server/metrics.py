"""`GET /metrics`: the server's counters in Prometheus' text exposition format (version 0.0.4).

Written by hand (a few dozen lines) so boards need no client library; tests read it back with
the prometheus_client parser.  Counters and histograms are updated by the HTTP handlers and the
scheduler; gauges (queue depth, engine states) are read from the scheduler at scrape time.
"""

import threading
from typing import Dict, List, Optional, Sequence, Tuple

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Seconds.  FTL on the simulator is seconds, on a board tens to hundreds of ms; a decode step on a
# board is ~10-100 ms, on the simulator ~0.5 s.
FTL_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
TOKEN_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
QUEUE_BUCKETS = (0.001, 0.01, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


def _fmt(v: float) -> str:
    v = float(v)
    if v == float("inf"):
        return "+Inf"
    return str(int(v)) if v.is_integer() and abs(v) < 1e15 else repr(v)


def _labels(pairs: Sequence[Tuple[str, str]]) -> str:
    if not pairs:
        return ""
    esc = (str(v).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"') for _, v in pairs)
    return "{" + ",".join(f'{k}="{v}"' for (k, _), v in zip(pairs, esc)) + "}"


class Histogram:
    def __init__(self, buckets: Sequence[float]):
        self.bounds = list(buckets) + [float("inf")]
        self.counts = [0] * len(self.bounds)
        self.sum = 0.0
        self.count = 0

    def observe(self, v: float) -> None:
        for i, b in enumerate(self.bounds):
            if v <= b:
                self.counts[i] += 1
                break
        self.sum += v
        self.count += 1

    def lines(self, name: str) -> List[str]:
        out, acc = [], 0
        for b, c in zip(self.bounds, self.counts):
            acc += c
            out.append(f'{name}_bucket{{le="{_fmt(b)}"}} {acc}')
        out.append(f"{name}_sum {_fmt(self.sum)}")
        out.append(f"{name}_count {self.count}")
        return out


class Metrics:
    def __init__(self):
        self._lock = threading.Lock()
        self.requests: Dict[Tuple[str, str], int] = {}  # (endpoint, HTTP status) -> count
        self.prompt_tokens = 0
        self.generated_tokens = 0
        self.reuse_hits = 0  # generations that reused cached KV rows
        self.reused_tokens = 0
        self.restarts = 0
        self.ftl = Histogram(FTL_BUCKETS)
        self.token = Histogram(TOKEN_BUCKETS)
        self.queue = Histogram(QUEUE_BUCKETS)

    def request_done(self, endpoint: str, status: int) -> None:
        with self._lock:
            key = (endpoint, str(status))
            self.requests[key] = self.requests.get(key, 0) + 1

    def generation_done(self, stats: dict, queue_s: float) -> None:
        """A generation's stats (GenerationStats as a dict) and how long it waited."""
        with self._lock:
            self.queue.observe(queue_s)
            if not stats:
                return
            self.prompt_tokens += int(stats.get("prompt_tokens", 0))
            self.generated_tokens += int(stats.get("new_tokens", 0))
            reused = int(stats.get("reused_tokens", 0) or 0)
            if reused:
                self.reuse_hits += 1
                self.reused_tokens += reused
            if stats.get("new_tokens") and stats.get("ftl_s") is not None:
                self.ftl.observe(float(stats["ftl_s"]))
            tps = stats.get("tokens_per_s") or 0.0
            if tps > 0:
                self.token.observe(1.0 / float(tps))

    def engine_restarted(self) -> None:
        with self._lock:
            self.restarts += 1

    def render(self, status: Optional[dict]) -> str:
        """The exposition text; `status` is Scheduler.status() (None while loading)."""
        L: List[str] = []

        def metric(name, kind, help_, samples):
            L.append(f"# HELP {name} {help_}")
            L.append(f"# TYPE {name} {kind}")
            for labels, value in samples:
                L.append(f"{name}{_labels(labels)} {_fmt(value)}")

        with self._lock:
            metric("tpuchat_requests_total", "counter", "API requests answered, by endpoint and HTTP status "
                   "(a stream that failed after its 200 counts with the error's status).",
                   [((("endpoint", e), ("status", s)), n) for (e, s), n in sorted(self.requests.items())])
            metric("tpuchat_prompt_tokens_total", "counter", "Prompt tokens of finished generations.",
                   [((), self.prompt_tokens)])
            metric("tpuchat_generated_tokens_total", "counter", "Tokens generated.", [((), self.generated_tokens)])
            metric("tpuchat_kv_reuse_hits_total", "counter",
                   "Generations whose prompt started with KV rows already on the device.", [((), self.reuse_hits)])
            metric("tpuchat_kv_reused_tokens_total", "counter", "Prompt tokens not recomputed thanks to KV reuse.",
                   [((), self.reused_tokens)])
            metric("tpuchat_engine_restarts_total", "counter", "Restarts of crashed engines.", [((), self.restarts)])
            for name, h, help_ in (
                ("tpuchat_first_token_seconds", self.ftl, "Time from prompt to first token (prefill)."),
                ("tpuchat_token_seconds", self.token, "Mean time per generated token of each generation."),
                ("tpuchat_queue_wait_seconds", self.queue, "Time a request waited for an engine."),
            ):
                L.append(f"# HELP {name} {help_}")
                L.append(f"# TYPE {name} histogram")
                L.extend(h.lines(name))
        if status is not None:
            metric("tpuchat_queue_depth", "gauge", "Requests waiting for an engine.", [((), status["waiting"])])
            metric("tpuchat_queue_capacity", "gauge", "Requests that may wait before 429.",
                   [((), status["max_waiting"])])
            engines = status.get("engines", [])
            metric("tpuchat_engines", "gauge", "Engines by state.",
                   [((("state", s),), sum(1 for e in engines if e["state"] == s))
                    for s in ("busy", "idle", "restarting")])
            metric("tpuchat_engine_busy_seconds_total", "counter", "Time each engine spent generating.",
                   [((("engine", str(i)), ("devices", e["devices"])), e["busy_s"]) for i, e in enumerate(engines)])
        return "\n".join(L) + "\n"
