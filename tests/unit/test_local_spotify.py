"""The local run's Spotify wrapper (playvault_local.spotify.LocalSpotify): a play counts as exposed
only when Spotify's answer reached a client that was still waiting for it.

Why: the run's report calls a play lost when it was exposed and never archived. Under a loaded
machine the emulator can answer recently-played after the worker's read timeout (0.6 s in chaos
runs); the worker has given up (a NETWORK failure), yet the emulator had marked the window
exposed, so plays nobody received were reported lost (a 103-play "loss" in one loaded chaos run)."""

from __future__ import annotations

from datetime import timedelta

import pytest
import requests

from playvault_local.spotify import LocalSpotify
from spotify_emulator import EmulatorState
from tests.unit import test_spotify_emulator as emulator_tests
from tests.unit.test_spotify_emulator import RP, T0, api, sign_in

clock, state = emulator_tests.clock, emulator_tests.state  # the emulator tests' fixtures: alice, signed up

@pytest.fixture
def server(state: EmulatorState):
    """The emulator's own test state (alice signed up), with 5 plays, behind the local run's wrapper."""
    for i in range(5):
        state.add_play("alice", T0 - timedelta(minutes=4 * (i + 1)))
    srv = LocalSpotify(state).start()
    try:
        yield srv
    finally:
        srv.stop()


def test_an_answer_received_exposes_the_window(state, server):
    token = sign_in(server)["access_token"]
    answer = api(server, token)
    assert answer.status_code == 200 and len(answer.json()["items"]) == 5
    assert len(state.exposed_play_ms("alice")) == 5
    assert server.answers_not_received == 0


def test_an_answer_the_client_gave_up_on_exposes_nothing(state, server):
    token = sign_in(server)["access_token"]
    state.faults.latency_ms = 600
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.get(f"{server.api_url}{RP}", headers={"Authorization": f"Bearer {token}"}, timeout=(1, 0.2))
    assert server.wait_idle()  # the emulator has answered by now, to nobody
    assert state.exposed_play_ms("alice") == set()
    assert server.answers_not_received == 1
    state.faults.latency_ms = 0
    assert api(server, token).status_code == 200
    assert len(state.exposed_play_ms("alice")) == 5
