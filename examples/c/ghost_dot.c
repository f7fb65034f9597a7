/*
 * ghost_dot.c: ghostgrad's C ABI checked against a naive computation.
 *
 * Builds small deterministic factors (an LCG), computes ghost dot-products, their sum over two
 * layers, train x train Gram matrices, squared norms and factored gradients through the C ABI,
 * and compares every number with the same quantities computed here by materializing the
 * per-sample gradients G_n = sum_t b_{n,t} a_{n,t}^T in double precision (MATH.md section 1).
 * Also shows the error path: a NULL buffer gives a status and a message.
 *
 * Build (tests/c_abi.rs does this):
 *   cargo build --release
 *   cc -std=c99 -Wall -Wextra -pedantic -Iinclude examples/c/ghost_dot.c \
 *      target/release/libghostgrad.a -lpthread -ldl -lm -o ghost_dot
 *   ./ghost_dot            # exit status 0: every result within relative error 1e-5
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ghostgrad.h"
#include "example_util.h"

/* Layer 1: d_in 5 -> d_out 6 with a bias; query segments given by offsets. */
enum { N = 3, T = 4, D_IN = 5, D_OUT = 6, Q = 7, V = 3 };
/* Layer 2 (same N and V): d_in 3 -> d_out 2, no bias; T2 tokens, uniform query segments. */
enum { T2 = 2, D_IN2 = 3, D_OUT2 = 2, Q2 = 6, SEG2 = 2 };

/* One layer's data and its naive per-sample gradients. */
typedef struct {
    size_t n, t, d_in, d_out, q, nseg;
    int has_bias;
    const float *a, *b, *aq, *bq;
    const uint8_t *mask, *qmask; /* may be NULL */
    const int32_t *offsets;      /* segment v = rows offsets[v] .. offsets[v+1] */
} layer_data;

/* Accumulates sum_rows b a^T (with a trailing 1 for the bias) into g [d_out, d_in + has_bias]. */
static void add_outer(double *g, const layer_data *L, const float *a, const float *b) {
    size_t o, i, w = L->d_in + (size_t)L->has_bias;
    for (o = 0; o < L->d_out; o++) {
        for (i = 0; i < L->d_in; i++) g[o * w + i] += (double)b[o] * (double)a[i];
        if (L->has_bias) g[o * w + L->d_in] += (double)b[o];
    }
}

static size_t grad_size(const layer_data *L) { return L->d_out * (L->d_in + (size_t)L->has_bias); }

/* g_train [n, grad_size], g_query [nseg, grad_size] in double precision. */
static void materialize(const layer_data *L, double *g_train, double *g_query) {
    size_t n, t, v, u, gs = grad_size(L);
    memset(g_train, 0, L->n * gs * sizeof(double));
    memset(g_query, 0, L->nseg * gs * sizeof(double));
    for (n = 0; n < L->n; n++)
        for (t = 0; t < L->t; t++) {
            size_t row = n * L->t + t;
            if (L->mask && !L->mask[row]) continue;
            add_outer(g_train + n * gs, L, L->a + row * L->d_in, L->b + row * L->d_out);
        }
    for (v = 0; v < L->nseg; v++)
        for (u = (size_t)L->offsets[v]; u < (size_t)L->offsets[v + 1]; u++) {
            if (L->qmask && !L->qmask[u]) continue;
            add_outer(g_query + v * gs, L, L->aq + u * L->d_in, L->bq + u * L->d_out);
        }
}

static double frobenius(const double *x, const double *y, size_t len) {
    double s = 0.0;
    size_t i;
    for (i = 0; i < len; i++) s += x[i] * y[i];
    return s;
}

int main(void) {
    /* Layer 1 data. */
    static float a[N * T * D_IN], b[N * T * D_OUT], aq[Q * D_IN], bq[Q * D_OUT];
    static const uint8_t mask[N * T] = {1, 1, 1, 1, /* */ 1, 1, 1, 0, /* */ 1, 1, 0, 0};
    static const uint8_t qmask[Q] = {1, 1, 1, 1, 0, 1, 1};
    static const int32_t offsets[V + 1] = {0, 2, 5, 7};
    /* Layer 2 data. */
    static float a2[N * T2 * D_IN2], b2[N * T2 * D_OUT2], aq2[Q2 * D_IN2], bq2[Q2 * D_OUT2];
    static const int32_t offsets2[V + 1] = {0, 2, 4, 6};

    layer_data L1, L2;
    double g1[N * D_OUT * (D_IN + 1)], gq1[V * D_OUT * (D_IN + 1)];
    double g2[N * D_OUT2 * D_IN2], gq2[V * D_OUT2 * D_IN2];
    double want_dot[N * V], want_sum[N * V], want_gram[N * N], want_norm[N];
    float out[N * V], gram[N * N], norms[N], fgrad[V * D_OUT * D_IN], fbias[V * D_OUT];
    double want_fgrad[V * D_OUT * D_IN], want_fbias[V * D_OUT];
    const float scale = 0.5f;
    gg_context *cpu = NULL, *reference = NULL;
    gg_layer_shape shape1, shape2;
    gg_train train1, train2;
    gg_query query1, query2;
    gg_layer layers[2];
    gg_form_choice choice, choices[2];
    gg_status st;
    char describe[128];
    size_t n, m, v, o, i, describe_len = 0;
    int failures = 0;
    static const gg_form_request requests[4] = {GG_FORM_REQUEST_AUTO, GG_FORM_REQUEST_GRAM,
                                                GG_FORM_REQUEST_DENSE_QUERY, GG_FORM_REQUEST_MATERIALIZE};
    static const char *request_names[4] = {"auto", "gram", "dense-query", "materialize"};

    fill(a, sizeof a / sizeof *a);
    fill(b, sizeof b / sizeof *b);
    fill(aq, sizeof aq / sizeof *aq);
    fill(bq, sizeof bq / sizeof *bq);
    fill(a2, sizeof a2 / sizeof *a2);
    fill(b2, sizeof b2 / sizeof *b2);
    fill(aq2, sizeof aq2 / sizeof *aq2);
    fill(bq2, sizeof bq2 / sizeof *bq2);

    /* The naive computation. */
    L1.n = N; L1.t = T; L1.d_in = D_IN; L1.d_out = D_OUT; L1.q = Q; L1.nseg = V; L1.has_bias = 1;
    L1.a = a; L1.b = b; L1.aq = aq; L1.bq = bq; L1.mask = mask; L1.qmask = qmask; L1.offsets = offsets;
    L2.n = N; L2.t = T2; L2.d_in = D_IN2; L2.d_out = D_OUT2; L2.q = Q2; L2.nseg = V; L2.has_bias = 0;
    L2.a = a2; L2.b = b2; L2.aq = aq2; L2.bq = bq2; L2.mask = NULL; L2.qmask = NULL; L2.offsets = offsets2;
    materialize(&L1, g1, gq1);
    materialize(&L2, g2, gq2);
    for (n = 0; n < N; n++) {
        for (v = 0; v < V; v++) {
            want_dot[n * V + v] = scale * frobenius(g1 + n * grad_size(&L1), gq1 + v * grad_size(&L1), grad_size(&L1));
            want_sum[n * V + v] =
                want_dot[n * V + v] + scale * frobenius(g2 + n * grad_size(&L2), gq2 + v * grad_size(&L2), grad_size(&L2));
        }
        for (m = 0; m < N; m++)
            want_gram[n * N + m] = frobenius(g1 + n * grad_size(&L1), g1 + m * grad_size(&L1), grad_size(&L1));
        want_norm[n] = want_gram[n * N + n];
    }
    for (v = 0; v < V; v++)
        for (o = 0; o < D_OUT; o++) {
            for (i = 0; i < D_IN; i++) want_fgrad[(v * D_OUT + o) * D_IN + i] = gq1[v * grad_size(&L1) + o * (D_IN + 1) + i];
            want_fbias[v * D_OUT + o] = gq1[v * grad_size(&L1) + o * (D_IN + 1) + D_IN];
        }

    /* The same through the ABI. */
    printf("ghostgrad %s\n", gg_version());
    if (!status_ok("gg_context_create_cpu", gg_context_create_cpu(&cpu))) return 1;
    if (!status_ok("gg_context_create_cpu_reference", gg_context_create_cpu_reference(&reference))) return 1;
    if (!status_ok("gg_context_describe", gg_context_describe(cpu, describe, sizeof describe, &describe_len))) return 1;
    printf("context: %s (%lu characters)\n", describe, (unsigned long)describe_len);

    shape1.d_in = D_IN; shape1.d_out = D_OUT; shape1.has_bias = 1;
    train1.a = tensor(a, N * T * D_IN, GG_DTYPE_F32);
    train1.b = tensor(b, N * T * D_OUT, GG_DTYPE_F32);
    train1.n = N; train1.t = T;
    train1.mask = tensor(mask, N * T, GG_DTYPE_U8);
    query1.aq = tensor(aq, Q * D_IN, GG_DTYPE_F32);
    query1.bq = tensor(bq, Q * D_OUT, GG_DTYPE_F32);
    query1.q = Q;
    query1.segments.kind = GG_SEGMENTS_OFFSETS;
    query1.segments.uniform_len = 0;
    query1.segments.offsets = tensor(offsets, V + 1, GG_DTYPE_I32);
    query1.mask = tensor(qmask, Q, GG_DTYPE_U8);

    shape2.d_in = D_IN2; shape2.d_out = D_OUT2; shape2.has_bias = 0;
    train2.a = tensor(a2, N * T2 * D_IN2, GG_DTYPE_F32);
    train2.b = tensor(b2, N * T2 * D_OUT2, GG_DTYPE_F32);
    train2.n = N; train2.t = T2;
    train2.mask = ABSENT;
    query2.aq = tensor(aq2, Q2 * D_IN2, GG_DTYPE_F32);
    query2.bq = tensor(bq2, Q2 * D_OUT2, GG_DTYPE_F32);
    query2.q = Q2;
    query2.segments.kind = GG_SEGMENTS_UNIFORM;
    query2.segments.uniform_len = SEG2;
    query2.segments.offsets = ABSENT;
    query2.mask = ABSENT;

    /* One layer, every form, on the fast CPU backend. */
    for (i = 0; i < 4; i++) {
        char what[64];
        st = gg_ghost_dot(cpu, shape1, &train1, &query1, tensor_mut(out, N * V), scale, 0.0f, requests[i], &choice);
        if (!status_ok("gg_ghost_dot", st)) return 1;
        sprintf(what, "ghost_dot [%s] (used form %u)", request_names[i], (unsigned)choice.form);
        failures += check(what, out, want_dot, N * V);
        if (i == 0) printf("    reason: %s\n", gg_last_form_reason());
    }
    /* The float64 reference backend, accumulating into a prefilled output (beta = 1). */
    for (i = 0; i < N * V; i++) out[i] = 1.0f;
    st = gg_ghost_dot(reference, shape1, &train1, &query1, tensor_mut(out, N * V), scale, 1.0f, GG_FORM_REQUEST_AUTO,
                      NULL);
    if (!status_ok("gg_ghost_dot (reference)", st)) return 1;
    for (i = 0; i < N * V; i++) out[i] -= 1.0f;
    failures += check("ghost_dot [reference, beta = 1]", out, want_dot, N * V);

    /* Two layers summed. */
    layers[0].shape = shape1; layers[0].train = train1; layers[0].query = query1; layers[0].form = GG_FORM_REQUEST_AUTO;
    layers[1].shape = shape2; layers[1].train = train2; layers[1].query = query2; layers[1].form = GG_FORM_REQUEST_GRAM;
    st = gg_ghost_dot_layers(cpu, layers, 2, tensor_mut(out, N * V), scale, 0.0f, choices);
    if (!status_ok("gg_ghost_dot_layers", st)) return 1;
    failures += check("ghost_dot_layers [2 layers]", out, want_sum, N * V);

    /* Train x train Gram matrix and its diagonal. */
    st = gg_ghost_gram(cpu, shape1, &train1, tensor_mut(gram, N * N), 1.0f, 0.0f, GG_FORM_REQUEST_AUTO, NULL);
    if (!status_ok("gg_ghost_gram", st)) return 1;
    failures += check("ghost_gram", gram, want_gram, N * N);
    st = gg_ghost_sqnorm(cpu, shape1, &train1, tensor_mut(norms, N), 1.0f, 0.0f, GG_FORM_REQUEST_AUTO, NULL);
    if (!status_ok("gg_ghost_sqnorm", st)) return 1;
    failures += check("ghost_sqnorm", norms, want_norm, N);

    /* Factored query gradients (weight and bias parts). */
    st = gg_factored_grad(cpu, shape1, &query1, ABSENT, tensor_mut(fgrad, V * D_OUT * D_IN), tensor_mut(fbias, V * D_OUT),
                          1.0f, 0.0f);
    if (!status_ok("gg_factored_grad", st)) return 1;
    failures += check("factored_grad (weight)", fgrad, want_fgrad, V * D_OUT * D_IN);
    failures += check("factored_grad (bias)", fbias, want_fbias, V * D_OUT);

    /* The error path: a NULL output buffer is reported, nothing is written, nothing crashes. */
    st = gg_ghost_dot(cpu, shape1, &train1, &query1, tensor_mut(NULL, N * V), scale, 0.0f, GG_FORM_REQUEST_AUTO, NULL);
    printf("NULL output -> %s: %s\n", gg_status_name(st), gg_last_error_message());
    if (st != GG_STATUS_NULL_POINTER || strstr(gg_last_error_message(), "out") == NULL) {
        fprintf(stderr, "expected GG_STATUS_NULL_POINTER naming `out`\n");
        failures++;
    }

    gg_context_destroy(cpu);
    gg_context_destroy(reference);
    gg_context_destroy(NULL);
    if (failures) {
        fprintf(stderr, "%d check(s) failed\n", failures);
        return 1;
    }
    printf("all checks passed\n");
    return 0;
}
