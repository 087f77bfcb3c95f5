/* Signs and verifies data-plane grants (format: proto/grants.py) with HMAC-SHA256 from
 * OpenSSL's SHA-256 (grant_internal.h: the key's pads are hashed once per key).
 *
 * The MAC is checked before any field is trusted, and compared with CRYPTO_memcmp so the time
 * taken says nothing about how many leading bytes of a forgery were right.
 */
#include "grant_internal.h"

#include <errno.h>
#include <string.h>

#include <openssl/crypto.h>

void mc_grant_key_init(mc_grant_key *k, const uint8_t *key, size_t key_len) {
    uint8_t block[SHA256_CBLOCK] = {0}, pad[SHA256_CBLOCK];
    if (key_len > SHA256_CBLOCK)
        SHA256(key, key_len, block);
    else
        memcpy(block, key, key_len);
    for (int i = 0; i < SHA256_CBLOCK; i++) pad[i] = block[i] ^ 0x36;
    SHA256_Init(&k->inner);
    SHA256_Update(&k->inner, pad, sizeof pad);
    for (int i = 0; i < SHA256_CBLOCK; i++) pad[i] = block[i] ^ 0x5c;
    SHA256_Init(&k->outer);
    SHA256_Update(&k->outer, pad, sizeof pad);
    OPENSSL_cleanse(block, sizeof block);
    OPENSSL_cleanse(pad, sizeof pad);
}

static void grant_mac(const mc_grant_key *k, const uint8_t *body, size_t body_len,
                      uint8_t mac[MC_GRANT_MAC_BYTES]) {
    uint8_t inner_digest[SHA256_DIGEST_LENGTH];
    SHA256_CTX ctx = k->inner;
    SHA256_Update(&ctx, body, body_len);
    SHA256_Final(inner_digest, &ctx);
    ctx = k->outer;
    SHA256_Update(&ctx, inner_digest, sizeof inner_digest);
    SHA256_Final(mac, &ctx);
}

size_t mc_grant_sign(const mc_grant_key *k, int op, uint32_t segment_id, uint64_t offset,
                     uint64_t length, uint64_t expiry_ms, const char *worker_id,
                     size_t worker_id_len, uint8_t *out) {
    out[0] = MC_GRANT_VERSION;
    out[1] = (uint8_t)op;
    mc_store_be(out + 2, segment_id, 4);
    mc_store_be(out + 6, offset, 8);
    mc_store_be(out + 14, length, 8);
    mc_store_be(out + 22, expiry_ms, 8);
    mc_store_be(out + 30, worker_id_len, 2);
    memcpy(out + MC_GRANT_HEAD_BYTES, worker_id, worker_id_len);
    size_t body_len = MC_GRANT_HEAD_BYTES + worker_id_len;
    grant_mac(k, out, body_len, out + body_len);
    return body_len + MC_GRANT_MAC_BYTES;
}

int mc_grant_verify(const uint8_t *key, size_t key_len, const uint8_t *token, size_t token_len,
                    const char *worker_id, size_t worker_id_len, uint64_t now_ms, mc_grant *out) {
    if (key_len == 0) return mc_fail(-EACCES, "no grant key");
    mc_grant_key k;
    mc_grant_key_init(&k, key, key_len);
    int rc = mc_grant_verify_keyed(&k, token, token_len, worker_id, worker_id_len, now_ms, out);
    OPENSSL_cleanse(&k, sizeof k);
    return rc;
}

int mc_grant_verify_keyed(const mc_grant_key *k, const uint8_t *token, size_t token_len,
                          const char *worker_id, size_t worker_id_len, uint64_t now_ms,
                          mc_grant *out) {
    if (token_len < MC_GRANT_HEAD_BYTES + MC_GRANT_MAC_BYTES || token_len > MC_GRANT_MAX_BYTES)
        return mc_fail(-EACCES, "grant has a bad length");
    size_t body_len = token_len - MC_GRANT_MAC_BYTES;
    uint8_t expected[MC_GRANT_MAC_BYTES];
    grant_mac(k, token, body_len, expected);
    if (CRYPTO_memcmp(expected, token + body_len, MC_GRANT_MAC_BYTES) != 0)
        return mc_fail(-EACCES, "grant signature is invalid");
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
