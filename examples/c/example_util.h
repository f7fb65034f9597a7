/*
 * example_util.h: what the C examples share: deterministic inputs (an LCG whose values are
 * exactly representable in float), gg_tensor / gg_tensor_mut constructors, the comparison with
 * a double-precision reference, and status reporting. Header-only (static functions); each
 * example includes it once after ghostgrad.h and may reseed `lcg_state`.
 */
#ifndef GHOSTGRAD_EXAMPLE_UTIL_H
#define GHOSTGRAD_EXAMPLE_UTIL_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>

#include "ghostgrad.h"

/* Largest accepted max|got - want| / max|want| of a check. */
#define TOLERANCE 1e-5

static uint64_t lcg_state = 0x9E3779B97F4A7C15ull;

/* Uniform in [-1, 1): 24 random bits, exactly representable in float. */
static float lcg_uniform(void) {
    lcg_state = lcg_state * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((double)(lcg_state >> 40) / 16777216.0 * 2.0 - 1.0);
}

static void fill(float *x, size_t n) {
    size_t i;
    for (i = 0; i < n; i++) x[i] = lcg_uniform();
}

static gg_tensor tensor(const void *ptr, uint64_t len, gg_dtype dtype) {
    gg_tensor t;
    t.ptr = ptr;
    t.len = len;
    t.dtype = dtype;
    return t;
}

static gg_tensor_mut tensor_mut(float *ptr, uint64_t len) {
    gg_tensor_mut t;
    t.ptr = ptr;
    t.len = len;
    return t;
}

static const gg_tensor ABSENT = {NULL, 0, 0};

/* max |got - want| / max |want|; prints the line "<what> relative error <e>" and returns nonzero
 * when it is above TOLERANCE (or the reference is all zero, which would prove nothing). */
static int check(const char *what, const float *got, const double *want, size_t len) {
    double max_err = 0.0, max_ref = 0.0, rel;
    size_t i, worst = 0;
    int bad;
    for (i = 0; i < len; i++) {
        double err = fabs((double)got[i] - want[i]);
        if (err > max_err) {
            max_err = err;
            worst = i;
        }
        if (fabs(want[i]) > max_ref) max_ref = fabs(want[i]);
    }
    rel = max_ref > 0.0 ? max_err / max_ref : max_err;
    bad = !(rel < TOLERANCE) || max_ref == 0.0;
    printf("%-44s relative error %.2e%s\n", what, rel, bad ? "  FAILED" : "");
    if (bad)
        printf("    worst index %lu: got %.9g, expected %.9g\n", (unsigned long)worst, (double)got[worst], want[worst]);
    return bad;
}

/* Nonzero when `st` is GG_STATUS_OK; otherwise prints the call, the status and the message. */
static int status_ok(const char *call, gg_status st) {
    if (st == GG_STATUS_OK) return 1;
    fprintf(stderr, "%s failed: %s: %s\n", call, gg_status_name(st), gg_last_error_message());
    return 0;
}

#endif
