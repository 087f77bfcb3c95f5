"""Master specs without a cluster: parsing, a static list's rotation past failed addresses, the
leader record's JSON, and an etcd nobody listens on (the live etcd is tests/cluster/test_ha.py)."""
import socket
import threading
import time

import pytest

from mooncake_proto.discovery import (EtcdError, LeaderRecord, MasterLocator, check_cluster_id,
                                      leader_key, parse_endpoints)
from mooncake_proto.errors import InvalidArgumentError, UnavailableError


def test_a_static_list_is_tried_in_order_and_rotates_past_a_failure():
    locator = MasterLocator("h1:1, h2:2,h3:3")
    assert not locator.is_etcd and locator.addresses() == ["h1:1", "h2:2", "h3:3"]
    locator.invalidate("h1:1")
    assert locator.addresses() == ["h2:2", "h3:3", "h1:1"]
    locator.invalidate("h1:1")  # a second report of the same failure moves nothing
    assert locator.addresses()[0] == "h2:2"
    locator.invalidate()
    assert locator.addresses()[0] == "h3:3"
    assert MasterLocator(["a:1", "b:2"]).addresses() == ["a:1", "b:2"]
    assert MasterLocator("[::1]:50051").addresses() == ["[::1]:50051"]


def test_concurrent_reports_of_one_failure_rotate_once():
    locator = MasterLocator("a:1,b:2,c:3")
    threads = [threading.Thread(target=locator.invalidate, args=("a:1",)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert locator.addresses() == ["b:2", "c:3", "a:1"]


def test_an_etcd_spec_names_endpoints_and_a_cluster():
    locator = MasterLocator("etcd://10.0.0.1:2379,http://10.0.0.2:2379/prod-a")
    assert locator.is_etcd and locator.cluster_id == "prod-a"
    assert locator._etcd.endpoints == ["10.0.0.1:2379", "10.0.0.2:2379"]
    assert leader_key("prod-a") == "/mooncake/prod-a/leader"


@pytest.mark.parametrize("spec", [
    "", " , ", "nohost", "h:port", "etcd://h:2379", "etcd://h:2379/", "etcd:///c",
    "etcd://h:2379/a/b", "etcd://h:99999/c", "etcd://https://h:2379/c", "etcd://h:2379/-x",
])
def test_bad_specs_are_invalid_arguments(spec):
    with pytest.raises(InvalidArgumentError, match="master"):
        MasterLocator(spec)


def test_endpoints_and_cluster_ids():
    assert parse_endpoints("a:1,http://b:2/") == ["a:1", "b:2"]
    with pytest.raises(ValueError, match="TLS"):
        parse_endpoints("https://a:1")
    with pytest.raises(ValueError, match="at least one"):
        parse_endpoints(" ")
    assert check_cluster_id("c_1.x-y") == "c_1.x-y"
    for bad in ("", "a/b", ".hidden", "x" * 129):
        with pytest.raises(ValueError):
            check_cluster_id(bad)


def test_the_leader_record_round_trips_and_garbage_is_unavailable():
    record = LeaderRecord(grpc="m:1", meta="m:2", http="m:3", master_id="abc")
    assert LeaderRecord.from_json(record.to_json().encode()) == record
    assert LeaderRecord.from_json('{"grpc": "m:1", "extra": 1}') == LeaderRecord(grpc="m:1")
    with pytest.raises(UnavailableError, match="no leader record"):
        LeaderRecord.from_json(b"not json")


def test_an_etcd_nobody_listens_on_is_unavailable_at_once():
    with socket.socket() as s:  # a port that was free a moment ago: nobody listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    locator = MasterLocator(f"etcd://127.0.0.1:{port}/c")
    started = time.monotonic()
    with pytest.raises(EtcdError, match=f"etcd unreachable: 127.0.0.1:{port}"):
        locator.addresses()
    assert time.monotonic() - started < 2
    with pytest.raises(InvalidArgumentError, match="names no etcd"):
        MasterLocator("a:1").leader()
