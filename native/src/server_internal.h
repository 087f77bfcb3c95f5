/* What data_server.c (lifecycle, accept, events) and server_conn.c (requests) share. */
#ifndef MC_SERVER_INTERNAL_H
#define MC_SERVER_INTERNAL_H

#include "grant_internal.h"
#include "mc_server.h"

#include <pthread.h>

#define EVENT_QUEUE_LEN 256

typedef struct {
    uint32_t id;
    uint8_t *addr;                /* a memory segment's bytes, or NULL */
    int fd;                       /* a file segment's descriptor (the server's own dup), or -1 */
    uint64_t size;
} server_segment;

struct conn_io;

typedef struct mc_conn {
    mc_server *server;
    int fd;
    struct conn_io *io;           /* input buffer and queued answers (server_conn.c), while the
                                     connection's thread serves it */
    int refusal;                  /* the Mooncake code to answer with, once refused */
    uint8_t *file_buffer;         /* WRITE payloads bound for a file segment pass through it
                                     (allocated at the first such write) */
    char peer[64];
    char reason[256];
    struct mc_conn *prev, *next;  /* the server's list of open connections */
} mc_conn;

typedef enum { SERVER_CREATED, SERVER_RUNNING, SERVER_STOPPED } server_state;

struct mc_server {
    /* fixed before start, read without locks by connection threads */
    server_segment segments[MC_SERVER_MAX_SEGMENTS];
    int segment_count;
    int max_connections;
    int idle_timeout_ms;

    /* the grant key and worker id: swapped (re-registration) while requests verify */
    pthread_rwlock_t auth_lock;
    mc_grant_key key;             /* valid when key_len > 0 */
    size_t key_len;
    char worker_id[MC_GRANT_MAX_WORKER_ID + 1];
    size_t worker_id_len;

    /* the listener, open connections and the state that stop() changes */
    pthread_mutex_t lock;
    pthread_cond_t conns_gone;    /* signalled when the last connection thread is done */
    server_state state;
    int listen_fd;
    int wake_fd;                  /* eventfd that wakes the accept thread at stop */
    pthread_t accept_thread;
    mc_conn *conns;
    uint64_t conn_count;

    /* counters, updated with relaxed atomics on the data path */
    uint64_t bytes_in, bytes_out, requests, refused, connections_total;

    /* refusals and faults waiting for the caller's log thread */
    pthread_mutex_t event_lock;
    pthread_cond_t event_ready;
    mc_server_event events[EVENT_QUEUE_LEN];
    size_t event_head, event_count;
    uint64_t events_dropped;
    int events_closed;
};

#define COUNT(server, field, n) __atomic_fetch_add(&(server)->field, (n), __ATOMIC_RELAXED)

/* queues an event for the log thread; drops it (counted) when the queue is full */
void server_push_event(mc_server *server, int kind, int code, const char *peer,
                       const char *reason);
/* a connection thread's body: serves requests until the peer closes or a request fails */
void server_serve_connection(mc_conn *conn);

#endif
