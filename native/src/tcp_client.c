/* Client side of the TCP data plane: one vectored, pipelined exchange per batch.
 *
 * A batch's requests (header, grant, and for a WRITE the payload straight from the user's
 * buffers) go out through sendmsg with many iovecs per call, while responses are read as they
 * arrive, READ payloads straight into the user's buffers. Sending and receiving interleave
 * under poll(), so a large batch can never deadlock on full socket buffers. The worker closes
 * a connection after refusing a request, so an exchange ends at the first refusal: the caller
 * closes the connection and retries the rest on a new one.
 *
 * An exchange speaks its connection's wire form: the aligned one (MCD2), or MCD1 for workers
 * older than native 3.3.0. Such a worker refuses an aligned request as malformed, in MCD1,
 * before it has applied anything; the exchange then ends with MC_TCP_ERR_MCD1_ONLY and the
 * caller runs it again on a new connection in MCD1 (native/tcp.py).
 */
#include "mc_tcp.h"
#include "mc_server.h"   /* the wire format's sizes */

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define REQUEST_HEADER_BYTES MC_DATAPLANE_REQUEST_BYTES   /* "!4sBBHIQQ" */
/* an answer header's slot, sized for the larger form: "!iQ" then, aligned, zeros to 64 */
#define HEAD_SLOT_BYTES MC_DATAPLANE_ALIGNED_RESPONSE_BYTES

/* what differs between the wire forms; an exchange copies its connection's into its cursor
 * and state, so the same code sends and receives both at no cost beyond a load */
typedef struct {
    char magic[4];
    uint32_t head_bytes;   /* an answer header */
    uint32_t pad_mask;     /* the zeros after n bytes are -n & pad_mask: none in MCD1 */
} wire_form;

static const wire_form forms[] = {
    [MC_TCP_FORM_ALIGNED] = {{'M', 'C', 'D', '2'}, MC_DATAPLANE_ALIGNED_RESPONSE_BYTES,
                             MC_DATAPLANE_ALIGN - 1},
    [MC_TCP_FORM_MCD1] = {{'M', 'C', 'D', '1'}, MC_DATAPLANE_RESPONSE_BYTES, 0},
};

static const uint8_t zeros[MC_DATAPLANE_ALIGN];   /* our requests' padding */
#define SOCKET_BUFFER_BYTES (4 << 20)
#define MAX_SEND_IOVS 256
#define MAX_RECV_IOVS 256
#define MAX_RECV_BYTES (1u << 30)
#define LOW_WATER_MAX (512 << 10)

static int64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int wait_fd(int fd, short events, int64_t deadline) {
    struct pollfd p = {fd, events, 0};
    for (;;) {
        int64_t left = deadline - now_ms();
        if (left <= 0) return mc_fail(-ETIMEDOUT, "timed out");
        int rc = poll(&p, 1, left > INT_MAX ? INT_MAX : (int)left);
        if (rc > 0) return 0;
        if (rc < 0 && errno != EINTR) return mc_fail(-errno, "poll: %s", strerror(errno));
    }
}

static void tune_socket(int fd) {
    int one = 1, size = SOCKET_BUFFER_BYTES;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
    /* large buffers keep a multi-MiB transfer streaming instead of stalling on the window */
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof size);
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
}

static int connect_one(const struct addrinfo *ai, int64_t deadline) {
    int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, ai->ai_protocol);
    if (fd < 0) return mc_fail(-errno, "socket: %s", strerror(errno));
    tune_socket(fd);
    if (connect(fd, ai->ai_addr, ai->ai_addrlen) != 0 && errno != EINPROGRESS) {
        int rc = mc_fail(-errno, "connect: %s", strerror(errno));
        close(fd);
        return rc;
    }
    int rc = wait_fd(fd, POLLOUT, deadline), err = 0;
    socklen_t len = sizeof err;
    if (rc == 0 && getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err != 0)
        rc = mc_fail(-err, "connect: %s", strerror(err));
    if (rc != 0) close(fd);
    return rc != 0 ? rc : fd;
}

int mc_tcp_connect(const char *host, int port, int timeout_ms) {
    char service[16];
    snprintf(service, sizeof service, "%d", port);
    struct addrinfo hints = {0}, *list = NULL;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV;
    int gai = getaddrinfo(host, service, &hints, &list);
    if (gai != 0) return mc_fail(-EHOSTUNREACH, "resolve %s: %s", host, gai_strerror(gai));
    int64_t deadline = now_ms() + timeout_ms;
    int rc = -ECONNREFUSED;
    for (struct addrinfo *ai = list; ai != NULL; ai = ai->ai_next)
        if ((rc = connect_one(ai, deadline)) >= 0) break;
    freeaddrinfo(list);
    return rc;
}

int mc_tcp_close(int fd) { return close(fd) == 0 ? 0 : mc_fail(-errno, "close: %s", strerror(errno)); }

/* ---- sending: a cursor over every request's header, grant and payload pieces ---- */

typedef struct {
    mc_tcp_request *requests;
    size_t count;
    uint32_t pad_mask; /* the form's */
    uint8_t (*headers)[REQUEST_HEADER_BYTES];
    size_t req;        /* request being sent */
    uint32_t piece;    /* 0 header, 1 grant, 2 its padding, 3.. payload iovs, then theirs */
    uint64_t done;     /* bytes of that piece already sent */
} send_cursor;

static int piece_at(const send_cursor *c, size_t req, uint32_t piece, struct iovec *out) {
    const mc_tcp_request *r = &c->requests[req];
    if (piece == 0) { out->iov_base = c->headers[req]; out->iov_len = REQUEST_HEADER_BYTES; return 1; }
    if (piece == 1) { out->iov_base = (void *)r->grant; out->iov_len = r->grant_len; return 1; }
    if (piece == 2) {
        out->iov_base = (void *)zeros;
        out->iov_len = mc_pad(c->pad_mask, REQUEST_HEADER_BYTES + r->grant_len);
        return 1;
    }
    if (r->op != MC_OP_WRITE || piece - 3 > r->iov_count) return 0;
    if (piece - 3 == r->iov_count) {
        out->iov_base = (void *)zeros;
        out->iov_len = mc_pad(c->pad_mask, r->length);
        return 1;
    }
    out->iov_base = r->iov[piece - 3].base;
    out->iov_len = r->iov[piece - 3].length;
    return 1;
}

/* gathers up to MAX_SEND_IOVS pieces from the cursor; returns how many */
static int gather(const send_cursor *c, struct iovec *iov) {
    int n = 0;
    size_t req = c->req;
    uint32_t piece = c->piece;
    uint64_t skip = c->done;
    while (req < c->count && n < MAX_SEND_IOVS) {
        if (!piece_at(c, req, piece, &iov[n])) { req++; piece = 0; continue; }
        iov[n].iov_base = (char *)iov[n].iov_base + skip;
        iov[n].iov_len -= skip;
        skip = 0;
        piece++;
        if (iov[n].iov_len > 0) n++;
    }
    return n;
}

static void advance(send_cursor *c, size_t sent) {
    struct iovec piece;
    while (c->req < c->count) {
        if (!piece_at(c, c->req, c->piece, &piece)) { c->req++; c->piece = 0; c->done = 0; continue; }
        uint64_t left = piece.iov_len - c->done;
        if (sent < left) { c->done += sent; return; }
        sent -= left;
        c->piece++;
        c->done = 0;
    }
}

/* sends what the socket takes now; 1 when bytes went, 0 when none could, or an error */
static int send_some(int fd, send_cursor *c) {
    int progress = 0;
    struct iovec iov[MAX_SEND_IOVS];
    for (;;) {
        int n = gather(c, iov);
        if (n == 0) { c->req = c->count; return progress; }
        struct msghdr msg = {0};
        msg.msg_iov = iov;
        msg.msg_iovlen = n;
        ssize_t sent = sendmsg(fd, &msg, MSG_NOSIGNAL);
        if (sent < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) return progress;
            if (errno == EINTR) continue;
            return mc_fail(-errno, "send: %s", strerror(errno));
        }
        advance(c, (size_t)sent);
        progress = 1;
    }
}

/* ---- receiving: responses in request order, READ payloads into the user's buffers ----
 *
 * One recvmsg scatters as many answers as have arrived: each answer's header into
 * its own slot, and (assuming success) a READ's payload straight into the user's buffers
 * after it, then the payload's padding into a scratch slot. The assumption costs nothing
 * when wrong: a refusal is the worker's last answer (it closes the connection), and an
 * answer of the wrong length fails the exchange. */

typedef struct {
    size_t req;                      /* request whose response is being read */
    const wire_form *form;
    uint32_t head_bytes, pad_mask;   /* the form's */
    uint8_t (*heads)[HEAD_SLOT_BYTES];   /* a header slot per request */
    uint32_t head_len;               /* bytes of the current header read so far */
    int in_payload;                  /* the head is done; a READ payload is arriving */
    uint32_t iov;                    /* payload position: current iov and bytes done in it */
    uint64_t done;
    uint32_t pad_done;               /* bytes of the payload's padding read (after the iovs) */
    int refused;
    int low_water;                   /* SO_RCVLOWAT now set on the socket */
    uint8_t pad[MC_DATAPLANE_ALIGN];  /* where padding lands (every answer's, overwritten) */
} recv_state;

static void finish(mc_tcp_request *r, recv_state *s) {
    r->status = 0;
    s->req++;
    s->head_len = 0;
    s->in_payload = 0;
    s->iov = 0;
    s->done = 0;
    s->pad_done = 0;
}

/* a complete response header: records a refusal, checks the length, starts a payload */
static int take_head(mc_tcp_request *r, recv_state *s) {
    const uint8_t *head = s->heads[s->req];
    int32_t status = (int32_t)(uint32_t)mc_load_be(head, 4);
    uint64_t length = mc_load_be(head + 4, 8);
    if (status != 0) {
        if (status > 0)
            return mc_fail(MC_ERR_PROTOCOL, "worker answered status %d", (int)status);
        r->status = status;
        s->refused = 1;
        return 0;
    }
    if (length != r->length)
        return mc_fail(MC_ERR_PROTOCOL, "worker answered %llu bytes for a request of %llu",
                       (unsigned long long)length, (unsigned long long)r->length);
    if (r->op == MC_OP_WRITE || r->length == 0)
        finish(r, s);
    else
        s->in_payload = 1;
    return 0;
}

/* skips payload pieces already full; finishes the request when its payload and the
 * padding after it are complete */
static void settle_payload(mc_tcp_request *r, recv_state *s) {
    while (s->iov < r->iov_count && s->done == r->iov[s->iov].length) { s->iov++; s->done = 0; }
    if (s->iov == r->iov_count && s->pad_done == mc_pad(s->pad_mask, r->length)) finish(r, s);
}

/* where the next bytes go, answer after answer from the current position: up to
 * MAX_RECV_IOVS pieces and MAX_RECV_BYTES bytes */
static int plan_recv(mc_tcp_request *requests, size_t count, const recv_state *s,
                     struct iovec *iov) {
    int n = 0;
    uint64_t total = 0;
    const uint32_t head_bytes = s->head_bytes;
    for (size_t req = s->req; req < count && n < MAX_RECV_IOVS && total < MAX_RECV_BYTES; req++) {
        const mc_tcp_request *r = &requests[req];
        int current = req == s->req;
        if (!(current && s->in_payload)) {
            uint32_t from = current ? s->head_len : 0;
            iov[n++] = (struct iovec){s->heads[req] + from, head_bytes - from};
            total += head_bytes - from;
        }
        if (r->op != MC_OP_READ || r->length == 0) continue;
        uint32_t i = current && s->in_payload ? s->iov : 0;
        for (; i < r->iov_count && n < MAX_RECV_IOVS && total < MAX_RECV_BYTES; i++) {
            uint64_t skip = current && s->in_payload && i == s->iov ? s->done : 0;
            uint64_t len = r->iov[i].length - skip;
            if (len > MAX_RECV_BYTES - total) len = MAX_RECV_BYTES - total;
            if (len == 0) continue;
            iov[n++] = (struct iovec){(char *)r->iov[i].base + skip, (size_t)len};
            total += len;
            if (len < r->iov[i].length - skip) return n;   /* the payload goes on next time */
        }
        if (i < r->iov_count || n == MAX_RECV_IOVS) return n;
        uint32_t from = current && s->in_payload ? s->pad_done : 0;
        uint32_t pad = mc_pad(s->pad_mask, r->length) - from;
        if (pad > 0) {
            iov[n++] = (struct iovec){(uint8_t *)s->pad + from, pad};
            total += pad;
        }
    }
    return n;
}

/* moves the state over `got` bytes that landed where plan_recv said */
static int consume(mc_tcp_request *requests, size_t count, recv_state *s, uint64_t got) {
    while (got > 0 && s->req < count && !s->refused) {
        mc_tcp_request *r = &requests[s->req];
        if (!s->in_payload) {
            uint32_t take = s->head_bytes - s->head_len;
            if (take > got) take = (uint32_t)got;
            s->head_len += take;
            got -= take;
            if (s->head_len == s->head_bytes) {
                int rc = take_head(r, s);
                if (rc < 0) return rc;
                if (s->in_payload) settle_payload(r, s);
            }
            continue;
        }
        if (s->iov == r->iov_count) {   /* the payload is in: its padding */
            uint32_t left = mc_pad(s->pad_mask, r->length) - s->pad_done;
            uint32_t take = left < got ? left : (uint32_t)got;
            s->pad_done += take;
            got -= take;
            settle_payload(r, s);
            continue;
        }
        uint64_t left = r->iov[s->iov].length - s->done, take = left < got ? left : got;
        s->done += take;
        got -= take;
        settle_payload(r, s);
    }
    return 0;
}

/* Whether the connection, just ended with answers owed, was a worker older than the aligned
 * form. Such a worker parses our first aligned header as malformed: it answers in MCD1, 12
 * bytes (MC_CODE_INVALID_PARAMS, length 0), and closes, having applied nothing. Only exactly
 * that, as the exchange's first answer, counts: a worker that speaks the aligned form answers
 * it in 64-byte headers, a refusal included. */
static int mcd1_refusal(const recv_state *s) {
    const uint8_t *head = s->heads[0];
    return s->form == &forms[MC_TCP_FORM_ALIGNED] && s->req == 0 && !s->in_payload &&
           s->head_len == MC_DATAPLANE_RESPONSE_BYTES &&
           (int32_t)(uint32_t)mc_load_be(head, 4) == MC_CODE_INVALID_PARAMS && mc_load_be(head + 4, 8) == 0;
}

static int mcd1_only(void) {
    return mc_fail(MC_TCP_ERR_MCD1_ONLY,
                   "the worker refused the aligned form as malformed: it speaks only MCD1");
}

/* reads every response that has arrived; stops at a refusal. 1 when bytes came, 0 when
 * none had, or an error (a close is an error: responses were owed) */
static int recv_some(int fd, mc_tcp_request *requests, size_t count, recv_state *s) {
    int progress = 0;
    while (s->req < count && !s->refused) {
        struct iovec iov[MAX_RECV_IOVS];
        struct msghdr msg = {0};
        msg.msg_iov = iov;
        msg.msg_iovlen = (size_t)plan_recv(requests, count, s, iov);
        ssize_t n = recvmsg(fd, &msg, 0);
        if (n == 0)
            return mcd1_refusal(s) ? mcd1_only()
                                   : mc_fail(-ECONNRESET, "worker closed the connection");
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) return progress;
            if (errno == EINTR) continue;
            return mcd1_refusal(s) ? mcd1_only() : mc_fail(-errno, "recv: %s", strerror(errno));
        }
        int rc = consume(requests, count, s, (uint64_t)n);
        if (rc < 0) return rc;
        progress = 1;
    }
    return progress;
}

/* ---- the exchange ---- */

static int check_requests(mc_tcp_request *requests, size_t count) {
    for (size_t i = 0; i < count; i++) {
        mc_tcp_request *r = &requests[i];
        uint64_t total = 0;
        for (uint32_t j = 0; j < r->iov_count; j++) total += r->iov[j].length;
        if ((r->op != MC_OP_READ && r->op != MC_OP_WRITE) || total != r->length)
            return mc_fail(-EINVAL, "request %zu: bad op %d or buffers of %llu bytes for %llu",
                           i, r->op, (unsigned long long)total, (unsigned long long)r->length);
        r->status = MC_STATUS_PENDING;
    }
    return 0;
}

static void encode_headers(const wire_form *form, const mc_tcp_request *requests, size_t count,
                           uint8_t (*headers)[REQUEST_HEADER_BYTES]) {
    for (size_t i = 0; i < count; i++) {
        uint8_t *h = headers[i];
        memcpy(h, form->magic, 4);
        h[4] = requests[i].op;
        h[5] = 0;
        mc_store_be(h + 6, requests[i].grant_len, 2);
        mc_store_be(h + 8, requests[i].segment_id, 4);
        mc_store_be(h + 12, requests[i].offset, 8);
        mc_store_be(h + 20, requests[i].length, 8);
    }
}

/* While only a READ payload is still to come, wake when a good part of it has arrived
 * rather than for every segment: fewer wake-ups and recv calls per MiB. */
static void set_low_water(int fd, const send_cursor *c, recv_state *s) {
    int want = 1;
    if (c->req == c->count && s->in_payload) {
        const mc_tcp_request *r = &c->requests[s->req];
        uint64_t left = s->iov < r->iov_count ? r->iov[s->iov].length - s->done : 1;
        want = left > LOW_WATER_MAX ? LOW_WATER_MAX : (int)(left ? left : 1);
    }
    if (want != s->low_water) {
        setsockopt(fd, SOL_SOCKET, SO_RCVLOWAT, &want, sizeof want);
        s->low_water = want;
    }
}

/* One exchange on one connection, as a state machine several connections can run at once. */
typedef struct {
    int fd;
    send_cursor c;
    recv_state s;
    uint8_t (*headers)[REQUEST_HEADER_BYTES];
    int64_t deadline;
    int done;
    int rc;                          /* once done: 0, or the error that ended it */
    char error[256];                 /* the error's message: the next failure of another
                                        exchange would overwrite mc_last_error() */
} exchange;

static void end_exchange(exchange *x, int rc) {
    x->done = 1;
    x->rc = rc;
    if (rc < 0) snprintf(x->error, sizeof x->error, "%s", mc_last_error());
}

static int start_exchange(exchange *x, int fd, int form, mc_tcp_request *requests,
                          size_t count, int timeout_ms) {
    memset(x, 0, sizeof *x);
    x->fd = fd;
    x->s.low_water = 1;
    int rc = form == MC_TCP_FORM_ALIGNED || form == MC_TCP_FORM_MCD1
                 ? check_requests(requests, count)
                 : mc_fail(-EINVAL, "unknown wire form %d", form);
    if (rc < 0 || count == 0) {
        end_exchange(x, rc);
        return rc;
    }
    x->headers = malloc(count * REQUEST_HEADER_BYTES);
    x->s.heads = malloc(count * HEAD_SLOT_BYTES);
    if (x->headers == NULL || x->s.heads == NULL) {
        end_exchange(x, mc_fail(-ENOMEM, "out of memory for %zu requests", count));
        return x->rc;
    }
    const wire_form *f = &forms[form];
    x->s.form = f;
    x->s.head_bytes = f->head_bytes;
    x->s.pad_mask = f->pad_mask;
    encode_headers(f, requests, count, x->headers);
    x->c = (send_cursor){.requests = requests, .count = count, .pad_mask = f->pad_mask,
                         .headers = x->headers};
    x->deadline = now_ms() + timeout_ms;
    return 0;
}

/* sends and receives what the socket allows now; ends the exchange when it is over.
 * timeout_ms bounds silence, not the whole batch: a large batch that keeps moving bytes
 * may take longer, a stalled or paused worker fails within timeout_ms */
static void step_exchange(exchange *x, int timeout_ms) {
    send_cursor *c = &x->c;
    recv_state *s = &x->s;
    int sent = c->req < c->count ? send_some(x->fd, c) : 0;
    if (sent < 0) {
        /* the worker may have refused and closed: its answer can still be in our buffer */
        int rc = recv_some(x->fd, c->requests, c->count, s);
        return end_exchange(x, s->refused ? 0 : (rc < 0 ? rc : sent));
    }
    int got = recv_some(x->fd, c->requests, c->count, s);
    if (got < 0) return end_exchange(x, got);
    if (s->req == c->count || s->refused) return end_exchange(x, 0);
    if (sent > 0 || got > 0) x->deadline = now_ms() + timeout_ms;
    set_low_water(x->fd, c, s);
}

static short wanted_events(const exchange *x) {
    return POLLIN | (x->c.req < x->c.count ? POLLOUT : 0);
}

/* the exchange's answer: requests answered (a refusal counts), or the error (its message
 * in x->error and mc_last_error()) */
static int finish_exchange(exchange *x, int timeout_ms) {
    if (x->s.low_water != 1) {   /* the pooled connection's next exchange starts with headers */
        int one = 1;
        setsockopt(x->fd, SOL_SOCKET, SO_RCVLOWAT, &one, sizeof one);
    }
    free(x->headers);
    free(x->s.heads);
    x->headers = NULL;
    x->s.heads = NULL;
    if (x->rc == -ETIMEDOUT)
        snprintf(x->error, sizeof x->error, "no progress for %d ms", timeout_ms);
    if (x->rc < 0) return mc_fail(x->rc, "%s", x->error);
    return (int)(x->s.req + (size_t)x->s.refused);
}

/* Waits until one of the live exchanges can move (polling without sleeping first); an
 * exchange whose silence outlasts its deadline ends with -ETIMEDOUT. */
static int wait_any(exchange *xs, size_t n, struct pollfd *fds) {
    size_t live = 0;
    int64_t deadline = INT64_MAX;
    for (size_t i = 0; i < n; i++) {
        if (xs[i].done) continue;
        fds[live++] = (struct pollfd){xs[i].fd, wanted_events(&xs[i]), 0};
        if (xs[i].deadline < deadline) deadline = xs[i].deadline;
    }
    if (live == 0 || mc_spin_poll(fds, live)) return 0;
    for (;;) {
        int64_t left = deadline - now_ms();
        int rc = left <= 0 ? 0 : poll(fds, live, left > INT_MAX ? INT_MAX : (int)left);
        if (rc > 0) return 0;
        if (rc < 0 && errno != EINTR) return mc_fail(-errno, "poll: %s", strerror(errno));
        if (rc == 0) break;
    }
    int64_t now = now_ms();
    for (size_t i = 0; i < n; i++)
        if (!xs[i].done && xs[i].deadline <= now) end_exchange(&xs[i], -ETIMEDOUT);
    return 0;
}

/* drives exchanges until each has ended: every live one moves, then the thread waits for any */
static void run_exchanges(exchange *xs, size_t n, struct pollfd *fds, int timeout_ms) {
    for (;;) {
        int live = 0;
        for (size_t i = 0; i < n; i++) {
            if (xs[i].done) continue;
            step_exchange(&xs[i], timeout_ms);
            live += !xs[i].done;
        }
        if (live == 0) return;
        int rc = wait_any(xs, n, fds);
        if (rc < 0) {   /* poll itself failed: every exchange still going fails with it */
            for (size_t i = 0; i < n; i++)
                if (!xs[i].done) end_exchange(&xs[i], rc);
            return;
        }
    }
}

int mc_tcp_exchange(int fd, int form, mc_tcp_request *requests, size_t count, int timeout_ms) {
    exchange x;
    struct pollfd pfd;
    start_exchange(&x, fd, form, requests, count, timeout_ms);
    run_exchanges(&x, 1, &pfd, timeout_ms);
    return finish_exchange(&x, timeout_ms);
}

int mc_tcp_exchange_many(mc_tcp_batch *batches, size_t n, int timeout_ms) {
    exchange *xs = calloc(n ? n : 1, sizeof *xs);
    struct pollfd *fds = calloc(n ? n : 1, sizeof *fds);
    if (xs == NULL || fds == NULL) {
        free(xs);
        free(fds);
        return mc_fail(-ENOMEM, "out of memory for %zu exchanges", n);
    }
    for (size_t i = 0; i < n; i++)
        start_exchange(&xs[i], batches[i].fd, batches[i].form, batches[i].requests,
                       batches[i].count, timeout_ms);
    run_exchanges(xs, n, fds, timeout_ms);
    for (size_t i = 0; i < n; i++) {
        batches[i].result = finish_exchange(&xs[i], timeout_ms);
        snprintf(batches[i].error, sizeof batches[i].error, "%s",
                 batches[i].result < 0 ? xs[i].error : "");
    }
    free(xs);
    free(fds);
    return 0;
}
