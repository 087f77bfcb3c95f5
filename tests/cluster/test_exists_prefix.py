"""Client.batch_exists_prefix through a real master: the prefix length, its leases, its errors,
over the framed metadata port and over gRPC."""
import grpc
import pytest

from mooncake_client import Client
from mooncake_client.master_link import MasterLink
from mooncake_proto import mooncake_pb2 as pb
from mooncake_proto import rpc
from mooncake_proto.errors import HasLeaseError, InvalidArgumentError, NotSupportedError


@pytest.mark.parametrize("framed", [True, False], ids=["framed", "grpc"])
def test_the_longest_fully_present_prefix_is_counted(cluster, framed):
    pages = [f"prefix-{framed}-page-{i}" for i in range(6)]
    with Client(cluster.master_addr, framed_metadata=framed) as c:
        assert c.batch_exists_prefix(pages) == 0
        assert c.batch_exists_prefix([]) == 0
        for page in pages[:3] + pages[4:]:  # page 3 is missing
            c.put(page, page.encode())
        assert c.batch_exists_prefix(pages) == 3
        assert c.batch_exists_prefix(pages[:3]) == 3
        assert c.batch_exists_prefix(pages[4:]) == 2
        c.put(pages[3], b"3")
        assert c.batch_exists_prefix(pages) == 6
        assert c.batch_exists(pages) == [True] * 6  # agrees with the per-key answer
        assert (c._link.meta is not None) == framed  # noqa: SLF001 -- the call took that path


def test_the_present_prefix_is_leased_and_keys_past_the_stop_are_not(fresh_cluster):
    cluster = fresh_cluster(workers=1, dram="16MiB", master_args=("--lease-ttl", "30s"))
    with Client(cluster.master_addr) as c:
        for key in ("a", "b", "d"):
            c.put(key, key.encode())
        assert c.batch_exists_prefix(["a", "b", "c", "d"]) == 2
        for key in ("a", "b"):  # leased: a get is about to follow
            with pytest.raises(HasLeaseError):
                c.remove(key)
        assert c.remove("d") is True  # never looked at: no lease


def test_a_bad_key_inside_the_batch_raises_and_one_after_the_stop_does_not(cluster):
    with Client(cluster.master_addr) as c:
        c.put("prefix-bad-0", b"0")
        with pytest.raises(InvalidArgumentError, match="empty"):
            c.batch_exists_prefix(["prefix-bad-0", ""])
        assert c.batch_exists_prefix(["prefix-bad-0", "prefix-bad-absent", ""]) == 1
        with pytest.raises(InvalidArgumentError):
            c.batch_exists_prefix(["x"] * 100_000)  # over the batch limit


def test_an_unknown_call_is_not_supported_as_an_older_master_answers_it(cluster):
    """What a master from before ExistsPrefix answers it over gRPC: UNIMPLEMENTED, which the
    client reads as NotSupportedError (-1012)."""
    with rpc.client_channel(cluster.master_addr) as channel:
        call = channel.unary_unary("/mooncake.MasterService/NoSuchCall",
                                   request_serializer=pb.KeysRequest.SerializeToString,
                                   response_deserializer=pb.ExistsPrefixResponse.FromString)
        with pytest.raises(grpc.RpcError) as info:
            call(pb.KeysRequest(keys=["k"]), timeout=10)
    error = rpc.error_from_rpc(info.value, "master")
    assert isinstance(error, NotSupportedError) and error.code == -1012


def test_against_an_older_master_the_per_key_answer_serves(cluster, monkeypatch):
    pages = [f"prefix-old-master-{i}" for i in range(4)]
    with Client(cluster.master_addr) as c:
        c.batch_put(pages[:2] + pages[3:], [b"0", b"1", b"3"])
        asked = []
        real_grpc, real_call = MasterLink.grpc_call, MasterLink.call

        def older_grpc(self, method, request):
            asked.append(f"grpc {method}")
            if method == "ExistsPrefix":  # its UNIMPLEMENTED, as rpc.error_from_rpc reads it
                raise NotSupportedError("master: unimplemented: Method not found!")
            return real_grpc(self, method, request)

        def call(self, method, request, raw=False):
            asked.append(method)
            return real_call(self, method, request, raw)
        monkeypatch.setattr(MasterLink, "grpc_call", older_grpc)
        monkeypatch.setattr(MasterLink, "call", call)
        assert c.batch_exists_prefix(pages) == 2
        assert c.batch_exists_prefix(pages[:2]) == 2
        # asked once over gRPC (an older framed port would refuse the frame), then remembered
        assert asked == ["grpc ExistsPrefix", "Exists", "Exists"]


def test_a_master_that_knows_it_is_asked_once_over_grpc_then_framed(cluster, monkeypatch):
    asked = []
    real_grpc = MasterLink.grpc_call

    def grpc_call(self, method, request):
        asked.append(method)
        return real_grpc(self, method, request)
    monkeypatch.setattr(MasterLink, "grpc_call", grpc_call)
    with Client(cluster.master_addr) as c:
        for _ in range(3):
            assert c.batch_exists_prefix(["prefix-once-absent"]) == 0
    assert asked.count("ExistsPrefix") == 1
