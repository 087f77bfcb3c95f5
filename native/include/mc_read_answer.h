/* The client's batch read, planned and run in C straight from the master's GetReplicas
 * answer (protobuf bytes of a GetReplicasResponse, proto/mooncake.proto).
 *
 * Planning a read in Python cost about 4 us per key (a Transfer, a DataRequest, cffi
 * conversions, protobuf wrappers), as much as the master's and the worker's parts of a
 * 4 KiB batch together, and the master and worker threads spinning meanwhile made it
 * slower still on a 2-vCPU VM. Here the answer is decoded once (mc_read_answer_decode:
 * items, replicas, and the distinct segments they lie on); the caller decides per segment,
 * not per key, which transport reaches it (a rank) and how (a route: a TCP connection or a
 * mapped shm segment); mc_read_answer_run then picks each item's replica of lowest rank,
 * copies shm replicas and runs every connection's requests in one exchange
 * (mc_tcp_exchange_many), straight into the caller's targets. Whatever it cannot finish
 * (no route, a refusal, a failed connection) it reports per item; the caller's general
 * path takes over from there.
 */
#ifndef MC_READ_ANSWER_H
#define MC_READ_ANSWER_H

#include "mc_common.h"

/* CDEF-BEGIN */
/* a field's bytes: answer[at .. at + len) */
typedef struct {
    uint32_t at;
    uint32_t len;
} mc_span;

typedef struct {
    int32_t code;            /* the item's status code: 0 present */
    uint32_t first;          /* its replicas: replicas[first .. first + count) */
    uint32_t count;
    uint64_t size;
} mc_read_item;

typedef struct {
    mc_span descriptor;      /* the whole serialized ReplicaDescriptor */
    mc_span grant;
    uint32_t segment_id;
    int32_t tier;
    int32_t state;
    uint32_t segment;        /* which of the answer's distinct segments it lies on */
    uint64_t offset;
    uint64_t length;
} mc_read_replica;

/* distinct segments one answer may span for mc_read_answer_decode (more: -ENOSPC) */
#define MC_READ_MAX_SEGMENTS 64

#define MC_ROUTE_TCP 1
#define MC_ROUTE_SHM 2

/* how the replicas of some segments are reached: a data connection, or a mapped segment */
typedef struct {
    int kind;                /* MC_ROUTE_TCP or MC_ROUTE_SHM */
    int fd;                  /* TCP: the connection and its wire form (mc_tcp.h) */
    int form;
    uint8_t *base;           /* SHM: the mapping and its size */
    uint64_t size;
    int requests;            /* out (TCP): requests sent on it; 0: the connection was not used */
    int result;              /* out (TCP): as mc_tcp_exchange returns (answered, or -error) */
    char error[256];         /* out (TCP): the error's message when result < 0 */
} mc_read_route;

/* per item status out of mc_read_answer_run besides 0 (read) and a worker's negative code:
 * MC_READ_SKIPPED for an item not present or without a target (nothing to do),
 * MC_STATUS_PENDING (mc_tcp.h) when its connection failed first (see its route),
 * MC_READ_NO_ROUTE when no replica has a route (or its length is not the item's size),
 * MC_READ_OUT_OF_RANGE when its replica lies outside the mapped segment */
#define MC_READ_SKIPPED 2
#define MC_READ_NO_ROUTE 3
#define MC_READ_OUT_OF_RANGE 4

/* what mc_read_answer_decode found besides items and replicas */
typedef struct {
    size_t replicas;         /* replicas decoded (with -ENOSPC: at least the count needed) */
    size_t segments;         /* distinct segments (replicas of one worker_id, segment_id, tier) */
    uint32_t lease_ttl_ms;
    uint32_t segment_first[64];  /* MC_READ_MAX_SEGMENTS: segment s's first replica */
} mc_read_answer_info;

/* Decodes a GetReplicasResponse into items[0..) and replicas[0..), and its distinct
 * segments into info. Unknown fields are skipped. Returns the number of items; -ENOSPC when
 * an array is too small (more items than max_items, more replicas than max_replicas: then
 * info->replicas says how many, or more than MC_READ_MAX_SEGMENTS segments); -EBADMSG when
 * the bytes are not such an answer. */
int64_t mc_read_answer_decode(const uint8_t *answer, size_t len,
                              mc_read_item *items, size_t max_items,
                              mc_read_replica *replicas, size_t max_replicas,
                              mc_read_answer_info *info);

/* used[s] = 1 for each segment s that mc_read_answer_run would read some present item from
 * with these ranks, 0 for the others (the caller then needs routes to those only) */
int mc_read_answer_segments_used(const mc_read_item *items, size_t n_items,
                                 const mc_read_replica *replicas, size_t n_replicas,
                                 const int32_t *segment_rank, size_t n_segments,
                                 uint8_t *used);

/* Reads every present item that has a target (targets[i], which holds at least the item's
 * size) from its replica of lowest segment_rank (a rank < 0: no route; segment_route: an
 * index into routes). Shm replicas are copied, then each TCP route's requests go in one
 * exchange over all connections. status[i] tells each item's outcome (see above). Returns 0,
 * or a negative error before anything moved (bad arguments). */
int mc_read_answer_run(const uint8_t *answer, size_t len,
                       const mc_read_item *items, size_t n_items,
                       const mc_read_replica *replicas, size_t n_replicas,
                       const int32_t *segment_rank, const int32_t *segment_route,
                       size_t n_segments, mc_read_route *routes, size_t n_routes,
                       void *const *targets, int32_t *status, int timeout_ms);
/* CDEF-END */

#endif
