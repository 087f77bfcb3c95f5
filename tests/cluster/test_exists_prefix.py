"""Client.batch_exists_prefix through a real master: the prefix length, its leases, its errors,
over the framed metadata port and over gRPC."""
import pytest

from mooncake_client import Client
from mooncake_proto.errors import HasLeaseError, InvalidArgumentError


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
