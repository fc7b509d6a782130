"""``scissor serve``: the real server (a subprocess on 127.0.0.1, port 0) with the tiny checkpoint, talked to with the
real ``openai`` client and plain HTTP: answers equal ``scissor ask --json`` (streamed or not), concurrent requests
batch and still answer like sequential ones, a conversation equals ``scissor chat``, every error status, API keys,
the in-flight bound, and SIGTERM / SIGINT. The request rules (merge, parsing) and the model thread's cancellation
are also tested in-process."""

from __future__ import annotations

import base64
import concurrent.futures
import http.server as http_server
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from typer.testing import CliRunner

from scissor_cli.cli import app
from scissor_cli.serve import merge_flags, parse_request

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")

QUESTIONS = [
    "What is happening?",
    "Describe the video.",
    "How many people appear?",
    "What colour is the background?",
    "Is it day or night?",
    "What moves?",
    "Where is this?",
    "What comes next?",
]
COMMON = ["--frames", "4", "--max-new-tokens", "12"]  # the server's defaults and ask's flags alike


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """allowed/clip.mp4 (2 s test pattern), allowed/notes.txt, outside/secret.mp4 and a symlink to it inside."""
    root = tmp_path_factory.mktemp("serve")
    allowed, outside = root / "allowed", root / "outside"
    allowed.mkdir()
    outside.mkdir()
    clip = allowed / "clip.mp4"
    args = ["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc=size=96x64:rate=10", "-t", "2"]
    subprocess.run([*args, "-pix_fmt", "yuv420p", str(clip)], check=True, timeout=60)
    shutil.copy(clip, outside / "secret.mp4")
    (allowed / "link.mp4").symlink_to(outside / "secret.mp4")
    (allowed / "notes.txt").write_text("not a video\n")
    return root


def _env(root: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(SCISSOR_CACHE_DIR=str(root / "cache"), HF_HUB_OFFLINE="1", XDG_CONFIG_HOME=str(root / "xdg"),
               SCISSOR_PROFILES_DIR=str(root / "profiles"))  # fmt: skip
    for var in ("SCISSOR_API_KEY", "SCISSOR_DEBUG", "SCISSOR_CONFIG", "SCISSOR_MODEL"):
        env.pop(var, None)
    return env


class Server:
    """``scissor serve`` in its own session (so no child can outlive the test unseen); ``url`` from its line."""

    def __init__(self, root: Path, *args: str):
        self.log = root / f"serve-{time.monotonic_ns()}.err"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "scissor_cli", "serve", "--port", "0", *args],
            stdout=subprocess.DEVNULL,
            stderr=self.log.open("w"),
            env=_env(root),
            start_new_session=True,
        )
        deadline = time.monotonic() + 120
        while not (found := re.search(r"at (http://\S+)/v1", self.stderr())):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"the server did not start: {self.stderr()}")
            time.sleep(0.2)
        self.base = found.group(1)
        self.url = self.base + "/v1"

    def stderr(self) -> str:
        return self.log.read_text()

    def signal(self, signum: int) -> int:
        self.proc.send_signal(signum)
        return self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def session_gone(self) -> bool:
        try:
            os.killpg(self.proc.pid, 0)
        except ProcessLookupError:
            return True
        return False


def http(method: str, url: str, body: object = None, key: str | None = None, raw: bytes | None = None):
    """(status, parsed JSON) of one plain HTTP request."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def video_message(url: str, question: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": url}},
                                         {"type": "text", "text": question}]}]  # fmt: skip


def client(server: Server, key: str = "none"):
    return openai.OpenAI(base_url=server.url, api_key=key, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def server(media, tiny_hf_dir):
    s = Server(media, "--model", str(tiny_hf_dir), *COMMON, "--allow-files", str(media / "allowed"), "--no-urls",
               "--max-video-mb", "0.05")  # fmt: skip
    yield s
    s.stop()


def ask_json(video: str, question: str, *flags: str, tiny: Path) -> dict:
    result = CliRunner().invoke(app, ["ask", video, question, "--model", str(tiny), *COMMON, *flags, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.splitlines()[0])


# ---------------------------------------------------------------------------------------------------- answers
def test_answers_streamed_or_not_equal_ask_and_the_cache_is_shared(server, media, tiny_hf_dir):
    clip = str(media / "allowed" / "clip.mp4")
    c = client(server)
    first = c.chat.completions.create(
        model=str(tiny_hf_dir), messages=video_message(f"file://{clip}", QUESTIONS[0]), extra_body={"retention": 0.5}
    )
    expected = ask_json(clip, QUESTIONS[0], "--retention", "0.5", tiny=tiny_hf_dir)
    stats = first.model_extra["scissor"]
    assert first.object == "chat.completion" and first.choices[0].finish_reason in ("stop", "length")
    assert first.choices[0].message.content == expected["answer"]
    for key in ("tokens", "retention", "tau", "budget", "frames", "timestamps", "prefill_tokens"):
        assert stats[key] == expected[key], key
    assert stats["tokens"]["final"] < stats["tokens"]["original"], "retention 0.5 must compress"
    assert first.usage.total_tokens == first.usage.prompt_tokens + first.usage.completion_tokens > 0

    stream = c.chat.completions.create(
        model=str(tiny_hf_dir), messages=video_message(clip, QUESTIONS[0]), stream=True,
        stream_options={"include_usage": True}, extra_body={"retention": 0.5},
    )  # fmt: skip
    chunks = list(stream)
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == expected["answer"], "the streamed text must add up to the non-streamed answer"
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == first.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == first.usage.completion_tokens
    assert len([ch for ch in chunks if ch.choices and ch.choices[0].delta.content]) > 1, "streamed in pieces"

    again = c.chat.completions.create(model=str(tiny_hf_dir), messages=video_message(clip, QUESTIONS[1]))
    assert again.model_extra["scissor"]["cache_hit"] is True, "the same video again comes from the feature cache"
    assert again.model_extra["scissor"]["timings_s"]["vision"] == 0.0


def test_concurrent_requests_batch_and_each_equals_its_sequential_answer(server, media, tiny_hf_dir):
    clip = str(media / "allowed" / "clip.mp4")
    c = client(server)

    def one(q: str):
        r = c.chat.completions.create(model=str(tiny_hf_dir), messages=video_message(clip, q))
        return r.choices[0].message.content, r.model_extra["scissor"]["batch_rows"]

    sequential = [one(q)[0] for q in QUESTIONS]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        together = list(pool.map(one, QUESTIONS))
    assert [a for a, _ in together] == sequential, "batching must not change greedy answers"
    assert max(rows for _, rows in together) > 1, "concurrent requests must share a generate call"
    assert len(set(sequential)) > 1, "the questions must lead to different answers, or the test proves nothing"


def test_a_conversation_equals_chat(server, media, tiny_hf_dir):
    clip = str(media / "allowed" / "clip.mp4")
    lines = "What is happening?\nAnd then?\n"
    result = CliRunner().invoke(app, ["chat", clip, "--model", str(tiny_hf_dir), *COMMON, "--json"], input=lines)
    assert result.exit_code == 0, result.output
    first, second = (json.loads(line) for line in result.stdout.splitlines())
    messages = [
        *video_message(clip, "What is happening?"),
        {"role": "assistant", "content": first["answer"]},
        {"role": "user", "content": "And then?"},
    ]
    r = client(server).chat.completions.create(model=str(tiny_hf_dir), messages=messages)
    assert r.choices[0].message.content == second["answer"]
    alone = client(server).chat.completions.create(model=str(tiny_hf_dir), messages=video_message(clip, "And then?"))
    assert alone.usage.prompt_tokens < r.usage.prompt_tokens, "the earlier turns are in the prompt"


# ---------------------------------------------------------------------------------------------------- errors
def test_every_bad_request_gets_its_status_and_the_server_goes_on(server, media, tiny_hf_dir):
    allowed, outside = media / "allowed", media / "outside"
    clip = str(allowed / "clip.mp4")
    url = server.url + "/chat/completions"
    big = "data:video/mp4;base64," + base64.b64encode(os.urandom(80_000)).decode()
    cases = [
        (400, "retention", {"messages": video_message(clip, "Q?"), "retention": 2}),
        (400, "both given", {"messages": video_message(clip, "Q?"), "retention": 0.5, "tau": 0.8}),
        (400, "max_tokens", {"messages": video_message(clip, "Q?"), "max_tokens": 0}),
        (400, "top_p 1.5 is out of range", {"messages": video_message(clip, "Q?"), "top_p": 1.5}),
        (400, "no-such-profile", {"messages": video_message(clip, "Q?"), "profile": "no-such-profile"}),
        (400, "exactly one", {"messages": [{"role": "user", "content": "Q?"}]}),
        (400, "notes.txt", {"messages": video_message(str(allowed / "notes.txt"), "Q?")}),
        (400, "alternate", {"messages": [{"role": "assistant", "content": "hi"}]}),
        (403, "outside", {"messages": video_message(str(outside / "secret.mp4"), "Q?")}),
        (403, "outside", {"messages": video_message(f"{allowed}/../outside/secret.mp4", "Q?")}),
        (403, "outside", {"messages": video_message(str(allowed / "link.mp4"), "Q?")}),
        (403, "--no-urls", {"messages": video_message("http://127.0.0.1:9/clip.mp4", "Q?")}),
        (404, "not served", {"model": "gpt-4o", "messages": video_message(clip, "Q?")}),
        (413, "larger", {"messages": video_message(big, "Q?")}),
        # refused by its length before the video is even looked at (else: 403 for the path)
        (400, "context", {"messages": video_message(str(outside / "secret.mp4"), "Why? " * 40_000)}),
    ]
    for status, words, body in cases:
        got, answer = http("POST", url, body)
        assert got == status, (words, answer)
        error = answer["error"]
        assert set(error) == {"message", "type", "param", "code"}, error
        assert words in error["message"], error
        assert "Traceback" not in error["message"]
        assert http("GET", server.base + "/health") == (200, {"status": "ok"}), f"the server died after {words}"
    garbage = "data:video/mp4;base64," + base64.b64encode(b"not a video at all" * 10).decode()
    status, answer = http("POST", url, {"messages": video_message(garbage, "Q?")})
    assert status == 400 and "data: URL's video" in answer["error"]["message"], "named as sent, not as spooled"
    assert http("POST", url, raw=b"{not json")[0] == 400
    assert http("GET", server.base + "/nowhere")[0] == 404
    ok, answer = http("POST", url, {"messages": video_message(clip, "Q?"), "tokens": 10})
    assert ok == 200 and answer["scissor"]["tokens"]["final"] <= 10, "a good request still answers"
    assert "retention" in http("POST", url, cases[0][2])[1]["error"]["param"], "param names the field"
    assert http("POST", url, cases[3][2])[1]["error"]["param"] == "top_p"
    assert http("POST", url, cases[1][2])[1]["error"]["param"] == "tau", "the field the message names first"


def test_sigterm_stops_cleanly_with_no_child_left(server):
    assert server.signal(signal.SIGTERM) == 0, server.stderr()
    assert server.stderr().rstrip().splitlines()[-1] == "stopped (SIGTERM)"
    assert "Traceback" not in server.stderr()
    time.sleep(0.2)
    assert server.session_gone(), "a process of the server's session outlived it"


# ---------------------------------------------------------------------------------------------------- keys, URLs, queue
class _Videos(http_server.BaseHTTPRequestHandler):
    """/clip.mp4 at once, /big.mp4 announced too large, /slow.mp4 held until ``release`` is set."""

    clip: bytes = b""
    release = threading.Event()

    def do_GET(self):  # noqa: N802 - http.server's name
        if self.path == "/big.mp4":
            self.send_response(200)
            self.send_header("Content-Length", str(10_000_000))
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.clip)))
        self.end_headers()
        if self.path == "/slow.mp4":
            self.release.wait(30)
        self.wfile.write(self.clip)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def videos_site(media):
    _Videos.clip = (media / "allowed" / "clip.mp4").read_bytes()
    site = http_server.ThreadingHTTPServer(("127.0.0.1", 0), _Videos)
    threading.Thread(target=site.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{site.server_address[1]}"
    _Videos.release.set()
    site.shutdown()


@pytest.fixture(scope="module")
def keyed(media, tiny_hf_dir):
    s = Server(media, "--model", str(tiny_hf_dir), *COMMON, "--api-key", "sesame", "--max-queue", "1",
               "--max-video-mb", "1", "--served-model-name", "tiny")  # fmt: skip
    yield s
    s.stop()


def test_api_key_urls_and_files_without_allow_files(keyed, videos_site, media):
    assert http("GET", keyed.base + "/health") == (200, {"status": "ok"}), "/health needs no key"
    assert http("GET", keyed.url + "/models")[0] == 401
    assert http("GET", keyed.url + "/models", key="wrong")[0] == 401
    status, models = http("GET", keyed.url + "/models", key="sesame")
    assert status == 200 and [m["id"] for m in models["data"]] == ["tiny"]
    body = {"model": "tiny", "messages": video_message(videos_site + "/clip.mp4", "Q?")}
    assert http("POST", keyed.url + "/chat/completions", body)[0] == 401
    with pytest.raises(openai.AuthenticationError):
        client(keyed, "wrong").chat.completions.create(**body)
    r = client(keyed, "sesame").chat.completions.create(**body)
    assert r.choices[0].message.content and r.model_extra["scissor"]["frames"] == 4, "a URL is fetched"
    big = {"model": "tiny", "messages": video_message(videos_site + "/big.mp4", "Q?")}
    assert http("POST", keyed.url + "/chat/completions", big, key="sesame")[0] == 413
    local = {"model": "tiny", "messages": video_message(str(media / "allowed" / "clip.mp4"), "Q?")}
    status, answer = http("POST", keyed.url + "/chat/completions", local, key="sesame")
    assert status == 403 and "--allow-files" in answer["error"]["message"], "no --allow-files: no local files"


def test_a_full_queue_answers_503_at_once(keyed, videos_site):
    _Videos.release.clear()
    slow = {"model": "tiny", "messages": video_message(videos_site + "/slow.mp4", "Q?")}
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        held = pool.submit(http, "POST", keyed.url + "/chat/completions", slow, "sesame")
        time.sleep(1.0)  # the first request is in flight, its video download held open
        t0 = time.monotonic()
        status, answer = http("POST", keyed.url + "/chat/completions", slow, key="sesame")
        assert status == 503 and "busy" in answer["error"]["message"], answer
        assert time.monotonic() - t0 < 5, "503 at once, not after waiting"
        _Videos.release.set()
        assert held.result(timeout=60)[0] == 200
    assert http("POST", keyed.url + "/chat/completions", slow, key="sesame")[0] == 200, "the slot is free again"


def test_sigint_stops_with_130(keyed):
    assert keyed.signal(signal.SIGINT) == 130, keyed.stderr()
    assert keyed.stderr().rstrip().splitlines()[-1].startswith("interrupted")
    time.sleep(0.2)
    assert keyed.session_gone()


# ---------------------------------------------------------------------------------------------------- no server
def test_a_public_address_needs_an_api_key(tiny_hf_dir):
    result = CliRunner().invoke(app, ["serve", "--host", "0.0.0.0", "--model", str(tiny_hf_dir)])
    assert result.exit_code == 2
    assert "--api-key" in result.stderr and "reachable from other machines" in result.stderr


def test_without_fastapi_one_line_says_what_to_install(tmp_path):
    code = "import sys; sys.modules['fastapi'] = None; from scissor_cli.cli import main; main()"
    out = subprocess.run([sys.executable, "-c", code, "serve", "--model", str(tmp_path)], capture_output=True,
                         text=True, timeout=120, env=_env(tmp_path))  # fmt: skip
    assert out.returncode == 1 and "pip install 'scissor-cli[serve]'" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


def test_request_fields_replace_the_server_flags_by_the_flags_rule():
    server = {"retention": 0.1, "tau": None, "frames": 8, "model": "m", "no_compress": False, "tau_temporal": 0.8}
    expected = {**server, "retention": None, "tokens": None, "tau": 0.7, "tau_temporal": None, "epsilon": None}
    assert merge_flags(server, {"tau": 0.7}, None) == expected
    assert merge_flags(server, {"frames": 4}, None)["retention"] == 0.1, "a frame field keeps the server's budget"
    assert merge_flags(server, {"no_compress": True}, None)["retention"] is None
    assert merge_flags(server, {"frames": 4}, "r10") == {"model": "m", "frames": 4}, "a profile replaces the flags"


def test_parse_request_takes_history_and_refuses_what_it_cannot_do():
    messages = [
        {"role": "system", "content": "be brief"},
        *video_message("/v.mp4", "First?"),
        {"role": "assistant", "content": [{"type": "text", "text": "An answer."}]},
        {"role": "user", "content": "Second?"},
    ]
    req = parse_request({"messages": messages, "max_completion_tokens": 5, "stream": True}, "m")
    assert (req.video, req.question, req.history) == ("/v.mp4", "Second?", (("First?", "An answer."),))
    assert req.flags["max_new_tokens"] == 5 and req.stream
    assert parse_request({"messages": messages, "top_p": 0.5}, "m").flags["top_p"] == 0.5, "an Overrides field"
    for body, words in [
        ({"messages": messages, "n": 2}, "n must be 1"),
        ({"messages": messages, "tools": [{"type": "function"}]}, "tools"),
        ({"messages": messages, "tokens": 1.5}, "tokens must be an integer"),
        ({"messages": messages * 2}, "alternate"),
    ]:
        with pytest.raises(Exception, match=words):
            parse_request(body, "m")


class Looping:
    """A model whose generate runs 500 steps unless its stop hook ends it."""

    max_positions = None

    def __init__(self):
        self.steps = 0

    def generate(self, requests, gen, *, history=(), on_text=None, should_stop=None):
        from scissor_cli.model import GenerationOutput

        while self.steps < 500 and not _all(should_stop()):
            self.steps += 1
            time.sleep(0.01)
        n = len(requests)
        return GenerationOutput(["x"] * n, [1] * n, 0.0, 0.0, [self.steps] * n, [[0]] * n)


def _all(stop) -> bool:
    """What ends transformers' generate: every row stopped (``should_stop`` may flag rows one by one)."""
    return all(stop) if isinstance(stop, list) else bool(stop)


def test_a_stream_closed_by_its_client_stops_its_generation():
    import asyncio
    from types import SimpleNamespace

    from scissor_cli.options import Profile
    from scissor_cli.serve import Engine, ModelWorker, _stream

    vlm = Looping()
    engine = Engine.__new__(Engine)  # the parts _stream uses: the model thread and the in-flight count
    engine.worker, engine.in_flight = ModelWorker(vlm, max_batch=4, cache=None), 0
    req = parse_request({"messages": video_message("/v.mp4", "Q?"), "stream": True}, "m")
    chunks = _stream(engine, req, Profile(), None, SimpleNamespace(tokens=None), "id", 0, "m", 0.0)

    async def client_goes_away():
        first = await chunks.__anext__()
        assert b'"role": "assistant"' in first
        await asyncio.sleep(0.1)
        await chunks.aclose()  # what starlette does to the body iterator when the client disconnects

    asyncio.run(client_goes_away())
    deadline = time.monotonic() + 10
    while engine.worker.batches == [] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert engine.worker.batches == [1] and vlm.steps < 100, "the disconnected stream's generation must stop"
    assert engine.in_flight == 0
    engine.worker.close(5)


def test_a_cancelled_lone_row_stops_its_generation():
    from scissor_cli.options import Profile
    from scissor_cli.serve import ModelWorker, _Generate

    vlm = Looping()
    worker = ModelWorker(vlm, max_batch=4, cache=None)
    item = _Generate(tokens=None, question="q", history=(), profile=Profile(), on_text=lambda _: None)
    worker.submit(item)
    time.sleep(0.1)
    item.cancelled.set()
    item.future.result(timeout=10)
    assert vlm.steps < 100, "the cancelled row's generation must stop"
    worker.close(5)


def _asgi(application, method: str, path: str, body: bytes = b"") -> tuple[int, dict]:
    """One request straight into the ASGI app (no server, no model)."""
    import asyncio

    async def main():
        sent = []

        async def receive():
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
                 "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
                 "headers": [(b"content-type", b"application/json")], "client": ("127.0.0.1", 1),
                 "server": ("127.0.0.1", 80)}  # fmt: skip
        await application(scope, receive, send)
        return sent[0]["status"], json.loads(b"".join(m.get("body", b"") for m in sent[1:]))

    return asyncio.run(main())


def test_while_the_model_loads_health_and_requests_answer_503():
    from scissor_cli.serve import ServeOptions, ServerState, create_app

    state = ServerState(ServeOptions(), "m")
    application = create_app(state)
    assert _asgi(application, "GET", "/health") == (503, {"status": "loading"})
    status, answer = _asgi(application, "POST", "/v1/chat/completions", json.dumps({"messages": []}).encode())
    assert status == 503 and "still loading" in answer["error"]["message"]
    assert _asgi(application, "GET", "/v1/models")[0] == 200, "the model list needs no loaded model"


def test_serve_help_shows_examples_and_imports_nothing_heavy():
    code = (
        "import sys\n"
        "from scissor_cli.cli import app\n"
        "try:\n"
        "    app(['serve', '--help'])\n"
        "except SystemExit as e:\n"
        "    assert e.code in (0, None), e.code\n"
        "print('HEAVY', [m for m in ('torch', 'transformers', 'fastapi', 'uvicorn') if m in sys.modules])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "Examples" in out.stdout and "scissor serve --allow-files" in out.stdout and "SCISSOR_API_KEY" in out.stdout
    assert "HEAVY []" in out.stdout, out.stdout.splitlines()[-1]


def test_a_cancelled_row_of_a_batch_stops_alone():
    """The model is told which row's client went away; the batch goes on for the others."""
    from scissor_cli.options import Profile
    from scissor_cli.serve import ModelWorker, _Generate

    flags = []

    class Watching(Looping):
        def generate(self, requests, gen, *, history=(), on_text=None, should_stop=None):
            while self.steps < 60:
                self.steps += 1
                flags.append(should_stop())
                time.sleep(0.01)
            return super().generate(requests, gen, history=history, on_text=on_text, should_stop=lambda: True)

    worker = ModelWorker(Watching(), max_batch=4, cache=None)
    worker._cond.acquire()  # both rows wait together, so they share one generate
    rows = [_Generate(tokens=None, question=q, history=(), profile=Profile()) for q in ("a", "b")]
    for row in rows:
        worker._items.append(row)
    worker._cond.notify()
    worker._cond.release()
    time.sleep(0.2)
    rows[1].cancelled.set()
    for row in rows:
        row.future.result(timeout=10)
    assert worker.batches == [2] and flags[0] == [False, False] and flags[-1] == [False, True], flags[-1]
    worker.close(5)


# ---------------------------------------------------------------------------------------------------- single-flight
@pytest.fixture(scope="module")
def tiny_vlm(tiny_hf_dir):
    from scissor_cli.model import load_model
    from scissor_cli.options import ModelOptions

    return load_model(ModelOptions(model=str(tiny_hf_dir), dtype="float32"))


def _two_at_once(tiny_vlm, media, first_decoding: threading.Event) -> list:
    """Two requests for one uncached video, the second sent while the first decodes; each one's (run, compressed)
    from ``Engine.prepare``, or its exception."""
    import asyncio

    from scissor_cli.config import UserConfig
    from scissor_cli.options import Profile
    from scissor_cli.pipeline import resolve_profile
    from scissor_cli.serve import Engine, ServeOptions
    from scissor_cli.settings import Overrides

    options = ServeOptions(allow_files=(str(media / "allowed"),))
    engine = Engine(tiny_vlm, options, Profile(), Overrides(), UserConfig(path=None))
    engine.start(cache_on=False)
    url = str(media / "allowed" / "clip.mp4")
    profile = resolve_profile(tiny_vlm, Profile().override(sampling={"n_frames": 4}))
    results: list = [None, None]

    def one(i: int) -> None:
        req = parse_request({"messages": video_message(url, QUESTIONS[i])}, "m")
        try:
            results[i] = asyncio.run(engine.prepare(url, req, profile))
        except Exception as e:  # noqa: BLE001 - the test looks at it
            results[i] = e

    try:
        first = threading.Thread(target=one, args=(0,), daemon=True)  # a hung request must not hang pytest
        first.start()
        assert first_decoding.wait(30), "the first request never decoded"
        second = threading.Thread(target=one, args=(1,), daemon=True)
        second.start()
        first.join(60)
        second.join(60)
        assert engine._flights == {}, "a finished (or failed) encoding is not waited for again"
    finally:
        engine.close(5)
    return results


def test_two_first_requests_for_one_video_decode_and_encode_it_once(tiny_vlm, media, monkeypatch):
    import torch

    import scissor_cli.pipeline as pipeline

    decoding, decodes, encodes = threading.Event(), [], []
    real_decode, real_encode = pipeline.decode_clip, tiny_vlm.encode

    def counting_decode(*args, **kwargs):
        decodes.append(args[1])
        decoding.set()
        time.sleep(1.0)  # the second request arrives meanwhile
        return real_decode(*args, **kwargs)

    monkeypatch.setattr(pipeline, "decode_clip", counting_decode)
    monkeypatch.setattr(tiny_vlm, "encode", lambda *a, **k: encodes.append(1) or real_encode(*a, **k))
    (run1, compressed1), (run2, compressed2) = _two_at_once(tiny_vlm, media, decoding)
    assert len(decodes) == 1 and len(encodes) == 1, "the second request waits for the first's encoding"
    assert run2.encoded is run1.encoded and torch.equal(compressed1.tokens, compressed2.tokens)


def test_a_failed_first_decode_is_both_requests_error(tiny_vlm, media, monkeypatch):
    import scissor_cli.pipeline as pipeline
    from scissor_cli.errors import VideoError

    decoding, decodes = threading.Event(), []

    def failing_decode(*args, **kwargs):
        decodes.append(args[1])
        decoding.set()
        time.sleep(1.0)
        raise VideoError(f"cannot decode {args[1]}", hint="check the file")

    monkeypatch.setattr(pipeline, "decode_clip", failing_decode)
    first, second = _two_at_once(tiny_vlm, media, decoding)
    assert isinstance(first, VideoError) and isinstance(second, VideoError), (first, second)
    assert second.message == first.message and "clip.mp4" in first.message
    assert len(decodes) == 1, "the waiting request gets the failure, not a second decode"


def test_a_cached_video_is_not_decoded_again(tiny_vlm, media, monkeypatch, tmp_path):
    """The pool's cache lookup builds encode_video's own key: a video in the feature cache skips the decode."""
    import asyncio

    import scissor_cli.pipeline as pipeline
    from scissor_cli.config import UserConfig
    from scissor_cli.options import Profile
    from scissor_cli.serve import Engine, ServeOptions
    from scissor_cli.serve.engine import RunCache
    from scissor_cli.settings import Overrides

    monkeypatch.setenv("SCISSOR_CACHE_DIR", str(tmp_path / "cache"))
    decodes = []
    real = pipeline.decode_clip
    monkeypatch.setattr(pipeline, "decode_clip", lambda *a, **k: decodes.append(a[1]) or real(*a, **k))
    options = ServeOptions(allow_files=(str(media / "allowed"),))
    # no kept runs: the second request must find its features through the feature cache's key
    engine = Engine(tiny_vlm, options, Profile(), Overrides(), UserConfig(path=None), runs=RunCache(max_runs=0))
    engine.start(cache_on=True)
    url = str(media / "allowed" / "clip.mp4")
    profile = pipeline.resolve_profile(tiny_vlm, Profile().override(sampling={"n_frames": 4}))
    req = parse_request({"messages": video_message(url, "Q?")}, "m")
    try:
        first, _ = asyncio.run(engine.prepare(url, req, profile))
        again, _ = asyncio.run(engine.prepare(url, req, profile))
    finally:
        engine.close(5)
    assert not first.encoded.cache_hit and again.encoded.cache_hit
    assert len(decodes) == 1, "the cached video was decoded again (the pool's key is not encode_video's)"


# ---------------------------------------------------------------------------------------------------- kept runs
def _engine(tiny_vlm, allowed: Path, config=None, cache_on: bool = False, **kwargs):
    from scissor_cli.config import UserConfig
    from scissor_cli.serve import Engine, ServeOptions
    from scissor_cli.settings import Overrides, resolve

    config = config if config is not None else UserConfig(path=None)
    overrides = Overrides(frames=4, no_cache=not cache_on)
    base = resolve(overrides, config)  # the server's profile: its model settings hold for every request
    engine = Engine(tiny_vlm, ServeOptions(allow_files=(str(allowed),)), base, overrides, config, **kwargs)
    engine.start(cache_on=cache_on)
    return engine


def _answers(engine, url: str, questions: list[str], together: bool) -> list[str]:
    """Each question's greedy answer through ``engine``: prepared, then generated one by one or (``together``) as
    one batch (the model thread held until every row waits)."""
    import asyncio

    reqs = [parse_request({"messages": video_message(url, q)}, "m") for q in questions]

    async def main() -> list[str]:
        profiles = [engine.request_profile(r) for r in reqs]
        prepared = [await engine.prepare(url, r, p) for r, p in zip(reqs, profiles, strict=True)]
        if not together:
            texts = []
            for (_, compressed), r, p in zip(prepared, reqs, profiles, strict=True):
                row, _ = await asyncio.wrap_future(engine.submit_generate(compressed, r, p).future)
                texts.append(row.texts[0])
            return texts
        from scissor_cli.serve.engine import _Call

        release = threading.Event()
        engine.worker.submit(_Call(lambda: release.wait(30)))  # the rows queue up behind it
        items = [engine.submit_generate(c, r, p) for (_, c), r, p in zip(prepared, reqs, profiles, strict=True)]
        release.set()
        rows = [await asyncio.wrap_future(i.future) for i in items]
        assert {n for _, n in rows} == {len(questions)}, "the rows must share one generate"
        return [row.texts[0] for row, _ in rows]

    return asyncio.run(main())


def test_requests_about_one_cached_video_share_one_run_one_scc_and_one_prefix(tiny_vlm, media, monkeypatch):
    """N requests about one cached video: SCC once, the batch's generate gets one tensor for every row and
    prefills the shared prefix once, and the answers are those asked one by one (greedy)."""
    import scissor_cli.pipeline as pipeline

    url = str(media / "allowed" / "clip.mp4")
    warm = _engine(tiny_vlm, media / "allowed", cache_on=True)
    try:
        sequential = _answers(warm, url, QUESTIONS[:4], together=False)  # also puts the features in the cache
    finally:
        warm.close(5)

    sccs, calls = [], []
    real_compress, real_generate = pipeline.compress_video, tiny_vlm.generate
    monkeypatch.setattr(pipeline, "compress_video", lambda *a, **k: sccs.append(1) or real_compress(*a, **k))

    def spying_generate(requests, *args, **kwargs):
        out = real_generate(requests, *args, **kwargs)
        calls.append(([video for video, _ in requests], out))
        return out

    monkeypatch.setattr(tiny_vlm, "generate", spying_generate)
    engine = _engine(tiny_vlm, media / "allowed", cache_on=True)  # a fresh server: the video in the feature cache
    try:
        together = _answers(engine, url, QUESTIONS[:4], together=True)
    finally:
        engine.close(5)
    assert len(sccs) == 1, f"SCC ran {len(sccs)} times for one video at one setting"
    [(videos, out)] = calls
    assert len(videos) == 4 and all(v is videos[0] for v in videos), "every row must hand generate one tensor"
    assert sum(out.n_prefill_tokens) < sum(out.n_prompt_tokens), "the rows must share the video's prefix"
    assert together == sequential, "sharing a run must not change greedy answers"
    assert len(set(sequential)) > 1, "the questions must lead to different answers, or the test proves nothing"


def test_a_kept_run_is_a_memory_hit_and_a_changed_file_is_encoded_again(tiny_vlm, media, tmp_path):
    import asyncio

    video = tmp_path / "v.mp4"
    shutil.copy(media / "allowed" / "clip.mp4", video)
    engine = _engine(tiny_vlm, tmp_path)  # the feature cache off: only the kept runs remember
    req = parse_request({"messages": video_message(str(video), "Q?")}, "m")
    profile = engine.request_profile(req)
    try:
        first, _ = asyncio.run(engine.prepare(str(video), req, profile))
        again, _ = asyncio.run(engine.prepare(str(video), req, profile))
        args = ["ffmpeg", "-y", "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=96x64:rate=10", "-t", "2"]
        subprocess.run([*args, "-pix_fmt", "yuv420p", str(video)], check=True, timeout=60)
        changed, _ = asyncio.run(engine.prepare(str(video), req, profile))
    finally:
        engine.close(5)
    assert not first.encoded.cache_hit and again.encoded.cache_hit, "a kept run is reported as a cache hit"
    assert again.encoded.features is first.encoded.features and again.encoded.vision_s == 0.0
    assert not changed.encoded.cache_hit and changed.encoded.features is not first.encoded.features
    assert len(engine.runs) == 2, "the changed file is another key"


def test_kept_runs_are_bounded_by_count_and_bytes():
    from scissor_cli.serve.engine import RunCache

    class Run:
        def __init__(self, n: int):
            self.n = n

        def nbytes(self) -> int:
            return self.n

    runs = RunCache(max_runs=2, max_bytes=100)
    for key in "abc":
        runs.put((key,), Run(10))
    assert ("a",) not in runs and ("b",) in runs and ("c",) in runs, "beyond max_runs the oldest goes"
    runs.get(("b",))
    runs.put(("d",), Run(10))
    assert ("c",) not in runs and ("b",) in runs, "the least recently used goes, not the least recently put"
    runs.put(("e",), Run(95))
    assert list(runs._runs) == [("e",)], "beyond max_bytes the oldest go until it fits"
    runs.put(("f",), Run(101))
    assert len(runs) == 0, "a run over the bound alone is not kept"


def test_a_configs_cache_dir_is_the_servers_feature_cache(tiny_vlm, media, tmp_path, monkeypatch):
    import asyncio

    from scissor_cli.config import UserConfig

    monkeypatch.delenv("SCISSOR_CACHE_DIR")
    engine = _engine(tiny_vlm, media / "allowed", config=UserConfig(path=None, cache_dir=str(tmp_path / "mine")),
                     cache_on=True)  # fmt: skip
    url = str(media / "allowed" / "clip.mp4")
    req = parse_request({"messages": video_message(url, "Q?")}, "m")
    try:
        asyncio.run(engine.prepare(url, req, engine.request_profile(req)))
    finally:
        engine.close(5)
    assert list((tmp_path / "mine").glob("*.safetensors")), "the features must be written to the config's cache_dir"
