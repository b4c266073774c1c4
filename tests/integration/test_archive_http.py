"""Archiving over real HTTP: moto_server for AWS (through AWS_ENDPOINT_URL) and the Spotify emulator
as its own process. Several users sign in, listen for hours of emulator time, and are archived as
the clock moves; what is stored must equal what Spotify ever showed (ground truth ∩ exposed)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from playvault import archive, clock
from playvault.crypto import REFRESH_TOKEN
from playvault.spotify import Budget
from playvault.store import plays, users
from playvault_local.provision import DEV_CLIENT_ID, DEV_CLIENT_SECRET
from spotify_emulator.client import EmulatorControl
from tests.conftest import REDIRECT_URI, stack_on_server
from tests.unit.helpers import make_archiver, make_cipher, make_spotify, make_user, open_token, sign_in

HOUR = 3600


@pytest.fixture
def http_stack(moto_reset, emulator_process, monkeypatch):
    with stack_on_server(moto_reset, emulator_process, monkeypatch) as stack:
        yield stack


@pytest.fixture
def control(emulator_process) -> EmulatorControl:
    ctl = EmulatorControl(emulator_process)
    ctl.register_client(DEV_CLIENT_ID, DEV_CLIENT_SECRET, [REDIRECT_URI])
    ctl.faults(latency_ms=0, error_5xx_rate=0, rate_429_rate=0, timeout_rate=0, expire_token_rate=0)
    return ctl


def follow_emulator_clock(control: EmulatorControl) -> None:
    """The domain clock runs at the emulator's (real time + the emulator's offset)."""
    offset = control.now() - datetime.now(UTC)
    clock.set_clock(lambda: datetime.now(UTC) + offset)


def stored(user_id: str) -> dict[int, str]:
    return {int(p.played_at_ms): p.track_id for p in plays.all_plays(user_id)}


def test_archived_plays_equal_what_spotify_showed(http_stack, control, emulator_process):
    run = uuid.uuid4().hex[:8]
    # plays per hour: light listeners stay inside the 50-play window between two polls; the heavy
    # one overflows it during the 2-hour pause below, so Spotify loses plays nobody could archive.
    listeners = {f"light-a-{run}": 10, f"light-b-{run}": 12, f"local-{run}": 10, f"heavy-{run}": 45}
    start = control.now()
    follow_emulator_clock(control)
    archiver = make_archiver(http_stack, emulator_process, sleep=lambda s: None)
    cipher = make_cipher(http_stack)
    signed_in: dict[str, str] = {}
    for user_id, rate in listeners.items():
        control.add_user(user_id, rotate_refresh_tokens=user_id.startswith("light-b"))
        refresh_token = signed_in[user_id] = sign_in(emulator_process, user_id)
        make_user(user_id, refresh_token, cipher)
        share = 0.5 if user_id.startswith("local") else 0.05
        assert control.listen(user_id, start - timedelta(hours=1), start + timedelta(hours=5), rate,
                              local_share=share, whole_second_share=0.4) > 0

    results: dict[str, list[archive.ArchiveResult]] = {u: [] for u in listeners}
    for step_hours in (0, 1, 1, 2, 1, 1):  # polls at +0, +1, +2, +4, +5, +6 h
        if step_hours:
            control.advance_clock(step_hours * HOUR)
            follow_emulator_clock(control)
        for user_id in listeners:
            results[user_id].append(archiver.archive_user(user_id, Budget.seconds(60)))

    for user_id in listeners:
        assert [r.status for r in results[user_id]] == [archive.SUCCESS] * 6, results[user_id]
        truth = {t["played_at_ms"]: t for t in control.truth(user_id)}
        exposed = control.exposed(user_id)
        visible = {ms: t for ms, t in truth.items() if ms in exposed}
        archived = stored(user_id)
        assert set(archived) == set(visible), user_id
        for ms, track_id in archived.items():
            if visible[ms]["is_local"]:
                assert track_id.startswith("local:")
            else:
                assert track_id == visible[ms]["track_id"]
        assert sum(r.plays_archived for r in results[user_id]) == len(archived)
        user = users.get(user_id)
        assert user is not None and user.cursor_ms == max(truth)
        assert user.plays_archived == len(archived)

    heavy = f"heavy-{run}"
    lost = set(t["played_at_ms"] for t in control.truth(heavy)) - set(stored(heavy))
    assert lost and any(r.gap_detected for r in results[heavy])
    assert users.get(heavy).gaps_detected >= 1
    for user_id in listeners:
        if user_id != heavy:
            assert len(control.truth(user_id)) == len(stored(user_id))  # nothing lost
            assert not any(r.gap_detected for r in results[user_id])
    # the rotating user's stored refresh token is the live one; the others keep their first one
    for user_id in listeners:
        kept = open_token(cipher, users.get(user_id), REFRESH_TOKEN)
        assert (kept != signed_in[user_id]) == user_id.startswith("light-b")
        assert make_spotify(emulator_process).refresh(kept, Budget.seconds(10)).access_token
