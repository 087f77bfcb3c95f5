/* HMAC-SHA256 of grants under a key whose pads are hashed once (RFC 2104 with the inner and
 * outer SHA-256 states kept): the master signs (answer.c, through mc_grant_sign) and the data
 * server verifies (server_conn.c) every grant under one long-lived key per worker, and
 * OpenSSL's one-shot HMAC set-up cost more than the grant's own hashing: a check through
 * cffi took 3.0 us with it, 1.1 us with the key prepared on every call; the server prepares
 * it once per registration. */
#ifndef MC_GRANT_INTERNAL_H
#define MC_GRANT_INTERNAL_H

/* SHA256_CTX is deprecated in OpenSSL 3 but is the one API whose state a struct copy can
 * duplicate without an allocation */
#ifndef OPENSSL_SUPPRESS_DEPRECATED
#define OPENSSL_SUPPRESS_DEPRECATED
#endif
#include <openssl/sha.h>

#include "mc_grant.h"

typedef struct {
    SHA256_CTX inner, outer;  /* after absorbing key ^ ipad and key ^ opad */
} mc_grant_key;

/* key_len > 0; a key longer than a SHA-256 block is hashed first, as HMAC does */
void mc_grant_key_init(mc_grant_key *k, const uint8_t *key, size_t key_len);
/* Writes the grant for (op, worker, segment, range, expiry) into out, which has room for
 * MC_GRANT_HEAD_BYTES + worker_id_len + MC_GRANT_MAC_BYTES; returns that length */
size_t mc_grant_sign(const mc_grant_key *k, int op, uint32_t segment_id, uint64_t offset,
                     uint64_t length, uint64_t expiry_ms, const char *worker_id,
                     size_t worker_id_len, uint8_t *out);
/* mc_grant_verify under a prepared key */
int mc_grant_verify_keyed(const mc_grant_key *k, const uint8_t *token, size_t token_len,
                          const char *worker_id, size_t worker_id_len, uint64_t now_ms,
                          mc_grant *out);

#endif
