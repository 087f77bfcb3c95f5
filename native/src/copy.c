/* Multi-threaded memcpy: one bandwidth-bound copy (or a batch of them) split by bytes across
 * the caller and a pool of helper threads.
 *
 * One core rarely saturates memory bandwidth; two to four usually come close. Copies under
 * PARALLEL_MIN_BYTES run on the caller alone (waking a helper costs more than it saves), and
 * a copy that finds the pool busy with another thread's copy also runs alone, never waits.
 */
#include "mc_copy.h"

#include <errno.h>
#include <pthread.h>
#if defined(__x86_64__) || defined(__i386__)
#include <emmintrin.h>
#define HAVE_STREAM_STORES 1
#endif
#include <stdlib.h>
#include <string.h>

#define PARALLEL_MIN_BYTES (1u << 20)
#define STREAM_MIN_BYTES (256u << 10)   /* below this, the stores' fence costs more than it saves */
#define SHARE_ALIGN 4096u
#define MAX_THREADS 16

/* Everything below `lock` is read and written under it. A job is published by bumping
 * `generation`; its participants are fixed when it is published (`job_threads`), so changing
 * the configured count meanwhile cannot make a counted helper skip it. */
static struct {
    pthread_mutex_t busy;        /* held by the one caller whose copy uses the pool */
    pthread_mutex_t lock;
    pthread_cond_t work, done;
    const mc_copy_item *items;   /* the current job: valid until its caller returns */
    size_t count;
    int flags;
    uint64_t share;              /* bytes per participant */
    unsigned generation;
    int job_threads;             /* participants of the current job, caller included */
    int pending;                 /* helpers still copying the current job */
    int helpers;                 /* helper threads started */
    int configured;              /* participants a large copy uses, caller included */
} pool = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER,
          PTHREAD_COND_INITIALIZER, NULL, 0, 0, 0, 0, 0, 0, 0, 0};

typedef struct {
    int index;                   /* participant number; 0 is the caller */
    unsigned seen;               /* the generation when the helper was created: older jobs
                                    are finished and their items gone */
} helper_start;

/* memcpy with non-temporal 16-byte stores for the aligned middle */
static void stream_copy(char *dst, const char *src, uint64_t n) {
#ifdef HAVE_STREAM_STORES
    if (n >= STREAM_MIN_BYTES) {
        uint64_t head = (16 - ((uintptr_t)dst & 15)) & 15;
        memcpy(dst, src, head);
        dst += head;
        src += head;
        n -= head;
        for (uint64_t blocks = n / 64; blocks > 0; blocks--, src += 64, dst += 64) {
            __m128i a = _mm_loadu_si128((const __m128i *)src);
            __m128i b = _mm_loadu_si128((const __m128i *)(src + 16));
            __m128i c = _mm_loadu_si128((const __m128i *)(src + 32));
            __m128i d = _mm_loadu_si128((const __m128i *)(src + 48));
            _mm_stream_si128((__m128i *)dst, a);
            _mm_stream_si128((__m128i *)(dst + 16), b);
            _mm_stream_si128((__m128i *)(dst + 32), c);
            _mm_stream_si128((__m128i *)(dst + 48), d);
        }
        _mm_sfence();   /* the streamed bytes are visible before the caller says "done" */
        n %= 64;
    }
#endif
    memcpy(dst, src, n);
}

/* copies bytes [begin, end) of the batch seen as one concatenated stream */
static void copy_range(const mc_copy_item *items, size_t count, uint64_t begin, uint64_t end,
                       int flags) {
    uint64_t base = 0;
    for (size_t i = 0; i < count && base < end; i++) {
        uint64_t len = items[i].length, lo = begin > base ? begin - base : 0;
        uint64_t hi = end - base < len ? end - base : len;
        char *dst = (char *)items[i].dst + lo;
        const char *src = (const char *)items[i].src + lo;
        if (lo < hi && (flags & MC_COPY_STREAM))
            stream_copy(dst, src, hi - lo);
        else if (lo < hi)
            memcpy(dst, src, hi - lo);
        base += len;
    }
}

static uint64_t total_bytes(const mc_copy_item *items, size_t count) {
    uint64_t total = 0;
    for (size_t i = 0; i < count; i++) total += items[i].length;
    return total;
}

static void *helper_main(void *arg) {
    helper_start start = *(helper_start *)arg;
    free(arg);
    int index = start.index;
    unsigned seen = start.seen;
    pthread_mutex_lock(&pool.lock);
    for (;;) {
        while (pool.generation == seen) pthread_cond_wait(&pool.work, &pool.lock);
        seen = pool.generation;
        int job_threads = pool.job_threads;
        if (index >= job_threads) continue;   /* not a participant of this job */
        const mc_copy_item *items = pool.items;
        size_t count = pool.count;
        int flags = pool.flags;
        uint64_t share = pool.share, total = total_bytes(items, count);
        pthread_mutex_unlock(&pool.lock);
        uint64_t begin = share * (uint64_t)index, end = begin + share;
        if (end > total || index == job_threads - 1) end = total;
        if (begin < end) copy_range(items, count, begin, end, flags);
        pthread_mutex_lock(&pool.lock);
        if (--pool.pending == 0) pthread_cond_signal(&pool.done);
    }
    return NULL;
}

/* fork(): the child has the pool's state but none of its threads (and maybe a lock some
 * other thread held). Hold both locks across the fork, then give the child an empty pool
 * that grows again on its first large copy. */
static void before_fork(void) {
    pthread_mutex_lock(&pool.busy);
    pthread_mutex_lock(&pool.lock);
}

static void after_fork_parent(void) {
    pthread_mutex_unlock(&pool.lock);
    pthread_mutex_unlock(&pool.busy);
}

static void after_fork_child(void) {
    pthread_mutex_init(&pool.busy, NULL);
    pthread_mutex_init(&pool.lock, NULL);
    pthread_cond_init(&pool.work, NULL);
    pthread_cond_init(&pool.done, NULL);
    pool.items = NULL;
    pool.count = 0;
    pool.generation = 0;
    pool.job_threads = pool.pending = pool.helpers = pool.configured = 0;
}

static pthread_once_t fork_handlers_once = PTHREAD_ONCE_INIT;

static void install_fork_handlers(void) {
    pthread_atfork(before_fork, after_fork_parent, after_fork_child);
}

static int default_threads(void) {
    const char *env = getenv("MOONCAKE_COPY_THREADS");
    int n = env ? atoi(env) : mc_online_cpus();
    if (n < 1) n = 1;
    return n > MAX_THREADS ? MAX_THREADS : n;
}

/* starts helpers up to threads-1; caller holds pool.lock */
static int grow_pool(int threads) {
    pthread_once(&fork_handlers_once, install_fork_handlers);
    while (pool.helpers < threads - 1) {
        pthread_t tid;
        pthread_attr_t attr;
        helper_start *start = malloc(sizeof *start);
        if (start == NULL) return ENOMEM;
        start->index = pool.helpers + 1;
        start->seen = pool.generation;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        int rc = pthread_create(&tid, &attr, helper_main, start);
        pthread_attr_destroy(&attr);
        if (rc != 0) {
            free(start);
            return rc;
        }
        pool.helpers++;
    }
    return 0;
}

int mc_copy_set_threads(int threads) {
    if (threads < 0 || threads > MAX_THREADS)
        return mc_fail(-EINVAL, "copy threads must be 0..%d, got %d", MAX_THREADS, threads);
    pthread_mutex_lock(&pool.lock);
    pool.configured = threads == 0 ? default_threads() : threads;
    int rc = grow_pool(pool.configured);
    if (rc != 0) pool.configured = pool.helpers + 1;
    pthread_mutex_unlock(&pool.lock);
    return rc ? mc_fail(-rc, "cannot start copy threads: %s", strerror(rc)) : 0;
}

int mc_copy_threads(void) {
    pthread_mutex_lock(&pool.lock);
    if (pool.configured == 0) {
        pool.configured = default_threads();
        if (grow_pool(pool.configured) != 0) pool.configured = pool.helpers + 1;
    }
    int n = pool.configured;
    pthread_mutex_unlock(&pool.lock);
    return n;
}

int mc_copy_batch(const mc_copy_item *items, size_t count, int flags) {
    uint64_t total = total_bytes(items, count);
    int threads = total >= PARALLEL_MIN_BYTES ? mc_copy_threads() : 1;
    if (threads < 2 || pthread_mutex_trylock(&pool.busy) != 0) {
        copy_range(items, count, 0, total, flags);
        return 0;
    }
    uint64_t share = (total / (uint64_t)threads + SHARE_ALIGN - 1) / SHARE_ALIGN * SHARE_ALIGN;
    pthread_mutex_lock(&pool.lock);
    if (threads > pool.helpers + 1) threads = pool.helpers + 1;
    pool.items = items;
    pool.count = count;
    pool.flags = flags;
    pool.share = share;
    pool.job_threads = threads;
    pool.pending = threads - 1;
    pool.generation++;
    pthread_cond_broadcast(&pool.work);
    pthread_mutex_unlock(&pool.lock);
    copy_range(items, count, 0, share < total ? share : total, flags);
    pthread_mutex_lock(&pool.lock);
    while (pool.pending > 0) pthread_cond_wait(&pool.done, &pool.lock);
    pthread_mutex_unlock(&pool.lock);
    pthread_mutex_unlock(&pool.busy);
    return 0;
}
