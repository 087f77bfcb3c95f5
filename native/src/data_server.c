/* The data-plane server's lifecycle: listener, accept thread, connection registry, stop,
 * grant key swaps, counters and the event queue the caller's log thread drains.
 *
 * Connection threads are detached; the server counts them instead of joining. stop() shuts
 * every registered socket down (which wakes any recv, send or poll on it) and waits until the
 * count reaches zero, so after it returns no thread reads or writes a segment.
 */
#include "server_internal.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#define LISTEN_BACKLOG 128
#define CONN_STACK_BYTES (256u << 10)   /* 1024 connections must not reserve 8 MiB each */
#define ACCEPT_RETRY_MS 50              /* after EMFILE and the like: let descriptors free up */

static int set_worker_id(mc_server *s, const char *worker_id) {
    size_t len = strlen(worker_id);
    if (len > MC_GRANT_MAX_WORKER_ID)
        return mc_fail(-EINVAL, "worker id of %zu bytes (at most %d)", len,
                       MC_GRANT_MAX_WORKER_ID);
    memcpy(s->worker_id, worker_id, len + 1);
    s->worker_id_len = len;
    return 0;
}

int mc_server_create(const char *worker_id, mc_server **out) {
    *out = NULL;
    mc_server *s = calloc(1, sizeof *s);
    if (s == NULL) return mc_fail(-ENOMEM, "no memory for a data server");
    int rc = set_worker_id(s, worker_id);
    if (rc != 0) {
        free(s);
        return rc;
    }
    s->max_connections = MC_SERVER_MAX_CONNECTIONS;
    s->idle_timeout_ms = MC_SERVER_IDLE_TIMEOUT_MS;
    s->listen_fd = s->wake_fd = -1;
    s->state = SERVER_CREATED;
    pthread_rwlock_init(&s->auth_lock, NULL);
    pthread_mutex_init(&s->lock, NULL);
    pthread_cond_init(&s->conns_gone, NULL);
    pthread_mutex_init(&s->event_lock, NULL);
    pthread_cond_init(&s->event_ready, NULL);
    *out = s;
    return 0;
}

static int check_new_segment(const mc_server *s, uint32_t segment_id) {
    if (s->state != SERVER_CREATED)   /* the table is read without locks once serving */
        return mc_fail(-EBUSY, "segments are fixed once the server has started");
    if (s->segment_count == MC_SERVER_MAX_SEGMENTS)
        return mc_fail(-ENOSPC, "at most %d segments", MC_SERVER_MAX_SEGMENTS);
    for (int i = 0; i < s->segment_count; i++)
        if (s->segments[i].id == segment_id)
            return mc_fail(-EEXIST, "segment %u is already served", segment_id);
    return 0;
}

int mc_server_add_segment(mc_server *s, uint32_t segment_id, void *addr, uint64_t size) {
    int rc = check_new_segment(s, segment_id);
    if (rc != 0) return rc;
    if (addr == NULL && size > 0) return mc_fail(-EINVAL, "segment %u has no memory", segment_id);
    s->segments[s->segment_count++] = (server_segment){segment_id, addr, -1, size};
    return 0;
}

/* a descriptor of a regular file, open for reading and writing, of at least `size` bytes */
static int check_segment_file(uint32_t segment_id, int fd, uint64_t size) {
    struct stat st;
    int flags = fcntl(fd, F_GETFL);
    if (flags < 0 || fstat(fd, &st) != 0)
        return mc_fail(-errno, "segment %u: %s", segment_id, strerror(errno));
    if ((flags & O_ACCMODE) != O_RDWR || !S_ISREG(st.st_mode))
        return mc_fail(-EINVAL, "segment %u: not a regular file open for reading and writing",
                       segment_id);
    if ((uint64_t)st.st_size < size)
        return mc_fail(-EINVAL, "segment %u: file has %lld bytes, the segment %llu", segment_id,
                       (long long)st.st_size, (unsigned long long)size);
    return 0;
}

int mc_server_add_file_segment(mc_server *s, uint32_t segment_id, int fd, uint64_t size) {
    int rc = check_new_segment(s, segment_id);
    if (rc == 0) rc = check_segment_file(segment_id, fd, size);
    if (rc != 0) return rc;
    /* our own descriptor: the caller's may close or be reused while a thread reads through it */
    int own = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (own < 0) return mc_fail(-errno, "segment %u: dup: %s", segment_id, strerror(errno));
    s->segments[s->segment_count++] = (server_segment){segment_id, NULL, own, size};
    return 0;
}

int mc_server_set_limits(mc_server *s, int max_connections, int idle_timeout_ms) {
    if (s->state != SERVER_CREATED)
        return mc_fail(-EBUSY, "limits are fixed once the server has started");
    if (max_connections < 0 || idle_timeout_ms < 0)
        return mc_fail(-EINVAL, "limits must not be negative");
    if (max_connections > 0) s->max_connections = max_connections;
    if (idle_timeout_ms > 0) s->idle_timeout_ms = idle_timeout_ms;
    return 0;
}

int mc_server_set_grant_key(mc_server *s, const uint8_t *key, size_t key_len) {
    if (key_len > MC_SERVER_MAX_KEY_BYTES)
        return mc_fail(-EINVAL, "grant key of %zu bytes (at most %d)", key_len,
                       MC_SERVER_MAX_KEY_BYTES);
    mc_grant_key prepared;
    if (key_len > 0) mc_grant_key_init(&prepared, key, key_len);
    pthread_rwlock_wrlock(&s->auth_lock);
    if (key_len > 0) s->key = prepared;
    s->key_len = key_len;
    pthread_rwlock_unlock(&s->auth_lock);
    return 0;
}

int mc_server_set_worker_id(mc_server *s, const char *worker_id) {
    pthread_rwlock_wrlock(&s->auth_lock);
    int rc = set_worker_id(s, worker_id);
    pthread_rwlock_unlock(&s->auth_lock);
    return rc;
}

void mc_server_get_stats(mc_server *s, mc_server_stats *out) {
    out->bytes_in = __atomic_load_n(&s->bytes_in, __ATOMIC_RELAXED);
    out->bytes_out = __atomic_load_n(&s->bytes_out, __ATOMIC_RELAXED);
    out->requests = __atomic_load_n(&s->requests, __ATOMIC_RELAXED);
    out->refused = __atomic_load_n(&s->refused, __ATOMIC_RELAXED);
    out->connections_total = __atomic_load_n(&s->connections_total, __ATOMIC_RELAXED);
    pthread_mutex_lock(&s->lock);
    out->connections = s->conn_count;
    pthread_mutex_unlock(&s->lock);
}

/* ---- events: pushed by connection and accept threads, drained by the caller's log thread */

void server_push_event(mc_server *s, int kind, int code, const char *peer, const char *reason) {
    pthread_mutex_lock(&s->event_lock);
    if (s->event_count == EVENT_QUEUE_LEN || s->events_closed) {
        s->events_dropped++;   /* a flood of bad connections must not grow memory or block */
    } else {
        mc_server_event *e = &s->events[(s->event_head + s->event_count++) % EVENT_QUEUE_LEN];
        e->kind = kind;
        e->code = code;
        e->dropped = s->events_dropped;
        s->events_dropped = 0;
        snprintf(e->peer, sizeof e->peer, "%s", peer);
        snprintf(e->reason, sizeof e->reason, "%s", reason);
        pthread_cond_signal(&s->event_ready);
    }
    pthread_mutex_unlock(&s->event_lock);
}

int mc_server_next_event(mc_server *s, mc_server_event *out) {
    pthread_mutex_lock(&s->event_lock);
    while (s->event_count == 0 && !s->events_closed)
        pthread_cond_wait(&s->event_ready, &s->event_lock);
    int got = s->event_count > 0;
    if (got) {
        *out = s->events[s->event_head];
        s->event_head = (s->event_head + 1) % EVENT_QUEUE_LEN;
        s->event_count--;
    }
    pthread_mutex_unlock(&s->event_lock);
    return got;
}

static void close_events(mc_server *s) {
    pthread_mutex_lock(&s->event_lock);
    s->events_closed = 1;
    pthread_cond_broadcast(&s->event_ready);
    pthread_mutex_unlock(&s->event_lock);
}

/* ---- connections */

static void format_peer(const struct sockaddr_storage *addr, char *out, size_t size) {
    char host[INET6_ADDRSTRLEN] = "?";
    unsigned port = 0;
    if (addr->ss_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)addr;
        inet_ntop(AF_INET, &in->sin_addr, host, sizeof host);
        port = ntohs(in->sin_port);
    } else if (addr->ss_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)addr;
        inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof host);
        port = ntohs(in6->sin6_port);
    }
    snprintf(out, size, "%s:%u", host, port);
}

static void tune_socket(int fd, int idle_timeout_ms) {
    int one = 1;
    struct timeval idle = {.tv_sec = idle_timeout_ms / 1000,
                           .tv_usec = (idle_timeout_ms % 1000) * 1000};
    /* small responses must not wait for Nagle; keepalive finds peers that vanished */
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &idle, sizeof idle);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &idle, sizeof idle);
}

/* the socket is closed under the lock, so stop() never shuts down a reused descriptor */
static void unregister_conn(mc_conn *c) {
    mc_server *s = c->server;
    pthread_mutex_lock(&s->lock);
    if (c->prev) c->prev->next = c->next;
    else s->conns = c->next;
    if (c->next) c->next->prev = c->prev;
    close(c->fd);
    free(c->file_buffer);
    if (--s->conn_count == 0) pthread_cond_broadcast(&s->conns_gone);
    pthread_mutex_unlock(&s->lock);
    free(c);   /* after the unlock nothing here touches the server: stop() may free it */
}

static void *conn_main(void *arg) {
    mc_conn *c = arg;
    server_serve_connection(c);
    unregister_conn(c);
    return NULL;
}

static int register_conn(mc_server *s, mc_conn *c) {
    pthread_mutex_lock(&s->lock);
    int rc = 0;
    if (s->state != SERVER_RUNNING) {
        rc = mc_fail(-ESHUTDOWN, "server is stopping");
    } else if (s->conn_count >= (uint64_t)s->max_connections) {
        rc = mc_fail(-EMFILE, "%d connections already open", s->max_connections);
    } else {
        c->next = s->conns;
        if (s->conns) s->conns->prev = c;
        s->conns = c;
        s->conn_count++;
        s->connections_total++;
    }
    pthread_mutex_unlock(&s->lock);
    return rc;
}

static int spawn_conn_thread(mc_conn *c) {
    pthread_attr_t attr;
    pthread_t thread;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, CONN_STACK_BYTES);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    int rc = pthread_create(&thread, &attr, conn_main, c);
    pthread_attr_destroy(&attr);
    return rc == 0 ? 0 : mc_fail(-rc, "no thread for the connection: %s", strerror(rc));
}

static void start_connection(mc_server *s, int fd, const struct sockaddr_storage *addr) {
    char peer[64];
    format_peer(addr, peer, sizeof peer);
    mc_conn *c = calloc(1, sizeof *c);
    int rc = c == NULL ? mc_fail(-ENOMEM, "no memory for the connection") : 0;
    if (rc == 0) {
        c->server = s;
        c->fd = fd;
        memcpy(c->peer, peer, sizeof peer);
        tune_socket(fd, s->idle_timeout_ms);
        rc = register_conn(s, c);
        if (rc == 0 && (rc = spawn_conn_thread(c)) != 0) {
            unregister_conn(c);   /* closes fd and frees c */
            fd = -1;
            c = NULL;
        }
    }
    if (rc == 0) return;
    if (rc != -ESHUTDOWN)
        server_push_event(s, MC_SERVER_EVENT_CONNECTION_REJECTED, 0, peer, mc_last_error());
    free(c);
    if (fd >= 0) close(fd);
}

/* ---- listener */

static void *accept_main(void *arg) {
    mc_server *s = arg;
    struct pollfd fds[2] = {{.fd = s->listen_fd, .events = POLLIN},
                            {.fd = s->wake_fd, .events = POLLIN}};
    for (;;) {
        if (poll(fds, 2, -1) < 0 && errno != EINTR) {
            poll(NULL, 0, ACCEPT_RETRY_MS);
            continue;
        }
        if (fds[1].revents) return NULL;   /* stop() */
        struct sockaddr_storage addr;
        socklen_t len = sizeof addr;
        int fd = accept4(s->listen_fd, (struct sockaddr *)&addr, &len, SOCK_CLOEXEC);
        if (fd >= 0) {
            start_connection(s, fd, &addr);
        } else if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED) {
            mc_fail(-errno, "accept: %s", strerror(errno));
            server_push_event(s, MC_SERVER_EVENT_ACCEPT_FAILED, 0, "", mc_last_error());
            poll(NULL, 0, ACCEPT_RETRY_MS);
        }
    }
}

static int bind_one(const struct addrinfo *ai) {
    int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK,
                    ai->ai_protocol);
    if (fd < 0) return -errno;
    int one = 1;   /* a restarted worker must get its port back while old sockets linger */
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 || listen(fd, LISTEN_BACKLOG) != 0) {
        int err = errno;
        close(fd);
        return -err;
    }
    return fd;
}

static int open_listener(const char *host, int port, int *bound_port) {
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
    struct addrinfo *found = NULL;
    char service[16];
    snprintf(service, sizeof service, "%d", port);
    int rc = getaddrinfo(host[0] ? host : NULL, service, &hints, &found);
    if (rc != 0) return mc_fail(-EINVAL, "resolve %s: %s", host, gai_strerror(rc));
    int fd = -EADDRNOTAVAIL;
    for (struct addrinfo *ai = found; ai != NULL && fd < 0; ai = ai->ai_next) fd = bind_one(ai);
    freeaddrinfo(found);
    if (fd < 0) return mc_fail(fd, "listen on %s:%d: %s", host, port, strerror(-fd));
    struct sockaddr_storage addr;
    socklen_t len = sizeof addr;
    getsockname(fd, (struct sockaddr *)&addr, &len);
    *bound_port = ntohs(addr.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&addr)->sin6_port
                                                   : ((struct sockaddr_in *)&addr)->sin_port);
    return fd;
}

/* our threads block every signal: they belong to the host's main thread (Python's handlers) */
static int spawn_accept_thread(mc_server *s) {
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int rc = pthread_create(&s->accept_thread, NULL, accept_main, s);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return rc == 0 ? 0 : mc_fail(-rc, "no accept thread: %s", strerror(rc));
}

int mc_server_start(mc_server *s, const char *host, int port) {
    if (s->state != SERVER_CREATED) return mc_fail(-EBUSY, "the server was already started");
    int bound_port = 0;
    int fd = open_listener(host, port, &bound_port);
    if (fd < 0) return fd;
    s->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (s->wake_fd < 0) {
        int rc = mc_fail(-errno, "eventfd: %s", strerror(errno));
        close(fd);
        return rc;
    }
    s->listen_fd = fd;
    s->state = SERVER_RUNNING;
    int rc = spawn_accept_thread(s);
    if (rc != 0) {
        s->state = SERVER_CREATED;
        close(s->listen_fd);
        close(s->wake_fd);
        s->listen_fd = s->wake_fd = -1;
        return rc;
    }
    return bound_port;
}

/* ---- stop */

static void stop_accepting(mc_server *s) {
    uint64_t one = 1;
    if (write(s->wake_fd, &one, sizeof one) < 0) { /* a full eventfd is already awake */ }
    pthread_join(s->accept_thread, NULL);
    close(s->listen_fd);
    close(s->wake_fd);
    s->listen_fd = s->wake_fd = -1;
}

int mc_server_stop(mc_server *s) {
    pthread_mutex_lock(&s->lock);
    server_state was = s->state;
    __atomic_store_n(&s->state, SERVER_STOPPED, __ATOMIC_RELAXED);
    pthread_mutex_unlock(&s->lock);
    if (was == SERVER_RUNNING) {
        stop_accepting(s);
        pthread_mutex_lock(&s->lock);
        /* wakes each thread's recv/send/poll; each closes its own socket on the way out */
        for (mc_conn *c = s->conns; c != NULL; c = c->next) shutdown(c->fd, SHUT_RDWR);
        while (s->conn_count > 0) pthread_cond_wait(&s->conns_gone, &s->lock);
        pthread_mutex_unlock(&s->lock);
    }
    close_events(s);
    return 0;
}

void mc_server_destroy(mc_server *s) {
    if (s == NULL) return;
    mc_server_stop(s);
    for (int i = 0; i < s->segment_count; i++)
        if (s->segments[i].fd >= 0) close(s->segments[i].fd);
    pthread_cond_destroy(&s->event_ready);
    pthread_mutex_destroy(&s->event_lock);
    pthread_cond_destroy(&s->conns_gone);
    pthread_mutex_destroy(&s->lock);
    pthread_rwlock_destroy(&s->auth_lock);
    free(s);
}
