"""Two import jobs of one user never write plays at the same time (README, Import: one job per user
writes at a time). Each job's pre-check reads the plays already archived, and the post-write merge
pairs an export row only with a polled play: two jobs that both pre-checked before either wrote
would each write a row for the same stream. The importer's queue runs two invocations at once, so
two uploads a moment apart (an Extended streaming history and an Account data export, the same ZIP
twice) meet on AWS: the second job waits for the first (its lease, then its user's lock).

moto, the in-process emulator and the real Importer, through the `world` of test_play_identity."""

from __future__ import annotations

from datetime import timedelta

import pytest

from playvault import clock
from playvault.imports import job as job_mod
from playvault.imports.job import Importer
from playvault.spotify import Budget
from playvault.store import imports, plays
from tests.unit import test_play_identity as identity
from tests.unit.helpers import ProcessKilled
from tests.unit.test_play_identity import account_row, extended_row

now, world = identity.now, identity.world  # its fixtures: the frozen clock, moto + emulator + importer

EXTENDED = "Streaming_History_Audio_2026_0.json"
ACCOUNT = "StreamingHistory_music_0.json"


def start(world, key: str, importer: Importer | None = None) -> job_mod.RunOutcome:
    size = world.s3.head_object(Bucket=world.bucket, Key=key)["ContentLength"]
    return (importer or world.importer(chunk_rows=10)).start(key, size, Budget.seconds(120))


def assert_each_stream_once(world, items: list[dict]) -> None:
    stored = world.stored()
    assert len(stored) == len(items), [(p.played_at, p.source, p.import_ref) for p in stored]
    assert all(p.source == plays.SOURCE_EXPORT and p.ms_played == 180_000 for p in stored)


def lock_item(user_id: str = "alice") -> imports.ImportModel | None:
    try:
        return imports.ImportModel.get(user_id, imports.LOCK_KEY, consistent_read=True)
    except imports.ImportModel.DoesNotExist:
        return None


def two_uploads_of_four_plays(world):
    """Four plays, exported twice (Extended streaming history, then Account data), both uploaded."""
    items = [world.play(60 - 5 * k) for k in range(4)]
    first_key = world.upload([extended_row(i) for i in items], EXTENDED)
    second_key = world.upload([account_row(i) for i in items], ACCOUNT)
    user_id, first_id = job_mod.job_for_key(first_key)
    return items, first_key, second_key, user_id, first_id, job_mod.job_for_key(second_key)[1]


@pytest.mark.parametrize("second_rows", ["extended", "account"])
def test_a_second_job_started_while_the_first_pre_checked_waits_and_matches_every_row(world, monkeypatch,
                                                                                        second_rows):
    """The second upload's job starts between the first job's pre-check and its writes (the other
    concurrent invocation): it writes nothing and waits; run when the first is done, its pre-check
    sees the first job's rows and every row is a duplicate."""
    world.sign_up()
    items = [world.play(60 - 5 * k) for k in range(4)]  # never polled: both exports hold them
    first_key = world.upload([extended_row(i) for i in items], EXTENDED)
    second_key = (world.upload([extended_row(i) for i in items], EXTENDED) if second_rows == "extended"
                  else world.upload([account_row(i) for i in items], ACCOUNT))
    real_existing = Importer._existing
    second: list[job_mod.RunOutcome] = []

    def pre_check_then_the_other_job(self, user_id, rows, needs_names):
        found = real_existing(self, user_id, rows, needs_names)
        monkeypatch.setattr(Importer, "_existing", real_existing)  # once: the other job's pre-check is plain
        second.append(start(world, second_key))  # the other invocation, before this one writes
        return found

    monkeypatch.setattr(Importer, "_existing", pre_check_then_the_other_job)
    assert start(world, first_key).status == job_mod.DONE
    monkeypatch.setattr(Importer, "_existing", real_existing)

    user_id, second_id = job_mod.job_for_key(second_key)
    waiting = imports.get(user_id, second_id)
    if second[0].status != job_mod.DONE:  # it waited: the queue delivers it again
        assert world.importer(chunk_rows=10).run(user_id, second_id, Budget.seconds(120)).status == job_mod.DONE
    assert_each_stream_once(world, items)
    first_job, second_job = imports.get(*job_mod.job_for_key(first_key)), imports.get(user_id, second_id)
    assert (first_job.plays_added, first_job.duplicates) == (4, 0)
    assert (second_job.state, second_job.plays_added, second_job.duplicates) == (imports.DONE, 0, 4)

    # It waited, unharmed: queued, no error, nothing read; sent on through the queue, delayed.
    assert second[0].status == job_mod.WAITING, second[0]
    assert waiting.state == imports.QUEUED and waiting.error is None and not waiting.rows_read
    continued = [c for c in world.continued if c[1] == second_id]
    assert len(continued) == 1 and 1 <= continued[0][2] <= job_mod.WAIT_POLL_S + 1, continued
    assert lock_item() is None  # each job released the lock with its lease
    assert_each_stream_once(world, items)


def test_a_waiting_job_waits_as_long_as_the_holder_runs_and_is_never_failed(world, monkeypatch):
    """The holder's invocations keep the lock (extended per chunk with the lease); the waiting job
    is sent on through the queue each time, stays queued, records no attempt, then ends done."""
    world.sign_up()
    items, first_key, second_key, user_id, first_id, second_id = two_uploads_of_four_plays(world)
    outcomes = []
    real_hold = imports.hold

    def the_other_job_tries_at_every_chunk(job, token, at, lease):
        real_hold(job, token, at, lease)
        if job.job_id == first_id:
            outcomes.append(start(world, second_key) if not outcomes
                            else world.importer(chunk_rows=1).run(user_id, second_id, Budget.seconds(60)))

    monkeypatch.setattr(imports, "hold", the_other_job_tries_at_every_chunk)
    assert start(world, first_key, world.importer(chunk_rows=1)).status == job_mod.DONE
    monkeypatch.setattr(imports, "hold", real_hold)

    assert len(outcomes) >= 4 and {o.status for o in outcomes} == {job_mod.WAITING}
    waiting = imports.get(user_id, second_id)
    assert waiting.state == imports.QUEUED and waiting.attempts is None and waiting.lease_token is None
    assert world.importer().run(user_id, second_id, Budget.seconds(60)).status == job_mod.DONE
    assert imports.get(user_id, second_id).duplicates == 4
    assert_each_stream_once(world, items)


def test_a_crashed_holders_lock_lapses_with_its_lease(world, monkeypatch, now):
    """The holder dies after writing a chunk, before counting it: the other job waits until the
    holder's lease (and lock) ends, then runs and recognises the rows written; the crashed job's
    retry counts its own rows once."""
    world.sign_up()
    items, first_key, second_key, user_id, first_id, second_id = two_uploads_of_four_plays(world)
    real_advance = imports.advance

    def killed_after_the_writes(job, token, progress, at):
        if progress.rows_read:
            raise ProcessKilled("Lambda timed out")
        return real_advance(job, token, progress, at)

    monkeypatch.setattr(imports, "advance", killed_after_the_writes)
    with pytest.raises(ProcessKilled):
        start(world, first_key)
    monkeypatch.setattr(imports, "advance", real_advance)
    lock = lock_item()
    assert lock is not None and lock.holder_job == first_id

    assert start(world, second_key).status == job_mod.WAITING  # the holder's lease is live
    clock.set_clock(lambda: now + timedelta(minutes=3))
    assert world.importer().run(user_id, second_id, Budget.seconds(60)).status == job_mod.WAITING
    clock.set_clock(lambda: now + timedelta(minutes=7))  # past the crashed holder's lease
    assert world.importer().run(user_id, second_id, Budget.seconds(60)).status == job_mod.DONE
    assert imports.get(user_id, second_id).duplicates == 4
    assert world.importer().run(user_id, first_id, Budget.seconds(60)).status == job_mod.DONE
    first_job = imports.get(user_id, first_id)
    assert (first_job.rows_read, first_job.plays_added, first_job.duplicates) == (4, 4, 0)
    assert_each_stream_once(world, items)
    assert lock_item() is None


def test_jobs_of_different_users_do_not_wait_for_each_other(world, monkeypatch):
    world.sign_up("alice")
    world.sign_up("bob")
    alice_items = [world.play(60 - 5 * k, "alice") for k in range(3)]
    bob_items = [world.play(60 - 5 * k, "bob") for k in range(3)]
    alice_key = world.upload([extended_row(i) for i in alice_items], EXTENDED, "alice")
    bob_key = world.upload([extended_row(i) for i in bob_items], EXTENDED, "bob")
    real_existing = Importer._existing
    bob: list[job_mod.RunOutcome] = []

    def pre_check_then_bobs_job(self, user_id, rows, needs_names):
        monkeypatch.setattr(Importer, "_existing", real_existing)  # once
        bob.append(start(world, bob_key))
        return real_existing(self, user_id, rows, needs_names)

    monkeypatch.setattr(Importer, "_existing", pre_check_then_bobs_job)
    assert start(world, alice_key).status == job_mod.DONE
    assert bob[0].status == job_mod.DONE
    assert len(world.stored("alice")) == 3 and len(world.stored("bob")) == 3


def test_a_holder_whose_lock_lapsed_and_was_taken_writes_nothing_more_and_waits(world, monkeypatch, now):
    """A holder stalled past its lease (the lock lapsed) while another job took the lock, ran and
    ended: at its next chunk the holder finds the lock not its own, writes nothing, gives its job's
    lease back and waits; continued, it matches the other job's rows."""
    world.sign_up()
    items, first_key, second_key, user_id, first_id, second_id = two_uploads_of_four_plays(world)
    real_hold = imports.hold
    holds = []

    def stalled_after_the_first_chunk(job, token, at, lease):
        if job.job_id == first_id:
            holds.append(at)
            if len(holds) == 2:  # the first chunk is counted; the holder stalls past its lease
                clock.set_clock(lambda: now + timedelta(minutes=7))
                assert start(world, second_key).status == job_mod.DONE
        return real_hold(job, token, clock.now(), lease)

    monkeypatch.setattr(imports, "hold", stalled_after_the_first_chunk)
    outcome = start(world, first_key, world.importer(chunk_rows=1))
    monkeypatch.setattr(imports, "hold", real_hold)

    assert outcome.status == job_mod.WAITING and outcome.chunks == 1, outcome
    stalled = imports.get(user_id, first_id)
    assert stalled.state == imports.RUNNING and stalled.lease_token is None and stalled.rows_read == 1
    assert (imports.get(user_id, second_id).plays_added, imports.get(user_id, second_id).duplicates) == (3, 1)
    assert world.importer(chunk_rows=1).run(user_id, first_id, Budget.seconds(60)).status == job_mod.DONE
    first_job = imports.get(user_id, first_id)
    assert (first_job.rows_read, first_job.plays_added, first_job.duplicates) == (4, 1, 3)
    assert_each_stream_once(world, items)


def test_deleting_the_users_imports_removes_a_crashed_holders_lock(world, monkeypatch):
    world.sign_up()
    key = world.upload([extended_row(world.play(30))], EXTENDED)

    def killed(*args):
        raise ProcessKilled("Lambda timed out")

    monkeypatch.setattr(plays, "write_rows", killed)
    with pytest.raises(ProcessKilled):
        start(world, key)
    assert lock_item() is not None
    assert imports.delete_for_user("alice") == 1
    assert list(imports.ImportModel.query("alice", consistent_read=True)) == []
