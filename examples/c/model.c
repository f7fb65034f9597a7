/*
 * model.c: whole-model calls through ghostgrad's C ABI on a tiny language-model edge, checked
 * against per-sample gradients materialized here in double precision.
 *
 * The model: a token embedding wte [V, D] whose table is also the LM head (logits = h wte^T,
 * GPT-2's tie), and a LayerNorm (gamma, beta [D]) in between. Per token a caller records:
 *   embedding use:  ids, b_emb = dloss/d(embedding output)            [rows, D]
 *   LayerNorm use:  xhat (normalized input), b_ln = dloss/d(LN output) [rows, D]
 *   LM-head use:    h (final hidden state), b_logit = dloss/d(logits)  [rows, V]
 * The per-sample gradient of wte is the sum of both uses' gradients:
 *   G_n[id, :] += b_emb (lookup),  G_n[v, :] += b_logit[v] h (head).
 *
 * Checked:
 *   gg_model_gram           K[n, m] = <G_n, G_m> over all parameters (tie cross terms included),
 *                           and how each term was computed (gg_term_choice)
 *   gg_kron_project_model   one block per parameter, P_rows G_n P_cols^T in storage layout
 *                           (wte [V, D] projected once for both uses, LayerNorm [D, 2])
 *   gg_influence_scores_groups  per-parameter train x train scores on those blocks
 *
 * Build (tests/c_abi.rs does this):
 *   cargo build --release
 *   cc -std=c99 -Wall -Wextra -pedantic -Iinclude examples/c/model.c \
 *      target/release/libghostgrad.a -lpthread -ldl -lm -o model
 *   ./model                # exit status 0: every result within relative error 1e-5
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "ghostgrad.h"
#include "example_util.h"

enum { N = 3, T = 4, ROWS = N * T, V = 7, D = 4, K_O = 3, K_I = 2, KW = K_O * K_I, KN = 2 * 2, P = V * D + 2 * D };

static gg_layer_use use_of(uint32_t param, gg_layer_kind kind, gg_tensor x, gg_tensor b, const uint8_t *mask) {
    gg_layer_use u;
    memset(&u, 0, sizeof u); /* absent query side: the train x train calls ignore it */
    u.param = param;
    u.kind = kind;
    u.train.x = x;
    u.train.b = b;
    u.train.t = T;
    u.train.mask = tensor(mask, ROWS, GG_DTYPE_U8);
    return u;
}

int main(void) {
    static const int32_t ids[ROWS] = {3, 1, 3, 6, /* */ 0, 5, 2, 2, /* */ 4, 4, 4, 1};
    static const uint8_t mask[ROWS] = {1, 1, 1, 1, /* */ 1, 1, 1, 0, /* */ 1, 1, 0, 0};
    static float b_emb[ROWS * D], xhat[ROWS * D], b_ln[ROWS * D], h[ROWS * D], b_logit[ROWS * V];
    float gram[N * N], proj[N * (KW + K_I * K_O)], p_rows_w[K_O * V], p_cols_w[K_I * D], p_rows_n[K_O * D],
        p_cols_n[K_I * 2], scores[2 * N * N];
    double g[N][P], want_gram[N * N], want_proj[N * 2 * KW], want_scores[2 * N * N];
    gg_context *cpu = NULL;
    gg_layer_use uses[3];
    gg_param_projection params[2];
    gg_column_group groups[2];
    gg_status st;
    gg_term_choice terms[9];
    size_t n_terms = 0;
    size_t n, m, r, k, v, o, i, c;
    int failures = 0;

    fill(b_emb, sizeof b_emb / sizeof *b_emb);
    fill(xhat, sizeof xhat / sizeof *xhat);
    fill(b_ln, sizeof b_ln / sizeof *b_ln);
    fill(h, sizeof h / sizeof *h);
    fill(b_logit, sizeof b_logit / sizeof *b_logit);
    if (!status_ok("gg_context_create_cpu", gg_context_create_cpu(&cpu))) return 1;

    /* param 0: wte, used by the lookup and by the LM head; param 1: the LayerNorm. */
    uses[0] = use_of(0, GG_LAYER_EMBEDDING, tensor(ids, ROWS, GG_DTYPE_I32), tensor(b_emb, ROWS * D, GG_DTYPE_F32), mask);
    uses[0].vocab = V;
    uses[0].d = D;
    uses[1] = use_of(1, GG_LAYER_NORM, tensor(xhat, ROWS * D, GG_DTYPE_F32), tensor(b_ln, ROWS * D, GG_DTYPE_F32), mask);
    uses[1].d = D;
    uses[1].has_bias = 1;
    uses[2] = use_of(0, GG_LAYER_LINEAR, tensor(h, ROWS * D, GG_DTYPE_F32), tensor(b_logit, ROWS * V, GG_DTYPE_F32), mask);
    uses[2].d_in = D;
    uses[2].d_out = V;
    uses[2].layout = GG_WEIGHT_OUT_IN;

    /* Explicit per-sample gradients: [wte (V*D) | gamma (D) | beta (D)]. */
    memset(g, 0, sizeof g);
    for (r = 0; r < ROWS; r++) {
        n = r / T;
        if (!mask[r]) continue;
        for (k = 0; k < D; k++) {
            g[n][ids[r] * D + k] += b_emb[r * D + k];
            g[n][V * D + k] += (double)b_ln[r * D + k] * xhat[r * D + k];
            g[n][V * D + D + k] += b_ln[r * D + k];
            for (v = 0; v < V; v++) g[n][v * D + k] += (double)b_logit[r * V + v] * h[r * D + k];
        }
    }

    /* 1. Gram matrix of whole-model per-sample gradients. */
    st = gg_model_gram(cpu, N, uses, 3, tensor_mut(gram, N * N), 1.0f, 0.0f, GG_FORM_REQUEST_AUTO, 0, terms, 9,
                       &n_terms);
    if (!status_ok("gg_model_gram", st)) return 1;
    /* How each term was computed, as data: wte's four terms (lookup x lookup, the two cross terms
     * with the LM head, LM head x LM head), then the LayerNorm's. */
    {
        static const gg_term_algorithm want_alg[5] = {GG_TERM_EMBEDDING_MASKED_GRAM, GG_TERM_CROSS_GRAM, GG_TERM_CROSS_GRAM,
                                                      GG_TERM_LINEAR, GG_TERM_NORM_MATERIALIZE};
        static const uint64_t want_use[5][2] = {{0, 0}, {0, 2}, {2, 0}, {2, 2}, {1, 1}};
        if (n_terms != 5) {
            printf("FAIL model_gram terms: %zu terms, expected 5\n", n_terms);
            failures++;
        } else {
            for (i = 0; i < 5; i++) {
                int alg_ok = terms[i].algorithm == want_alg[i] ||
                             (i == 0 && terms[i].algorithm == GG_TERM_EMBEDDING_SCATTER_GATHER);
                if (!alg_ok || terms[i].use_a != want_use[i][0] || terms[i].use_b != want_use[i][1] ||
                    terms[i].param != (i < 4 ? 0u : 1u)) {
                    printf("FAIL model_gram term %zu: param %u uses %llu x %llu algorithm %u\n", i, terms[i].param,
                           (unsigned long long)terms[i].use_a, (unsigned long long)terms[i].use_b, terms[i].algorithm);
                    failures++;
                }
            }
            printf("ok   model_gram terms as data (%zu, e.g. LM head: linear form %u)\n", n_terms, terms[3].linear_form);
        }
    }
    for (n = 0; n < N; n++)
        for (m = 0; m < N; m++) {
            double s = 0.0;
            for (k = 0; k < P; k++) s += g[n][k] * g[m][k];
            want_gram[n * N + m] = s;
        }
    failures += check("model_gram (tied wte + LayerNorm)", gram, want_gram, N * N);

    /* 2. LoGra projection per parameter: wte 3x2 (rows over V, columns over D), LN 3x2 (rows over
     *    D, columns gamma/beta). Random matrices, fetched only to check. */
    memset(params, 0, sizeof params);
    for (i = 0; i < 2; i++) {
        params[i].param = (uint32_t)i;
        params[i].proj.k_o = K_O;
        params[i].proj.k_i = K_I;
        params[i].proj.kind = GG_PROJECTION_RANDOM;
        params[i].proj.dist = GG_DISTRIBUTION_RADEMACHER;
        params[i].proj.seed = 77;
        params[i].proj.layer = (uint32_t)i;
    }
    st = gg_kron_project_model(cpu, N, uses, 3, params, 2, tensor_mut(proj, N * 2 * KW), 1.0f, 0.0f, groups);
    if (!status_ok("gg_kron_project_model", st)) return 1;
    if (groups[0].offset != 0 || groups[0].width != KW || groups[1].offset != KW || groups[1].width != KW) {
        fprintf(stderr, "unexpected column groups\n");
        failures++;
    }
    if (!status_ok("P_rows wte", gg_projection_matrix(cpu, 77, 0, GG_WHICH_OUT, K_O, V, GG_DISTRIBUTION_RADEMACHER, tensor_mut(p_rows_w, K_O * V))) ||
        !status_ok("P_cols wte", gg_projection_matrix(cpu, 77, 0, GG_WHICH_IN, K_I, D, GG_DISTRIBUTION_RADEMACHER, tensor_mut(p_cols_w, K_I * D))) ||
        !status_ok("P_rows ln", gg_projection_matrix(cpu, 77, 1, GG_WHICH_OUT, K_O, D, GG_DISTRIBUTION_RADEMACHER, tensor_mut(p_rows_n, K_O * D))) ||
        !status_ok("P_cols ln", gg_projection_matrix(cpu, 77, 1, GG_WHICH_IN, K_I, 2, GG_DISTRIBUTION_RADEMACHER, tensor_mut(p_cols_n, K_I * 2))))
        return 1;
    for (n = 0; n < N; n++)
        for (o = 0; o < K_O; o++)
            for (i = 0; i < K_I; i++) {
                double sw = 0.0, sn = 0.0;
                for (v = 0; v < V; v++)
                    for (c = 0; c < D; c++) sw += p_rows_w[o * V + v] * g[n][v * D + c] * p_cols_w[i * D + c];
                for (k = 0; k < D; k++) /* LayerNorm storage [D, 2]: column 0 gamma, 1 beta */
                    sn += p_rows_n[o * D + k] * (g[n][V * D + k] * p_cols_n[i * 2] + g[n][V * D + D + k] * p_cols_n[i * 2 + 1]);
                want_proj[n * 2 * KW + o * K_I + i] = sw;
                want_proj[n * 2 * KW + KW + o * K_I + i] = sn;
            }
    failures += check("kron_project_model (wte once, LayerNorm)", proj, want_proj, N * 2 * KW);

    /* 3. Per-parameter train x train scores on those blocks, in place. */
    st = gg_influence_scores_groups(cpu, tensor(proj, N * 2 * KW, GG_DTYPE_F32), tensor(proj, N * 2 * KW, GG_DTYPE_F32), N, N,
                                    2 * KW, groups, 2, ABSENT, GG_SCORE_DOT, tensor_mut(scores, 2 * N * N), 1.0f, 0.0f);
    if (!status_ok("gg_influence_scores_groups", st)) return 1;
    for (i = 0; i < 2; i++)
        for (n = 0; n < N; n++)
            for (m = 0; m < N; m++) {
                double s = 0.0;
                for (c = 0; c < KW; c++) s += (double)proj[n * 2 * KW + i * KW + c] * proj[m * 2 * KW + i * KW + c];
                want_scores[i * N * N + n * N + m] = s;
            }
    failures += check("influence_scores_groups (per parameter)", scores, want_scores, 2 * N * N);

    /* The error path: a use whose parameter has no projection is named. */
    st = gg_kron_project_model(cpu, N, uses, 3, params, 1, tensor_mut(proj, N * KW), 1.0f, 0.0f, NULL);
    printf("a parameter without projection -> %s: %s\n", gg_status_name(st), gg_last_error_message());
    if (st != GG_STATUS_INVALID_ARGUMENT || strstr(gg_last_error_message(), "param 1") == NULL) {
        fprintf(stderr, "expected GG_STATUS_INVALID_ARGUMENT naming `param 1`\n");
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
