"""The Vercel AI SDK's default OpenAI provider works through the router: ``openai("gpt-4o")`` of
``@ai-sdk/openai`` calls the Responses API, whole (``generateText``) and streamed (``streamText``).

vercel_ai/run.mjs runs the SDK under Node.js and prints what it reported as one JSON line; the
exact versions are pinned in vercel_ai/package.json and its lock file, installed once per run
by ``npm ci`` into vercel_ai/node_modules. The expected answers are built from the mock's own
Responses code (api_router.mock.responses), not written down here.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from api_router.mock.responses import MOCK_INPUT_TOKENS, ResponsesEvents, responses_body
from tests.rawhttp import sse_events

SDK_DIR = Path(__file__).parent / "vercel_ai"
NPM_CI_TIMEOUT_S = 300.0
RUN_TIMEOUT_S = 60.0  # a run that hangs (a stream the SDK never sees end) fails here, not at pytest's limit
MODEL = "gpt-4o"
PAYLOAD = 9  # the mock's default characters per token

pytestmark = pytest.mark.skipif(
    shutil.which("node") is None or shutil.which("npm") is None,
    reason="node and npm are needed to run the Vercel AI SDK, and one of them is not on PATH",
)


@pytest.fixture(scope="module")
def sdk_dir() -> Path:
    """The AI SDK installed from the lock file, once for the module; a failed install fails."""
    done = subprocess.run(
        ["npm", "ci", "--no-audit", "--no-fund"],
        check=False,
        cwd=SDK_DIR,
        capture_output=True,
        text=True,
        timeout=NPM_CI_TIMEOUT_S,
        stdin=subprocess.DEVNULL,
    )
    if done.returncode != 0:
        pytest.fail(f"npm ci in {SDK_DIR} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return SDK_DIR


def run_sdk(sdk_dir: Path, router_url: str, plain: str = "", stream: str = "") -> dict[str, Any]:
    """Run vercel_ai/run.mjs: generateText with ``plain``, streamText with ``stream`` (empty: skipped)."""
    env = {**os.environ, "ROUTER_URL": router_url, "PLAIN_PROMPT": plain, "STREAM_PROMPT": stream}
    env.pop("OPENAI_BASE_URL", None)  # the script's baseURL is the router's, whatever the shell has
    done = subprocess.run(
        ["node", "run.mjs"],
        check=False,
        cwd=sdk_dir,
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, f"run.mjs failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def prompt(**mock: Any) -> str:
    # The AI SDK sends no unknown body fields, so the shape rides in the prompt text.
    return "hi MOCK" + json.dumps(mock)


def mock_text(tokens: int) -> str:
    """The text of the mock's whole Responses answer."""
    body = responses_body(MODEL, tokens, PAYLOAD, 0)
    text: str = body["output"][0]["content"][0]["text"]
    return text


def mock_deltas(tokens: int) -> list[str]:
    """The ``delta`` of each ``response.output_text.delta`` event the mock streams."""
    events = ResponsesEvents(MODEL, PAYLOAD, 0, tokens)
    return [json.loads(events.event(i).split(b"data: ", 1)[1])["delta"] for i in range(tokens)]


def sdk_requests(upstream: Any) -> list[tuple[str, str]]:
    """Method and path of each request the AI SDK's calls made upstream (found by its user agent)."""
    seen = []
    for request in upstream.requests():
        agent = dict((k.lower(), v) for k, v in request["headers"]).get("user-agent", "")
        # generateText sends "ai/<v> ai-sdk/provider-utils/<v> …", streamText "ai-sdk/openai/<v> ai-sdk/…"
        if "ai-sdk/provider-utils/" in agent:
            seen.append((request["method"], request["path"]))
    return seen


def test_generate_text_and_stream_text_through_the_router(sdk_dir, make_router, upstream):
    upstream.reset()
    router = make_router()
    result = run_sdk(sdk_dir, router.url, plain=prompt(tokens=3), stream=prompt(tokens=5))

    plain = result["plain"]
    assert plain["text"] == mock_text(3)
    assert plain["finishReason"] == "stop"
    assert plain["responseId"].startswith("resp_mock")
    usage = plain["usage"]
    assert (usage["inputTokens"], usage["outputTokens"]) == (MOCK_INPUT_TOKENS, 3)
    assert usage["totalTokens"] == MOCK_INPUT_TOKENS + 3

    streamed = result["stream"]
    assert streamed["deltas"] == mock_deltas(5)  # every delta, in order, none merged or lost
    assert streamed["text"] == mock_text(5)
    assert streamed["errors"] == [] and streamed["settleError"] is None
    assert streamed["finishReason"] == "stop"
    usage = streamed["usage"]  # read by the SDK from response.completed
    assert (usage["inputTokens"], usage["outputTokens"]) == (MOCK_INPUT_TOKENS, 5)

    # openai("gpt-4o") is the Responses API, not Chat Completions: both calls reached /v1/responses
    assert sdk_requests(upstream) == [("POST", "/v1/responses")] * 2


def test_a_stream_that_breaks_upstream_ends_in_an_sdk_error_not_a_hang(sdk_dir, make_router, upstream):
    upstream.reset()
    router = make_router({"retries": 0})
    result = run_sdk(sdk_dir, router.url, stream=prompt(tokens=50, die_after=2))
    streamed = result["stream"]
    assert streamed["deltas"] == mock_deltas(2)  # what came before the upstream died
    assert streamed["finishReason"] == "error"
    assert len(streamed["errors"]) == 1, streamed["errors"]
    assert sdk_requests(upstream) == [("POST", "/v1/responses")]


def test_the_sdk_reads_the_routers_stream_error_event_as_the_routers_error(sdk_dir, make_router):
    router = make_router({"retries": 0})
    body = {"model": MODEL, "input": "hi", "stream": True, "mock": {"tokens": 50, "die_after": 2}}
    last = sse_events(httpx.post(router.url + "/v1/responses", json=body, timeout=20).content)[-1]
    sent = json.loads(last.split("data: ", 1)[1])  # the router's own error event for this failure
    result = run_sdk(sdk_dir, router.url, stream=prompt(tokens=50, die_after=2))
    [error] = result["stream"]["errors"]
    assert (error["code"], error["message"]) == (sent["code"], sent["message"])
