"""The shared contract: generated stubs match the .proto, grants, units and option layering."""
import filecmp
import pathlib

import pytest

from mooncake_proto import grants
from mooncake_proto.cli import DURATION, SIZE, Option, load_settings
from mooncake_proto.errors import (CODE_TO_ERROR, ErrorCode, HasLeaseError, LeaseExpiredError,
                                   NoSpaceError, error_for_code)
from mooncake_proto.units import format_size, parse_duration, parse_size

PROTO_DIR = pathlib.Path(__file__).resolve().parents[2] / "proto"


def test_checked_in_stubs_match_the_proto(tmp_path):
    import importlib.util
    spec = importlib.util.spec_from_file_location("generate", PROTO_DIR / "generate.py")
    generate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generate)
    generate.generate(tmp_path)
    for name in generate.GENERATED:
        assert filecmp.cmp(tmp_path / name, PROTO_DIR / name, shallow=False), \
            f"proto/{name} drifted from mooncake.proto: run `make proto` and commit"


def test_generated_grpc_module_imports_package_qualified():
    text = (PROTO_DIR / "mooncake_pb2_grpc.py").read_text()
    assert "from mooncake_proto import mooncake_pb2" in text


def test_error_codes_are_mooncakes():
    assert ErrorCode.NO_AVAILABLE_HANDLE == -200
    assert ErrorCode.OBJECT_NOT_FOUND == -704
    assert ErrorCode.OBJECT_ALREADY_EXISTS == -705
    assert isinstance(error_for_code(-200), NoSpaceError)
    assert isinstance(error_for_code(-706), HasLeaseError) and error_for_code(-706).code == -706
    assert isinstance(error_for_code(-707), LeaseExpiredError)
    assert error_for_code(-12345).code == -12345
    for code, cls in CODE_TO_ERROR.items():
        assert error_for_code(code).code == code and isinstance(error_for_code(code), cls)


KEY = b"k" * 32
GRANT = grants.Grant(grants.Op.READ, "w1", 0, 4096, 100, expiry_ms=2_000)


def test_grant_round_trip_and_cover():
    token = grants.sign(KEY, GRANT)
    got = grants.verify(KEY, token, "w1", now_ms=1_000)
    assert got == GRANT
    assert got.covers(grants.Op.READ, 0, 4096, 100)
    assert got.covers(grants.Op.READ, 0, 4100, 96)
    assert not got.covers(grants.Op.READ, 0, 4096, 101)
    assert not got.covers(grants.Op.READ, 0, 4095, 10)
    assert not got.covers(grants.Op.WRITE, 0, 4096, 100)
    assert not got.covers(grants.Op.READ, 1, 4096, 100)


@pytest.mark.parametrize("mutate, message", [
    (lambda t: t[:-1] + bytes([t[-1] ^ 1]), "signature"),
    (lambda t: t[:5] + bytes([t[5] ^ 1]) + t[6:], "signature"),
    (lambda t: t[:10], "length"),
])
def test_tampered_grants_are_refused(mutate, message):
    with pytest.raises(grants.GrantError, match=message):
        grants.verify(KEY, mutate(grants.sign(KEY, GRANT)), "w1", now_ms=1_000)


def test_grant_for_another_worker_wrong_key_or_expired_is_refused():
    token = grants.sign(KEY, GRANT)
    with pytest.raises(grants.GrantError, match="not 'w2'"):
        grants.verify(KEY, token, "w2", now_ms=1_000)
    with pytest.raises(grants.GrantError, match="signature"):
        grants.verify(b"x" * 32, token, "w1", now_ms=1_000)
    with pytest.raises(grants.GrantError, match="expired"):
        grants.verify(KEY, token, "w1", now_ms=2_001)


def test_a_worker_id_longer_than_grants_allow_is_never_signed():
    longest = grants.Grant(grants.Op.READ, "w" * grants.MAX_WORKER_ID_BYTES, 0, 0, 1, 2_000)
    assert len(grants.sign(KEY, longest)) == grants.MAX_GRANT_BYTES
    with pytest.raises(grants.GrantError, match="1025 bytes"):
        grants.sign(KEY, grants.Grant(grants.Op.READ, "w" * 1025, 0, 0, 1, 2_000))


def test_sizes_and_durations():
    assert parse_size("512MiB") == 512 << 20
    assert parse_size("4GiB") == 4 << 30
    assert parse_size("1000") == 1000 and parse_size("2KB") == 2000
    assert parse_duration("500ms") == 0.5 and parse_duration("10s") == 10.0
    assert parse_duration("2m") == 120.0 and parse_duration(3) == 3.0
    assert format_size(64 << 10) == "64KiB" and format_size(100) == "100B"
    for bad in ("", "12XB", "-1MiB", "MiB"):
        with pytest.raises(ValueError):
            parse_size(bad)
    with pytest.raises(ValueError):
        parse_duration("5 parsecs")


OPTIONS = [Option("--lease-ttl", "10s", DURATION), Option("--dram", None, SIZE),
           Option("--port", 50051, int)]


def test_option_precedence_defaults_file_env_flags(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("lease-ttl: 5s\ndram: 1GiB\nport: 1\n")
    s = load_settings("t", "", OPTIONS, [], environ={})
    assert (s.lease_ttl, s.dram, s.port) == (10.0, None, 50051)
    s = load_settings("t", "", OPTIONS, ["--config", str(cfg)], environ={})
    assert (s.lease_ttl, s.dram, s.port) == (5.0, 1 << 30, 1)
    env = {"MOONCAKE_LEASE_TTL": "2s", "MOONCAKE_PORT": "2"}
    s = load_settings("t", "", OPTIONS, ["--config", str(cfg)], environ=env)
    assert (s.lease_ttl, s.dram, s.port) == (2.0, 1 << 30, 2)
    s = load_settings("t", "", OPTIONS, ["--config", str(cfg), "--port", "3"], environ=env)
    assert (s.lease_ttl, s.port) == (2.0, 3)


def test_unknown_config_keys_and_bad_values_are_errors(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("lease_tll: 5s\n")
    with pytest.raises(SystemExit):
        load_settings("t", "", OPTIONS, ["--config", str(cfg)], environ={})
    assert "unknown option 'lease_tll'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        load_settings("t", "", OPTIONS, ["--dram", "lots"], environ={})
    assert "--dram: not a size" in capsys.readouterr().err
