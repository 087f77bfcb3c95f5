/* Serves one data-plane connection: parses requests, checks grants and ranges, moves bytes.
 *
 * Helpers return 0, a negative errno for a connection fault (reported, closed without a
 * reply), or REFUSED once refuse() recorded the Mooncake code and reason to answer with.
 *
 * A pipelined batch costs a few syscalls, not three per request: input is recv'd into a
 * per-connection buffer as it comes and headers and grants are parsed from there; answers are
 * queued as iovecs (a READ's header and its granted range, straight from the segment) and
 * leave in one sendmsg once no further request is buffered or readable, or the queue is full.
 * The queue is flushed before anything that blocks or could change what a queued READ sends:
 * waiting for input, a WRITE's payload, a sendfile, a refusal, a close. A WRITE's payload
 * comes out of the buffer first, the rest is recv'd straight into the segment. A file
 * segment's READ is the header then sendfile (page cache to socket, no copy here); its WRITE
 * goes through the connection's bounded buffer, a pwrite per chunk.
 */
#include "mc_file.h"
#include "server_internal.h"

#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>

#define REFUSED (-100000)            /* far from any -errno */
#define DATAPLANE_MAGIC "MCD1"
#define DATAPLANE_MAGIC_ALIGNED "MCD2"
#define MAX_RECV_BYTES (1u << 30)    /* below Linux's per-call cap (INT_MAX rounded to pages) */
#define MAX_SENDFILE_BYTES (1u << 30)
#define LINGER_SCRATCH_BYTES 16384
#define INPUT_BYTES (64u << 10)      /* holds many requests; a header and grant always fit */
#define QUEUE_ANSWERS 256
#define QUEUE_IOVECS (3 * QUEUE_ANSWERS)   /* a header, a range and its padding per answer */
#define QUEUE_BYTES (4u << 20)       /* past it, queued reads go out: big reads still stream */

_Static_assert(QUEUE_IOVECS <= IOV_MAX, "one sendmsg takes the whole queue");
_Static_assert(INPUT_BYTES >= 2 * (MC_DATAPLANE_REQUEST_BYTES + MC_DATAPLANE_MAX_GRANT_LEN +
                                   MC_DATAPLANE_ALIGN),
               "a request's header and grant (and padding) fit in the input buffer");

/* the connection's unparsed input and the answers not sent yet */
struct conn_io {
    size_t in_start, in_end;         /* unparsed input is in[in_start, in_end) */
    int iovcnt, heads;
    uint64_t queued_bytes;
    uint64_t queued_requests;        /* counted as served once their answers are sent */
    uint64_t queued_read_bytes;      /* segment bytes referenced by queued READ answers */
    int aligned;                     /* the form of the last well-formed request: a refusal
                                        is answered in it (MCD2 when 1) */
    struct iovec iov[QUEUE_IOVECS];
    uint8_t head[QUEUE_ANSWERS][MC_DATAPLANE_ALIGNED_RESPONSE_BYTES];
    uint8_t in[INPUT_BYTES];
};

typedef struct {
    int op;
    unsigned grant_len;
    uint32_t segment_id;
    uint64_t offset;
    uint64_t length;
    int aligned;                     /* magic MCD2: the aligned form */
} request;

static const uint8_t zeros[MC_DATAPLANE_ALIGN];   /* the aligned form's padding */

static int refuse(mc_conn *c, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int refuse(mc_conn *c, int code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->reason, sizeof c->reason, fmt, ap);
    va_end(ap);
    c->refusal = code;
    return REFUSED;
}

static uint64_t clock_ms(clockid_t clock) {
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* EAGAIN from a blocking socket means SO_RCVTIMEO/SO_SNDTIMEO (the idle timeout) ran out */
static int fault(int err, const char *what) {
    if (err == EAGAIN || err == EWOULDBLOCK)
        return mc_fail(-ETIMEDOUT, "%s: connection idle too long", what);
    return mc_fail(-err, "%s: %s", what, strerror(err));
}

/* flags: MSG_MORE when more bytes follow at once (answers before a sendfile) */
static int send_all_flags(mc_conn *c, struct iovec *iov, int iovcnt, int flags) {
    while (iovcnt > 0) {
        struct msghdr msg = {.msg_iov = iov, .msg_iovlen = (size_t)iovcnt};
        ssize_t n = sendmsg(c->fd, &msg, MSG_NOSIGNAL | flags);
        if (n < 0) {
            if (errno == EINTR) continue;
            return fault(errno, "send");
        }
        for (; iovcnt > 0 && (size_t)n >= iov->iov_len; iov++, iovcnt--) n -= iov->iov_len;
        if (iovcnt > 0) {
            iov->iov_base = (char *)iov->iov_base + n;
            iov->iov_len -= (size_t)n;
        }
    }
    return 0;
}

static void pack_response(uint8_t *out, int status, uint64_t length) {
    uint32_t s = (uint32_t)status;
    for (int i = 0; i < 4; i++) out[i] = (uint8_t)(s >> (24 - 8 * i));
    for (int i = 0; i < 8; i++) out[4 + i] = (uint8_t)(length >> (56 - 8 * i));
}

/* ---- queued answers */

/* sends every queued answer in one sendmsg; flags: MSG_MORE when more bytes follow at once */
static int flush_answers(mc_conn *c, int flags) {
    struct conn_io *io = c->io;
    if (io->iovcnt == 0) return 0;
    int rc = send_all_flags(c, io->iov, io->iovcnt, flags);
    if (rc == 0) {
        COUNT(c->server, requests, io->queued_requests);
        COUNT(c->server, bytes_out, io->queued_read_bytes);
    }
    io->iovcnt = io->heads = 0;
    io->queued_bytes = io->queued_requests = io->queued_read_bytes = 0;
    return rc;
}

/* queues an answer: its header, then `length` segment bytes at `bytes` when not NULL (a
 * READ's). served: it counts as a served request once sent (a refusal does not). */
static int queue_answer(mc_conn *c, int status, uint64_t length, const uint8_t *bytes,
                        int served) {
    struct conn_io *io = c->io;
    if (io->heads == QUEUE_ANSWERS) {
        int rc = flush_answers(c, 0);
        if (rc != 0) return rc;
    }
    uint8_t *head = io->head[io->heads++];
    size_t head_bytes = MC_DATAPLANE_RESPONSE_BYTES;
    pack_response(head, status, length);
    if (io->aligned) {
        head_bytes = MC_DATAPLANE_ALIGNED_RESPONSE_BYTES;
        memset(head + MC_DATAPLANE_RESPONSE_BYTES, 0, head_bytes - MC_DATAPLANE_RESPONSE_BYTES);
    }
    io->iov[io->iovcnt++] = (struct iovec){.iov_base = head, .iov_len = head_bytes};
    io->queued_bytes += head_bytes;
    if (bytes != NULL && length > 0) {
        io->iov[io->iovcnt++] = (struct iovec){.iov_base = (void *)bytes, .iov_len = length};
        io->queued_bytes += length;
        io->queued_read_bytes += length;
        uint32_t pad = io->aligned ? mc_dataplane_pad(length) : 0;
        if (pad > 0) {
            io->iov[io->iovcnt++] = (struct iovec){.iov_base = (void *)zeros, .iov_len = pad};
            io->queued_bytes += pad;
        }
    }
    io->queued_requests += served ? 1 : 0;
    return io->queued_bytes >= QUEUE_BYTES ? flush_answers(c, 0) : 0;
}

/* ---- buffered input */

static size_t buffered(const struct conn_io *io) { return io->in_end - io->in_start; }

/* recv what the socket has into the input buffer (its unparsed part moved to the front first);
 * returns the bytes read, 0 at end of input, -EAGAIN when MSG_DONTWAIT found none, or -errno */
static ssize_t fill_input(mc_conn *c, int flags) {
    struct conn_io *io = c->io;
    if (io->in_start > 0) {
        memmove(io->in, io->in + io->in_start, buffered(io));
        io->in_end -= io->in_start;
        io->in_start = 0;
    }
    for (;;) {
        ssize_t n = recv(c->fd, io->in + io->in_end, INPUT_BYTES - io->in_end, flags);
        if (n >= 0) {
            io->in_end += (size_t)n;
            return n;
        }
        if (errno == EINTR) continue;
        if ((flags & MSG_DONTWAIT) && (errno == EAGAIN || errno == EWOULDBLOCK)) return -EAGAIN;
        return fault(errno, "recv");
    }
}

/* more input for an incomplete request: what is readable now while answers wait in the queue,
 * else the queue goes out and the thread waits (spins, then sleeps up to the idle timeout) */
static ssize_t more_input(mc_conn *c) {
    if (c->io->iovcnt > 0) {
        ssize_t got = fill_input(c, MSG_DONTWAIT);
        if (got != -EAGAIN) return got;
        int rc = flush_answers(c, 0);
        if (rc != 0) return rc;
    }
    mc_spin_ready(c->fd, POLLIN);   /* a client's next request often follows at once */
    return fill_input(c, 0);
}

static int parse_header(mc_conn *c, const uint8_t *head, request *r) {
    r->op = head[4];
    r->grant_len = (unsigned)mc_load_be(head + 6, 2);
    r->segment_id = (uint32_t)mc_load_be(head + 8, 4);
    r->offset = mc_load_be(head + 12, 8);
    r->length = mc_load_be(head + 20, 8);
    r->aligned = memcmp(head, DATAPLANE_MAGIC_ALIGNED, 4) == 0;
    if ((!r->aligned && memcmp(head, DATAPLANE_MAGIC, 4) != 0) ||
        (r->op != MC_OP_READ && r->op != MC_OP_WRITE))
        return refuse(c, MC_CODE_INVALID_PARAMS, "malformed request header");
    c->io->aligned = r->aligned;
    if (r->grant_len > MC_DATAPLANE_MAX_GRANT_LEN)
        return refuse(c, MC_CODE_INVALID_PARAMS, "grant of %u bytes", r->grant_len);
    return 0;
}

static const server_segment *find_segment(const mc_server *s, uint32_t id) {
    for (int i = 0; i < s->segment_count; i++)
        if (s->segments[i].id == id) return &s->segments[i];
    return NULL;
}

/* checks the grant under the current key (which re-registration may swap at any time), then
 * the range against the segment; on success *target is the segment the range lies in */
static int authorize(mc_conn *c, const request *r, const uint8_t *token,
                     const server_segment **target, uint64_t *expiry_ms) {
    mc_server *s = c->server;
    mc_grant grant;
    pthread_rwlock_rdlock(&s->auth_lock);
    int registered = s->key_len > 0;
    int rc = registered ? mc_grant_verify_keyed(&s->key, token, r->grant_len, s->worker_id,
                                                s->worker_id_len, clock_ms(CLOCK_REALTIME),
                                                &grant)
                        : 0;
    pthread_rwlock_unlock(&s->auth_lock);
    if (!registered)
        return refuse(c, MC_CODE_UNAVAILABLE_IN_CURRENT_STATUS, "worker not registered yet");
    if (rc != 0) return refuse(c, MC_CODE_PERMISSION_DENIED, "%s", mc_last_error());
    if (!mc_grant_covers(&grant, r->op, r->segment_id, r->offset, r->length))
        return refuse(c, MC_CODE_PERMISSION_DENIED, "request is outside its grant");
    const server_segment *segment = find_segment(s, r->segment_id);
    if (segment == NULL || r->offset > segment->size || r->length > segment->size - r->offset)
        return refuse(c, MC_CODE_INVALID_PARAMS, "range is outside the segment");
    *target = segment;
    *expiry_ms = grant.expiry_ms;
    return 0;
}

/* waits for input until the grant expires or the connection has been idle too long */
static int wait_payload(mc_conn *c, uint64_t expiry_ms, uint64_t idle_deadline_ms) {
    uint64_t now = clock_ms(CLOCK_REALTIME), mono = clock_ms(CLOCK_MONOTONIC);
    if (now > expiry_ms) return 0;   /* the caller's expiry check refuses */
    if (mono >= idle_deadline_ms) return mc_fail(-ETIMEDOUT, "payload: connection idle too long");
    uint64_t wait_ms = expiry_ms - now + 1;
    if (idle_deadline_ms - mono < wait_ms) wait_ms = idle_deadline_ms - mono;
    struct pollfd pfd = {.fd = c->fd, .events = POLLIN};
    if (poll(&pfd, 1, wait_ms > INT_MAX ? INT_MAX : (int)wait_ms) < 0 && errno != EINTR)
        return fault(errno, "poll");
    return 0;
}

/* recv straight into the segment, stopping when the grant expires: after that the master may
 * have handed the range to another object, so no late byte may land in it */
static int recv_payload(mc_conn *c, uint8_t *dst, uint64_t length, uint64_t expiry_ms) {
    uint64_t idle_deadline_ms = clock_ms(CLOCK_MONOTONIC) + (uint64_t)c->server->idle_timeout_ms;
    while (length > 0) {
        if (clock_ms(CLOCK_REALTIME) > expiry_ms)
            return refuse(c, MC_CODE_LEASE_EXPIRED, "write grant expired mid-payload");
        size_t want = length > MAX_RECV_BYTES ? MAX_RECV_BYTES : (size_t)length;
        ssize_t n = recv(c->fd, dst, want, MSG_DONTWAIT);
        if (n > 0) {
            dst += n;
            length -= (uint64_t)n;
            idle_deadline_ms = clock_ms(CLOCK_MONOTONIC) + (uint64_t)c->server->idle_timeout_ms;
            continue;
        }
        if (n == 0) return refuse(c, MC_CODE_INVALID_PARAMS, "peer closed mid-payload");
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
            return fault(errno, "recv payload");
        int rc = wait_payload(c, expiry_ms, idle_deadline_ms);
        if (rc != 0) return rc;
    }
    return 0;
}

/* a WRITE's payload: what the input buffer holds first, then straight from the socket; no
 * byte lands once the grant has expired, buffered or not */
static int take_payload(mc_conn *c, uint8_t *dst, uint64_t length, uint64_t expiry_ms) {
    struct conn_io *io = c->io;
    size_t from_buffer = buffered(io) < length ? buffered(io) : (size_t)length;
    if (from_buffer > 0) {
        if (clock_ms(CLOCK_REALTIME) > expiry_ms)
            return refuse(c, MC_CODE_LEASE_EXPIRED, "write grant expired mid-payload");
        memcpy(dst, io->in + io->in_start, from_buffer);
        io->in_start += from_buffer;
        dst += from_buffer;
        length -= from_buffer;
    }
    return length > 0 ? recv_payload(c, dst, length, expiry_ms) : 0;
}

/* a WRITE into a file segment: the payload through the connection's buffer, a pwrite per
 * whole chunk and only while the grant lasts (the rule recv_payload keeps for memory) */
static int recv_to_file(mc_conn *c, int fd, uint64_t offset, uint64_t length,
                        uint64_t expiry_ms) {
    if (length > 0 && c->file_buffer == NULL &&
        (c->file_buffer = malloc(MC_SERVER_FILE_CHUNK_BYTES)) == NULL)
        return refuse(c, MC_CODE_WRITE_FAIL, "no memory for a file write buffer");
    while (length > 0) {
        size_t chunk = length > MC_SERVER_FILE_CHUNK_BYTES ? MC_SERVER_FILE_CHUNK_BYTES
                                                           : (size_t)length;
        int rc = take_payload(c, c->file_buffer, chunk, expiry_ms);
        if (rc != 0) return rc;
        if (clock_ms(CLOCK_REALTIME) > expiry_ms)
            return refuse(c, MC_CODE_LEASE_EXPIRED, "write grant expired mid-payload");
        if (mc_file_write(fd, offset, c->file_buffer, chunk) != 0)
            return refuse(c, MC_CODE_WRITE_FAIL, "%s", mc_last_error());
        offset += chunk;
        length -= chunk;
    }
    return 0;
}

/* queued answers go out first when the payload may block (not all of it is buffered), or when
 * a queued READ's bytes are still to be sent: the payload might overwrite them */
static int serve_write(mc_conn *c, const request *r, const server_segment *segment,
                       uint64_t expiry_ms) {
    int rc = 0;
    if (c->io->queued_read_bytes > 0 || r->length > buffered(c->io)) rc = flush_answers(c, 0);
    if (rc == 0)
        rc = segment->fd >= 0
                 ? recv_to_file(c, segment->fd, r->offset, r->length, expiry_ms)
                 : take_payload(c, segment->addr + r->offset, r->length, expiry_ms);
    if (rc == 0 && r->aligned) {   /* the payload's padding: read and dropped */
        uint8_t pad[MC_DATAPLANE_ALIGN];
        rc = take_payload(c, pad, mc_dataplane_pad(r->length), UINT64_MAX);
    }
    if (rc != 0) return rc;
    COUNT(c->server, bytes_in, r->length);
    return queue_answer(c, 0, r->length, NULL, 1);
}

/* waits until the socket takes bytes again or the connection has been idle too long */
static int wait_writable(mc_conn *c, uint64_t idle_deadline_ms) {
    uint64_t mono = clock_ms(CLOCK_MONOTONIC);
    if (mono >= idle_deadline_ms) return mc_fail(-ETIMEDOUT, "sendfile: connection idle too long");
    uint64_t wait_ms = idle_deadline_ms - mono;
    struct pollfd pfd = {.fd = c->fd, .events = POLLOUT};
    if (poll(&pfd, 1, wait_ms > INT_MAX ? INT_MAX : (int)wait_ms) < 0 && errno != EINTR)
        return fault(errno, "poll");
    return 0;
}

/* the range of a file segment, page cache to socket. The socket blocks for at most the idle
 * timeout (SO_SNDTIMEO); EAGAIN after that is the idle rule, as for sendmsg. SIGPIPE cannot
 * reach Python: our threads block every signal and Python ignores it anyway. */
static int send_file_range(mc_conn *c, int fd, uint64_t offset, uint64_t length) {
    off_t at = (off_t)offset;
    uint64_t idle_deadline_ms = clock_ms(CLOCK_MONOTONIC) + (uint64_t)c->server->idle_timeout_ms;
    while (length > 0) {
        size_t want = length > MAX_SENDFILE_BYTES ? MAX_SENDFILE_BYTES : (size_t)length;
        ssize_t n = sendfile(c->fd, fd, &at, want);
        if (n > 0) {
            length -= (uint64_t)n;
            idle_deadline_ms = clock_ms(CLOCK_MONOTONIC) + (uint64_t)c->server->idle_timeout_ms;
            continue;
        }
        if (n == 0) return mc_fail(-EIO, "sendfile: segment file ends before byte %lld",
                                   (long long)at);
        if (errno == EINTR) continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK) return fault(errno, "sendfile");
        int rc = wait_writable(c, idle_deadline_ms);
        if (rc != 0) return rc;
    }
    return 0;
}

/* a memory segment's READ is queued; a file segment's goes out now, behind the queue */
static int serve_read(mc_conn *c, const request *r, const server_segment *segment) {
    if (segment->fd < 0) return queue_answer(c, 0, r->length, segment->addr + r->offset, 1);
    int rc = queue_answer(c, 0, r->length, NULL, 0);
    /* MSG_MORE: the header leaves with the file's first bytes */
    if (rc == 0) rc = flush_answers(c, r->length > 0 ? MSG_MORE : 0);
    if (rc == 0) rc = send_file_range(c, segment->fd, r->offset, r->length);
    uint32_t pad = r->aligned && r->length > 0 ? mc_dataplane_pad(r->length) : 0;
    if (rc == 0 && pad > 0) {
        struct iovec zero_pad = {.iov_base = (void *)zeros, .iov_len = pad};
        rc = send_all_flags(c, &zero_pad, 1, 0);
    }
    if (rc != 0) return rc;
    COUNT(c->server, bytes_out, r->length);
    COUNT(c->server, requests, 1);
    return 0;
}

/* the next request's header and grant from the input, reading more while they are incomplete;
 * returns 1 with *token pointing at the grant in the buffer (valid until the next read), 0 at a
 * clean close between requests (answers sent), REFUSED or -errno */
static int next_request(mc_conn *c, request *r, const uint8_t **token) {
    struct conn_io *io = c->io;
    int have_header = 0;
    for (;;) {
        size_t have = buffered(io);
        if (!have_header && have >= MC_DATAPLANE_REQUEST_BYTES) {
            int rc = parse_header(c, io->in + io->in_start, r);
            if (rc != 0) return rc;
            have_header = 1;
        }
        size_t head_bytes = MC_DATAPLANE_REQUEST_BYTES + (have_header ? r->grant_len : 0);
        if (have_header && r->aligned) head_bytes += mc_dataplane_pad(head_bytes);
        if (have_header && have >= head_bytes) {
            *token = io->in + io->in_start + MC_DATAPLANE_REQUEST_BYTES;
            io->in_start += head_bytes;
            return 1;
        }
        ssize_t got = more_input(c);
        if (got < 0) return (int)got;
        if (got > 0) continue;
        if (have > 0)   /* answer_refusal sends the queued answers before this one */
            return refuse(c, MC_CODE_INVALID_PARAMS, "peer closed mid-%s",
                          have_header ? "grant" : "header");
        return flush_answers(c, 0);
    }
}

static int serve_request(mc_conn *c, const request *r, const uint8_t *token) {
    const server_segment *target = NULL;
    uint64_t expiry_ms = 0;
    int rc = authorize(c, r, token, &target, &expiry_ms);
    if (rc != 0) return rc;
    return r->op == MC_OP_WRITE ? serve_write(c, r, target, expiry_ms) : serve_read(c, r, target);
}

/* shuts our side, then reads and drops input for up to MC_SERVER_LINGER_MS: closing a socket
 * with unread input sends RST, and the peer would lose the error reply */
static void linger_close(mc_conn *c) {
    char scratch[LINGER_SCRATCH_BYTES];
    shutdown(c->fd, SHUT_WR);
    uint64_t deadline = clock_ms(CLOCK_MONOTONIC) + MC_SERVER_LINGER_MS;
    for (uint64_t now; (now = clock_ms(CLOCK_MONOTONIC)) < deadline;) {
        struct pollfd pfd = {.fd = c->fd, .events = POLLIN};
        int ready = poll(&pfd, 1, (int)(deadline - now));
        if (ready < 0 && errno == EINTR) continue;
        if (ready <= 0) return;
        ssize_t n = recv(c->fd, scratch, sizeof scratch, MSG_DONTWAIT);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) return;
    }
}

static int stopping(const mc_server *s) {
    return __atomic_load_n(&s->state, __ATOMIC_RELAXED) == SERVER_STOPPED;
}

static void answer_refusal(mc_conn *c) {
    COUNT(c->server, refused, 1);
    if (!stopping(c->server))   /* at stop, closed sockets would read as refusals */
        server_push_event(c->server, MC_SERVER_EVENT_REFUSED, c->refusal, c->peer, c->reason);
    /* the answers queued before it go first, in the same sendmsg */
    if (queue_answer(c, c->refusal, 0, NULL, 0) == 0 && flush_answers(c, 0) == 0)
        linger_close(c);
}

void server_serve_connection(mc_conn *c) {
    c->io = malloc(sizeof *c->io);
    if (c->io == NULL) {
        server_push_event(c->server, MC_SERVER_EVENT_CONNECTION_LOST, 0, c->peer,
                          "no memory for the connection's buffers");
        return;
    }
    struct conn_io *io = c->io;   /* the buffers themselves need no zeroing */
    io->in_start = io->in_end = 0;
    io->iovcnt = io->heads = 0;
    io->queued_bytes = io->queued_requests = io->queued_read_bytes = 0;
    io->aligned = 0;
    int rc;
    for (;;) {
        request r;
        const uint8_t *token = NULL;
        rc = next_request(c, &r, &token);
        if (rc != 1) break;
        rc = serve_request(c, &r, token);
        if (rc != 0) break;
    }
    if (rc == REFUSED) {
        answer_refusal(c);
    } else if (rc < 0 && !stopping(c->server)) {
        server_push_event(c->server, MC_SERVER_EVENT_CONNECTION_LOST, 0, c->peer,
                          mc_last_error());
    }
    free(c->io);
    c->io = NULL;
}
