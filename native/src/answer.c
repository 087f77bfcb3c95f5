/* Encodes GetReplicasResponse and PutStartResponse bytes with signed grants (see
 * mc_answer.h), in protobuf's wire format (pb_wire.h). Grants are written and MACed by grant.c (mc_grant_sign) under the
 * segment's prepared key.
 */
#include "grant_internal.h"
#include "mc_answer.h"
#include "pb_wire.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

struct mc_desc_segment {
    mc_grant_key key;
    uint32_t segment_id;
    size_t worker_id_len, head_len, middle_len, tail_len;
    uint8_t *worker_id, *head, *middle, *tail;  /* one allocation, worker_id first */
};

/* GetReplicasResponse { repeated GetReplicasItem items = 1; uint32 lease_ttl_ms = 2; }
 * GetReplicasItem { KeyStatus status = 1; uint64 size = 2; repeated ReplicaDescriptor
 * replicas = 3; }
 * PutStartResponse { repeated PutStartItem items = 1; uint32 put_timeout_ms = 2; }
 * PutStartItem { KeyStatus status = 1; repeated ReplicaDescriptor replicas = 2;
 * uint64 put_id = 3; uint32 retry_after_ms = 4; }
 * KeyStatus { string key = 1; sint32 code = 2; string message = 3; }
 * ReplicaDescriptor: tier = 3, offset = 4, length = 5, state = 6, grant = 11 (the rest is
 * the segment's head, middle and tail) */
enum {
    TAG_ITEMS = 1 << 3 | 2, TAG_TTL = 2 << 3,
    TAG_STATUS = 1 << 3 | 2,
    TAG_GET_SIZE = 2 << 3, TAG_GET_REPLICAS = 3 << 3 | 2,
    TAG_PUT_REPLICAS = 2 << 3 | 2, TAG_PUT_ID = 3 << 3, TAG_PUT_RETRY = 4 << 3,
    TAG_KEY = 1 << 3 | 2, TAG_CODE = 2 << 3, TAG_MESSAGE = 3 << 3 | 2,
    TAG_TIER = 3 << 3, TAG_OFFSET = 4 << 3, TAG_LENGTH = 5 << 3, TAG_STATE = 6 << 3,
    TAG_GRANT = 11 << 3 | 2,
};

/* an item's fields (MC_ANSWER_ITEM_FIELDS) */
enum { ITEM_NUMBER, ITEM_CODE, ITEM_KEY_LEN, ITEM_MESSAGE_LEN, ITEM_REPLICAS, ITEM_RETRY };

mc_desc_segment *mc_desc_segment_new(const uint8_t *grant_key, size_t key_len,
                                     const char *worker_id, size_t worker_id_len,
                                     uint32_t segment_id,
                                     const uint8_t *head, size_t head_len,
                                     const uint8_t *middle, size_t middle_len,
                                     const uint8_t *tail, size_t tail_len) {
    if (key_len == 0) {
        mc_fail(-EINVAL, "no grant key");
        return NULL;
    }
    if (worker_id_len > MC_GRANT_MAX_WORKER_ID) {
        mc_fail(-EINVAL, "worker id of %zu bytes (at most %d)", worker_id_len,
                MC_GRANT_MAX_WORKER_ID);
        return NULL;
    }
    mc_desc_segment *s = calloc(1, sizeof *s);
    uint8_t *bytes = malloc(worker_id_len + head_len + middle_len + tail_len + 1);
    if (s == NULL || bytes == NULL) {
        free(s);
        free(bytes);
        mc_fail(-ENOMEM, "out of memory for a segment's descriptor");
        return NULL;
    }
    mc_grant_key_init(&s->key, grant_key, key_len);
    s->segment_id = segment_id;
    s->worker_id = bytes;
    s->head = s->worker_id + worker_id_len;
    s->middle = s->head + head_len;
    s->tail = s->middle + middle_len;
    memcpy(s->worker_id, worker_id, worker_id_len);
    memcpy(s->head, head, head_len);
    memcpy(s->middle, middle, middle_len);
    memcpy(s->tail, tail, tail_len);
    s->worker_id_len = worker_id_len;
    s->head_len = head_len;
    s->middle_len = middle_len;
    s->tail_len = tail_len;
    return s;
}

void mc_desc_segment_free(mc_desc_segment *segment) {
    if (segment == NULL) return;
    free(segment->worker_id);
    OPENSSL_cleanse(segment, sizeof *segment);
    free(segment);
}

static uint64_t zigzag32(int64_t code) {
    int32_t v = (int32_t)code;
    return (uint32_t)(((uint32_t)v << 1) ^ (uint32_t)(v >> 31));
}

static size_t grant_len(const mc_desc_segment *s) {
    return MC_GRANT_HEAD_BYTES + s->worker_id_len + MC_GRANT_MAC_BYTES;
}

/* r: segment index, tier, state, offset, length */
static size_t descriptor_len(const mc_desc_segment *s, const int64_t *r) {
    return s->head_len + scalar_len((uint64_t)r[1]) + scalar_len((uint64_t)r[3])
           + scalar_len((uint64_t)r[4]) + scalar_len((uint64_t)r[2]) + s->middle_len
           + nested_len(grant_len(s)) + s->tail_len;
}

static uint8_t *put_descriptor(uint8_t *p, const mc_desc_segment *s, const int64_t *r, int op,
                               uint64_t expiry_ms) {
    memcpy(p, s->head, s->head_len);
    p += s->head_len;
    p = put_scalar(p, TAG_TIER, (uint64_t)r[1]);
    p = put_scalar(p, TAG_OFFSET, (uint64_t)r[3]);
    p = put_scalar(p, TAG_LENGTH, (uint64_t)r[4]);
    p = put_scalar(p, TAG_STATE, (uint64_t)r[2]);
    memcpy(p, s->middle, s->middle_len);
    p += s->middle_len;
    p = put_nested(p, TAG_GRANT, grant_len(s));
    p += mc_grant_sign(&s->key, op, s->segment_id, (uint64_t)r[3], (uint64_t)r[4], expiry_ms,
                       (const char *)s->worker_id, s->worker_id_len, p);
    memcpy(p, s->tail, s->tail_len);
    return p + s->tail_len;
}

typedef struct {
    const int64_t *item, *replicas;  /* into fields */
    size_t n_replicas, key_at, status_len, body_len;
} item_plan;

/* Checks item i (its fields at fields[*at], its text at text[*text_at]) and sizes it. */
static int plan_item(item_plan *plan, int layout, mc_desc_segment **segments,
                     size_t n_segments, const int64_t *fields, size_t n_fields, size_t *at,
                     size_t text_len, size_t *text_at) {
    if (n_fields - *at < MC_ANSWER_ITEM_FIELDS)
        return mc_fail(-EINVAL, "answer fields end inside an item");
    const int64_t *item = fields + *at;
    *at += MC_ANSWER_ITEM_FIELDS;
    if (item[ITEM_NUMBER] < 0 || item[ITEM_KEY_LEN] < 0 || item[ITEM_MESSAGE_LEN] < 0
        || item[ITEM_REPLICAS] < 0 || item[ITEM_CODE] < INT32_MIN || item[ITEM_CODE] > INT32_MAX)
        return mc_fail(-EINVAL, "an answer item has a negative size or count");
    if (item[ITEM_RETRY] < 0 || item[ITEM_RETRY] > UINT32_MAX
        || (layout == MC_ANSWER_GET_REPLICAS && item[ITEM_RETRY] != 0))
        return mc_fail(-EINVAL, "retry_after_ms %lld in a %s answer", (long long)item[ITEM_RETRY],
                       layout == MC_ANSWER_GET_REPLICAS ? "GetReplicas" : "PutStart");
    size_t key_len = (size_t)item[ITEM_KEY_LEN], message_len = (size_t)item[ITEM_MESSAGE_LEN];
    size_t n_replicas = (size_t)item[ITEM_REPLICAS];
    if (text_len - *text_at < key_len || text_len - *text_at - key_len < message_len)
        return mc_fail(-EINVAL, "answer text ends inside an item");
    if (n_replicas > (n_fields - *at) / MC_ANSWER_REPLICA_FIELDS)
        return mc_fail(-EINVAL, "answer fields end inside an item's replicas");
    plan->item = item;
    plan->replicas = fields + *at;
    plan->n_replicas = n_replicas;
    plan->key_at = *text_at;
    *at += n_replicas * MC_ANSWER_REPLICA_FIELDS;
    *text_at += key_len + message_len;
    plan->status_len = (key_len ? nested_len(key_len) : 0)
                       + scalar_len(zigzag32(item[ITEM_CODE]))
                       + (message_len ? nested_len(message_len) : 0);
    /* size (GetReplicas) or put id and retry_after_ms (PutStart): zero when absent */
    size_t body = nested_len(plan->status_len) + scalar_len((uint64_t)item[ITEM_NUMBER])
                  + scalar_len((uint64_t)item[ITEM_RETRY]);
    for (size_t j = 0; j < n_replicas; j++) {
        const int64_t *r = plan->replicas + j * MC_ANSWER_REPLICA_FIELDS;
        if (r[0] < 0 || (uint64_t)r[0] >= n_segments || segments[r[0]] == NULL)
            return mc_fail(-EINVAL, "a replica names segment %lld of %zu", (long long)r[0],
                           n_segments);
        if (r[1] < 0 || r[2] < 0 || r[3] < 0 || r[4] < 0)
            return mc_fail(-EINVAL, "a replica has a negative field");
        body += nested_len(descriptor_len(segments[r[0]], r));
    }
    plan->body_len = body;
    return 0;
}

static uint8_t *put_replicas(uint8_t *p, int tag, const item_plan *plan,
                             mc_desc_segment **segments, int op, uint64_t expiry_ms) {
    for (size_t j = 0; j < plan->n_replicas; j++) {
        const int64_t *r = plan->replicas + j * MC_ANSWER_REPLICA_FIELDS;
        const mc_desc_segment *s = segments[r[0]];
        p = put_nested(p, tag, descriptor_len(s, r));
        p = put_descriptor(p, s, r, op, expiry_ms);
    }
    return p;
}

static uint8_t *put_item(uint8_t *p, int layout, const item_plan *plan,
                         mc_desc_segment **segments, const uint8_t *text, int op,
                         uint64_t expiry_ms) {
    const int64_t *item = plan->item;
    size_t key_len = (size_t)item[ITEM_KEY_LEN], message_len = (size_t)item[ITEM_MESSAGE_LEN];
    p = put_nested(p, TAG_ITEMS, plan->body_len);
    p = put_nested(p, TAG_STATUS, plan->status_len);
    p = put_string(p, TAG_KEY, text + plan->key_at, key_len);
    p = put_scalar(p, TAG_CODE, zigzag32(item[ITEM_CODE]));
    p = put_string(p, TAG_MESSAGE, text + plan->key_at + key_len, message_len);
    if (layout == MC_ANSWER_GET_REPLICAS) {
        p = put_scalar(p, TAG_GET_SIZE, (uint64_t)item[ITEM_NUMBER]);
        return put_replicas(p, TAG_GET_REPLICAS, plan, segments, op, expiry_ms);
    }
    p = put_replicas(p, TAG_PUT_REPLICAS, plan, segments, op, expiry_ms);
    p = put_scalar(p, TAG_PUT_ID, (uint64_t)item[ITEM_NUMBER]);
    return put_scalar(p, TAG_PUT_RETRY, (uint64_t)item[ITEM_RETRY]);
}

int64_t mc_encode_replicas_answer(uint8_t *out, size_t cap, size_t *needed, int layout,
                                  mc_desc_segment **segments, size_t n_segments,
                                  const int64_t *fields, size_t n_fields,
                                  const uint8_t *text, size_t text_len, size_t n_items,
                                  int op, uint64_t expiry_ms, uint32_t ttl_ms) {
    if (op != MC_OP_READ && op != MC_OP_WRITE)
        return mc_fail(-EINVAL, "grant op %d is neither READ nor WRITE", op);
    if (layout != MC_ANSWER_GET_REPLICAS && layout != MC_ANSWER_PUT_START)
        return mc_fail(-EINVAL, "answer layout %d is neither GetReplicas nor PutStart", layout);
    enum { STACK_ITEMS = 64 };
    item_plan stack[STACK_ITEMS];
    item_plan *plans = n_items <= STACK_ITEMS ? stack : malloc(n_items * sizeof *plans);
    if (plans == NULL) return mc_fail(-ENOMEM, "out of memory for %zu answer items", n_items);
    int64_t rc = 0;
    size_t at = 0, text_at = 0, total = scalar_len(ttl_ms);
    for (size_t i = 0; i < n_items && rc == 0; i++) {
        rc = plan_item(&plans[i], layout, segments, n_segments, fields, n_fields, &at,
                       text_len, &text_at);
        if (rc == 0) total += nested_len(plans[i].body_len);
    }
    if (rc == 0 && (at != n_fields || text_at != text_len))
        rc = mc_fail(-EINVAL, "answer fields or text left over after %zu items", n_items);
    if (rc == 0 && total > cap) {
        *needed = total;
        rc = mc_fail(-ENOSPC, "an answer of %zu bytes does not fit in %zu", total, cap);
    }
    if (rc == 0) {
        uint8_t *p = out;
        for (size_t i = 0; i < n_items; i++)
            p = put_item(p, layout, &plans[i], segments, text, op, expiry_ms);
        p = put_scalar(p, TAG_TTL, ttl_ms);
        rc = (int64_t)(p - out);
        if ((size_t)rc != total)  /* the sizing and the writing disagree: a bug here */
            rc = mc_fail(-EFAULT, "answer encoder wrote %lld bytes of %zu", (long long)rc, total);
    }
    if (plans != stack) free(plans);
    return rc;
}
