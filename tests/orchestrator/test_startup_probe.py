"""The start-up probe of an OpenAI-compatible server retries, so a resume right after a kill starts.

A server still busy with the killed run's request answers ``GET /models``
late or with a 503; the probe waits and tries again, as calls do.
"""

from __future__ import annotations

import pytest

from tests.support.loopback import LoopbackServer, Reply
from tests.support.openai_server import MODELS
from testtime.errors import UserError
from testtime.models.openai import probe_server

LISTING = {"object": "list", "data": [{"id": "m", "object": "model", "owned_by": "vllm"}]}


def test_probe_retries_busy_and_failing_replies_then_reads_the_owner():
    with LoopbackServer() as srv:
        srv.push(MODELS, Reply(status=503, body={"error": {"message": "busy"}}),
                 Reply(status=200, body=LISTING, delay=2.0),  # longer than the probe's timeout
                 Reply(status=200, body=LISTING))
        assert probe_server(srv.url + "/v1", None, timeout=0.5) == "vllm"
        assert len(srv.requests_to(MODELS)) == 3


def test_probe_gives_up_after_its_attempts_with_a_user_error():
    with LoopbackServer() as srv:
        srv.push(MODELS, *[Reply(status=200, body=LISTING, delay=2.0)] * 2)
        with pytest.raises(UserError, match="cannot reach the OpenAI-compatible server"):
            probe_server(srv.url + "/v1", None, timeout=0.2, attempts=2)
        assert len(srv.requests_to(MODELS)) == 2


def test_probe_does_not_retry_a_server_that_answers():
    with LoopbackServer() as srv:
        srv.push(MODELS, Reply(status=404, body={}))
        assert probe_server(srv.url + "/v1", None) is None
        assert len(srv.requests_to(MODELS)) == 1
