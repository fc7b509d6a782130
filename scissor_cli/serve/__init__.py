"""``scissor serve``: an OpenAI-compatible HTTP server that answers questions about videos, the model loaded once.

``POST /v1/chat/completions`` takes OpenAI's request with vLLM's ``video_url`` content parts and answers exactly what
``scissor ask --json`` answers for the same video, question and settings (greedy): the same ``pipeline.VideoRun``
runs the video (``resolve_profile``, the encoding, SCC, the answers of a ``generate``), and a conversation is
prompted the way ``scissor chat`` prompts it (the video once, in the first user turn; ``model.prompt_ids``).

Where the work runs:

* the event loop (uvicorn's thread) parses requests, checks them and streams answers; it never waits on a video
  or the model;
* a thread pool fetches (URLs, ``data:`` URLs), probes and decodes videos; a video whose features are in the
  feature cache is not decoded, and a video another request is decoding and encoding is not decoded again (the
  request waits for that encoding: single-flight);
* one model thread (torch is not re-entrant) runs, in arrival order, a video's vision tower + SCC or one batched
  ``generate`` for every waiting request that can share it (same history and generation settings, greedy, at most
  ``max_batch`` rows, at most one streamed row: ``generate`` streams its first row only).

Backpressure: at most ``max_queue`` requests are in flight (being prepared, waiting or generating); one more gets
503 at once. A streamed request whose client goes away is cancelled: dropped while it waits, and its generation
stopped at the next token (``should_stop`` flags its row alone; the batch's other rows go on).

fastapi and uvicorn are imported in ``run`` only (the ``serve`` extra).
"""

from __future__ import annotations

from scissor_cli.serve.app import ServerState, _stream, create_app, run
from scissor_cli.serve.engine import Engine, ModelWorker, Result, _Generate, completion_body, scissor_stats
from scissor_cli.serve.protocol import (
    INSTALL_HINT,
    REQUEST_FIELDS,
    STATUS,
    ChatRequest,
    Forbidden,
    NotFound,
    ServeOptions,
    TooLarge,
    Unauthorized,
    Unavailable,
    error_body,
    is_loopback,
    merge_flags,
    parse_request,
    validate_serve,
)
from scissor_cli.serve.videos import fetch_video, local_path

__all__ = [
    "ChatRequest",
    "Engine",
    "Forbidden",
    "INSTALL_HINT",
    "ModelWorker",
    "NotFound",
    "REQUEST_FIELDS",
    "Result",
    "STATUS",
    "ServeOptions",
    "ServerState",
    "TooLarge",
    "Unauthorized",
    "Unavailable",
    "_Generate",
    "_stream",
    "completion_body",
    "create_app",
    "error_body",
    "fetch_video",
    "is_loopback",
    "local_path",
    "merge_flags",
    "parse_request",
    "run",
    "scissor_stats",
    "validate_serve",
]
