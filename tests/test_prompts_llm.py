"""gdlab.prompts.llm: the OpenAI-compatible backend against local servers (well-behaved, dripping,
failing, rejecting a field), a tiny local HF model, the client's deadline / retries / failure
counts, the on-disk cache (concurrent writers, corrupt entries, no empty replies, keys without
the host), and parsing of malformed replies. No network beyond 127.0.0.1 is used."""
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
from hypothesis import given, settings, strategies as st

from gdlab.prompts import llm


def _completion(text, model="m"):
    return json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": model,
                       "choices": [{"index": 0, "finish_reason": "stop",
                                    "message": {"role": "assistant", "content": text}}]}).encode()


class _Server:
    """An HTTP server on 127.0.0.1 whose handler is ``respond(handler, body) -> None``; it records requests."""

    def __init__(self, respond):
        self.requests, outer = [], self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append((self.path, body))
                respond(self, body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self):
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def _send(handler, status, payload: bytes):
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(payload)))
    handler.end_headers()
    handler.wfile.write(payload)


def _scripted(replies):
    """Replies in order: a string is a 200 completion, an int an empty reply with that status."""
    replies = list(replies)

    def respond(handler, body):
        r = replies.pop(0) if replies else ""
        if isinstance(r, int):
            _send(handler, r, b'{"error": {"message": "server error"}}')
        else:
            _send(handler, 200, _completion(r, body["model"]))
    return respond


MESSAGES = [{"role": "user", "content": "improve this prompt"}]


def test_openai_backend_and_cache_replay(tmp_path):
    with _Server(_scripted(["a <START>better prompt<END> b", "<START>other<END>"])) as server:
        chat = llm.ChatClient(llm.OpenAIChat(model="test-model", base_url=server.base_url, api_key="k"),
                              llm.ReplyCache(tmp_path))
        first = chat.chat(MESSAGES, temperature=0.5, max_tokens=20, seed=3)
        again = chat.chat(MESSAGES, temperature=0.5, max_tokens=20, seed=3)
        other = chat.chat(MESSAGES, temperature=0.5, max_tokens=20, seed=4)
    assert llm.parse_tagged(first).items == ["better prompt"]
    assert not first.cached and again.cached and again.text == first.text
    assert other.text == "<START>other<END>"
    assert len(server.requests) == 2 and server.requests[0][0] == "/v1/chat/completions"
    body = server.requests[0][1]
    assert body["model"] == "test-model" and body["seed"] == 3 and body["max_tokens"] == 20
    assert chat.calls == 2 and chat.cache_hits == 1 and "no failures" in chat.report()


def test_cache_keys_have_no_host_and_replay_against_another_server(tmp_path):
    with _Server(_scripted(["<START>from host A<END>"])) as a:
        llm.ChatClient(llm.OpenAIChat(model="same", base_url=a.base_url), llm.ReplyCache(tmp_path)).chat(MESSAGES)
    with _Server(_scripted(["never asked"])) as b:
        chat = llm.ChatClient(llm.OpenAIChat(model="same", base_url=b.base_url), llm.ReplyCache(tmp_path))
        reply = chat.chat(MESSAGES)
    assert reply.cached and reply.text == "<START>from host A<END>" and b.requests == []
    assert llm.OpenAIChat(model="same", base_url=a.base_url).name == "openai:same"


def test_a_dripping_server_cannot_hold_a_call_past_its_deadline(tmp_path):
    """Headers at once, then the body one byte every 0.2 s for 20 s: the call ends at its deadline."""
    stop = threading.Event()

    def drip(handler, body):
        payload = _completion("x" * 100)
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        for byte in payload:
            if stop.wait(0.2):
                return
            try:
                handler.wfile.write(bytes([byte]))
                handler.wfile.flush()
            except OSError:
                return

    with _Server(drip) as server:
        chat = llm.ChatClient(llm.OpenAIChat(model="m", base_url=server.base_url, timeout=30), deadline_s=1.5,
                              retries=2)
        start = time.monotonic()
        reply = chat.chat(MESSAGES)
        took = time.monotonic() - start
        stop.set()
    assert reply.error and reply.error.startswith("deadline") and took < 4.0
    assert chat.events["deadline"] == 1 and "1 deadline" in chat.report()


def test_a_silent_server_is_cut_at_the_deadline():
    hold = threading.Event()

    def silent(handler, body):
        hold.wait(10)

    with _Server(silent) as server:
        chat = llm.ChatClient(llm.OpenAIChat(model="m", base_url=server.base_url, timeout=30), deadline_s=1.0)
        start = time.monotonic()
        reply = chat.chat(MESSAGES)
        hold.set()
    assert reply.error and time.monotonic() - start < 3.0


@pytest.mark.parametrize("field, message, expect", [
    ("seed", "Unrecognized request argument supplied: seed", "dropped"),
    ("max_tokens", "Unsupported parameter: 'max_tokens' is not supported with this model. "
                   "Use 'max_completion_tokens' instead.", "renamed to max_completion_tokens"),
])
def test_an_endpoint_that_rejects_a_field_is_handled(field, message, expect):
    def strict(handler, body):
        if field in body:
            _send(handler, 400, json.dumps({"error": {"message": message, "type": "invalid_request_error"}}).encode())
        else:
            _send(handler, 200, _completion("<START>ok<END>"))

    with _Server(strict) as server:
        backend = llm.OpenAIChat(model="m", base_url=server.base_url)
        chat = llm.ChatClient(backend)
        replies = [chat.chat(MESSAGES, max_tokens=30, seed=i) for i in range(3)]
    assert all(r.text == "<START>ok<END>" and not r.error for r in replies)
    assert backend.adjusted == {field: expect}
    assert len(server.requests) == 4            # one rejected request, then every call succeeds at once
    last = server.requests[-1][1]
    assert field not in last and (field != "max_tokens" or last["max_completion_tokens"] == 30)
    assert f"field {field} {expect}" in chat.report()


def test_retries_with_backoff_then_success_and_bounded_failure():
    with _Server(_scripted([500, 503, "<START>third time<END>"])) as server:
        chat = llm.ChatClient(llm.OpenAIChat(model="m", base_url=server.base_url), retries=2, backoff_s=0.01)
        reply = chat.chat(MESSAGES)
    assert reply.text == "<START>third time<END>" and chat.events["retried"] == 2 and chat.calls == 3
    with _Server(_scripted([500] * 10)) as server:
        chat = llm.ChatClient(llm.OpenAIChat(model="m", base_url=server.base_url), retries=2, backoff_s=0.01)
        reply = chat.chat(MESSAGES)
    assert reply.error and len(server.requests) == 3 and chat.events["http_500"] == 1 and chat.failures
    with _Server(_scripted([400])) as server:   # a client error is not retried
        chat = llm.ChatClient(llm.OpenAIChat(model="m", base_url=server.base_url), retries=2, backoff_s=0.01)
        assert chat.chat(MESSAGES).error and len(server.requests) == 1


def test_connection_refused_is_a_counted_failure():
    sock = __import__("socket").socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()                                   # nothing listens there now
    chat = llm.ChatClient(llm.OpenAIChat(model="m", base_url=f"http://127.0.0.1:{port}/v1"), retries=1,
                          backoff_s=0.01)
    reply = chat.chat(MESSAGES)
    assert reply.error and chat.events["connection"] == 1 and chat.events["retried"] == 1


def test_reply_size_caps(tmp_path):
    with _Server(_scripted(["y" * 300_000])) as server:
        chat = llm.ChatClient(llm.OpenAIChat(model="m", base_url=server.base_url, max_reply_bytes=100_000))
        assert chat.chat(MESSAGES).error.startswith("too_large")
    chat = llm.ChatClient(_EchoBackend("z" * 5000), llm.ReplyCache(tmp_path), max_reply_chars=1000)
    reply = chat.chat(MESSAGES)
    assert len(reply.text) == 1000 and chat.events["cut"] == 1


@pytest.mark.parametrize("reply, status", [("no tags at all", "no_tags"), ("", "error"), ("   \n", "error"),
                                           ("<START>" + "x" * 5000 + "<END>", "too_long"),
                                           ("<START>unclosed", "no_tags")])
def test_malformed_replies_are_handled(tmp_path, reply, status):
    with _Server(_scripted([reply])) as server:
        chat = llm.ChatClient(llm.OpenAIChat(model="m", base_url=server.base_url), llm.ReplyCache(tmp_path))
        parsed = llm.parse_tagged(chat.chat(MESSAGES))
    assert parsed.status == status and parsed.items == [] and not parsed.ok


def test_empty_replies_and_failures_are_never_cached(tmp_path):
    backend = _EchoBackend("")
    chat = llm.ChatClient(backend, llm.ReplyCache(tmp_path))
    assert chat.chat(MESSAGES).error == "empty reply" and chat.events["empty"] == 1
    backend.text = "now something"
    assert chat.chat(MESSAGES).text == "now something" and backend.calls == 2   # the empty one was not replayed
    with _Server(_scripted([500])) as server:
        failing = llm.ChatClient(llm.OpenAIChat(model="m", base_url=server.base_url), llm.ReplyCache(tmp_path / "f"),
                                 retries=0)
        assert failing.chat(MESSAGES).error
    assert len(failing.cache) == 0


def test_concurrent_writers_of_one_key(tmp_path):
    """Eight threads write the same key at once (the old cache shared one .tmp name and crashed)."""
    errors, replies = [], []
    barrier = threading.Barrier(8)

    def work():
        chat = llm.ChatClient(_EchoBackend("same reply", delay=0.01), llm.ReplyCache(tmp_path))
        barrier.wait()
        try:
            replies.append(chat.chat(MESSAGES).text)
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and replies == ["same reply"] * 8
    cache = llm.ReplyCache(tmp_path)
    assert len(cache) == 1 and cache.get(llm.request_key("echo", MESSAGES, 0.0, 512, 0)) == "same reply"


@pytest.mark.parametrize("raw", ['{"reply": "trunc', "not json", '{"request": {}}', '{"reply": ""}', "null"])
def test_an_unreadable_entry_is_a_miss(tmp_path, raw):
    key = llm.request_key("echo", MESSAGES, 0.0, 512, 0)
    cache = llm.ReplyCache(tmp_path)
    cache._cache.set(key, raw)
    backend = _EchoBackend("fresh")
    chat = llm.ChatClient(backend, cache)
    reply = chat.chat(MESSAGES)
    assert reply.text == "fresh" and not reply.cached and backend.calls == 1
    assert chat.chat(MESSAGES).cached                       # the bad entry was replaced


def test_local_models_are_keyed_by_their_weights(tmp_path):
    for folder, payload in (("a/model", b"weights-1"), ("b/model", b"weights-1"), ("c/model", b"weights-2")):
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "model.safetensors").write_bytes(payload)
    same1, same2, other = (llm.weights_digest(tmp_path / f) for f in ("a/model", "b/model", "c/model"))
    assert same1 == same2 != other          # same folder name "model", different weights: different keys


@settings(max_examples=30, deadline=None)
@given(st.lists(st.text(alphabet=st.characters(blacklist_characters="<>", blacklist_categories=("Cs",)),
                        min_size=1, max_size=40).filter(lambda s: s.strip()), min_size=1, max_size=5))
def test_parse_recovers_tagged_items(items):
    text = "noise " + " filler ".join(f"<START>{i}<END>" for i in items)
    assert llm.parse_tagged(text).items == [i.strip() for i in items]


def test_request_key_is_stable_and_sensitive():
    k = llm.request_key("b", MESSAGES, 0.0, 10, 0)
    assert k == llm.request_key("b", [dict(reversed(list(MESSAGES[0].items())))], 0.0, 10, 0)
    assert k != llm.request_key("b", MESSAGES, 0.0, 10, 1)
    with pytest.raises(TypeError, match="messages"):
        llm.request_key("b", "not a list", 0.0, 10, 0)


def test_hf_backend_with_a_tiny_local_model(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    words = ["<unk>", "<eos>", "user:", "assistant:", "improve", "this", "prompt", "<START>", "<END>", "good", "bad"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>", pad_token="<eos>")
    fast.save_pretrained(tmp_path / "tiny")
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(words), n_positions=64, n_embd=16, n_layer=1, n_head=2)) \
        .save_pretrained(tmp_path / "tiny")
    chat = llm.ChatClient(llm.HFCausalLM(tmp_path / "tiny"), llm.ReplyCache(tmp_path / "cache"))
    a = chat.chat(MESSAGES, temperature=0.0, max_tokens=6)
    b = chat.chat(MESSAGES, temperature=0.0, max_tokens=6)
    s1 = chat.chat(MESSAGES, temperature=1.0, max_tokens=6, seed=1)
    assert (b.cached and b.text == a.text) or a.error == "empty reply"
    assert llm.parse_tagged(s1).status in {"ok", "no_tags", "error", "too_long"}
    fresh = llm.HFCausalLM(tmp_path / "tiny")
    assert fresh.chat(MESSAGES, temperature=1.0, max_tokens=6, seed=1) == (s1.text or "")  # seeded sampling replays
    assert fresh.name.startswith("hf:") and fresh.name == llm.HFCausalLM(tmp_path / "tiny").name


def test_llm_from_env(monkeypatch, tmp_path):
    for var in ("GDLAB_LLM_BASE_URL", "GDLAB_LLM_MODEL", "GDLAB_LLM_HF_MODEL"):
        monkeypatch.delenv(var, raising=False)
    assert llm.llm_from_env(tmp_path) is None
    monkeypatch.setenv("GDLAB_LLM_MODEL", "m")
    monkeypatch.setenv("GDLAB_LLM_BASE_URL", "http://127.0.0.1:9/v1")
    chat = llm.llm_from_env(tmp_path)
    assert chat.backend.model == "m" and chat.backend.base_url == "http://127.0.0.1:9/v1"
    with pytest.raises(ValueError, match="model"):
        monkeypatch.delenv("GDLAB_LLM_MODEL")
        llm.OpenAIChat(base_url="http://127.0.0.1:9/v1")
    with pytest.raises(ValueError, match="base_url"):
        llm.OpenAIChat(model="m", base_url="ftp://x")


def test_default_cache_dir_is_under_the_ignored_build_folder(tmp_path, monkeypatch):
    (tmp_path / "pyproject.toml").write_text("")
    (tmp_path / "book").mkdir()
    monkeypatch.delenv("GDLAB_LLM_CACHE", raising=False)
    assert llm.default_cache_dir(tmp_path / "book") == tmp_path / "_build" / "llm-cache"
    monkeypatch.chdir(tmp_path / "book")
    assert llm.ReplyCache().directory == tmp_path / "_build" / "llm-cache"
    monkeypatch.setenv("GDLAB_LLM_CACHE", str(tmp_path / "elsewhere"))
    assert llm.default_cache_dir() == tmp_path / "elsewhere"
    assert llm.ReplyCache(tmp_path / "explicit").directory == tmp_path / "explicit"


class _EchoBackend:
    name = "echo"

    def __init__(self, text, delay=0.0):
        self.text, self.delay, self.calls = text, delay, 0

    def chat(self, messages, *, temperature, max_tokens, seed):
        self.calls += 1
        time.sleep(self.delay)
        return self.text
