/*
 * projection.c: LoGra projections and influence scores through ghostgrad's C ABI, checked
 * against a naive computation.
 *
 * Projects per-sample gradients of a linear layer with random Kronecker factors
 * (Ĝ_n = P_o G_n P_iᵀ, MATH.md section 3; the matrices are generated inside ghostgrad from a
 * seed and fetched here with gg_projection_matrix only to check), preconditions the test side
 * with a raw-Fisher handle (fit, apply, destroy), and scores test against train (cosine mode,
 * MATH.md section 4). Every number is compared with the same quantity computed here in double
 * precision by materializing G_n = sum_t b_{n,t} a_{n,t}^T.
 *
 * Build (tests/c_abi.rs does this):
 *   cargo build --release
 *   cc -std=c99 -Wall -Wextra -pedantic -Iinclude examples/c/projection.c \
 *      target/release/libghostgrad.a -lpthread -ldl -lm -o projection
 *   ./projection           # exit status 0: every result within relative error 1e-5
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "ghostgrad.h"
#include "example_util.h"

/* Train: N samples of T tokens; test: NT samples. Layer d_in 5 -> d_out 6 with a bias. */
enum { N = 4, NT = 2, T = 5, D_IN = 5, D_OUT = 6, DI = D_IN + 1, K_I = 3, K_O = 2, K = K_I * K_O };

/* Naive projected gradients of `n` samples: ghat [n, K_O*K_I] in double, from
 * G = sum_t b a~^T (a~ = a with a trailing 1), then P_o G P_i^T. */
static void naive_project(size_t n, const float *a, const float *b, const uint8_t *mask, const float *p_in,
                          const float *p_out, double *ghat) {
    size_t s, t, o, i, c, r;
    for (s = 0; s < n; s++) {
        double g[D_OUT * DI], tmp[D_OUT * K_I];
        memset(g, 0, sizeof g);
        for (t = 0; t < T; t++) {
            size_t row = s * T + t;
            if (mask && !mask[row]) continue;
            for (o = 0; o < D_OUT; o++) {
                for (i = 0; i < D_IN; i++) g[o * DI + i] += (double)b[row * D_OUT + o] * (double)a[row * D_IN + i];
                g[o * DI + D_IN] += (double)b[row * D_OUT + o];
            }
        }
        for (o = 0; o < D_OUT; o++)
            for (i = 0; i < K_I; i++) {
                tmp[o * K_I + i] = 0.0;
                for (c = 0; c < DI; c++) tmp[o * K_I + i] += g[o * DI + c] * (double)p_in[i * DI + c];
            }
        for (r = 0; r < K_O; r++)
            for (i = 0; i < K_I; i++) {
                double acc = 0.0;
                for (o = 0; o < D_OUT; o++) acc += (double)p_out[r * D_OUT + o] * tmp[o * K_I + i];
                ghat[s * K + r * K_I + i] = acc;
            }
    }
}

int main(void) {
    static float a[N * T * D_IN], b[N * T * D_OUT], at[NT * T * D_IN], bt[NT * T * D_OUT];
    static const uint8_t mask[N * T] = {1, 1, 1, 1, 1, /* */ 1, 1, 1, 0, 0, /* */ 1, 0, 1, 0, 1, /* */ 1, 1, 1, 1, 0};
    float p_in[K_I * DI], p_out[K_O * D_OUT];
    float ghat[N * K], ghat_test[NT * K], precond[NT * K], train_self[N], scores[NT * N];
    double want_ghat[N * K], want_test[NT * K], want_scores[NT * N], fisher[K * K], residual[NT * K];
    double lambda = 0.0;
    gg_context *cpu = NULL;
    gg_raw_fisher *fisher_handle = NULL;
    gg_layer_shape shape;
    gg_train train, test;
    gg_projection proj;
    gg_status st;
    size_t n, q, i, j, c;
    int failures = 0;

    fill(a, sizeof a / sizeof *a);
    fill(b, sizeof b / sizeof *b);
    fill(at, sizeof at / sizeof *at);
    fill(bt, sizeof bt / sizeof *bt);

    if (!status_ok("gg_context_create_cpu", gg_context_create_cpu(&cpu))) return 1;

    shape.d_in = D_IN; shape.d_out = D_OUT; shape.has_bias = 1;
    train.a = tensor(a, N * T * D_IN, GG_DTYPE_F32);
    train.b = tensor(b, N * T * D_OUT, GG_DTYPE_F32);
    train.n = N; train.t = T;
    train.mask = tensor(mask, N * T, GG_DTYPE_U8);
    test.a = tensor(at, NT * T * D_IN, GG_DTYPE_F32);
    test.b = tensor(bt, NT * T * D_OUT, GG_DTYPE_F32);
    test.n = NT; test.t = T;
    test.mask = ABSENT;

    /* A random projection: nothing but a seed crosses the ABI (zero-initialized otherwise). */
    memset(&proj, 0, sizeof proj);
    proj.k_i = K_I; proj.k_o = K_O;
    proj.kind = GG_PROJECTION_RANDOM;
    proj.dist = GG_DISTRIBUTION_GAUSSIAN;
    proj.seed = 2024; proj.layer = 0;

    /* Projected gradients of the train and test samples, one [n, K] matrix each. */
    st = gg_kron_project(cpu, shape, &train, &proj, tensor_mut(ghat, N * K), 0, K, 1.0f, 0.0f);
    if (!status_ok("gg_kron_project (train)", st)) return 1;
    st = gg_kron_project(cpu, shape, &test, &proj, tensor_mut(ghat_test, NT * K), 0, K, 1.0f, 0.0f);
    if (!status_ok("gg_kron_project (test)", st)) return 1;

    /* The naive computation, with the same matrices fetched from ghostgrad. */
    st = gg_projection_matrix(cpu, proj.seed, proj.layer, GG_WHICH_IN, K_I, DI, proj.dist, tensor_mut(p_in, K_I * DI));
    if (!status_ok("gg_projection_matrix (P_i)", st)) return 1;
    st = gg_projection_matrix(cpu, proj.seed, proj.layer, GG_WHICH_OUT, K_O, D_OUT, proj.dist,
                              tensor_mut(p_out, K_O * D_OUT));
    if (!status_ok("gg_projection_matrix (P_o)", st)) return 1;
    naive_project(N, a, b, mask, p_in, p_out, want_ghat);
    naive_project(NT, at, bt, NULL, p_in, p_out, want_test);
    failures += check("kron_project (train, masked)", ghat, want_ghat, N * K);
    failures += check("kron_project (test)", ghat_test, want_test, NT * K);

    /* Raw-Fisher preconditioner: a handle owned by this program, destroyed below. */
    st = gg_raw_fisher_fit(tensor(ghat, N * K, GG_DTYPE_F32), N, K, &fisher_handle);
    if (!status_ok("gg_raw_fisher_fit", st)) return 1;
    st = gg_raw_fisher_apply(fisher_handle, tensor(ghat_test, NT * K, GG_DTYPE_F32), NT, tensor_mut(precond, NT * K));
    if (!status_ok("gg_raw_fisher_apply", st)) return 1;
    if (!status_ok("gg_raw_fisher_damping", gg_raw_fisher_damping(fisher_handle, &lambda))) return 1;
    gg_raw_fisher_destroy(fisher_handle);
    fisher_handle = NULL;
    /* Check (F + lambda I) x = g_test with F = (1/N) sum_n ghat_n ghat_n^T from ghostgrad's ghat. */
    for (i = 0; i < K; i++)
        for (j = 0; j < K; j++) {
            fisher[i * K + j] = 0.0;
            for (n = 0; n < N; n++) fisher[i * K + j] += (double)ghat[n * K + i] * (double)ghat[n * K + j] / N;
        }
    {
        double trace = 0.0;
        for (i = 0; i < K; i++) trace += fisher[i * K + i];
        printf("raw Fisher damping %.6g (0.1 trace/k = %.6g)\n", lambda, 0.1 * trace / K);
        if (fabs(lambda - 0.1 * trace / K) > 1e-9 * lambda) {
            fprintf(stderr, "damping differs from 0.1 trace(F)/k\n");
            failures++;
        }
    }
    for (q = 0; q < NT; q++)
        for (i = 0; i < K; i++) {
            double lhs = lambda * (double)precond[q * K + i];
            for (j = 0; j < K; j++) lhs += fisher[i * K + j] * (double)precond[q * K + j];
            residual[q * K + i] = lhs;
        }
    failures += check("raw Fisher: (F + lambda I) x vs g_test", ghat_test, residual, NT * K);

    /* Cosine influence scores of the preconditioned test rows against all train rows. */
    for (n = 0; n < N; n++) {
        double s = 0.0;
        for (c = 0; c < K; c++) s += (double)ghat[n * K + c] * (double)ghat[n * K + c];
        train_self[n] = (float)s;
    }
    st = gg_influence_scores(cpu, tensor(precond, NT * K, GG_DTYPE_F32), tensor(ghat, N * K, GG_DTYPE_F32), NT, N, K,
                             tensor(train_self, N, GG_DTYPE_F32), GG_SCORE_COSINE, tensor_mut(scores, NT * N), 1.0f,
                             0.0f);
    if (!status_ok("gg_influence_scores", st)) return 1;
    for (q = 0; q < NT; q++)
        for (n = 0; n < N; n++) {
            double s = 0.0;
            for (c = 0; c < K; c++) s += (double)precond[q * K + c] * (double)ghat[n * K + c];
            want_scores[q * N + n] = s / sqrt((double)train_self[n]);
        }
    failures += check("influence_scores (cosine)", scores, want_scores, NT * N);

    /* The error path: DOT mode takes no train_self; reported, nothing written. */
    st = gg_influence_scores(cpu, tensor(precond, NT * K, GG_DTYPE_F32), tensor(ghat, N * K, GG_DTYPE_F32), NT, N, K,
                             tensor(train_self, N, GG_DTYPE_F32), GG_SCORE_DOT, tensor_mut(scores, NT * N), 1.0f, 0.0f);
    printf("DOT with train_self -> %s: %s\n", gg_status_name(st), gg_last_error_message());
    if (st != GG_STATUS_INVALID_ARGUMENT || strstr(gg_last_error_message(), "train_self") == NULL) {
        fprintf(stderr, "expected GG_STATUS_INVALID_ARGUMENT naming `train_self`\n");
        failures++;
    }

    gg_context_destroy(cpu);
    if (failures) {
        fprintf(stderr, "%d check(s) failed\n", failures);
        return 1;
    }
    printf("all checks passed\n");
    return 0;
}
