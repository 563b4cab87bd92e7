"""LLM backends for APO's textual gradients, behind one interface, with a robust client and cache.

A backend has ``name`` (its identity in cache keys: the model, never the host it is served from)
and ``chat(messages, *, temperature, max_tokens, seed, deadline) -> str``; a backend that can
generate several replies at once (a local model) also has ``chat_batch``. Three backends:

- :class:`OpenAIChat`: any OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, llama.cpp's
  server, Ollama, ...) over plain HTTP from the standard library, so that every byte is read under
  the call's deadline. An endpoint that rejects a request field (``seed``, ``max_tokens``,
  ``temperature``) is detected from its 400 reply; the field is dropped (or ``max_tokens`` renamed
  to ``max_completion_tokens`` when the endpoint asks for it), the request is sent again, and the
  adjustment is remembered and reported instead of failing every later call;
- :class:`HFCausalLM`: a local Hugging Face causal LM directory through ``transformers``;
- :class:`gdlab.prompts.lm.LocalLM`: a local GGUF model (the chapter's SmolLM2-135M-Instruct).

:class:`ChatClient` wraps a backend: an overall deadline per call (retries included), bounded
retries with exponential backoff for transient failures, a cap on the reply's size, failures
counted by kind (:meth:`ChatClient.report`), and an optional on-disk :class:`ReplyCache`
(``diskcache``, safe for concurrent writers) that stores only non-empty replies and treats an
unreadable entry as a miss. :func:`parse_tagged` turns a reply into the items between <START>
and <END> and says plainly what went wrong when it cannot.
"""
from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import socket
import threading
import time
import urllib.parse
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, Sequence

from gdlab.runtime import check_float, check_int

__all__ = ["ChatBackend", "LLMError", "check_messages", "OpenAIChat", "HFCausalLM", "weights_digest",
           "request_key", "ReplyCache", "Reply", "ChatClient", "Parsed", "parse_tagged", "default_cache_dir",
           "llm_from_env"]

Message = dict  # {"role": "system" | "user" | "assistant", "content": str}


class ChatBackend(Protocol):
    name: str

    def chat(self, messages: Sequence[Message], *, temperature: float, max_tokens: int, seed: int) -> str: ...


class LLMError(RuntimeError):
    """A failed call; ``kind`` names the failure (counted by :class:`ChatClient`), ``retry`` says
    whether another attempt may succeed."""

    def __init__(self, kind: str, message: str, retry: bool = False):
        super().__init__(message)
        self.kind, self.retry = kind, retry


def check_messages(messages) -> list[dict]:
    """Validate a chat request: a non-empty list of {"role", "content"} dicts."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence) or not messages:
        raise TypeError(f"parameter 'messages': got {messages!r}; expected a non-empty list of role/content dicts")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise TypeError(f"parameter 'messages[{i}]': got {m!r}; expected {{'role': str, 'content': str}}")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


# ---------------------------------------------------------------------------- OpenAI-compatible HTTP
_FIELD_HINT = re.compile(r"\b(max_tokens|seed|temperature)\b")


class OpenAIChat:
    """An OpenAI-compatible chat-completions endpoint, read under a hard deadline.

    ``base_url``, ``model`` and the key come from the arguments or from ``GDLAB_LLM_BASE_URL``,
    ``GDLAB_LLM_MODEL`` and ``GDLAB_LLM_API_KEY`` / ``OPENAI_API_KEY``. A watchdog closes the
    socket when the deadline passes, so a server that sends its reply one byte at a time cannot
    hold a call longer than its deadline; replies over ``max_reply_bytes`` are abandoned.
    ``adjusted`` records the request fields the endpoint rejected and how they were changed.
    """

    def __init__(self, model: str | None = None, base_url: str | None = None, api_key: str | None = None,
                 timeout: float = 60.0, max_reply_bytes: int = 1_000_000):
        self.model = model or os.environ.get("GDLAB_LLM_MODEL")
        if not self.model:
            raise ValueError("parameter 'model': got None; pass a model name or set GDLAB_LLM_MODEL")
        self.base_url = (base_url or os.environ.get("GDLAB_LLM_BASE_URL") or "https://api.openai.com/v1").rstrip("/")
        url = urllib.parse.urlsplit(self.base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"parameter 'base_url': got {self.base_url!r}; expected http(s)://host[:port]/path")
        self._url = url
        self.api_key = api_key or os.environ.get("GDLAB_LLM_API_KEY") or os.environ.get("OPENAI_API_KEY") or "unused"
        self.timeout = check_float("timeout", timeout, min=0.0, open_min=True)
        self.max_reply_bytes = check_int("max_reply_bytes", max_reply_bytes, min=1)
        self.name = f"openai:{self.model}"          # no host: a cache replays against any server of this model
        self.adjusted: dict[str, str] = {}           # field -> "dropped" | "renamed to ..."

    def _payload(self, messages, temperature, max_tokens, seed) -> dict:
        body = {"model": self.model, "messages": check_messages(messages), "temperature": temperature,
                "max_tokens": max_tokens, "seed": seed}
        for name, how in self.adjusted.items():
            value = body.pop(name, None)
            if how.startswith("renamed to "):
                body[how.removeprefix("renamed to ")] = value
        return body

    def chat(self, messages, *, temperature: float = 0.0, max_tokens: int = 512, seed: int = 0,
             deadline: float | None = None) -> str:
        deadline = time.monotonic() + self.timeout if deadline is None else deadline
        for _ in range(4):   # at most one adjustment per rejectable field, then the request itself
            status, raw = self._post(self._payload(messages, temperature, max_tokens, seed), deadline)
            if status == 400 and self._adjust(raw):
                continue
            break
        if status != 200:
            text = raw[:300].decode("utf-8", errors="replace")
            raise LLMError(f"http_{status}", f"HTTP {status}: {text}", retry=status == 429 or status >= 500)
        try:
            data = json.loads(raw)
            content = data["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise LLMError("malformed", f"not a chat-completions reply ({type(e).__name__}): {raw[:200]!r}") from e
        if not isinstance(content, str):
            raise LLMError("malformed", f"reply content is {type(content).__name__}, not text")
        return content

    def _adjust(self, raw: bytes) -> bool:
        """If a 400 reply names a field we sent, change that field and say so (True); else False."""
        text = raw.decode("utf-8", errors="replace")
        for name in _FIELD_HINT.findall(text):
            if name in self.adjusted:
                continue
            if name == "max_tokens" and "max_completion_tokens" in text:
                self.adjusted[name] = "renamed to max_completion_tokens"
            else:
                self.adjusted[name] = "dropped"
            return True
        return False

    def _post(self, body: dict, deadline: float) -> tuple[int, bytes]:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise LLMError("deadline", "no time left for the request", retry=False)
        url = self._url
        cls = http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection
        conn = cls(url.hostname, url.port, timeout=min(remaining, self.timeout))
        expired, held = threading.Event(), []

        def watchdog():   # the deadline holds even against a server that drips bytes
            expired.set()
            for sock in held:   # the socket itself: a response that closes the connection detaches it from conn
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

        timer = threading.Timer(remaining, watchdog)
        timer.daemon = True
        timer.start()
        try:
            conn.connect()
            held.append(conn.sock)
            if expired.is_set():
                watchdog()
            payload = json.dumps(body).encode()
            conn.request("POST", url.path + "/chat/completions", body=payload,
                         headers={"Content-Type": "application/json", "Authorization": f"Bearer {self.api_key}"})
            resp = conn.getresponse()
            chunks, size = [], 0
            while True:
                block = resp.read1(65536)
                if not block:
                    break
                size += len(block)
                if size > self.max_reply_bytes:
                    raise LLMError("too_large", f"reply over {self.max_reply_bytes} bytes", retry=False)
                chunks.append(block)
            if expired.is_set():
                raise LLMError("deadline", "the deadline passed while reading the reply", retry=False)
            return resp.status, b"".join(chunks)
        except LLMError:
            raise
        except (OSError, http.client.HTTPException) as e:
            if expired.is_set():
                raise LLMError("deadline", "the deadline passed during the request", retry=False) from e
            kind = "timeout" if isinstance(e, (socket.timeout, TimeoutError)) else "connection"
            raise LLMError(kind, f"{type(e).__name__}: {e}", retry=True) from e
        finally:
            timer.cancel()
            conn.close()


# ---------------------------------------------------------------------------- a local HF model
class HFCausalLM:
    """A local Hugging Face causal LM (a directory, or a hub id already in the local cache).

    ``name`` is ``"hf:"`` + the SHA-256 of its weight files, so cache entries follow the weights,
    not the folder's name.
    """

    def __init__(self, model: str | os.PathLike, device: str = "cpu", local_files_only: bool = True):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(model), local_files_only=local_files_only)
        self.model = AutoModelForCausalLM.from_pretrained(str(model), local_files_only=local_files_only).to(device)
        self.model.eval()
        self.device = device
        self.name = "hf:" + weights_digest(model)

    def _prompt_ids(self, messages):
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                                      return_dict=True)["input_ids"]
        text = "\n".join(f"{m['role']}: {m['content']}" for m in messages) + "\nassistant:"
        return self.tokenizer(text, return_tensors="pt")["input_ids"]

    def chat(self, messages, *, temperature: float = 0.0, max_tokens: int = 512, seed: int = 0) -> str:
        import torch

        ids = self._prompt_ids(check_messages(messages)).to(self.device)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        kw = dict(do_sample=True, temperature=temperature) if temperature > 0 else dict(do_sample=False)
        with torch.random.fork_rng(devices=[]), torch.no_grad():  # sampling is seeded, the global RNG untouched
            torch.manual_seed(seed)
            out = self.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens,
                                      pad_token_id=pad, **kw)
        return self.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def weights_digest(folder: str | os.PathLike) -> str:
    """SHA-256 over the weight files of a model folder (names and bytes), or of the path when it has none."""
    from gdlab.prompts.lm import file_digest

    folder = Path(folder)
    files = sorted(p for p in folder.glob("*") if p.suffix in (".safetensors", ".bin", ".gguf", ".pt")) \
        if folder.is_dir() else []
    if not files:
        return hashlib.sha256(str(folder).encode()).hexdigest()
    h = hashlib.sha256()
    for p in files:
        h.update(p.name.encode() + b"\0" + file_digest(p).encode())
    return h.hexdigest()


# ---------------------------------------------------------------------------- cache and client
def request_key(backend_name: str, messages, temperature: float, max_tokens: int, seed: int, **extra) -> str:
    """Stable SHA-256 of the canonical JSON of a request (same request, same key, on any machine and host)."""
    payload = {"backend": backend_name, "messages": check_messages(messages), "temperature": float(temperature),
               "max_tokens": int(max_tokens), "seed": int(seed), **extra}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=True).encode()).hexdigest()


class ReplyCache:
    """Replies on disk, keyed by :func:`request_key`, in a ``diskcache.Cache`` (SQLite: atomic, safe for
    concurrent threads and processes). An entry that cannot be read or decoded is a miss (and removed)."""

    def __init__(self, directory: str | os.PathLike | None = None):
        import diskcache

        self.directory = Path(default_cache_dir() if directory is None else directory)
        self._cache = diskcache.Cache(str(self.directory))

    def get(self, key: str) -> str | None:
        try:
            raw = self._cache.get(key, default=None, retry=True)
            if raw is None:
                return None
            reply = json.loads(raw)["reply"]
            if isinstance(reply, str) and reply.strip():
                return reply
        except Exception:  # noqa: BLE001 - any unreadable entry is a miss
            pass
        try:
            self._cache.delete(key, retry=True)
        except Exception:  # noqa: BLE001
            pass
        return None

    def set(self, key: str, reply: str, request: dict) -> None:
        self._cache.set(key, json.dumps({"request": request, "reply": reply}), retry=True)

    def __len__(self) -> int:
        return len(self._cache)

    def close(self) -> None:
        self._cache.close()


@dataclass
class Reply:
    """A reply, whether it came from the cache, and the error when the call failed."""

    text: str
    cached: bool = False
    error: str | None = None


@dataclass
class ChatClient:
    """A backend with deadlines, bounded retries, a reply-size cap, failure counts and an optional cache.

    ``deadline_s`` bounds one call from its start, retries and backoff included; transient failures
    (connection errors, timeouts, HTTP 429 / 5xx) are retried at most ``retries`` times, waiting
    ``backoff_s``, then twice that, and so on. Replies longer than ``max_reply_chars`` are cut
    (counted as "cut"). With ``cache`` (a :class:`ReplyCache`), non-empty replies are stored and
    replayed; empty replies and failures never are.
    """

    backend: ChatBackend
    cache: ReplyCache | None = None
    deadline_s: float = 120.0
    retries: int = 2
    backoff_s: float = 0.5
    max_reply_chars: int = 20_000
    calls: int = 0
    cache_hits: int = 0
    events: Counter = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)

    def __post_init__(self):
        check_float("deadline_s", self.deadline_s, min=0.0, open_min=True)
        check_int("retries", self.retries, min=0)
        check_float("backoff_s", self.backoff_s, min=0.0)
        check_int("max_reply_chars", self.max_reply_chars, min=1)

    def _request(self, messages, temperature, max_tokens, seed) -> dict:
        return {"backend": self.backend.name, "messages": check_messages(messages), "temperature": temperature,
                "max_tokens": max_tokens, "seed": seed}

    def _finish(self, text, key, request) -> Reply:
        if not isinstance(text, str) or not text.strip():
            self.events["empty"] += 1
            return Reply("", error="empty reply")
        if len(text) > self.max_reply_chars:
            self.events["cut"] += 1
            text = text[:self.max_reply_chars]
        if self.cache is not None and key is not None:
            self.cache.set(key, text, request)
        return Reply(text)

    def _fail(self, kind: str, message: str) -> Reply:
        self.events[kind] += 1
        self.failures.append(f"{kind}: {message}")
        return Reply("", error=f"{kind}: {message}")

    def chat(self, messages, *, temperature: float = 0.0, max_tokens: int = 512, seed: int = 0) -> Reply:
        temperature = check_float("temperature", temperature, min=0.0, max=2.0)
        max_tokens = check_int("max_tokens", max_tokens, min=1)
        request = self._request(messages, temperature, max_tokens, seed)
        key = request_key(self.backend.name, messages, temperature, max_tokens, seed) if self.cache is not None else None
        if key is not None and (hit := self.cache.get(key)) is not None:
            self.cache_hits += 1
            return Reply(hit, cached=True)
        deadline = time.monotonic() + self.deadline_s
        for attempt in range(self.retries + 1):
            self.calls += 1
            try:
                kw = {"deadline": deadline} if isinstance(self.backend, OpenAIChat) else {}
                text = self.backend.chat(request["messages"], temperature=temperature, max_tokens=max_tokens,
                                         seed=seed, **kw)
            except LLMError as e:
                pause = self.backoff_s * 2 ** attempt
                if not e.retry or attempt == self.retries or time.monotonic() + pause >= deadline:
                    return self._fail(e.kind, str(e))
                self.events["retried"] += 1
                time.sleep(pause)
                continue
            except Exception as e:  # noqa: BLE001 - a model error becomes a counted, handled outcome
                return self._fail("error", f"{type(e).__name__}: {e}")
            return self._finish(text, key, request)
        return self._fail("error", "no attempt was made")  # pragma: no cover

    def chat_batch(self, batch: Sequence, *, temperature: float = 0.0, max_tokens: int = 512,
                   seed: int = 0) -> list[Reply]:
        """Replies to several conversations: generated together when the backend can (a local model),
        otherwise one call each (item i seeded with ``seed + i``). A batch's cache key includes the
        whole batch, since a batch's sampled replies depend on one another."""
        batch = [check_messages(m) for m in batch]
        if not hasattr(self.backend, "chat_batch"):
            return [self.chat(m, temperature=temperature, max_tokens=max_tokens, seed=seed + i)
                    for i, m in enumerate(batch)]
        if not batch:
            return []
        temperature = check_float("temperature", temperature, min=0.0, max=2.0)
        max_tokens = check_int("max_tokens", max_tokens, min=1)
        keys = [request_key(self.backend.name, m, temperature, max_tokens, seed, batch=batch, index=i)
                for i, m in enumerate(batch)] if self.cache is not None else [None] * len(batch)
        hits = [self.cache.get(k) if k else None for k in keys]
        if all(h is not None for h in hits):
            self.cache_hits += len(hits)
            return [Reply(h, cached=True) for h in hits]
        self.calls += 1
        try:
            texts = self.backend.chat_batch(batch, temperature=temperature, max_tokens=max_tokens, seed=seed)
        except Exception as e:  # noqa: BLE001
            return [self._fail("error", f"{type(e).__name__}: {e}") for _ in batch]
        return [self._finish(t, k, self._request(m, temperature, max_tokens, seed))
                for t, k, m in zip(texts, keys, batch)]

    def report(self) -> str:
        """One line: calls, cache hits, and every failure or adjustment by kind."""
        adjusted = getattr(self.backend, "adjusted", {})
        parts = [f"{self.calls} calls", f"{self.cache_hits} cache hits"]
        parts += [f"{n} {kind}" for kind, n in sorted(self.events.items())]
        parts += [f"field {k} {v}" for k, v in sorted(adjusted.items())]
        if not self.events:
            parts.append("no failures")
        return "LLM: " + ", ".join(parts)


# ---------------------------------------------------------------------------- parsing
@dataclass
class Parsed:
    """Items found in a reply, and ``status``: "ok", "empty", "no_tags", "too_long" or "error"."""

    items: list[str]
    status: str
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def parse_tagged(reply: Reply | str | None, start: str = "<START>", end: str = "<END>", *, max_chars: int = 20000,
                 max_item_chars: int = 1000, max_items: int = 16) -> Parsed:
    """Items between ``start`` and ``end`` tags (LMOps' ``parse_tagged_text``); never raises on malformed text.

    A reply longer than ``max_chars`` is cut (noted); items longer than ``max_item_chars`` are
    dropped (a runaway generation is not a prompt); at most ``max_items`` are kept.
    """
    if isinstance(reply, Reply):
        if reply.error:
            return Parsed([], "error", reply.error)
        reply = reply.text
    if not isinstance(reply, str) or not reply.strip():
        return Parsed([], "empty", "the reply was empty")
    note = ""
    if len(reply) > max_chars:
        reply, note = reply[:max_chars], f"reply cut to {max_chars} characters"
    found = re.findall(re.escape(start) + r"(.*?)" + re.escape(end), reply, flags=re.DOTALL)
    if not found:
        return Parsed([], "no_tags", (note + "; " if note else "") + f"no {start}...{end} pair in the reply")
    items = [f.strip() for f in found if f.strip() and len(f.strip()) <= max_item_chars][:max_items]
    if not items:
        return Parsed([], "too_long", f"every tagged item was empty or longer than {max_item_chars} characters")
    return Parsed(items, "ok", note)


def default_cache_dir(start: str | os.PathLike | None = None) -> Path:
    """Where replies are cached when no path is given: ``GDLAB_LLM_CACHE`` if set, else
    ``_build/llm-cache`` under the repository root (the nearest folder above ``start``, default the
    working directory, that holds ``pyproject.toml``; ``_build/`` is git-ignored), else under ``start``."""
    if os.environ.get("GDLAB_LLM_CACHE"):
        return Path(os.environ["GDLAB_LLM_CACHE"])
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "pyproject.toml").exists():
            return folder / "_build" / "llm-cache"
    return here / "_build" / "llm-cache"


def llm_from_env(cache_dir: str | os.PathLike | None = None) -> ChatClient | None:
    """A client for the LLM configured in the environment, or None.

    ``GDLAB_LLM_BASE_URL`` / ``GDLAB_LLM_MODEL`` select an OpenAI-compatible endpoint;
    ``GDLAB_LLM_HF_MODEL`` a local Hugging Face causal LM directory. Replies are cached under
    ``cache_dir``, by default :func:`default_cache_dir`.
    """
    if os.environ.get("GDLAB_LLM_HF_MODEL"):
        return ChatClient(HFCausalLM(os.environ["GDLAB_LLM_HF_MODEL"]), ReplyCache(cache_dir))
    if os.environ.get("GDLAB_LLM_MODEL") or os.environ.get("GDLAB_LLM_BASE_URL"):
        return ChatClient(OpenAIChat(), ReplyCache(cache_dir))
    return None
