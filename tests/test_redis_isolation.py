"""The suite never writes to a Redis it did not start or was not told to use."""

from __future__ import annotations

import os

import redis


def test_redis_fixture_is_a_server_the_suite_started(request, redis_url):
    explicit = os.environ.get("MOODWATCH_TEST_REDIS_URL")
    if explicit:
        assert redis_url == explicit  # the one it was told to use, and no other
        return
    assert ":6379/" not in redis_url, "the machine's Redis is not the suite's to write to"
    own = request.getfixturevalue("own_redis")
    client = redis.Redis.from_url(redis_url)
    try:
        # The server answering on this URL is the very process the suite started.
        assert client.info("server")["process_id"] == own.proc.pid
    finally:
        client.close()
