/* The worker's TCP data-plane server: one-sided READ/WRITE of granted segment ranges.
 *
 * Wire format (proto/dataplane.py, big-endian): a request is a 28-byte header (magic "MCD1",
 * op u8, flags u8, grant_len u16, segment_id u32, offset u64, length u64), the grant, then the
 * payload for a WRITE; the response is status i32, length u64, then the bytes for a READ.
 * Magic "MCD2" asks for the aligned form: zeros pad the header with its grant, the answer
 * header (to 64 bytes) and every payload to a multiple of MC_DATAPLANE_ALIGN. Each request is
 * answered in its own form. Requests may be pipelined on a persistent connection; responses
 * come back in order.
 *
 * One thread per connection. Requests are parsed from a per-connection input buffer and
 * answers to a pipelined batch leave together: READ answers are queued as iovecs (header +
 * segment range, no staging copy) and sent in one sendmsg. A WRITE's payload goes into the
 * segment straight from the socket, but for what the input buffer already holds. A file
 * segment (the SSD tier) is read with sendfile and written through a bounded per-connection
 * buffer and pwrite. A malformed or unauthorised request gets its error response (after the
 * answers before it), then a lingering close of that connection alone.
 *
 * Refusals and connection faults become events (mc_server_next_event) that the caller logs
 * from a thread of its own: the data path never calls back into Python.
 */
#ifndef MC_SERVER_H
#define MC_SERVER_H

#include "mc_common.h"

/* CDEF-BEGIN */
/* Mooncake status codes (proto/errors.py ErrorCode) this server answers with */
#define MC_CODE_WRITE_FAIL (-500)
#define MC_CODE_INVALID_PARAMS (-600)
#define MC_CODE_LEASE_EXPIRED (-707)
#define MC_CODE_UNAVAILABLE_IN_CURRENT_STATUS (-1010)
#define MC_CODE_PERMISSION_DENIED (-1301)

#define MC_DATAPLANE_REQUEST_BYTES 28
#define MC_DATAPLANE_RESPONSE_BYTES 12
/* the aligned form ("MCD2", what our client sends): every request header (with its grant),
 * answer header and payload is padded with zeros to a multiple of MC_DATAPLANE_ALIGN, so that
 * payloads start 64-byte aligned in the stream (see proto/dataplane.py for why) */
#define MC_DATAPLANE_ALIGN 64
#define MC_DATAPLANE_ALIGNED_RESPONSE_BYTES 64
#define MC_DATAPLANE_MAX_GRANT_LEN 2048
#define MC_SERVER_MAX_CONNECTIONS 1024
#define MC_SERVER_IDLE_TIMEOUT_MS 300000
#define MC_SERVER_LINGER_MS 1000
#define MC_SERVER_MAX_SEGMENTS 64
#define MC_SERVER_MAX_KEY_BYTES 256
#define MC_SERVER_FILE_CHUNK_BYTES 262144   /* per-connection buffer for WRITEs into files */

/* event kinds */
#define MC_SERVER_EVENT_REFUSED 1          /* a request got an error response */
#define MC_SERVER_EVENT_CONNECTION_LOST 2  /* a connection failed (reset, timeout) */
#define MC_SERVER_EVENT_CONNECTION_REJECTED 3  /* closed at accept: at the cap, or no thread */
#define MC_SERVER_EVENT_ACCEPT_FAILED 4    /* accept() failed (e.g. EMFILE); still serving */

typedef struct mc_server mc_server;

typedef struct {
    uint64_t bytes_in;           /* WRITE payload bytes stored */
    uint64_t bytes_out;          /* READ bytes sent */
    uint64_t requests;           /* requests served */
    uint64_t refused;            /* requests answered with an error */
    uint64_t connections;        /* open now */
    uint64_t connections_total;  /* accepted since start */
} mc_server_stats;

typedef struct {
    int kind;                    /* MC_SERVER_EVENT_* */
    int code;                    /* the Mooncake code sent (REFUSED), else 0 */
    uint64_t dropped;            /* events lost before this one because the queue was full */
    char peer[64];               /* "host:port" */
    char reason[256];
} mc_server_event;

/* a server with no segments and no grant key: it refuses every request until one is set */
int mc_server_create(const char *worker_id, mc_server **out);
/* before start only; `addr` must stay valid until mc_server_stop returns */
int mc_server_add_segment(mc_server *server, uint32_t segment_id, void *addr, uint64_t size);
/* before start only: a segment file opened read-write, of at least `size` bytes; the server
 * keeps a duplicate of `fd` (closed by mc_server_destroy), so the caller may close its own */
int mc_server_add_file_segment(mc_server *server, uint32_t segment_id, int fd, uint64_t size);
/* before start only; 0 keeps a default */
int mc_server_set_limits(mc_server *server, int max_connections, int idle_timeout_ms);
/* binds and starts accepting; returns the bound port */
int mc_server_start(mc_server *server, const char *host, int port);
/* any time, also while serving (re-registration); a zero-length key refuses every request */
int mc_server_set_grant_key(mc_server *server, const uint8_t *key, size_t key_len);
int mc_server_set_worker_id(mc_server *server, const char *worker_id);
void mc_server_get_stats(mc_server *server, mc_server_stats *out);
/* blocks until an event (returns 1) or until the server is stopped and no event is left
 * (returns 0); for one consumer thread */
int mc_server_next_event(mc_server *server, mc_server_event *out);
/* closes the listener and every connection and waits for their threads: after it returns no
 * thread touches a segment. Idempotent. */
int mc_server_stop(mc_server *server);
/* stops, then frees; no call may be in progress on this server (join the event thread first) */
void mc_server_destroy(mc_server *server);
/* CDEF-END */

/* the zeros that pad n bytes to a multiple of pad_mask + 1 (a power of two; a mask of 0
 * pads nothing, as in MCD1) */
static inline uint32_t mc_pad(uint32_t pad_mask, uint64_t n) {
    return (uint32_t)-n & pad_mask;
}

_Static_assert((MC_DATAPLANE_ALIGN & (MC_DATAPLANE_ALIGN - 1)) == 0, "a power of two");

/* the zeros that pad n bytes to a multiple of MC_DATAPLANE_ALIGN in the aligned form */
static inline uint32_t mc_dataplane_pad(uint64_t n) {
    return mc_pad(MC_DATAPLANE_ALIGN - 1, n);
}

#endif
