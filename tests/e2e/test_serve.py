"""mixatt serve against real servers started on loopback: the official openai client, greedy output equal to
`mixatt run`, batching that changes no token (16 concurrent requests equal each alone, 100 concurrent clients
each get their own complete answer), per-request seeded sampling, stop strings, streaming, every error case
(400, 401, 404, 405, 413, 503 with Retry-After), a client that hangs up, SIGTERM draining, /metrics and the
chat page. The expected texts come from `mixatt run` (the reference decode loop) or from the same server with
one request at a time; nothing is hard-coded."""
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import run

CTX = 256
PROMPTS = [f"{w} is a word that" for w in ("Apple", "River", "Music", "Stone", "Cloud", "Tiger", "Bread", "Light",
                                           "Paper", "Ocean", "Glass", "Horse", "Money", "Green", "Table", "Dream")]


class Server:
    """A mixatt serve process on 127.0.0.1 with a port of its choosing (--port 0, read from its stdout)."""

    def __init__(self, binary, model, *args):
        # passive OpenMP waits: on a CPU shared with other jobs, spinning threads slow every step tenfold or more
        env = dict(os.environ, OMP_NUM_THREADS="2", OMP_WAIT_POLICY="passive", ASAN_OPTIONS="detect_leaks=1")
        self.proc = subprocess.Popen([binary, "serve", "-m", model, "--port", "0", "-t", "2", *map(str, args)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        line = self.proc.stdout.readline()
        m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
        if not m:
            self.proc.kill()
            raise AssertionError(f"no listening line: {line!r} {self.proc.stderr.read()}")
        self.port = int(m.group(1))
        self.url = f"http://127.0.0.1:{self.port}"

    def request(self, method, path, body=None, headers=None, timeout=300):
        """(status, headers, body bytes); body a dict (sent as JSON), bytes or None."""
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        data = json.dumps(body).encode() if isinstance(body, (dict, list)) else body
        h = {"Content-Type": "application/json", **(headers or {})}
        c.request(method, path, body=data, headers=h)
        r = c.getresponse()
        out = (r.status, dict(r.getheaders()), r.read())
        c.close()
        return out

    def post(self, path, body, **kw):
        status, headers, data = self.request("POST", path, body, **kw)
        return status, headers, json.loads(data)

    def metrics(self, headers=None):
        status, _, data = self.request("GET", "/metrics", headers=headers)
        assert status == 200
        values = {}
        for line in data.decode().splitlines():
            if line.startswith("#") or not line:
                continue
            m = re.fullmatch(r'([a-z_]+)\{([^}]*)\} (\S+)', line)
            assert m, f"not a Prometheus sample line: {line!r}"
            name = m.group(1) + ("" if "code=" not in m.group(2) else "_" + re.search(r'code="(\d+)"', m.group(2)).group(1))
            values[name] = float(m.group(3))
        return values

    def stop(self):
        """SIGTERM; returns (exit code, stderr)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return self.proc.returncode, self.proc.stderr.read()


@pytest.fixture(scope="module")
def server(mixatt, model):
    s = Server(mixatt, model, "--ctx", CTX, "--parallel", 16, "--queue", 256, "--max-body", "64K")
    yield s
    rc, err = s.stop()
    assert rc == 0, err


@pytest.fixture(scope="module")
def tight(mixatt, model):
    """One slot, a queue of one, an API key: for 503, 401 and hang-ups."""
    s = Server(mixatt, model, "--ctx", CTX, "--parallel", 1, "--queue", 1, "--api-key", "sekrit")
    yield s
    rc, err = s.stop()
    assert rc == 0, err


KEY = {"Authorization": "Bearer sekrit"}


N_GEN = 8  # tokens per request in the batching tests


def completion(server, prompt, n=N_GEN, **kw):
    status, _, r = server.post("/v1/completions", {"prompt": prompt, "max_tokens": n, "temperature": 0, **kw})
    assert status == 200, r
    return r


def run_text(mixatt, model, prompt, n, *extra):
    """What `mixatt run` generates for the prompt (its stdout ends with one newline of its own)."""
    r = run(mixatt, "run", "-m", model, "-p", prompt, "-n", n, "-t", 2, "--ctx", CTX, "-q", *extra,
            env={"OMP_WAIT_POLICY": "passive"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.endswith("\n")
    return r.stdout[:-1]


def n_tokens(mixatt, model, text):
    r = run(mixatt, "tokenize", "-m", model, "-p", text, "--ids")
    assert r.returncode == 0, r.stderr
    return len(r.stdout.split())


@pytest.fixture(scope="module")
def alone(server):
    """Each of PROMPTS through the server with nothing else running: greedy, N_GEN tokens."""
    return {p: completion(server, p)["choices"][0]["text"] for p in PROMPTS}


def test_health_and_models(server, model):
    status, _, data = server.request("GET", "/health")
    assert status == 200 and json.loads(data) == {"status": "ok"}
    status, _, data = server.request("GET", "/v1/models")
    models = json.loads(data)
    assert status == 200 and models["object"] == "list"
    assert models["data"][0]["id"] == os.path.basename(model)[:-len(".gguf")]


def test_completion_equals_mixatt_run(server, mixatt, model):
    import openai
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="none")
    prompt = "The capital of France is"
    r = client.completions.create(model="any", prompt=prompt, max_tokens=16, temperature=0)
    assert r.choices[0].text == run_text(mixatt, model, prompt, 16)
    assert r.choices[0].finish_reason == "length"
    assert r.usage.prompt_tokens == n_tokens(mixatt, model, prompt)
    assert r.usage.completion_tokens == 16
    assert r.usage.total_tokens == r.usage.prompt_tokens + 16


def test_chat_equals_mixatt_run_chat(server, mixatt, model):
    import openai
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="none")
    q = "What is the capital of France?"
    r = client.chat.completions.create(model="any", messages=[{"role": "user", "content": q}], max_tokens=24,
                                       temperature=0)
    want = run_text(mixatt, model, q, 24, "--chat")
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == want
    # the end of turn stops it (mixatt run stops there too), else the budget does
    assert r.choices[0].finish_reason == ("length" if r.usage.completion_tokens == 24 else "stop")


def test_chat_streaming_openai_client(server):
    import openai
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="none")
    msgs = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a colour."}]
    whole = client.chat.completions.create(model="any", messages=msgs, max_tokens=12, temperature=0)
    chunks = list(client.chat.completions.create(model="any", messages=msgs, max_tokens=12, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == [whole.choices[0].finish_reason]
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1  # streamed, not one lump


def test_completion_streaming_sse(server):
    prompt = "One, two, three,"
    whole = completion(server, prompt, 10)["choices"][0]["text"]
    status, headers, data = server.request("POST", "/v1/completions",
                                           {"prompt": prompt, "max_tokens": 10, "temperature": 0, "stream": True})
    assert status == 200 and headers["Content-Type"] == "text/event-stream"
    events = data.decode().split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    chunks = [json.loads(e[len("data: "):]) for e in events[:-2]]
    assert all(c["object"] == "text_completion" for c in chunks)
    assert "".join(c["choices"][0]["text"] for c in chunks) == whole
    assert [c["choices"][0]["finish_reason"] for c in chunks][-1] == "length"


def test_16_concurrent_greedy_equal_alone(server, alone):
    before = server.metrics()
    with ThreadPoolExecutor(16) as pool:
        got = list(pool.map(lambda p: completion(server, p)["choices"][0]["text"], PROMPTS))
    after = server.metrics()
    assert got == [alone[p] for p in PROMPTS]
    # they ran batched: far fewer steps than the 16 x N_GEN tokens (one step per token one by one)
    tokens = after["mixatt_generated_tokens_total"] - before["mixatt_generated_tokens_total"]
    steps = after["mixatt_steps_total"] - before["mixatt_steps_total"]
    assert tokens == 16 * N_GEN and steps < tokens / 2, (tokens, steps)


def test_100_concurrent_clients_each_get_their_own(server, alone):
    jobs = [PROMPTS[i % len(PROMPTS)] for i in range(100)]

    def one(p):
        status, _, r = server.post("/v1/completions", {"prompt": p, "max_tokens": N_GEN, "temperature": 0},
                                   timeout=900)
        assert status == 200, r
        return r["choices"][0]["text"], r["choices"][0]["finish_reason"], r["usage"]["completion_tokens"]

    with ThreadPoolExecutor(100) as pool:
        got = list(pool.map(one, jobs))
    assert [g[0] for g in got] == [alone[p] for p in jobs]
    assert all(g[1] == "length" and g[2] == N_GEN for g in got)


def test_seeded_sampling_is_per_request(server):
    body = {"prompt": "My favourite animal is", "max_tokens": 8, "temperature": 1.0, "top_k": 40}
    a = completion(server, **body, seed=7)["choices"][0]["text"]
    b = completion(server, **body, seed=11)["choices"][0]["text"]
    # the same seeds again, each in a batch with other sampling requests
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda s: completion(server, **body, seed=s)["choices"][0]["text"], [7, 11, 7, 3]))
    assert got[0] == a and got[2] == a and got[1] == b
    assert a != b


def test_stop_string(server):
    prompt = "The capital of France is"
    text = completion(server, prompt, 10)["choices"][0]["text"]
    words = text.split()
    assert len(words) >= 3, text
    stop = " " + words[2]
    r = completion(server, prompt, 10, stop=[stop, "never appears \u2603"])
    assert r["choices"][0]["text"] == text[:text.index(stop)]
    assert r["choices"][0]["finish_reason"] == "stop"
    r = completion(server, prompt, 10, stop=stop)  # a string as well as a list
    assert r["choices"][0]["text"] == text[:text.index(stop)]


def test_errors_are_openai_error_objects(server, mixatt, model):
    def err(body, path="/v1/completions"):
        status, _, data = server.request("POST", path, body)
        e = json.loads(data)["error"]
        assert set(e) >= {"message", "type", "param", "code"}
        return status, e

    status, e = err(b"{not json")
    assert status == 400 and e["type"] == "invalid_request_error"
    status, e = err({"prompt": "x", "temperature": "hot"})
    assert status == 400 and e["param"] == "temperature"
    status, e = err({"prompt": "x", "max_tokens": 1.5})
    assert status == 400 and e["param"] == "max_tokens"
    status, e = err({"prompt": "x", "n": 2})
    assert status == 400 and e["param"] == "n"
    status, e = err({"messages": "hi"}, "/v1/chat/completions")
    assert status == 400 and e["param"] == "messages"
    status, e = err({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "/v1/chat/completions")
    assert status == 400
    long_prompt = "hello " * 300
    status, e = err({"prompt": long_prompt})
    assert status == 400 and e["code"] == "context_length_exceeded"
    assert e["n_prompt_tokens"] == n_tokens(mixatt, model, long_prompt) and e["n_ctx"] == CTX
    assert str(e["n_prompt_tokens"]) in e["message"] and str(CTX) in e["message"]
    status, _, data = server.request("POST", "/v1/completions", b'{"prompt": "' + b"a" * 70000 + b'"}')
    assert status == 413 and "error" in json.loads(data)
    status, _, data = server.request("GET", "/v1/nothing")
    assert status == 404 and "error" in json.loads(data)
    status, _, data = server.request("GET", "/v1/completions")
    assert status == 405
    # the server still answers
    assert completion(server, "Hello", 2)["usage"]["completion_tokens"] == 2


def test_api_key(tight):
    assert tight.request("GET", "/health")[0] == 200  # no key needed
    assert tight.request("GET", "/")[0] == 200
    status, headers, data = tight.request("GET", "/v1/models")
    assert status == 401 and json.loads(data)["error"]["code"] == "invalid_api_key"
    assert tight.request("GET", "/v1/models", headers={"Authorization": "Bearer wrong"})[0] == 401
    assert tight.request("POST", "/v1/completions", {"prompt": "x"})[0] == 401
    assert tight.request("GET", "/v1/models", headers=KEY)[0] == 200
    import openai
    client = openai.OpenAI(base_url=tight.url + "/v1", api_key="sekrit")
    assert client.completions.create(model="m", prompt="Hi", max_tokens=2).usage.completion_tokens == 2
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=tight.url + "/v1", api_key="bad").models.list()


def open_stream(server, body, headers=None):
    """A raw socket streaming a request; returns it once the first content chunk has arrived."""
    s = socket.create_connection(("127.0.0.1", server.port), timeout=120)
    data = json.dumps({**body, "stream": True}).encode()
    h = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    s.sendall(f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{h}"
              f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    got = b""
    while got.count(b"data: ") < 2:
        chunk = s.recv(65536)
        assert chunk, got
        got += chunk
    return s


def wait_for(pred, timeout=120):
    t = time.time()
    while time.time() - t < timeout:
        v = pred()
        if v:
            return v
        time.sleep(0.02)
    raise AssertionError("timed out")


COUNTING = {"prompt": "1, 2, 3, 4, 5, 6, 7, 8,", "max_tokens": 200, "temperature": 0}  # runs to its budget


def test_queue_full_gives_503_with_retry_after(tight):
    body = COUNTING
    first = open_stream(tight, body, KEY)  # takes the one slot
    second = socket.create_connection(("127.0.0.1", tight.port), timeout=120)  # waits in the queue of one
    data = json.dumps(body).encode()
    second.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sekrit\r\n"
                   b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(data), data))
    wait_for(lambda: tight.metrics(KEY)["mixatt_queue_depth"] == 1)
    status, headers, data = tight.request("POST", "/v1/completions", body, headers=KEY)
    assert status == 503 and int(headers["Retry-After"]) >= 1
    assert json.loads(data)["error"]["code"] == "queue_full"
    first.close()
    second.close()
    wait_for(lambda: tight.metrics(KEY)["mixatt_slots_active"] == 0 and tight.metrics(KEY)["mixatt_queue_depth"] == 0)


def test_hang_up_frees_the_slot_within_a_step(tight):
    body = COUNTING
    before = tight.metrics(KEY)
    s = open_stream(tight, body, KEY)
    s.close()
    closed = tight.metrics(KEY)
    freed = wait_for(lambda: (lambda m: m if m["mixatt_slots_active"] == 0 else None)(tight.metrics(KEY)))
    # the step running when the client left, and the one at whose start its slot is given back
    assert freed["mixatt_steps_total"] - closed["mixatt_steps_total"] <= 2
    assert freed["mixatt_requests_cancelled_total"] == before["mixatt_requests_cancelled_total"] + 1
    assert freed["mixatt_generated_tokens_total"] - before["mixatt_generated_tokens_total"] < 200
    # and a non-streaming client that hangs up is cancelled too
    c = socket.create_connection(("127.0.0.1", tight.port), timeout=120)
    data = json.dumps(body).encode()
    c.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sekrit\r\n"
              b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(data), data))
    wait_for(lambda: tight.metrics(KEY)["mixatt_slots_active"] == 1)
    c.close()
    after = wait_for(lambda: (lambda m: m if m["mixatt_slots_active"] == 0 else None)(tight.metrics(KEY)))
    assert after["mixatt_requests_cancelled_total"] == before["mixatt_requests_cancelled_total"] + 2
    assert after["mixatt_generated_tokens_total"] - before["mixatt_generated_tokens_total"] < 400


def test_metrics_and_chat_page(server):
    m = server.metrics()
    for name in ("mixatt_requests_total", "mixatt_prompt_tokens_total", "mixatt_generated_tokens_total",
                 "mixatt_queue_depth", "mixatt_slots_active", "mixatt_tokens_per_second", "mixatt_kv_cache_bytes",
                 "mixatt_http_responses_total_200"):
        assert name in m, name
    assert m["mixatt_slots"] == 16
    status, headers, data = server.request("GET", "/")
    page = data.decode()
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert "/v1/chat/completions" in page and "stream: true" in page
    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", page)  # nothing fetched from elsewhere
    assert "http://" not in page and "https://" not in page


def test_asan_server_drains_on_sigterm(mixatt_asan, model):
    """Under ASan: a streaming and a plain request, a bad one, a hang-up, then SIGTERM with a request in
    flight: it completes, later ones are refused, the process exits 0 with no sanitizer report."""
    s = Server(mixatt_asan, model, "--ctx", 128, "--parallel", 4)
    try:
        assert completion(s, "Hello", 3)["usage"]["completion_tokens"] == 3
        status, _, data = s.request("POST", "/v1/chat/completions",
                                    {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3,
                                     "stream": True})
        assert status == 200 and data.decode().endswith("data: [DONE]\n\n")
        assert s.request("POST", "/v1/completions", b"[1, 2")[0] == 400
        open_stream(s, {"prompt": "Once upon a time", "max_tokens": 100}).close()
        result = {}

        def in_flight():
            result["r"] = completion(s, "Once upon a time", 12)

        t = threading.Thread(target=in_flight)
        t.start()
        wait_for(lambda: s.metrics()["mixatt_slots_active"] >= 1 and s.metrics()["mixatt_requests_cancelled_total"] == 1)
        s.proc.send_signal(signal.SIGTERM)
        t.join(timeout=300)
        assert result["r"]["usage"]["completion_tokens"] == 12
    finally:
        rc, err = s.stop()
    assert rc == 0, err
    assert "Sanitizer" not in err and "runtime error" not in err, err
    assert "finishing the requests in flight" in err


def test_kv_budget_sets_the_slots_from_the_plan(mixatt, model):
    """--kv-budget: slots = budget // one slot's cache, the cache per token from the GGUF's shape (fp32 K and V
    of every layer under the standard plan); a MixAttention plan's window rings fit more slots."""
    import gguf
    r = gguf.GGUFReader(model)
    kv = {f.name: f.parts[f.data[0]][0] for f in r.fields.values() if f.name.startswith("llama.")}
    n_layer, n_head, n_kv = int(kv["llama.block_count"]), int(kv["llama.attention.head_count"]), \
        int(kv["llama.attention.head_count_kv"])
    head_dim = int(kv["llama.embedding_length"]) // n_head
    per_slot = n_layer * 2 * n_kv * head_dim * 4 * CTX
    budget = 5 * per_slot + per_slot // 2
    slots = {}
    for plan in ("standard", "ma-offset"):
        s = Server(mixatt, model, "--ctx", CTX, "--kv-budget", budget, "--plan", plan)
        try:
            m = s.metrics()
            slots[plan] = m["mixatt_slots"]
            assert m["mixatt_kv_cache_bytes"] <= budget
        finally:
            assert s.stop()[0] == 0
    assert slots["standard"] == 5
    assert slots["ma-offset"] > slots["standard"]
