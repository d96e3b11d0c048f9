/* The LeNet kernel's passes outside PyTorch's matrix products, each one loop nest instead of several
 * PyTorch operators.
 *
 * cnnlab.kernels.lenet.kernel computes conv2 and the dense layers as matrix products (PyTorch's BLAS),
 * with activations stored batch-innermost.  Here: conv1 whole (forward: the convolution, activation,
 * 2x2 pooling and conv2's space-to-depth patches; backward: col2im of the patches' gradient, the
 * activation derivative and the weight gradient), computed directly 16 images per vector because a
 * one-channel 5x5 convolution is a memory-bound matrix product; conv2's activation + pooling and its
 * backward; the space-to-depth weight matrices and their gradient folds; softmax cross-entropy.  Each
 * runs split over the threads of PyTorch's own OpenMP runtime.  The layouts are the ones documented
 * in kernel.py; B is the batch size, the innermost dimension.
 *
 * Storage: activations are float (fp32) or bf16 (uint16 holding the top half of a float, rounded to
 * nearest even, NaN kept NaN); arithmetic is float throughout, sums rounded once.  The vector code
 * uses GCC/Clang vector extensions (16 floats: one AVX-512 register, two AVX ones, four SSE ones),
 * with AVX-512's reciprocal estimate, scalef and bf16 conversion where the build has them.
 *
 * Built by cnnlab.kernels.lenet.native with the system C compiler: C99 with GNU vector extensions and OpenMP
 * pragmas, no Python headers.
 */
#include <stdint.h>
#include <string.h>
#include <math.h>

static inline float bf16_to_f(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline uint16_t f_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);   /* NaN stays NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

static inline float f_to_f(float f) { return f; }

/* ---- 16-lane vectors (GCC/Clang vector extensions: one AVX-512 register, two AVX ones, ...) ---- */
#define VL 16
#define ALWAYS_INLINE static inline __attribute__((always_inline))
typedef float vf __attribute__((vector_size(64)));
typedef int32_t vi __attribute__((vector_size(64)));
typedef uint32_t vu __attribute__((vector_size(64)));
typedef uint16_t vh __attribute__((vector_size(32)));

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

static inline vf vload(const float *p) { vf v; memcpy(&v, p, sizeof v); return v; }
static inline void vstore(float *p, vf v) { memcpy(p, &v, sizeof v); }
static inline vf vsplat(float x) { vf v = {0}; return v + x; }
static inline vf vselect(vi mask, vf a, vf b) { return (vf)(((vi)a & mask) | ((vi)b & ~mask)); }

static inline vf vbf16_to_f(vh h) {
#if defined(__AVX512F__)
    __m256i x;
    memcpy(&x, &h, sizeof x);
    return (vf)_mm512_slli_epi32(_mm512_cvtepu16_epi32(x), 16);
#else
    return (vf)(__builtin_convertvector(h, vu) << 16);
#endif
}

/* Round to bf16, nearest even, NaN kept NaN (the scalar f_to_bf16, 16 at a time). */
static inline vh vf_to_bf16(vf f) {
#if defined(__AVX512BF16__)
    __m256bh h = _mm512_cvtneps_pbh((__m512)f);
    vh out;
    memcpy(&out, &h, sizeof out);
    return out;
#else
    vu u = (vu)f;
    vu nan = (vu)((u & 0x7fffffffu) > 0x7f800000u);
    vu r = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    r = (r & ~nan) | (((u >> 16) | 0x40u) & nan);
    return __builtin_convertvector(r, vh);
#endif
}

/* Loads and stores of the first n (1..16) lanes; the rest read as zero. */
static inline vf vload_n(const float *p, int64_t n) {
    if (n == VL) return vload(p);
    float tmp[VL] = {0};
    memcpy(tmp, p, sizeof(float) * n);
    return vload(tmp);
}
static inline void vstore_n(float *p, vf v, int64_t n) {
    if (n == VL) { vstore(p, v); return; }
    float tmp[VL];
    vstore(tmp, v);
    memcpy(p, tmp, sizeof(float) * n);
}

/* exp(x) to about 2 ulp: Cephes' polynomial on [-ln2/2, ln2/2] times 2^n, in plain vector arithmetic
 * (no libm, no float-to-int conversion instruction); NaN propagates through it. */
static inline vf vexp(vf x) {
    vf c = vselect(x < -87.0f, vsplat(-87.0f), x);
    c = vselect(c > 88.0f, vsplat(88.0f), c);
    vf t = c * 1.44269504088896341f + 12582912.0f;      /* 1.5 * 2^23: rounds to the nearest integer */
    vf n = t - 12582912.0f;
    vi ni = (vi)t - 0x4B400000;                          /* the same integer, from t's mantissa */
    vf r = c - n * 0.693359375f + n * 2.12194440e-4f;
    vf p = vsplat(1.9875691500e-4f);
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    return p * (vf)((ni + 127) << 23);
}

/* 1 / d: AVX-512's 14-bit estimate and one Newton step (~1 ulp), else a division. */
static inline vf vrecip(vf d) {
#if defined(__AVX512F__)
    vf r = (vf)_mm512_rcp14_ps((__m512)d);
    return r + r * (1.0f - d * r);
#else
    return 1.0f / d;
#endif
}

/* The logistic function 1 / (1 + exp(-z)).  With AVX-512: exp(-z) = 2^t, t = -z log2(e), as 2^(t - n)
 * by its degree-6 Taylor polynomial on [-1/2, 1/2] (relative error ~1e-7) scaled by 2^n in one
 * instruction (2^t = 0 for very negative t gives 1).  t is capped at 126 (z below -87, where the
 * logistic is under 1e-38): a larger 2^t would overflow to inf, and the reciprocal's Newton step
 * turns inf * 0 into NaN.  The comparisons keep NaN, so NaN in gives NaN out. */
static inline vf vsigmoid(vf z) {
#if defined(__AVX512F__)
    vf t = z * -1.44269504088896341f;
    t = vselect(t > 126.0f, vsplat(126.0f), t);
    const vf n = (vf)_mm512_roundscale_ps((__m512)t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const vf f = t - n;
    vf p = vsplat(1.5403530393381608e-4f);
    p = p * f + 1.3333558146428443e-3f;
    p = p * f + 9.6181291076284772e-3f;
    p = p * f + 5.5504108664821580e-2f;
    p = p * f + 2.4022650695910071e-1f;
    p = p * f + 6.9314718055994531e-1f;
    p = p * f + 1.0f;
    return vrecip(1.0f + (vf)_mm512_scalef_ps((__m512)p, (__m512)n));
#else
    return vrecip(1.0f + vexp(-z));
#endif
}

/* The activation; ReLU keeps NaN (as torch.relu), so a diverged network's loss is NaN. */
static inline vf vact(vf z, int relu) {
    if (relu) return vselect(~(z <= 0.0f), z, vsplat(0.0f));
    return vsigmoid(z);
}

static inline vf vdact(vf y, int relu) {
    if (relu) return vselect(y > 0.0f, vsplat(1.0f), vsplat(0.0f));
    return y * (1.0f - y);
}

/* Storage as 16-lane loads and stores: `bf16` says whether the array holds bf16 (uint16_t) or float.
 * The passes below take it (and `relu`) as arguments and make both compile-time constants inside each
 * parallel loop (DISPATCH), so the branches fold away.  A store rounds and returns the stored value as
 * float (what a later load reads).  n < 16 touches only the first n lanes (the rest load as
 * zero); n must be the constant VL in hot loops, else every access goes through memory. */
static inline vf vload_bf16(const uint16_t *p) { vh h; memcpy(&h, p, sizeof h); return vbf16_to_f(h); }

ALWAYS_INLINE vf load_T(const void *base, int64_t i, int64_t n, int bf16) {
    if (!bf16) return vload_n((const float *)base + i, n);
    const uint16_t *p = (const uint16_t *)base + i;
    if (n == VL) return vload_bf16(p);
    uint16_t tmp[VL] = {0};
    memcpy(tmp, p, sizeof(uint16_t) * n);
    return vload_bf16(tmp);
}

ALWAYS_INLINE vf store_T(void *base, int64_t i, vf v, int64_t n, int bf16) {
    if (!bf16) {
        vstore_n((float *)base + i, v, n);
        return v;
    }
    uint16_t *p = (uint16_t *)base + i;
    vh h = vf_to_bf16(v);
    if (n == VL) {
        memcpy(p, &h, sizeof h);
    } else {
        uint16_t tmp[VL];
        memcpy(tmp, &h, sizeof h);
        memcpy(p, tmp, sizeof(uint16_t) * n);
    }
    return vbf16_to_f(h);
}

static inline float vsum(vf v) {
    float s = 0.0f;
    for (int k = 0; k < VL; k++) s += v[k];
    return s;
}

/* for (k = 0; k < n; k += VL) { the statement(s) after m } with m = the lanes in this step: whole
 * vectors with the constant VL, then one partial vector. */
#define FOR_VECTORS(k, n, m, ...)                                                                      \
    do {                                                                                               \
        int64_t k = 0;                                                                                 \
        for (; k + VL <= (n); k += VL) { const int64_t m = VL; __VA_ARGS__; }                          \
        if (k < (n)) { const int64_t m = (n) - k; __VA_ARGS__; }                                       \
    } while (0)

#define CHUNK 2048
#define CONV1_SLICES 8   /* batch slices per channel in conv1's weight gradient */

/* CALL (using the names `bf16` and `relu`) with both as compile-time constants, for the four
 * combinations: inside a parallel region, which OpenMP outlines before any inlining, this is what
 * turns the flags into constants. */
#define DISPATCH(bf16_value, relu_value, CALL)                                                         \
    do {                                                                                               \
        if (bf16_value) { if (relu_value) { const int bf16 = 1, relu = 1; CALL; }                      \
                          else { const int bf16 = 1, relu = 0; CALL; } }                               \
        else { if (relu_value) { const int bf16 = 0, relu = 1; CALL; }                                 \
               else { const int bf16 = 0, relu = 0; CALL; } }                                          \
    } while (0)

/* ---- conv1: one input channel, 5x5, padding 2, + activation + 2x2 pooling, computed directly ---- */

/* The 2x2 pooling blocks of row I of one group of 16 images (lanes b0.., m of them valid), every
 * channel: four 25-tap sums per block (one per position (u, v) in it), activated, stored to S1 and
 * summed into p1.  Two blocks at a time: each of their 48 input pixels is loaded once and feeds the
 * (up to 8) sums whose 5x5 window holds it, so loads stop bounding the multiply-adds. */
ALWAYS_INLINE void conv1_block(const float *tile, const float *w, const float *bias, int64_t C1, int64_t B,
                               int64_t b0, int64_t I, int64_t m, int relu, int bf16, void *S1, float *p1) {
    const int64_t plane = C1 * 196 * B;
    for (int64_t c = 0; c < C1; c++) {
        const float *wc = w + c * 25;
        const vf bv = vsplat(bias[c]);
        for (int64_t J = 0; J < 14; J += 2) {
            vf a[8] = {bv, bv, bv, bv, bv, bv, bv, bv};    /* (J + j, u, v) for o = 4j + 2u + v */
            const float *x = tile + ((2 * I) * 32 + 2 * J) * VL;
            _Pragma("GCC unroll 6")
            for (int r = 0; r < 6; r++) {
                _Pragma("GCC unroll 8")
                for (int s = 0; s < 8; s++) {
                    const vf xv = vload(x + (r * 32 + s) * VL);
                    _Pragma("GCC unroll 8")
                    for (int o = 0; o < 8; o++) {
                        const int kh = r - (o % 4) / 2, kw = s - 2 * (o / 4) - o % 2;
                        if (kh >= 0 && kh < 5 && kw >= 0 && kw < 5) a[o] += vsplat(wc[kh * 5 + kw]) * xv;
                    }
                }
            }
            for (int j = 0; j < 2; j++) {
                const int64_t off = (c * 196 + I * 14 + J + j) * B + b0;
                vf sum = store_T(S1, off, vact(a[4 * j], relu), m, bf16);
                for (int uv = 1; uv < 4; uv++)
                    sum += store_T(S1, uv * plane + off, vact(a[4 * j + uv], relu), m, bf16);
                vstore_n(p1 + off, sum, m);
            }
        }
    }
}

/* conv1 + activation + pooling + conv2's patches.  X (B, 28, 28) float; w (C1, 25) and bias (C1) float.
 * xpad (ceil(B/16), 32, 32, 16) float, zero-filled by the caller: each group of 16 images one
 * contiguous tile, batch-innermost, with a 2-pixel border.  Only the 28x28 interiors of images < B
 * are written, so borders and missing images stay zero; the backward pass reads it.  (A layout with
 * a stride of B between pixels would put a patch's 36 pixels into the same few L1 cache sets.)
 * S1 (4, C1, 14, 14, B): the activations, rows (u, v, c) = position in the 2x2 pooling block and
 * channel.  p1 (C1, 14, 14, B) float scratch: their sum over (u, v), 4 x the pooled map (conv2's
 * matrix carries the 1/4).  Q rows (c, r, s) of 6x6 patches at stride 2, columns (I2, J2, b):
 * Q[c*36+r*6+s][(I2*5+J2)*B+b] = p1[c][2I2+r][2J2+s][b]; its bias row is not touched. */
static void conv1_forward(const float *X, int64_t B, const float *w, const float *bias, int64_t C1,
                          int relu_flag, int bf16_flag, float *xpad, void *S1, float *p1, void *Q) {
    const int64_t groups = (B + VL - 1) / VL;
    _Pragma("omp parallel for schedule(static)")
    for (int64_t b = 0; b < B; b++) {
        float *out = xpad + ((b / VL * 32 + 2) * 32 + 2) * VL + b % VL;
        for (int64_t i = 0; i < 28; i++)
            for (int64_t j = 0; j < 28; j++) out[(i * 32 + j) * VL] = X[b * 784 + i * 28 + j];
    }
    _Pragma("omp parallel for schedule(static)")
    for (int64_t gi = 0; gi < groups * 14; gi++) {
        const int64_t g = gi / 14, b0 = g * VL, I = gi % 14;
        const float *tile = xpad + g * 32 * 32 * VL;
        if (B - b0 >= VL)
            DISPATCH(bf16_flag, relu_flag, conv1_block(tile, w, bias, C1, B, b0, I, VL, relu, bf16, S1, p1));
        else conv1_block(tile, w, bias, C1, B, b0, I, B - b0, relu_flag, bf16_flag, S1, p1);
    }
    _Pragma("omp parallel for collapse(2) schedule(static)")
    for (int64_t crs = 0; crs < C1 * 36; crs++) {
        for (int64_t I2 = 0; I2 < 5; I2++) {
            const int64_t c = crs / 36, r = (crs % 36) / 6, s = crs % 6;
            for (int64_t J2 = 0; J2 < 5; J2++) {
                const float *src = p1 + (c * 196 + (2 * I2 + r) * 14 + s + 2 * J2) * B;
                const int64_t dst = (crs * 25 + I2 * 5 + J2) * B;
                if (bf16_flag) FOR_VECTORS(b, B, m, store_T(Q, dst + b, vload_n(src + b, m), m, 1));
                else FOR_VECTORS(b, B, m, store_T(Q, dst + b, vload_n(src + b, m), m, 0));
            }
        }
    }
}

/* Taps kh in [KH0, KH1) of one channel's weight gradient over one group of 16 images: acc[kh*5 + kw]
 * += the sum over (I, J, u, v) of gz[I][J][u][v] * x[2I+u+kh][2J+v+kw].  Each of a block's input
 * pixels is loaded once and meets the (up to 4) gradients whose window holds it; with at most 15
 * taps in flight the sums stay in registers. */
ALWAYS_INLINE void conv1_grad_taps(const vf *gz, const float *tile, int KH0, int KH1, vf *acc) {
    vf part[15];
    for (int k = 0; k < 15; k++) part[k] = vsplat(0.0f);
    for (int64_t I = 0; I < 14; I++)
        for (int64_t J = 0; J < 14; J++) {
            const vf *g = gz + (I * 14 + J) * 4;
            const float *x = tile + ((2 * I) * 32 + 2 * J) * VL;
            _Pragma("GCC unroll 6")
            for (int r = 0; r < 6; r++) {
                if (r < KH0 || r > KH1) continue;          /* rows r = kh + u, u in {0, 1} */
                _Pragma("GCC unroll 6")
                for (int s = 0; s < 6; s++) {
                    const vf xv = vload(x + (r * 32 + s) * VL);
                    _Pragma("GCC unroll 4")
                    for (int uv = 0; uv < 4; uv++) {
                        const int kh = r - uv / 2, kw = s - uv % 2;
                        if (kh >= KH0 && kh < KH1 && kw >= 0 && kw < 5) part[(kh - KH0) * 5 + kw] += g[uv] * xv;
                    }
                }
            }
        }
    for (int k = 0; k < (KH1 - KH0) * 5; k++) acc[KH0 * 5 + k] += part[k];
}

/* One channel's weight and bias gradient sums over one group of 16 images (see conv1_backward):
 * first the gradients gz at conv1's outputs (into gz, 14 x 14 x 4 vectors), then the taps in two
 * sweeps. */
ALWAYS_INLINE void conv1_grad_group(const void *gQ, const void *S1, const float *tile, int64_t C1, int64_t B,
                                    int64_t c, int64_t b0, int64_t m, int relu, int bf16, vf *gz, vf *acc) {
    const int64_t plane = C1 * 196 * B;
    for (int64_t I = 0; I < 14; I++) {
        const int64_t I2lo = I > 5 ? (I - 4) / 2 : 0, I2hi = I / 2 < 4 ? I / 2 : 4;
        for (int64_t J = 0; J < 14; J++) {
            const int64_t J2lo = J > 5 ? (J - 4) / 2 : 0, J2hi = J / 2 < 4 ? J / 2 : 4;
            vf gp = vsplat(0.0f);
            for (int64_t I2 = I2lo; I2 <= I2hi; I2++)
                for (int64_t J2 = J2lo; J2 <= J2hi; J2++) {
                    const int64_t r = I - 2 * I2, s = J - 2 * J2;
                    gp += load_T(gQ, ((c * 36 + r * 6 + s) * 25 + I2 * 5 + J2) * B + b0, m, bf16);
                }
            for (int uv = 0; uv < 4; uv++) {
                const vf g = gp * vdact(load_T(S1, uv * plane + (c * 196 + I * 14 + J) * B + b0, m, bf16), relu);
                gz[(I * 14 + J) * 4 + uv] = g;
                acc[25] += g;
            }
        }
    }
    conv1_grad_taps(gz, tile, 0, 3, acc);
    conv1_grad_taps(gz, tile, 3, 5, acc);
}

/* conv1's weight (C1, 25) and bias (C1) gradients from gQ (36*C1, 25*B), the gradient of conv2's
 * patches: folded back onto the pooled map (col2im of 6x6 patches at stride 2), through the pooling's
 * broadcast and the activation's derivative (S1 from the forward pass), times the input patches
 * (xpad from the forward pass); conv1's input gradient is never formed.
 *   gp[c][I][J] = sum over 2I2+r = I, 2J2+s = J of gQ[c][r][s][I2][J2]
 *   gz = gp * act'(S1[u][v][c][I][J]);  wgrad[c][kh][kw] = sum over u, v, I, J, b of gz * x[2I+u+kh][2J+v+kw]
 * The work is split into (channel, batch slice) units whose sums are added in a fixed order, so the
 * result does not depend on the number of threads. */
static void conv1_backward(const void *gQ, const void *S1, const float *xpad, int64_t C1, int64_t B,
                           int relu_flag, int bf16_flag, float *wgrad, float *bgrad) {
    const int64_t groups = (B + VL - 1) / VL;
    float partial[C1 * CONV1_SLICES * 26];
    _Pragma("omp parallel for schedule(static)")
    for (int64_t unit = 0; unit < C1 * CONV1_SLICES; unit++) {
        const int64_t c = unit / CONV1_SLICES, slice = unit % CONV1_SLICES;
        vf acc[26], gz[196 * 4];
        for (int k = 0; k < 26; k++) acc[k] = vsplat(0.0f);
        for (int64_t g = slice * groups / CONV1_SLICES; g < (slice + 1) * groups / CONV1_SLICES; g++) {
            const int64_t b0 = g * VL;
            const float *tile = xpad + g * 32 * 32 * VL;
            if (B - b0 >= VL)
                DISPATCH(bf16_flag, relu_flag,
                         conv1_grad_group(gQ, S1, tile, C1, B, c, b0, VL, relu, bf16, gz, acc));
            else conv1_grad_group(gQ, S1, tile, C1, B, c, b0, B - b0, relu_flag, bf16_flag, gz, acc);
        }
        for (int k = 0; k < 26; k++) partial[unit * 26 + k] = vsum(acc[k]);
    }
    for (int64_t c = 0; c < C1; c++)
        for (int k = 0; k < 26; k++) {
            float total = 0.0f;
            for (int64_t slice = 0; slice < CONV1_SLICES; slice++)
                total += partial[(c * CONV1_SLICES + slice) * 26 + k];
            if (k < 25) wgrad[c * 25 + k] = total;
            else bgrad[c] = total;
        }
}

/* ---- conv2's activation and pooling, forward and backward ---- */

/* Z2 (4, n) activated in place (rounded to the storage type); f[k] = scale * the sum of the 4 stored
 * values (scale 1/4: the average pooling).  One chunk of k. */
ALWAYS_INLINE void act_pool_chunk(void *Z2, int64_t n, int64_t k0, int64_t len, int relu, int bf16, float scale,
                                  void *f) {
    FOR_VECTORS(k, len, m, {
        vf s = vsplat(0.0f);
        for (int64_t uv = 0; uv < 4; uv++) {
            const int64_t i = uv * n + k0 + k;
            s += store_T(Z2, i, vact(load_T(Z2, i, m, bf16), relu), m, bf16);
        }
        store_T(f, k0 + k, s * scale, m, bf16);
    });
}

static void act_pool(void *Z2, int64_t n, int relu_flag, int bf16_flag, float scale, void *f) {
    _Pragma("omp parallel for schedule(static)")
    for (int64_t k0 = 0; k0 < n; k0 += CHUNK) {
        const int64_t len = k0 + CHUNK < n ? CHUNK : n - k0;
        DISPATCH(bf16_flag, relu_flag, act_pool_chunk(Z2, n, k0, len, relu, bf16, scale, f));
    }
}

/* The pooling's broadcast and the activation's derivative: gz[uv][k] = scale * g[k] * act'(S[uv][k]). */
ALWAYS_INLINE void pool_act_backward_chunk(const void *g, const void *S, int64_t n, int64_t k0, int64_t len,
                                           int relu, int bf16, float scale, void *gz) {
    FOR_VECTORS(k, len, m, {
        const vf gk = load_T(g, k0 + k, m, bf16) * scale;
        for (int64_t uv = 0; uv < 4; uv++) {
            const int64_t i = uv * n + k0 + k;
            store_T(gz, i, gk * vdact(load_T(S, i, m, bf16), relu), m, bf16);
        }
    });
}

static void pool_act_backward(const void *g, const void *S, int64_t n, int relu_flag, int bf16_flag, float scale,
                              void *gz) {
    _Pragma("omp parallel for schedule(static)")
    for (int64_t k0 = 0; k0 < n; k0 += CHUNK) {
        const int64_t len = k0 + CHUNK < n ? CHUNK : n - k0;
        DISPATCH(bf16_flag, relu_flag, pool_act_backward_chunk(g, S, n, k0, len, relu, bf16, scale, gz));
    }
}

/* The exported passes, one per storage type (the void * arrays hold bf16 for _bf16, float for _f32). */
#define DEFINE_PASSES(SUFFIX, IS_BF16)                                                                 \
void lenet_conv1_forward_##SUFFIX(const float *X, int64_t B, const float *w, const float *bias,        \
                                  int64_t C1, int relu, float *xpad, void *S1, float *p1, void *Q) {   \
    conv1_forward(X, B, w, bias, C1, relu, IS_BF16, xpad, S1, p1, Q);                                  \
}                                                                                                      \
void lenet_conv1_backward_##SUFFIX(const void *gQ, const void *S1, const float *xpad, int64_t C1,      \
                                   int64_t B, int relu, float *wgrad, float *bgrad) {                  \
    conv1_backward(gQ, S1, xpad, C1, B, relu, IS_BF16, wgrad, bgrad);                                  \
}                                                                                                      \
void lenet_act_pool_##SUFFIX(void *Z2, int64_t n, int relu, float scale, void *f) {                    \
    act_pool(Z2, n, relu, IS_BF16, scale, f);                                                          \
}                                                                                                      \
void lenet_pool_act_backward_##SUFFIX(const void *g, const void *S, int64_t n, int relu, float scale,   \
                                      void *gz) {                                                      \
    pool_act_backward(g, S, n, relu, IS_BF16, scale, gz);                                              \
}

/* The small per-step pieces, one call each instead of 10-15 PyTorch operators. */
#define DEFINE_SMALL(SUFFIX, T, LOAD, STORE)                                                           \
/* A 5x5 convolution's weight (cout, cin, 5, 5) times scale, and bias (cout), as the space-to-depth     \
 * matrix (4*cout, 36*cin+1): row (u, v, co), column (ci, u+kh, v+kw) of the 6x6 patch, last column    \
 * the bias. */                                                                                        \
void lenet_conv_matrix_##SUFFIX(const float *w, const float *bias, int64_t cout, int64_t cin,         \
                                float scale, T *out) {                                                 \
    const int64_t width = 36 * cin + 1;                                                                \
    memset(out, 0, sizeof(T) * 4 * cout * width);                                                      \
    for (int64_t uv = 0; uv < 4; uv++) {                                                               \
        const int64_t u = uv / 2, v = uv % 2;                                                          \
        for (int64_t co = 0; co < cout; co++) {                                                        \
            T *row = out + (uv * cout + co) * width;                                                   \
            for (int64_t ci = 0; ci < cin; ci++)                                                       \
                for (int64_t kh = 0; kh < 5; kh++)                                                     \
                    for (int64_t kw = 0; kw < 5; kw++)                                                 \
                        row[ci * 36 + (u + kh) * 6 + v + kw] = STORE(w[((co * cin + ci) * 5 + kh) * 5 + kw] * scale); \
            row[width - 1] = STORE(bias[co]);                                                          \
        }                                                                                              \
    }                                                                                                  \
}                                                                                                      \
                                                                                                       \
/* The gradient g (36*cin+1, 4*cout) of that matrix folded back: weight gradient (cout, cin, 5, 5)      \
 * times scale, bias gradient (cout). */                                                               \
void lenet_conv_fold_##SUFFIX(const T *g, int64_t cout, int64_t cin, float scale, float *wgrad,       \
                              float *bgrad) {                                                          \
    const int64_t width = 36 * cin + 1, cols = 4 * cout;                                               \
    for (int64_t co = 0; co < cout; co++) {                                                            \
        for (int64_t ci = 0; ci < cin; ci++)                                                           \
            for (int64_t kh = 0; kh < 5; kh++)                                                         \
                for (int64_t kw = 0; kw < 5; kw++) {                                                   \
                    float acc = 0.0f;                                                                  \
                    for (int64_t uv = 0; uv < 4; uv++)                                                 \
                        acc += LOAD(g[(ci * 36 + (uv / 2 + kh) * 6 + uv % 2 + kw) * cols + uv * cout + co]); \
                    wgrad[((co * cin + ci) * 5 + kh) * 5 + kw] = acc * scale;                          \
                }                                                                                      \
        float acc = 0.0f;                                                                              \
        for (int64_t uv = 0; uv < 4; uv++) acc += LOAD(g[(width - 1) * cols + uv * cout + co]);        \
        bgrad[co] = acc;                                                                               \
    }                                                                                                  \
}                                                                                                      \
                                                                                                       \
/* Softmax cross-entropy of logits (K, B) against labels y (B): the mean loss, the number of correct   \
 * argmaxes (first maximum wins, as torch.argmax), the gradient (softmax - onehot) / B as (K, B) and    \
 * its row sums (the last bias's gradient).  NaN or infinite logits give a NaN or infinite loss. */     \
int lenet_xent_##SUFFIX(const T *logits, const int64_t *y, int64_t K, int64_t B, T *grad, float *gsum,  \
                        float *loss, int64_t *correct) {                                               \
    for (int64_t b = 0; b < B; b++)                                                                    \
        if (y[b] < 0 || y[b] >= K) return 1;                /* a label the network has no output for */ \
    double total = 0.0;                                                                                \
    int64_t right = 0;                                                                                 \
    for (int64_t k = 0; k < K; k++) gsum[k] = 0.0f;                                                    \
    for (int64_t b = 0; b < B; b++) {                                                                  \
        float m = LOAD(logits[b]);                                                                     \
        int64_t best = 0;                                                                              \
        for (int64_t k = 1; k < K; k++) {                                                              \
            float z = LOAD(logits[k * B + b]);                                                         \
            if (z > m || (z != z && m == m)) { m = z; best = k; }                                      \
        }                                                                                              \
        float sum = 0.0f;                                                                              \
        for (int64_t k = 0; k < K; k++) sum += expf(LOAD(logits[k * B + b]) - m);                      \
        const float lse = m + logf(sum);                                                               \
        total += (double)(lse - LOAD(logits[y[b] * B + b]));                                           \
        right += best == y[b];                                                                         \
        for (int64_t k = 0; k < K; k++) {                                                              \
            float p = expf(LOAD(logits[k * B + b]) - lse) - (k == y[b] ? 1.0f : 0.0f);                 \
            p /= (float)B;                                                                             \
            gsum[k] += p;                                                                              \
            grad[k * B + b] = STORE(p);                                                                \
        }                                                                                              \
    }                                                                                                  \
    *loss = (float)(total / (double)B);                                                                \
    *correct = right;                                                                                  \
    return 0;                                                                                          \
}

DEFINE_SMALL(bf16, uint16_t, bf16_to_f, f_to_bf16)
DEFINE_SMALL(f32, float, f_to_f, f_to_f)
DEFINE_PASSES(bf16, 1)
DEFINE_PASSES(f32, 0)

int lenet_native_abi_version(void) { return 4; }
