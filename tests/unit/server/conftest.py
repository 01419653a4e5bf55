import json
import threading
import http.client

import pytest

from tpuchat.server import make_server

from .fakes import FakeModel

openai = pytest.importorskip("openai")


class Running:
    def __init__(self, srv, model):
        self.srv, self.model = srv, model
        self.host, self.port = srv.server_address[:2]
        self.base_url = srv.url

    def client(self, api_key="none", **kw):
        kw.setdefault("max_retries", 0)
        kw.setdefault("timeout", 30)
        return openai.OpenAI(base_url=self.base_url, api_key=api_key, **kw)

    def raw(self, method, path, body=None, headers=None, timeout=30):
        """(status, headers, parsed JSON or text) of one plain HTTP request."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        if isinstance(body, (dict, list)):
            body = json.dumps(body)
        h = {"Content-Type": "application/json"}
        h.update(headers or {})
        conn.request(method, path, body=body, headers=h)
        r = conn.getresponse()
        data = r.read().decode()
        conn.close()
        try:
            data = json.loads(data)
        except ValueError:
            pass
        return r.status, dict(r.getheaders()), data


@pytest.fixture
def serve_fake():
    """serve_fake(model=None, **server_options) -> Running, shut down after the test.  model may be
    a list of models: one engine each."""
    started = []

    def start(model=None, **kw):
        model = model or FakeModel()
        srv = make_server(model, "127.0.0.1", 0, **kw)
        t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        t.start()
        started.append((srv, t))
        return Running(srv, model)

    yield start
    for srv, t in started:
        srv.shutdown()
        srv.close()
        t.join(5)
