"""The review page answers only requests addressed to it: a Host header that names another
host (a page whose name was re-pointed at this machine, DNS rebinding) gets 400."""

from __future__ import annotations

import http.client
import subprocess
import sys

import pytest
from fastapi.testclient import TestClient

from db.migrate import upgrade
from moodwatch.settings import Settings
from tests.procs import ROOT, free_port, service_env, stop, wait_for
from web.app import create_app

PORT = 8088


@pytest.fixture
def settings(tmp_path) -> Settings:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    upgrade(url)
    return Settings(data_dir=tmp_path / "d", model_dir=tmp_path / "models", database_url=url,
                    broker_url="redis://127.0.0.1:1/0", web_allowed_hosts=" Photos.LAN, moodwatch.example ")


def _codes(settings: Settings, bind: str, hosts: list[str], token: str | None = None,
           path: str = "/api/stats", send_token: bool = True) -> dict[str, int]:
    headers = {"Authorization": f"Bearer {token}"} if token and send_token else {}
    with TestClient(create_app(settings, token=token, host=bind)) as client:
        return {h: client.get(path, headers={**headers, "Host": h}).status_code for h in hosts}


ATTACKS = ["attacker.example", f"attacker.example:{PORT}", "127.0.0.1.attacker.example",
           f"127.0.0.1@attacker.example:{PORT}", "localhost.attacker.example", "photos.lan.evil",
           "[::ffff:7f00:1", "", f"127.0.0.1:{PORT}/x"]


def test_loopback_bind_answers_its_address_localhost_and_configured_names(settings):
    ok = ["127.0.0.1", f"127.0.0.1:{PORT}", "localhost", f"LocalHost:{PORT}", "[::1]",
          f"photos.lan:{PORT}", "moodwatch.example"]
    codes = _codes(settings, "127.0.0.1", ok + ATTACKS)
    assert {h: codes[h] for h in ok} == dict.fromkeys(ok, 200)
    assert {h: codes[h] for h in ATTACKS} == dict.fromkeys(ATTACKS, 400)


def test_every_route_is_guarded(settings):
    for path in ("/", "/api/results.csv", "/api/results", "/results/1/image", "/review"):
        assert _codes(settings, "127.0.0.1", ["attacker.example"], path=path) == {"attacker.example": 400}


def test_ipv6_loopback_bind(settings):
    codes = _codes(settings, "::1", [f"[::1]:{PORT}", "localhost", "attacker.example"])
    assert codes == {f"[::1]:{PORT}": 200, "localhost": 200, "attacker.example": 400}


def test_address_bind_answers_that_address_only(settings):
    token = "t" * 20
    codes = _codes(settings, "192.168.1.20", [f"192.168.1.20:{PORT}", "localhost", "10.0.0.1",
                                              "photos.lan", "attacker.example"], token=token)
    assert codes == {f"192.168.1.20:{PORT}": 200, "localhost": 400, "10.0.0.1": 400, "photos.lan": 200,
                     "attacker.example": 400}


def test_wildcard_bind_answers_addresses_and_names_but_no_other_name(settings):
    # Any address of the machine is the bound address; rebinding needs a name, never an address.
    token = "t" * 20
    codes = _codes(settings, "0.0.0.0", [f"192.168.1.20:{PORT}", f"[fe80::1]:{PORT}", "localhost",
                                         "photos.lan", "attacker.example"], token=token)
    assert codes == {f"192.168.1.20:{PORT}": 200, f"[fe80::1]:{PORT}": 200, "localhost": 200,
                     "photos.lan": 200, "attacker.example": 400}
    # The Host check comes first: a token does not make another name acceptable, nor the
    # right name a missing token.
    assert _codes(settings, "0.0.0.0", ["localhost", "attacker.example"], token=token,
                  send_token=False) == {"localhost": 401, "attacker.example": 400}


def _get(port: int, host: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/api/stats", headers={"Host": host})
        return conn.getresponse().status
    finally:
        conn.close()


@pytest.mark.slow
def test_real_server_refuses_a_foreign_host(tmp_path, settings):
    port = free_port()
    env = service_env(data_dir=settings.data_dir, model_dir=settings.model_dir,
                      database_url=settings.database, broker_url="redis://127.0.0.1:1/0")
    log = tmp_path / "web.log"
    proc = subprocess.Popen([sys.executable, "-m", "moodwatch_app.cli", "web", "--port", str(port)],
                            env=env, cwd=ROOT, stdout=open(log, "wb"), stderr=subprocess.STDOUT,  # noqa: SIM115
                            start_new_session=True)
    try:
        def up() -> bool:
            try:
                return _get(port, f"127.0.0.1:{port}") == 200
            except OSError:
                return False

        wait_for(up, 60, "moodwatch web", log)
        assert _get(port, f"localhost:{port}") == 200
        assert _get(port, "attacker.example") == 400
        assert _get(port, f"attacker.example:{port}") == 400
    finally:
        stop(proc)
