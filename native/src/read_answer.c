/* A client's batch read from the master's GetReplicas answer (mc_read_answer.h): decoding
 * the protobuf bytes, choosing a replica per item, and moving the bytes. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "mc_copy.h"
#include "mc_read_answer.h"
#include "mc_tcp.h"
#include "pb_wire.h"

/* ---- decoding ---- */

typedef struct {
    const uint8_t *start, *p, *end;
} reader;

/* the next field's number and wire type; 0 at the end, -1 on a malformed tag */
static int next_field(reader *r, uint32_t *number, int *wire) {
    if (r->p >= r->end) return 0;
    uint64_t tag;
    if (!get_varint(&r->p, r->end, &tag) || (tag >> 3) == 0 || (tag >> 3) > 0x1fffffff) return -1;
    *number = (uint32_t)(tag >> 3);
    *wire = (int)(tag & 7);
    return 1;
}

static int read_varint(reader *r, int wire, uint64_t *v) {
    return wire == PB_VARINT && get_varint(&r->p, r->end, v);
}

/* a length-delimited field's bytes as a span of the answer, and a reader over them */
static int read_bytes(reader *r, int wire, mc_span *span, reader *inner) {
    uint64_t n;
    if (wire != PB_LEN || !get_varint(&r->p, r->end, &n) || n > (uint64_t)(r->end - r->p))
        return 0;
    span->at = (uint32_t)(r->p - r->start);
    span->len = (uint32_t)n;
    if (inner) *inner = (reader){r->start, r->p, r->p + n};
    r->p += n;
    return 1;
}

/* skips a field this decoder does not use (an older or newer master's) */
static int skip(reader *r, int wire) {
    uint64_t v = 0;
    mc_span ignored;
    switch (wire) {
    case PB_VARINT: return get_varint(&r->p, r->end, &v);
    case PB_LEN: return read_bytes(r, wire, &ignored, NULL);
    case PB_FIXED64: if (r->end - r->p < 8) return 0; r->p += 8; return 1;
    case PB_FIXED32: if (r->end - r->p < 4) return 0; r->p += 4; return 1;
    default: return 0;   /* groups: not in this message */
    }
}

/* KeyStatus: only the code matters here (the general path reports messages) */
static int decode_status(reader *r, int32_t *code) {
    uint32_t number;
    int wire, more;
    uint64_t v = 0;
    while ((more = next_field(r, &number, &wire)) > 0) {
        if (number == 2) {                              /* sint32 code, zigzag */
            if (!read_varint(r, wire, &v)) return 0;
            uint32_t u = (uint32_t)v;                   /* protobuf truncates to 32 bits */
            *code = (int32_t)((u >> 1) ^ -(u & 1));
        } else if (!skip(r, wire)) {
            return 0;
        }
    }
    return more == 0;
}

static int decode_replica(reader *r, mc_read_replica *out, mc_span *worker_id) {
    uint32_t number;
    int wire, more;
    uint64_t v = 0;
    memset(out, 0, sizeof *out);
    *worker_id = (mc_span){0, 0};
    while ((more = next_field(r, &number, &wire)) > 0) {
        int ok;
        switch (number) {
        case 1: ok = read_bytes(r, wire, worker_id, NULL); break;
        case 2:
            ok = read_varint(r, wire, &v) && v <= UINT32_MAX;
            out->segment_id = (uint32_t)v;
            break;
        case 3: ok = read_varint(r, wire, &v); out->tier = (int32_t)v; break;
        case 4: ok = read_varint(r, wire, &out->offset); break;
        case 5: ok = read_varint(r, wire, &out->length); break;
        case 6: ok = read_varint(r, wire, &v); out->state = (int32_t)v; break;
        case 11: ok = read_bytes(r, wire, &out->grant, NULL); break;
        default: ok = skip(r, wire);
        }
        if (!ok) return 0;
    }
    return more == 0;
}

typedef struct {
    mc_span worker_id;
    uint32_t segment_id;
    int32_t tier;
} segment_key;

static int same_segment(const uint8_t *answer, const segment_key *a, const segment_key *b) {
    return a->segment_id == b->segment_id && a->tier == b->tier &&
           a->worker_id.len == b->worker_id.len &&
           memcmp(answer + a->worker_id.at, answer + b->worker_id.at, a->worker_id.len) == 0;
}

typedef struct {
    mc_read_item *items;
    size_t max_items, n_items;
    mc_read_replica *replicas;
    size_t max_replicas, n_replicas;
    uint32_t *segment_first;   /* MC_READ_MAX_SEGMENTS of them */
    size_t n_segments;
    segment_key keys[MC_READ_MAX_SEGMENTS];
    int full;               /* an array was too small */
} decoding;

/* the index of the replica's segment, added when new (a batch lies on a few: a linear
 * search over at most MC_READ_MAX_SEGMENTS) */
static uint32_t segment_of(decoding *d, const uint8_t *answer, const segment_key *key) {
    size_t known = d->n_segments < MC_READ_MAX_SEGMENTS ? d->n_segments : MC_READ_MAX_SEGMENTS;
    for (size_t s = 0; s < known; s++)
        if (same_segment(answer, &d->keys[s], key)) return (uint32_t)s;
    size_t s = d->n_segments++;
    if (s < MC_READ_MAX_SEGMENTS) {
        d->segment_first[s] = (uint32_t)d->n_replicas;
        d->keys[s] = *key;
    } else {
        d->full = 1;
    }
    return (uint32_t)s;
}

static int decode_item(decoding *d, reader *r, const uint8_t *answer) {
    uint32_t number;
    int wire, more;
    mc_read_item item = {0, (uint32_t)d->n_replicas, 0, 0};
    while ((more = next_field(r, &number, &wire)) > 0) {
        mc_span span;
        reader inner;
        if (number == 1) {
            if (!read_bytes(r, wire, &span, &inner) || !decode_status(&inner, &item.code)) return 0;
        } else if (number == 2) {
            if (!read_varint(r, wire, &item.size)) return 0;
        } else if (number == 3) {
            if (!read_bytes(r, wire, &span, &inner)) return 0;
            mc_read_replica replica;
            mc_span worker_id;
            if (!decode_replica(&inner, &replica, &worker_id)) return 0;
            replica.descriptor = span;
            segment_key key = {worker_id, replica.segment_id, replica.tier};
            replica.segment = segment_of(d, answer, &key);
            if (d->n_replicas < d->max_replicas) d->replicas[d->n_replicas] = replica;
            else d->full = 1;
            d->n_replicas++;
            item.count++;
        } else if (!skip(r, wire)) {
            return 0;
        }
    }
    if (more < 0) return 0;
    if (d->n_items < d->max_items) d->items[d->n_items] = item;
    else d->full = 1;
    d->n_items++;
    return 1;
}

_Static_assert(sizeof(((mc_read_answer_info *)0)->segment_first) ==
               MC_READ_MAX_SEGMENTS * sizeof(uint32_t), "segment_first holds every segment");

int64_t mc_read_answer_decode(const uint8_t *answer, size_t len,
                              mc_read_item *items, size_t max_items,
                              mc_read_replica *replicas, size_t max_replicas,
                              mc_read_answer_info *info) {
    if (len > UINT32_MAX) return mc_fail(-EINVAL, "an answer of %zu bytes", len);
    decoding d = {items, max_items, 0, replicas, max_replicas, 0, info->segment_first, 0,
                  {{{0, 0}, 0, 0}}, 0};
    reader r = {answer, answer, answer + len};
    uint32_t number;
    int wire, more;
    uint64_t v = 0;
    info->lease_ttl_ms = 0;
    while ((more = next_field(&r, &number, &wire)) > 0) {
        mc_span span;
        reader inner;
        int ok;
        if (number == 1) {
            ok = read_bytes(&r, wire, &span, &inner) && decode_item(&d, &inner, answer);
        } else if (number == 2) {
            ok = read_varint(&r, wire, &v) && v <= UINT32_MAX;
            info->lease_ttl_ms = (uint32_t)v;
        } else {
            ok = skip(&r, wire);
        }
        if (!ok) return mc_fail(-EBADMSG, "not a GetReplicasResponse (at byte %zu)",
                                (size_t)(r.p - answer));
    }
    if (more < 0) return mc_fail(-EBADMSG, "not a GetReplicasResponse (a malformed tag)");
    info->replicas = d.n_replicas;
    info->segments = d.n_segments;
    if (d.full)
        return mc_fail(-ENOSPC, "%zu items, %zu replicas, %zu segments: more than planned for",
                       d.n_items, d.n_replicas, d.n_segments);
    return (int64_t)d.n_items;
}

/* ---- running ---- */

/* the item's replica of lowest rank that has a route (the first of equals, as the general
 * path's stable sort picks), or -1; -1 too when that replica's length is not the item's size
 * (a malformed answer: the general path reports it) */
static int64_t choose(const mc_read_item *item, const mc_read_replica *replicas,
                      size_t n_replicas, const int32_t *rank, size_t n_segments) {
    int64_t best = -1;
    for (uint32_t k = 0; k < item->count; k++) {
        size_t j = (size_t)item->first + k;
        if (j >= n_replicas) return -1;
        const mc_read_replica *r = &replicas[j];
        if (r->segment >= n_segments || rank[r->segment] < 0) continue;
        if (best < 0 || rank[r->segment] < rank[replicas[best].segment]) best = (int64_t)j;
    }
    return best >= 0 && replicas[best].length == item->size ? best : -1;
}

int mc_read_answer_segments_used(const mc_read_item *items, size_t n_items,
                                 const mc_read_replica *replicas, size_t n_replicas,
                                 const int32_t *segment_rank, size_t n_segments,
                                 uint8_t *used) {
    memset(used, 0, n_segments);
    for (size_t i = 0; i < n_items; i++) {
        if (items[i].code != 0) continue;
        int64_t j = choose(&items[i], replicas, n_replicas, segment_rank, n_segments);
        if (j >= 0) used[replicas[j].segment] = 1;
    }
    return 0;
}

/* the arguments of one mc_read_answer_run */
typedef struct {
    const uint8_t *answer;
    size_t len;
    const mc_read_item *items;
    size_t n_items;
    const mc_read_replica *replicas;
    size_t n_replicas;
    const int32_t *rank, *route_of;
    size_t n_segments;
    mc_read_route *routes;
    size_t n_routes;
    void *const *targets;
    int32_t *status;
} run_args;

static int check_args(const run_args *a) {
    for (size_t s = 0; s < a->n_segments; s++)
        if (a->rank[s] >= 0 && (a->route_of[s] < 0 || (size_t)a->route_of[s] >= a->n_routes))
            return mc_fail(-EINVAL, "segment %zu has route %d of %zu", s, a->route_of[s],
                           a->n_routes);
    for (size_t k = 0; k < a->n_routes; k++) {
        if (a->routes[k].kind != MC_ROUTE_TCP && a->routes[k].kind != MC_ROUTE_SHM)
            return mc_fail(-EINVAL, "route %zu has kind %d", k, a->routes[k].kind);
        a->routes[k].requests = 0;
        a->routes[k].result = 0;
        a->routes[k].error[0] = '\0';
    }
    return 0;
}

/* chosen[i]: item i's replica, or NULL with status[i] saying why; counts each route's
 * requests (in the route) and the shm copies */
static void choose_all(const run_args *a, const mc_read_replica **chosen, size_t *n_copies,
                       size_t *n_requests, size_t *n_batches) {
    for (size_t i = 0; i < a->n_items; i++) {
        chosen[i] = NULL;
        if (a->items[i].code != 0 || a->targets[i] == NULL) {
            a->status[i] = MC_READ_SKIPPED;
            continue;
        }
        int64_t j = choose(&a->items[i], a->replicas, a->n_replicas, a->rank, a->n_segments);
        const mc_read_replica *r = j < 0 ? NULL : &a->replicas[j];
        if (r == NULL || r->grant.len > UINT16_MAX ||
            (uint64_t)r->grant.at + r->grant.len > a->len) {
            a->status[i] = MC_READ_NO_ROUTE;
            continue;
        }
        mc_read_route *route = &a->routes[a->route_of[r->segment]];
        if (route->kind == MC_ROUTE_SHM &&
            (r->offset > route->size || r->length > route->size - r->offset)) {
            a->status[i] = MC_READ_OUT_OF_RANGE;
            continue;
        }
        chosen[i] = r;
        a->status[i] = MC_STATUS_PENDING;
        if (route->kind == MC_ROUTE_SHM) {
            (*n_copies)++;
        } else {
            *n_batches += route->requests++ == 0;
            (*n_requests)++;
        }
    }
}

/* what one run moves, in one allocation: the TCP requests (each route's together) and
 * their iovecs, one batch per connection used, the shm copies */
typedef struct {
    mc_tcp_request *requests;
    mc_iov *iovs;
    mc_tcp_batch *batches;
    mc_copy_item *copies;
    size_t *next_request;   /* per route: where its next request goes */
    size_t *batch_of;       /* per route: its batch */
    size_t n_copies, n_batches;
    void *arena;
} moves;

static int lay_out(const run_args *a, moves *m, size_t n_copies, size_t n_requests,
                   size_t n_batches) {
    size_t bytes = n_requests * (sizeof(mc_tcp_request) + sizeof(mc_iov)) +
                   n_batches * sizeof(mc_tcp_batch) + n_copies * sizeof(mc_copy_item) +
                   a->n_routes * 2 * sizeof(size_t);
    m->arena = malloc(bytes ? bytes : 1);
    if (!m->arena) return mc_fail(-ENOMEM, "read plan of %zu items", a->n_items);
    m->requests = m->arena;
    m->iovs = (mc_iov *)(m->requests + n_requests);
    m->batches = (mc_tcp_batch *)(m->iovs + n_requests);
    m->copies = (mc_copy_item *)(m->batches + n_batches);
    m->next_request = (size_t *)(m->copies + n_copies);
    m->batch_of = m->next_request + a->n_routes;
    m->n_copies = 0;
    m->n_batches = n_batches;
    for (size_t k = 0, at = 0, b = 0; k < a->n_routes; k++) {
        m->next_request[k] = at;
        m->batch_of[k] = b;
        if (a->routes[k].requests > 0) {
            m->batches[b++] = (mc_tcp_batch){.fd = a->routes[k].fd, .form = a->routes[k].form,
                                             .requests = m->requests + at,
                                             .count = (size_t)a->routes[k].requests};
            at += (size_t)a->routes[k].requests;
        }
    }
    return 0;
}

/* fills each chosen item's copy or request; slot[i]: its request, or -1 for a copy */
static void fill(const run_args *a, const mc_read_replica **chosen, moves *m, int64_t *slot) {
    for (size_t i = 0; i < a->n_items; i++) {
        const mc_read_replica *r = chosen[i];
        if (r == NULL) continue;
        const mc_read_route *route = &a->routes[a->route_of[r->segment]];
        if (route->kind == MC_ROUTE_SHM) {
            m->copies[m->n_copies++] = (mc_copy_item){a->targets[i], route->base + r->offset,
                                                      r->length};
            slot[i] = -1;
            continue;
        }
        size_t q = m->next_request[a->route_of[r->segment]]++;
        slot[i] = (int64_t)q;
        m->iovs[q] = (mc_iov){a->targets[i], r->length};
        m->requests[q] = (mc_tcp_request){.op = MC_OP_READ, .segment_id = r->segment_id,
                                          .offset = r->offset, .length = r->length,
                                          .grant = a->answer + r->grant.at,
                                          .grant_len = (uint16_t)r->grant.len,
                                          .iov = &m->iovs[q], .iov_count = 1,
                                          .status = MC_STATUS_PENDING};
    }
}

/* the copies, then every connection's requests in one exchange; each outcome to its item
 * and route */
static int move(const run_args *a, const mc_read_replica **chosen, moves *m,
                const int64_t *slot, int timeout_ms) {
    int rc = m->n_copies > 0 ? mc_copy_batch(m->copies, m->n_copies, 0) : 0;
    if (rc == 0 && m->n_batches > 0) rc = mc_tcp_exchange_many(m->batches, m->n_batches,
                                                               timeout_ms);
    if (rc != 0) return rc;
    for (size_t k = 0; k < a->n_routes; k++) {
        if (a->routes[k].requests == 0) continue;
        const mc_tcp_batch *batch = &m->batches[m->batch_of[k]];
        a->routes[k].result = batch->result;
        memcpy(a->routes[k].error, batch->error, sizeof a->routes[k].error);
    }
    for (size_t i = 0; i < a->n_items; i++)
        if (chosen[i] != NULL) a->status[i] = slot[i] < 0 ? 0 : m->requests[slot[i]].status;
    return 0;
}

int mc_read_answer_run(const uint8_t *answer, size_t len,
                       const mc_read_item *items, size_t n_items,
                       const mc_read_replica *replicas, size_t n_replicas,
                       const int32_t *segment_rank, const int32_t *segment_route,
                       size_t n_segments, mc_read_route *routes, size_t n_routes,
                       void *const *targets, int32_t *status, int timeout_ms) {
    run_args a = {answer, len, items, n_items, replicas, n_replicas, segment_rank,
                  segment_route, n_segments, routes, n_routes, targets, status};
    int rc = check_args(&a);
    if (rc != 0) return rc;
    const mc_read_replica **chosen = malloc((n_items ? n_items : 1) * sizeof *chosen);
    int64_t *slot = malloc((n_items ? n_items : 1) * sizeof *slot);
    moves m = {0};
    size_t n_copies = 0, n_requests = 0, n_batches = 0;
    if (!chosen || !slot) {
        rc = mc_fail(-ENOMEM, "read plan of %zu items", n_items);
    } else {
        choose_all(&a, chosen, &n_copies, &n_requests, &n_batches);
        rc = lay_out(&a, &m, n_copies, n_requests, n_batches);
    }
    if (rc == 0) {
        fill(&a, chosen, &m, slot);
        rc = move(&a, chosen, &m, slot, timeout_ms);
    }
    free(m.arena);
    free(slot);
    free(chosen);
    return rc;
}
