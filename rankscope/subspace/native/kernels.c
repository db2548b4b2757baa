/* rankscope native kernels: the fast Walsh–Hadamard transform and the Fastfood gather/scatter (float32).
 *
 * Compiled on first use by rankscope/subspace/native.py (cc -O3 -march=native -shared -pthread) and called
 * through ctypes; the pure-torch transform in fwht.py is the fallback and the reference.
 *
 * Transform H_L (unnormalised Sylvester–Hadamard, L = 2^k) on rows of a (rows × L) array, out of place or in
 * place.  Cache-blocked in two kinds of pass over memory:
 *   A. consecutive chunks of 2^CHUNK_BITS floats (L1-resident) go through their first CHUNK_BITS butterfly
 *      stages (the first three inside one AVX2 register, the rest as vectorised radix-4 sweeps);
 *   B. the remaining bits in groups of at most GROUP_BITS: for bits [lo, hi) the row is a set of strips of
 *      R = 2^(hi−lo) sub-rows × w contiguous floats at stride 2^lo; each strip is copied to a contiguous
 *      thread-local buffer (R·w ≤ 2^16 floats, L2-resident; copying avoids the cache-set conflicts of a
 *      power-of-two stride), transformed across its sub-rows, and copied back.
 * Since H_L = H_{2^(k−hi)} ⊗ H_{2^(hi−lo)} ⊗ H_{2^lo}, the passes commute and each applies one factor.
 * Every pass is split over threads (pthreads, created per call: no spinning workers left behind).
 */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef __AVX2__
#include <immintrin.h>
#endif

typedef int64_t i64;

#define CHUNK_BITS 12
#define GROUP_BITS 12
#define BUFFER_FLOATS (1 << 16)
#define MAX_THREADS 256

/* ---------------------------------------------------------------------------------------------- */
/* in-cache butterflies                                                                            */
/* ---------------------------------------------------------------------------------------------- */

/* Stages h = 1, 2, 4 on consecutive groups of 8 (n a multiple of 8). */
static void first_three_stages(float *x, i64 n) {
#ifdef __AVX2__
    const __m256 s1 = _mm256_setr_ps(1, -1, 1, -1, 1, -1, 1, -1);
    const __m256 s2 = _mm256_setr_ps(1, 1, -1, -1, 1, 1, -1, -1);
    const __m256 s4 = _mm256_setr_ps(1, 1, 1, 1, -1, -1, -1, -1);
    for (i64 i = 0; i < n; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i);
        /* y = swap(v) + sign·v: the multiply by ±1 is exact, so each stage rounds once, like a + b */
        v = _mm256_fmadd_ps(v, s1, _mm256_permute_ps(v, 0xB1));
        v = _mm256_fmadd_ps(v, s2, _mm256_permute_ps(v, 0x4E));
        v = _mm256_fmadd_ps(v, s4, _mm256_permute2f128_ps(v, v, 1));
        _mm256_storeu_ps(x + i, v);
    }
#else
    for (i64 i = 0; i < n; i += 8) {
        float *p = x + i;
        for (int h = 1; h < 8; h *= 2)
            for (int b = 0; b < 8; b += 2 * h)
                for (int j = b; j < b + h; ++j) {
                    float a = p[j], c = p[j + h];
                    p[j] = a + c;
                    p[j + h] = a - c;
                }
    }
#endif
}

/* Stages h = h0, 2·h0, …, n/2 on a contiguous array of n floats (h0 ≥ 8: the inner loops vectorise). */
static void stages_from(float *restrict x, i64 n, i64 h0) {
    i64 h = h0;
    for (; 4 * h <= n; h *= 4) {
        for (i64 b = 0; b < n; b += 4 * h) {
            float *restrict p0 = x + b, *restrict p1 = p0 + h, *restrict p2 = p1 + h, *restrict p3 = p2 + h;
            for (i64 j = 0; j < h; ++j) {
                float a0 = p0[j], a1 = p1[j], a2 = p2[j], a3 = p3[j];
                float u0 = a0 + a1, u1 = a0 - a1, u2 = a2 + a3, u3 = a2 - a3;
                p0[j] = u0 + u2;
                p1[j] = u1 + u3;
                p2[j] = u0 - u2;
                p3[j] = u1 - u3;
            }
        }
    }
    if (2 * h <= n) {
        for (i64 b = 0; b < n; b += 2 * h) {
            float *restrict p0 = x + b, *restrict p1 = p0 + h;
            for (i64 j = 0; j < h; ++j) {
                float a0 = p0[j], a1 = p1[j];
                p0[j] = a0 + a1;
                p1[j] = a0 - a1;
            }
        }
    }
}

/* All stages of a contiguous array of n = 2^bits floats. */
static void transform_contiguous(float *x, i64 n) {
    if (n >= 8) {
        first_three_stages(x, n);
        stages_from(x, n, 8);
        return;
    }
    for (i64 h = 1; h < n; h *= 2)
        for (i64 b = 0; b < n; b += 2 * h)
            for (i64 j = b; j < b + h; ++j) {
                float a = x[j], c = x[j + h];
                x[j] = a + c;
                x[j + h] = a - c;
            }
}

/* ---------------------------------------------------------------------------------------------- */
/* threads                                                                                         */
/* ---------------------------------------------------------------------------------------------- */

typedef void (*work_fn)(void *ctx, i64 begin, i64 end, float *buffer, int thread);

typedef struct {
    work_fn fn;
    void *ctx;
    i64 begin, end;
    int thread;
    int need_buffer;
    int failed;
} task_t;

static void *run_task(void *arg) {
    task_t *t = (task_t *)arg;
    float *buffer = NULL;
    if (t->need_buffer) {
        buffer = (float *)aligned_alloc(64, BUFFER_FLOATS * sizeof(float));
        if (!buffer) {
            t->failed = 1;
            return NULL;
        }
    }
    t->fn(t->ctx, t->begin, t->end, buffer, t->thread);
    free(buffer);
    return NULL;
}

/* Split items [0, n) into contiguous ranges over up to `threads` threads (the caller runs the first). */
static int parallel_for(i64 n, int threads, int need_buffer, work_fn fn, void *ctx) {
    if (n <= 0) return 0;
    if (threads < 1) threads = 1;
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    if (threads > n) threads = (int)n;
    task_t tasks[MAX_THREADS];
    pthread_t ids[MAX_THREADS];
    int started[MAX_THREADS] = {0};
    for (int t = 0; t < threads; ++t) {
        tasks[t] = (task_t){fn, ctx, n * t / threads, n * (t + 1) / threads, t, need_buffer, 0};
    }
    for (int t = 1; t < threads; ++t) started[t] = pthread_create(&ids[t], NULL, run_task, &tasks[t]) == 0;
    for (int t = 1; t < threads; ++t)
        if (!started[t]) run_task(&tasks[t]); /* no thread to be had: do its share here */
    run_task(&tasks[0]);
    int failed = tasks[0].failed;
    for (int t = 1; t < threads; ++t) {
        if (started[t]) pthread_join(ids[t], NULL);
        failed |= tasks[t].failed;
    }
    return failed ? -1 : 0;
}

/* ---------------------------------------------------------------------------------------------- */
/* pass A: chunks (optionally filled by the Fastfood gather)                                       */
/* ---------------------------------------------------------------------------------------------- */

typedef struct {
    const float *src;     /* rows × L, or NULL when gathering */
    const float *h;       /* gather source: rows × n */
    const int32_t *index; /* rows × L, entries in [0, n) */
    const float *scale;   /* rows × L */
    i64 n;
    float *dst;
    i64 length, chunk;
} chunk_ctx;

static void chunk_work(void *arg, i64 begin, i64 end, float *buffer, int thread) {
    (void)buffer;
    (void)thread;
    chunk_ctx *c = (chunk_ctx *)arg;
    i64 per_row = c->length / c->chunk;
    for (i64 item = begin; item < end; ++item) {
        i64 row = item / per_row, offset = row * c->length + (item % per_row) * c->chunk;
        float *out = c->dst + offset;
        if (c->src) {
            if (c->src != c->dst) memcpy(out, c->src + offset, (size_t)c->chunk * sizeof(float));
        } else {
            const float *h = c->h + row * c->n;
            const int32_t *idx = c->index + offset;
            const float *s = c->scale + offset;
            for (i64 i = 0; i < c->chunk; ++i) out[i] = s[i] * h[idx[i]];
        }
        transform_contiguous(out, c->chunk);
    }
}

/* ---------------------------------------------------------------------------------------------- */
/* pass B: strips of sub-rows                                                                      */
/* ---------------------------------------------------------------------------------------------- */

typedef struct {
    float *x;
    i64 length;
    int lo, hi;
    i64 width; /* floats per strip sub-row */
} strip_ctx;

static void strip_work(void *arg, i64 begin, i64 end, float *buffer, int thread) {
    (void)thread;
    strip_ctx *c = (strip_ctx *)arg;
    i64 sub_rows = (i64)1 << (c->hi - c->lo), stride = (i64)1 << c->lo, w = c->width;
    i64 strips_per_outer = stride / w, outer_size = (i64)1 << c->hi;
    i64 per_row = (c->length / outer_size) * strips_per_outer;
    for (i64 item = begin; item < end; ++item) {
        i64 row = item / per_row, rest = item % per_row;
        float *base = c->x + row * c->length + (rest / strips_per_outer) * outer_size + (rest % strips_per_outer) * w;
        for (i64 r = 0; r < sub_rows; ++r) memcpy(buffer + r * w, base + r * stride, (size_t)w * sizeof(float));
        stages_from(buffer, sub_rows * w, w);
        for (i64 r = 0; r < sub_rows; ++r) memcpy(base + r * stride, buffer + r * w, (size_t)w * sizeof(float));
    }
}

static int threads_for(i64 elements, int threads) {
    /* below ~2^16 elements a thread costs more than it saves */
    i64 useful = elements >> 16;
    if (useful < 1) useful = 1;
    return useful < threads ? (int)useful : threads;
}

static int transform_rest(float *dst, i64 rows, int bits, int threads, int chunk_bits, int group_bits) {
    int done = bits < chunk_bits ? bits : chunk_bits;
    int left = bits - done;
    if (left == 0) return 0;
    int groups = (left + group_bits - 1) / group_bits;
    i64 length = (i64)1 << bits;
    for (int g = 0; g < groups; ++g) {
        int size = left / groups + (g < left % groups ? 1 : 0);
        strip_ctx c = {dst, length, done, done + size, 0};
        i64 width = (i64)BUFFER_FLOATS >> size, stride = (i64)1 << done;
        c.width = width < stride ? width : stride;
        i64 items = rows * (length >> c.hi) * (stride / c.width);
        if (parallel_for(items, threads_for(rows * length, threads), 1, strip_work, &c)) return -1;
        done += size;
    }
    return 0;
}

static int chunk_pass(chunk_ctx *c, i64 rows, int threads) {
    return parallel_for(rows * (c->length / c->chunk), threads_for(rows * c->length, threads), 0, chunk_work, c);
}

static int valid_blocking(int chunk_bits, int group_bits) {
    return chunk_bits >= 0 && chunk_bits <= 20 && group_bits >= 1 && group_bits <= GROUP_BITS;
}

/* dst = H_L src row by row (dst may be src), passes of 2^chunk_bits-float chunks then groups of at most
 * group_bits bits (rs_fwht's defaults; smaller values let the tests reach every pass shape on short rows).
 * Returns 0, −1 when a buffer could not be allocated, −2 for a blocking out of range. */
int rs_fwht_blocked(const float *src, float *dst, i64 rows, int bits, int threads, int chunk_bits, int group_bits) {
    if (!valid_blocking(chunk_bits, group_bits)) return -2;
    i64 length = (i64)1 << bits;
    chunk_ctx c = {src, NULL, NULL, NULL, 0, dst, length, (i64)1 << (bits < chunk_bits ? bits : chunk_bits)};
    if (chunk_pass(&c, rows, threads)) return -1;
    return transform_rest(dst, rows, bits, threads, chunk_bits, group_bits);
}

int rs_fwht(const float *src, float *dst, i64 rows, int bits, int threads) {
    return rs_fwht_blocked(src, dst, rows, bits, threads, CHUNK_BITS, GROUP_BITS);
}

/* Fastfood expansion: dst[r] = H_L (scale[r] ⊙ h[r][index[r]]), h of shape rows × n, index/scale rows × L. */
int rs_fastfood_expand(const float *h, i64 n, const int32_t *index, const float *scale, float *dst, i64 rows,
                       int bits, int threads) {
    i64 length = (i64)1 << bits;
    chunk_ctx c = {NULL, h, index, scale, n, dst, length, (i64)1 << (bits < CHUNK_BITS ? bits : CHUNK_BITS)};
    if (chunk_pass(&c, rows, threads)) return -1;
    return transform_rest(dst, rows, bits, threads, CHUNK_BITS, GROUP_BITS);
}

/* ---------------------------------------------------------------------------------------------- */
/* Fastfood gather's adjoint: out[r][index[r][i]] += scale[r][i] · g[r][i]                         */
/* ---------------------------------------------------------------------------------------------- */

typedef struct {
    const float *g, *scale;
    const int32_t *index;
    float *out; /* rows × n, zeroed by the caller */
    float *partial; /* threads × n when one row is split over threads */
    i64 rows, length, n;
} scatter_ctx;

static void scatter_rows(void *arg, i64 begin, i64 end, float *buffer, int thread) {
    (void)buffer;
    (void)thread;
    scatter_ctx *c = (scatter_ctx *)arg;
    for (i64 row = begin; row < end; ++row) {
        const float *g = c->g + row * c->length, *s = c->scale + row * c->length;
        const int32_t *idx = c->index + row * c->length;
        float *out = c->out + row * c->n;
        for (i64 i = 0; i < c->length; ++i) out[idx[i]] += s[i] * g[i];
    }
}

static void scatter_split(void *arg, i64 begin, i64 end, float *buffer, int thread) {
    (void)buffer;
    scatter_ctx *c = (scatter_ctx *)arg; /* one row, elements [begin, end) into this thread's partial */
    float *out = c->partial + (i64)thread * c->n;
    for (i64 i = begin; i < end; ++i) out[c->index[i]] += c->scale[i] * c->g[i];
}

int rs_fastfood_scatter(const float *g, const int32_t *index, const float *scale, float *out, i64 rows, i64 length,
                        i64 n, int threads) {
    scatter_ctx c = {g, scale, index, out, NULL, rows, length, n};
    threads = threads_for(rows * length, threads);
    if (rows >= threads || threads == 1) return parallel_for(rows, threads, 0, scatter_rows, &c);
    for (i64 row = 0; row < rows; ++row) {
        int used = threads;
        float *partial = (float *)calloc((size_t)used * (size_t)n, sizeof(float));
        if (!partial) return -1;
        scatter_ctx r = {g + row * length, scale + row * length, index + row * length, NULL, partial, 1, length, n};
        /* ranges map to threads 0..used−1 in order, so each writes only its own partial */
        if (parallel_for(length, used, 0, scatter_split, &r)) {
            free(partial);
            return -1;
        }
        float *o = out + row * n;
        for (int t = 0; t < used; ++t)
            for (i64 j = 0; j < n; ++j) o[j] += partial[(i64)t * n + j];
        free(partial);
    }
    return 0;
}
