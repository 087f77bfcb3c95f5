"""mooncake-admin without a cluster: its command line, its tables, that it reads the very
JSON that MasterState.stats() (the master's /stats) produces, and how drain follows progress."""
import random

import pytest

from mooncake_client import admin
from mooncake_client.client import DrainProgress
from mooncake_master.state import (TIER_DRAM, TIER_SSD, MasterConfig, MasterState,
                                   PlacementConfig, SegmentSpec)
from mooncake_proto.units import human_size

MiB = 1 << 20


def _parse(argv, env=None, monkeypatch=None):
    for name in admin.ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    for name, value in (env or {}).items():
        monkeypatch.setenv(name, value)
    parser = admin.build_parser()
    args = parser.parse_args(argv)
    admin._settle(args, parser)
    return args


def test_common_options_go_before_or_after_the_command(monkeypatch):
    before = _parse(["--json", "--master", "m:1", "stat"], monkeypatch=monkeypatch)
    after = _parse(["stat", "--json", "--master", "m:1"], monkeypatch=monkeypatch)
    for args in (before, after):
        assert (args.json, args.master, args.http, args.timeout) == (True, "m:1", "m:9003", 10.0)


def test_the_environment_fills_what_flags_do_not_say(monkeypatch):
    env = {"MOONCAKE_MASTER": "h1:5,h2:5", "MOONCAKE_MASTER_HTTP": "h1:80",
           "MOONCAKE_TOKEN": "t0k"}
    args = _parse(["ls", "p/"], env, monkeypatch)
    assert (args.master, args.http, args.token, args.prefix, args.limit) == \
        ("h1:5,h2:5", "h1:80", "t0k", "p/", 1000)
    args = _parse(["--token", "flag", "--http", "x:1", "ls"], env, monkeypatch)
    assert (args.token, args.http, args.prefix) == ("flag", "x:1", "")
    args = _parse(["ls"], {}, monkeypatch)
    assert (args.master, args.http, args.token) == (admin.DEFAULT_MASTER, "127.0.0.1:9003", "")


def test_a_token_file(tmp_path, monkeypatch):
    (tmp_path / "t").write_text(" secret-token\n")
    assert _parse(["--token-file", str(tmp_path / "t"), "ls"], monkeypatch=monkeypatch).token \
        == "secret-token"


@pytest.mark.parametrize("argv", [
    ["get", "k", "--json"],                      # stdout carries the bytes
    ["--token", "a", "--token-file", "f", "ls"],
    ["--timeout", "soon", "stat"],
    ["put", "k", "f", "--soft-pin", "--hard-pin"],
    ["put", "k", "f", "--replicas", "0"],
    ["ls", "--limit", "-1"],
    ["--token", "two words", "ls"],              # could not travel as a bearer token
    ["drain"],                                   # which worker?
    ["drain", "w", "--wait", "--cancel"],
    ["drain", "w", "--timeout", "soon"],
    [],
])
def test_bad_command_lines_exit_2(argv, monkeypatch, capsys):
    with pytest.raises(SystemExit) as info:
        _parse(argv, monkeypatch=monkeypatch)
    assert info.value.code == 2
    assert "mooncake-admin" in capsys.readouterr().err


def test_human_sizes_and_ages():
    assert [human_size(n) for n in (0, 1000, 1536, 64 * MiB, 3 * MiB // 2, 5 << 40)] == \
        ["0B", "1000B", "1.5KiB", "64MiB", "1.5MiB", "5TiB"]
    assert [admin.human_age(s) for s in (0.04, 59.9, 600, 7200, 3 * 86400)] == \
        ["0.0s", "59.9s", "10m", "2.0h", "3.0d"]


def test_tables_align_and_keys_cannot_break_them():
    text = admin.table(["KEY", "SIZE"], [["a", "1B"], ["longer", "10KiB"]], right=(1,))
    assert text.splitlines() == ["KEY      SIZE", "a          1B", "longer  10KiB"]
    assert admin._shown("a/b") == "a/b"
    assert admin._shown("two\nlines") == "'two\\nlines'" and admin._shown(" pad") == "' pad'"


def _stats() -> dict:
    state = MasterState(MasterConfig(), random.Random(0))
    state.register_worker("w0", "n0", "h0:1", "h0:2", "h0:3",
                          [SegmentSpec(0, TIER_DRAM, 4 * MiB, "/dev/shm/w0"),
                           SegmentSpec(1, TIER_SSD, 16 * MiB, "/ssd/w0")], b"k" * 32, 0.0)
    state.register_worker("w1", "n1", "h1:1", "h1:2", "h1:3",
                          [SegmentSpec(0, TIER_DRAM, 4 * MiB, "/dev/shm/w1")], b"k" * 32, 0.0)
    for worker_id in ("w0", "w1"):
        state.heartbeat(worker_id, 0.0)  # holds its key: new ranges may go there
    [r] = state.put_start(["x"], [MiB], PlacementConfig(replica_num=2), "", 0.0)
    state.put_end(["x"], 0.0, [r.put_id])
    return state.stats()


def test_stat_reads_the_masters_stats():
    summary = admin.stat_summary(_stats())
    assert (summary["objects"], summary["pending"], summary["workers"]) == (1, 0, 2)
    assert summary["tiers"]["DRAM"]["total_bytes"] == 8 * MiB
    assert summary["tiers"]["DRAM"]["replicas"] == 2
    assert summary["tiers"]["SSD"]["total_bytes"] == 16 * MiB
    assert summary["demotions"] == summary["promotions"] == summary["evicted_objects"] == 0
    text = admin.render_stat(summary)
    assert "objects        1 (0 pending)" in text and "workers        2" in text
    assert any(line.split()[:3] == ["DRAM", "2MiB", "8MiB"] for line in text.splitlines())


def test_workers_reads_the_masters_stats():
    rows = admin.worker_rows(_stats())
    assert [r["worker_id"] for r in rows] == ["w0", "w1"]
    assert rows[0]["dram_used_bytes"] == MiB and rows[0]["ssd_total_bytes"] == 16 * MiB
    assert "ssd_total_bytes" not in rows[1]
    lines = admin.render_workers(rows).splitlines()
    assert lines[0].split()[:3] == ["WORKER", "NODE", "DATA"]
    assert "1MiB/4MiB 25.0%" in lines[1] and "0B/16MiB 0.0%" in lines[1]
    assert lines[2].split()[-2:] == ["-", "0.00"]


# ---- drain ----

def test_drain_bounds_the_whole_wait_and_each_call(monkeypatch):
    args = _parse(["drain", "w0"], monkeypatch=monkeypatch)
    assert (args.worker_id, args.wait, args.cancel) == ("w0", False, False)
    assert (args.timeout, args.call_timeout) == (600.0, admin.CALL_TIMEOUT_S)
    args = _parse(["drain", "w0", "--wait", "--timeout", "90s"], monkeypatch=monkeypatch)
    assert (args.wait, args.timeout, args.call_timeout) == (True, 90.0, admin.CALL_TIMEOUT_S)
    args = _parse(["--timeout", "2s", "drain", "w0", "--cancel"], monkeypatch=monkeypatch)
    assert (args.cancel, args.timeout, args.call_timeout) == (True, 2.0, 2.0)
    assert _parse(["ls"], monkeypatch=monkeypatch).call_timeout == 10.0


def test_an_etcd_master_spec_leaves_the_http_address_to_the_leader(monkeypatch):
    args = _parse(["--master", "etcd://e1:2379,e2:2379/prod", "stat"], monkeypatch=monkeypatch)
    assert (args.master, args.http) == ("etcd://e1:2379,e2:2379/prod", None)
    args = _parse(["drain", "w"], {"MOONCAKE_MASTER": "etcd://e1:2379/prod",
                                   "MOONCAKE_MASTER_HTTP": "m:80"}, monkeypatch)
    assert (args.master, args.http) == ("etcd://e1:2379/prod", "m:80")


def test_drain_progress_reads_as_sentences_and_json():
    draining = DrainProgress("w0", True, 3, 3 * MiB // 2)
    assert admin.render_drain(draining) == "w0: draining, 3 objects (1.5MiB) held by it alone"
    assert admin.render_drain(DrainProgress("w0", True, 1, 10)).startswith(
        "w0: draining, 1 object (10B)")
    assert "it can be stopped" in admin.render_drain(DrainProgress("w0", True, 0, 0))
    assert admin.render_drain(DrainProgress("w0", False, 0, 0)) == \
        "w0: in service (not draining)"
    assert admin.drain_summary(draining) == {"worker_id": "w0", "draining": True,
                                             "objects_left": 3, "bytes_left": 3 * MiB // 2,
                                             "done": False}
    assert admin.drain_summary(DrainProgress("w0", True, 0, 0), 60)["timed_out"] is False


class _Clock:
    """Time that moves only when the code under test sleeps."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


def _answers(*left):
    """The master's successive answers: objects left (bytes: a KiB each)."""
    it = iter([DrainProgress("w0", True, n, n << 10) for n in left])
    return lambda: next(it)


def test_drain_wait_reports_each_change_until_nothing_is_left_alone():
    clock, seen = _Clock(), []
    done = admin.follow_drain(_answers(5, 5, 2, 0), 60, seen.append, clock, clock.sleep)
    assert done.objects_left == 0
    assert [p.objects_left for p in seen] == [5, 2, 0]  # the repeated 5 is not printed again
    assert clock.now == 3 * admin.DRAIN_POLL_S


def test_drain_wait_gives_up_at_its_timeout_with_the_last_answer():
    clock = _Clock()
    with pytest.raises(admin.DrainTimeout, match=r"4 object\(s\) \(4KiB\) still held by it "
                                                  r"alone after 1.2s") as info:
        admin.follow_drain(_answers(*[4] * 100), 1.2, lambda p: None, clock, clock.sleep)
    assert info.value.progress.objects_left == 4 and clock.now <= 1.2


def test_drain_wait_stops_when_the_drain_is_cancelled_meanwhile():
    clock = _Clock()
    answers = iter([DrainProgress("w0", True, 3, 1), DrainProgress("w0", False, 3, 1)])
    with pytest.raises(admin.AdminError, match="stopped draining"):
        admin.follow_drain(lambda: next(answers), 60, lambda p: None, clock, clock.sleep)
