"""The master's framed metadata port against real daemons: used when offered, the same answers
and error codes as gRPC, gRPC when it is off or gone, and garbage refused without harm."""
import socket
import struct

import pytest

from mooncake_client import Client
from mooncake_client.local_cluster import LocalCluster
from mooncake_proto import metaframe
from mooncake_proto import mooncake_pb2 as pb
from mooncake_proto.errors import ErrorCode, InvalidArgumentError


def frame_call(addr: str, payload: bytes, refused: bool = True) -> tuple[int, bytes]:
    """Sends raw bytes to the framed port; the answer's status and body (or -1, b"" on close).
    A refused frame must also cost its connection; a failed but well-formed call must not."""
    host, port = addr.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(payload)
        head = s.recv(metaframe.RESPONSE.size, socket.MSG_WAITALL)
        if len(head) < metaframe.RESPONSE.size:
            return -1, b""
        status, length = metaframe.RESPONSE.unpack(head)
        body = s.recv(length, socket.MSG_WAITALL) if length else b""
        if refused:
            assert s.recv(1) == b""
        else:
            s.sendall(encode("Exists", pb.KeysRequest(keys=["x"])))
            assert metaframe.RESPONSE.unpack(s.recv(8, socket.MSG_WAITALL))[0] == 0
        return status, body


def encode(method: str, request) -> bytes:
    body = request.SerializeToString()
    return metaframe.REQUEST.pack(metaframe.MAGIC, metaframe.METHOD_IDS[method], len(body)) + body


def test_clients_use_the_framed_port_when_the_master_offers_it(cluster):
    with Client(cluster.master_addr) as c:
        c.put("meta/used", b"abc")
        assert c.get("meta/used") == b"abc" and c.exists("meta/used")
        assert c._link.meta is not None and c._link.meta.addr == cluster.master.info["meta"]
    with Client(cluster.master_addr, framed_metadata=False) as c:  # the same store over gRPC
        assert c.get("meta/used") == b"abc" and c._link.meta is None


def test_whole_call_errors_keep_their_mooncake_code(cluster):
    request = pb.PutStartRequest(keys=["a", "b"], sizes=[1])
    status, body = frame_call(cluster.master.info["meta"], encode("PutStart", request),
                              refused=False)
    assert status == ErrorCode.INVALID_PARAMS and b"2 keys but 1 sizes" in body
    with Client(cluster.master_addr) as c:
        with pytest.raises(InvalidArgumentError):
            c._link.call("PutStart", request)


@pytest.mark.parametrize("garbage", [
    b"XXXX" + bytes(5),                                                    # bad magic
    metaframe.REQUEST.pack(metaframe.MAGIC, 99, 0),                        # unknown method
    metaframe.REQUEST.pack(metaframe.MAGIC, 4, metaframe.MAX_FRAME_BYTES + 1),  # oversized
    metaframe.REQUEST.pack(metaframe.MAGIC, 4, 3) + b"\xff\xff\xff",      # undecodable
])
def test_garbage_is_refused_and_the_master_keeps_serving(cluster, garbage):
    status, _ = frame_call(cluster.master.info["meta"], garbage)
    assert status == ErrorCode.INVALID_PARAMS
    with Client(cluster.master_addr) as c:
        c.put(f"meta/after/{garbage[:6].hex()}", b"ok")
        assert c.get(f"meta/after/{garbage[:6].hex()}") == b"ok"


def test_a_truncated_frame_then_close_harms_no_one(cluster):
    host, port = cluster.master.info["meta"].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(metaframe.REQUEST.pack(metaframe.MAGIC, 4, 100) + b"\x0a\x03")
    with Client(cluster.master_addr) as c:
        c.put("meta/truncated", b"ok")
        assert c.get("meta/truncated") == b"ok"


def test_port_turned_off_means_grpc(fresh_cluster):
    cluster = fresh_cluster(workers=1, dram="8MiB", master_args=("--meta-port", "-1"))
    assert cluster.master.info["meta"] == ""
    with Client(cluster.master_addr) as c:
        c.put("meta/off", b"x")
        assert c.get("meta/off") == b"x" and c._link.meta is None


def test_a_client_follows_a_restarted_master_to_its_new_port(tmp_path):
    """The framed port moves when the master restarts (port 0): the client's pooled
    connection fails, the read goes over gRPC, and Hello finds the new port later."""
    from test_daemons import free_port
    port = free_port()
    cluster = LocalCluster(workers=0, workdir=str(tmp_path))
    args = ["--port", str(port), "--http-port", "0", "--meta-port", "0"]
    cluster.master = cluster._spawn("master", "mooncake_master", args)
    try:
        cluster.master.wait_ready()
        cluster.start_worker("w", dram="8MiB")
        with Client(f"127.0.0.1:{port}", rpc_timeout_s=5) as c:
            c.put("meta/before", b"1")
            old = c._link.meta.addr
            cluster.master.stop()
            cluster.master = cluster._spawn("master", "mooncake_master", args)
            cluster.master.wait_ready()
            assert c.get("meta/before") is None  # a new master knows nothing yet: a miss
            assert c._link.meta is None  # the old port is forgotten ...
            c._link.meta_checked_at = -1e9  # ... and asked for again (normally after META_RETRY_S)
            assert c.exists("meta/before") is False
            assert c._link.meta is not None and c._link.meta.addr != old
    finally:
        cluster.stop()


def test_frame_format_is_fixed():
    assert metaframe.REQUEST.size == 9 and metaframe.RESPONSE.size == 8
    assert struct.unpack("!4sBI", metaframe.REQUEST.pack(metaframe.MAGIC, 4, 7)) == (b"MCM1", 4, 7)
    assert set(metaframe.IDEMPOTENT) <= set(metaframe.METHOD_IDS)


@pytest.mark.timeout(60)
def test_a_write_whose_answer_is_lost_raises_and_is_never_sent_twice(fresh_cluster):
    """The master stalls past the client's timeout while a put is in flight: the put must
    fail loudly. Sending PutStart again would meet the first one's PENDING key, count as
    'already exists' and report success for bytes that were never written."""
    import threading
    from mooncake_proto.errors import UnavailableError
    cluster = fresh_cluster(workers=1, dram="8MiB")
    master = cluster.master
    with Client(cluster.master_addr, rpc_timeout_s=0.5) as c:
        c.put("meta/warm", b"w")  # the framed channel exists and has an idle connection
        master.pause()
        resume = threading.Timer(1.0, master.resume)
        resume.start()  # the fault's length, not a wait for readiness
        try:
            with pytest.raises(UnavailableError, match="outcome is unknown"):
                c.put("meta/lost", b"data")
        finally:
            resume.join()
            master.resume()
        # the store says what happened: never "present" without its bytes
        assert c.get("meta/lost") is None
        c.put("meta/after-stall", b"ok")
        assert c.get("meta/after-stall") == b"ok"


def test_a_busy_master_turns_calls_away_unread_and_grpc_serves_them():
    """At its connection cap the master answers STATUS_BUSY before reading: NotSent."""
    import threading
    from mooncake_client.meta_channel import MetaChannel, NotSent
    listener = socket.create_server(("127.0.0.1", 0))

    def busy():
        conn, _ = listener.accept()
        conn.sendall(metaframe.RESPONSE.pack(metaframe.STATUS_BUSY, 4) + b"busy")
        conn.close()

    thread = threading.Thread(target=busy, daemon=True)
    thread.start()
    channel = MetaChannel(f"127.0.0.1:{listener.getsockname()[1]}", 2)
    with pytest.raises(NotSent, match="busy"):
        channel.call("Exists", pb.KeysRequest(keys=["k"]), 2)
    thread.join(5)
    listener.close()
    channel.close()
    with pytest.raises(NotSent, match="closed"):
        channel.call("Exists", pb.KeysRequest(keys=["k"]), 2)


def _scripted_master(answers):
    """A listener whose one connection reads a frame per entry of `answers` and sends that
    entry's chunks (with a pause between chunks, so they arrive in separate reads)."""
    import threading
    import time
    listener = socket.create_server(("127.0.0.1", 0))

    def serve():
        conn, _ = listener.accept()
        with conn:
            for chunks in answers:
                head = conn.recv(metaframe.REQUEST.size, socket.MSG_WAITALL)
                length = metaframe.REQUEST.unpack(head)[2]
                conn.recv(length, socket.MSG_WAITALL)
                for chunk in chunks:
                    conn.sendall(chunk)
                    time.sleep(0.05)
            conn.recv(1)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener, thread


def test_answers_in_pieces_are_put_together_and_bytes_past_the_frame_are_refused():
    """The client reads an answer with one large recv when it can: a header or body split
    over several reads is put together; bytes after the frame mean a peer that is not a
    master, and fail the call (MaybeSent) instead of being taken for the next answer."""
    from mooncake_client.meta_channel import MaybeSent, MetaChannel
    answer = pb.ExistsResponse(statuses=[pb.KeyStatus(key="k" * 300, code=0)]).SerializeToString()
    framed = metaframe.RESPONSE.pack(0, len(answer)) + answer
    large = pb.ExistsResponse(statuses=[pb.KeyStatus(key="b" * 200_000)]).SerializeToString()
    listener, thread = _scripted_master([
        [framed[:3], framed[3:]],                  # the header itself split
        [framed[:20], framed[20:]],                # the body split
        [metaframe.RESPONSE.pack(0, len(large)) + large],  # past the first read's 64 KiB
        [framed + b"extra"],                       # more than one frame
    ])
    channel = MetaChannel(f"127.0.0.1:{listener.getsockname()[1]}", 2)
    try:
        for _ in range(2):
            reply = channel.call("Exists", pb.KeysRequest(keys=["k"]), 5)
            assert reply.statuses[0].key == "k" * 300
        reply = channel.call("Exists", pb.KeysRequest(keys=["k"]), 5)
        assert reply.statuses[0].key == "b" * 200_000
        with pytest.raises(MaybeSent, match="not a mooncake master"):
            channel.call("Exists", pb.KeysRequest(keys=["k"]), 5)
    finally:
        channel.close()
        listener.close()
        thread.join(5)
