/* The master's answers that hand out replica descriptors, encoded in C: protobuf bytes of a
 * GetReplicasResponse or a PutStartResponse (proto/mooncake.proto) whose replica descriptors
 * carry HMAC-SHA256-signed grants.
 *
 * Every read asks the master for its keys' replicas and every write for new ones, and
 * building those answers through protobuf message objects from Python (a descriptor, a
 * grant and a status per key) was half of the master's time per call. Here the fields a
 * segment's replicas share are serialized once (mc_desc_segment), the grant's HMAC key
 * schedule is computed once per segment, and a whole answer is written in one call. The
 * bytes equal what protobuf itself would encode for the same message (fields in number
 * order, defaults left out): tests compare the two. Grants are proto/grants.py's encoding.
 */
#ifndef MC_ANSWER_H
#define MC_ANSWER_H

#include "mc_common.h"

/* CDEF-BEGIN */
typedef struct mc_desc_segment mc_desc_segment;

/* which answer mc_encode_replicas_answer writes: a GetReplicasResponse (items { status,
 * size, replicas }) or a PutStartResponse (items { status, replicas, put_id,
 * retry_after_ms }) */
#define MC_ANSWER_GET_REPLICAS 1
#define MC_ANSWER_PUT_START 2

/* per item of mc_encode_replicas_answer's `fields`: the object's size (GetReplicas) or its
 * put id (PutStart), code, key bytes, message bytes, replicas, retry_after_ms (PutStart; 0
 * in a GetReplicas answer); then per replica of that item: segment index, tier, state,
 * offset, length */
#define MC_ANSWER_ITEM_FIELDS 6
#define MC_ANSWER_REPLICA_FIELDS 5

/* One segment's shared descriptor fields and its worker's grant signer. head, middle and
 * tail are serialized ReplicaDescriptor fields: worker_id and segment_id (head), data_addr,
 * node_id, path and segment_size (middle), grpc_addr and rdma (tail): the per-replica fields
 * (tier, offset, length, state, grant) go between them. NULL on bad arguments
 * (mc_last_error). */
mc_desc_segment *mc_desc_segment_new(const uint8_t *grant_key, size_t key_len,
                                     const char *worker_id, size_t worker_id_len,
                                     uint32_t segment_id,
                                     const uint8_t *head, size_t head_len,
                                     const uint8_t *middle, size_t middle_len,
                                     const uint8_t *tail, size_t tail_len);
void mc_desc_segment_free(mc_desc_segment *segment);

/* Writes the answer (`layout`, one of MC_ANSWER_*) of n_items items into out[0..cap) and
 * returns its length. `fields` holds each item's MC_ANSWER_ITEM_FIELDS values followed by
 * its replicas' MC_ANSWER_REPLICA_FIELDS each; `text` each item's key then its message
 * (UTF-8), in item order. Each replica's grant is signed for `op` until expiry_ms; ttl_ms is
 * the answer's lease_ttl_ms or put_timeout_ms. -ENOSPC with *needed set when cap is too
 * small; -EINVAL when fields or text do not add up. */
int64_t mc_encode_replicas_answer(uint8_t *out, size_t cap, size_t *needed, int layout,
                                  mc_desc_segment **segments, size_t n_segments,
                                  const int64_t *fields, size_t n_fields,
                                  const uint8_t *text, size_t text_len, size_t n_items,
                                  int op, uint64_t expiry_ms, uint32_t ttl_ms);
/* CDEF-END */

#endif
