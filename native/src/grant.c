/* Verifies data-plane grants (format: proto/grants.py) with OpenSSL's HMAC-SHA256.
 *
 * The MAC is checked before any field is trusted, and compared with CRYPTO_memcmp so the time
 * taken says nothing about how many leading bytes of a forgery were right.
 */
#include "mc_grant.h"

#include <errno.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

static int check_mac(const uint8_t *key, size_t key_len, const uint8_t *body, size_t body_len,
                     const uint8_t *mac) {
    uint8_t expected[EVP_MAX_MD_SIZE];
    unsigned int expected_len = 0;
    if (key_len == 0 || key_len > INT32_MAX)
        return mc_fail(-EACCES, "no grant key");
    if (HMAC(EVP_sha256(), key, (int)key_len, body, body_len, expected, &expected_len) == NULL
        || expected_len != MC_GRANT_MAC_BYTES)
        return mc_fail(-EACCES, "grant MAC could not be computed");
    if (CRYPTO_memcmp(expected, mac, MC_GRANT_MAC_BYTES) != 0)
        return mc_fail(-EACCES, "grant signature is invalid");
    return 0;
}

int mc_grant_verify(const uint8_t *key, size_t key_len, const uint8_t *token, size_t token_len,
                    const char *worker_id, size_t worker_id_len, uint64_t now_ms, mc_grant *out) {
    if (token_len < MC_GRANT_HEAD_BYTES + MC_GRANT_MAC_BYTES || token_len > MC_GRANT_MAX_BYTES)
        return mc_fail(-EACCES, "grant has a bad length");
    size_t body_len = token_len - MC_GRANT_MAC_BYTES;
    int rc = check_mac(key, key_len, token, body_len, token + body_len);
    if (rc != 0) return rc;
    int version = token[0], op = token[1];
    size_t wid_len = (size_t)mc_load_be(token + 30, 2);
    if (version != MC_GRANT_VERSION || body_len != MC_GRANT_HEAD_BYTES + wid_len
        || (op != MC_OP_READ && op != MC_OP_WRITE))
        return mc_fail(-EACCES, "grant is malformed");
    const char *grant_worker = (const char *)token + MC_GRANT_HEAD_BYTES;
    if (wid_len != worker_id_len || memcmp(grant_worker, worker_id, wid_len) != 0)
        return mc_fail(-EACCES, "grant is for worker '%.*s', not '%.*s'", (int)wid_len,
                       grant_worker, (int)worker_id_len, worker_id);
    uint64_t expiry_ms = mc_load_be(token + 22, 8);
    if (expiry_ms < now_ms) return mc_fail(-EACCES, "grant has expired");
    out->op = op;
    out->segment_id = (uint32_t)mc_load_be(token + 2, 4);
    out->offset = mc_load_be(token + 6, 8);
    out->length = mc_load_be(token + 14, 8);
    out->expiry_ms = expiry_ms;
    return 0;
}

int mc_grant_covers(const mc_grant *grant, int op, uint32_t segment_id, uint64_t offset,
                    uint64_t length) {
    /* 128-bit sums: an end past 2^64 must not wrap around into the granted range */
    unsigned __int128 end = (unsigned __int128)offset + length;
    unsigned __int128 granted_end = (unsigned __int128)grant->offset + grant->length;
    return op == grant->op && segment_id == grant->segment_id && offset >= grant->offset
           && end <= granted_end;
}
