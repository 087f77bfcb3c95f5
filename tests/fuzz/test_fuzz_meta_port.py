"""Fuzzes the master's framed metadata port (proto/metaframe.py, master/meta_server.py) over
raw sockets: random magic, method bytes and lengths, bodies truncated or longer than claimed,
random bytes and real request messages with random fields, several frames back to back. Every
answer is a whole frame with status 0 or a Mooncake code (never an internal error), the
master keeps serving, and a normal client get works after each input."""
import pytest
from fuzzing import exchange, fuzz_settings, keys, messages, mutated
from hypothesis import given
from hypothesis import strategies as st

from mooncake_proto import metaframe
from mooncake_proto.errors import ErrorCode

pytestmark = pytest.mark.timeout(3600)  # a long run on demand; the bounded one takes seconds

KNOWN = ["fuzz/canary", "fuzz/meta-0", "fuzz/meta-1"]
CODES = {int(code) for code in ErrorCode} - {ErrorCode.OK, ErrorCode.INTERNAL_ERROR}

request_messages = st.sampled_from(sorted(metaframe.METHODS)).flatmap(
    lambda method_id: messages(metaframe.METHODS[method_id][1].DESCRIPTOR, keys(KNOWN)).map(
        lambda message: (method_id, message.SerializeToString())))


@st.composite
def frames(draw):
    """One frame: mostly well formed, any field possibly wrong."""
    method_id, body = draw(st.one_of(
        request_messages,
        request_messages.flatmap(lambda m: mutated(m[1]).map(lambda b: (m[0], b))),
        st.tuples(st.integers(0, 255), st.binary(max_size=200))))
    magic = draw(st.one_of(st.just(metaframe.MAGIC), st.binary(min_size=4, max_size=4)))
    length = draw(st.one_of(
        st.just(len(body)),
        st.integers(0, len(body) + 64),
        st.sampled_from([metaframe.MAX_FRAME_BYTES, metaframe.MAX_FRAME_BYTES + 1,
                         metaframe.MAX_TOKEN_BYTES + 1, (1 << 32) - 1])))
    return metaframe.REQUEST.pack(magic, method_id, length) + body


def answers(data: bytes) -> list[int]:
    """The statuses of the answer frames, checking that they are whole frames."""
    statuses = []
    while data:
        assert len(data) >= metaframe.RESPONSE.size, f"a torn answer header: {data!r}"
        status, length = metaframe.RESPONSE.unpack_from(data)
        end = metaframe.RESPONSE.size + length
        assert len(data) >= end, "a torn answer body"
        assert status == 0 or status in CODES, f"status {status}: {data[8:end]!r}"
        statuses.append(status)
        data = data[end:]
    return statuses


def malformed_head(data: bytes) -> bool:
    """Whether the first frame's header alone must be refused (the port's own rule)."""
    if len(data) < metaframe.REQUEST.size:
        return False
    magic, method_id, length = metaframe.REQUEST.unpack_from(data)
    if method_id == metaframe.AUTH:
        return magic != metaframe.MAGIC or length > metaframe.MAX_TOKEN_BYTES
    return magic != metaframe.MAGIC or method_id not in metaframe.METHODS \
        or length > metaframe.MAX_FRAME_BYTES


@pytest.fixture(scope="module")
def known(canary):
    for key in KNOWN[1:]:
        canary.client.put(key, key.encode(), canary.config)  # never on a fuzzed registration


@fuzz_settings(400)
@given(data=st.one_of(st.binary(max_size=64), st.lists(frames(), min_size=1, max_size=4).map(
    b"".join)))
def test_the_framed_port_answers_whole_frames_and_keeps_serving(fuzz_cluster, canary, tally,
                                                                known, data):
    statuses = answers(exchange(fuzz_cluster.master.info["meta"], data))
    if malformed_head(data):
        assert statuses == [ErrorCode.INVALID_PARAMS]  # its typed refusal, then the close
    refused = [s for s in statuses if s != 0]
    tally.count("meta_port", "refused" if refused else "served" if statuses else "closed")
    tally.answers["meta_port.frames"]["answered"] += len(statuses)
    tally.answers["meta_port.frames"]["refused"] += len(refused)
    canary.check()
