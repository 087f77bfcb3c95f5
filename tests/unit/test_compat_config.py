"""Mooncake's configuration sources as the compat facade reads them (client/compat/config.py)."""
import json

import pytest

from mooncake_client.compat.config import (MooncakeConfig, master_spec, parse_size,
                                           setting_number, transport_names, transports_for)
from mooncake_proto.errors import InvalidArgumentError


@pytest.mark.parametrize("text, size", [(4096, 4096), ("4096", 4096), ("4GB", 4 << 30),
                                        ("4gb", 4 << 30), ("512 MB", 512 << 20), ("1.5g", 3 << 29),
                                        ("16MiB", 16 << 20), ("2kb", 2048), ("10b", 10)])
def test_sizes_are_binary_whatever_they_are_called(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["lots", "-1", "4 parsecs", True, -5, ""])
def test_bad_sizes_are_refused(text):
    with pytest.raises(InvalidArgumentError):
        parse_size(text)


def test_number_and_transport_settings_as_files_and_dicts_carry_them():
    assert setting_number("2.5", float, "t") == 2.5 and setting_number(3, int, "n") == 3
    with pytest.raises(InvalidArgumentError, match="extra_config rpc_timeout_s: not a number"):
        setting_number("soon", float, "extra_config rpc_timeout_s")
    assert transport_names(" shm, tcp ,") == ("shm", "tcp")
    assert transport_names(["rdma", "tcp"]) == ("rdma", "tcp")


def test_master_address_forms():
    assert master_spec("10.0.0.1:50051") == "10.0.0.1:50051"
    assert master_spec("etcd://10.0.0.1:2379;10.0.0.2:2379", {}) == \
        "etcd://10.0.0.1:2379,10.0.0.2:2379/mooncake"
    assert master_spec("etcd://e:2379", {"MOONCAKE_CLUSTER_ID": "prod"}) == "etcd://e:2379/prod"
    assert master_spec("etcd://e:2379/mine") == "etcd://e:2379/mine"
    with pytest.raises(InvalidArgumentError):
        master_spec(" ")


def test_protocols():
    assert transports_for("tcp") == ("shm", "tcp")
    assert transports_for("RDMA") == ("shm", "rdma", "tcp")
    with pytest.raises(InvalidArgumentError):
        transports_for("udp")


def test_the_json_file_wins_over_the_variables(tmp_path):
    path = tmp_path / "mooncake.json"
    path.write_text(json.dumps({"local_hostname": "10.0.0.2", "metadata_server": "P2PHANDSHAKE",
                                "master_server_address": "10.0.0.1:50051",
                                "global_segment_size": "3GB", "protocol": "rdma",
                                "device_name": "mlx5_0"}))
    config = MooncakeConfig.from_env({"MOONCAKE_CONFIG_PATH": str(path),
                                      "MOONCAKE_MASTER": "ignored:1"})
    assert (config.master_server_address, config.global_segment_size, config.protocol,
            config.device_name, config.local_buffer_size) == \
        ("10.0.0.1:50051", 3 << 30, "rdma", "mlx5_0", 1 << 30)


def test_the_variables_without_a_file():
    config = MooncakeConfig.from_env({"MOONCAKE_MASTER": "m:50051",
                                      "MOONCAKE_GLOBAL_SEGMENT_SIZE": "1gb",
                                      "MOONCAKE_PROTOCOL": "tcp"})
    assert (config.master_server_address, config.global_segment_size, config.local_hostname,
            config.metadata_server) == ("m:50051", 1 << 30, "localhost", "P2PHANDSHAKE")
    with pytest.raises(InvalidArgumentError, match="MOONCAKE_MASTER"):
        MooncakeConfig.from_env({})


def test_mooncakes_own_name_reads_the_process_environment(monkeypatch):
    monkeypatch.delenv("MOONCAKE_CONFIG_PATH", raising=False)
    monkeypatch.setenv("MOONCAKE_MASTER", "m:1")
    assert MooncakeConfig.load_from_env().master_server_address == "m:1"


@pytest.mark.parametrize("content, complaint", [
    ("{", "Expecting"), ("[]", "not a JSON object"),
    ('{"local_hostname": "h", "metadata_server": "m"}', "master_server_address missing"),
    ('{"local_hostname": "h", "metadata_server": "m", "master_server_address": "a:1", '
     '"global_segment_size": "big"}', "not a size")])
def test_bad_files_say_what_is_wrong(tmp_path, content, complaint):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(InvalidArgumentError, match=complaint):
        MooncakeConfig.from_file(str(path))
    with pytest.raises(InvalidArgumentError, match="No such file"):
        MooncakeConfig.from_file(str(tmp_path / "absent.json"))
