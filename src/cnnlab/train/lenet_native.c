/* The LeNet kernel's memory-bound passes, each one loop nest instead of several PyTorch operators.
 *
 * cnnlab.train.lenet_kernel computes LeNet's convolutions as space-to-depth matrix products
 * (PyTorch's BLAS) with activations stored batch-innermost.  Between the products PyTorch needed
 * 5-15 operators per layer (transposes, gathers, activation, pooling sums, col2im, activation
 * derivatives), each a full pass over a few MB.  Each function below fuses one such run into a
 * single pass over the data, split over the threads of PyTorch's own OpenMP runtime.  The layouts
 * are the ones documented in lenet_kernel.py; B is the batch size, the innermost dimension.
 *
 * Storage type: T is float (fp32) or bf16 (uint16 holding the top half of a float, rounded to
 * nearest even, NaN kept NaN).  Arithmetic is float throughout; sums are rounded once.
 *
 * Built by cnnlab.train.native with the system C compiler; pure C99 + OpenMP, no Python headers.
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

/* exp(x) to about 2 ulp (Cephes' polynomial on [-ln2/2, ln2/2] times 2^n), written so that the
 * compiler vectorises it (no libm calls, no float-to-int conversion of floorf).  NaN in, NaN out. */
static inline float exp_f(float x) {
    float c = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
    float t = c * 1.44269504088896341f + 12582912.0f;     /* 1.5 * 2^23: rounds to the nearest integer */
    float n = t - 12582912.0f;
    int32_t ni;
    memcpy(&ni, &t, 4);
    ni -= 0x4B400000;                                      /* the same integer, from t's mantissa */
    float r = c - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    int32_t bits = (ni + 127) << 23;
    float scale;
    memcpy(&scale, &bits, 4);
    float y = p * scale;
    return x != x ? x : y;
}

static inline float act_f(float z, int relu) {
    return relu ? (z > 0.0f ? z : 0.0f) : 1.0f / (1.0f + exp_f(-z));
}

/* d act / d z from the activation's output y. */
static inline float dact_f(float y, int relu) {
    return relu ? (y > 0.0f ? 1.0f : 0.0f) : y * (1.0f - y);
}

#define CHUNK 2048

/* Row helpers, with the activation a compile-time constant in each loop so that every loop vectorises. */
#define DEFINE_ROWS(SUFFIX, T, LOAD, STORE)                                                            \
/* For uv = 0..3: z[uv*stride + k] = act(z[...]) (rounded to T); sum[k] = the sum over uv. */          \
static void act_sum_##SUFFIX(T *z, int64_t stride, int64_t n, int relu, float *sum) {                  \
    for (int64_t uv = 0; uv < 4; uv++) {                                                               \
        T *row = z + uv * stride;                                                                      \
        if (uv == 0) {                                                                                 \
            if (relu) for (int64_t k = 0; k < n; k++) { row[k] = STORE(act_f(LOAD(row[k]), 1)); sum[k] = LOAD(row[k]); } \
            else for (int64_t k = 0; k < n; k++) { row[k] = STORE(act_f(LOAD(row[k]), 0)); sum[k] = LOAD(row[k]); } \
        } else {                                                                                       \
            if (relu) for (int64_t k = 0; k < n; k++) { row[k] = STORE(act_f(LOAD(row[k]), 1)); sum[k] += LOAD(row[k]); } \
            else for (int64_t k = 0; k < n; k++) { row[k] = STORE(act_f(LOAD(row[k]), 0)); sum[k] += LOAD(row[k]); } \
        }                                                                                              \
    }                                                                                                  \
}                                                                                                      \
/* out[k] = g[k] * act'(s[k]), act' from the activation's output. */                                  \
static void dact_mul_##SUFFIX(const T *s, const float *g, int64_t n, int relu, T *out) {               \
    if (relu) {                                                                                        \
        for (int64_t k = 0; k < n; k++) out[k] = STORE(g[k] * dact_f(LOAD(s[k]), 1));                  \
    } else {                                                                                           \
        for (int64_t k = 0; k < n; k++) out[k] = STORE(g[k] * dact_f(LOAD(s[k]), 0));                  \
    }                                                                                                  \
}

#define DEFINE_PASSES(SUFFIX, T, LOAD, STORE)                                                          \
                                                                                                       \
/* X (B, 28, 28) float -> P rows (r, s) = 36, columns (I, J, b) = 14 x 14 x B:                        \
 * P[r*6+s][(I*14+J)*B+b] = x_b[2I+r-2][2J+s-2] (zero outside).  The bias row 36 is not touched. */    \
void lenet_s2d_input_##SUFFIX(const float *X, int64_t B, T *P, T *xpad) {                            \
    /* xpad (32, 32, B): the images transposed batch-innermost with a 2-pixel zero border. */         \
    _Pragma("omp parallel for schedule(static)")                                                       \
    for (int64_t i = 0; i < 32; i++) {                                                                 \
        T *row = xpad + i * 32 * B;                                                                    \
        if (i < 2 || i >= 30) { memset(row, 0, sizeof(T) * 32 * B); continue; }                        \
        memset(row, 0, sizeof(T) * 2 * B);                                                             \
        memset(row + 30 * B, 0, sizeof(T) * 2 * B);                                                    \
        for (int64_t b0 = 0; b0 < B; b0 += 64) {                                                       \
            int64_t b1 = b0 + 64 < B ? b0 + 64 : B;                                                    \
            for (int64_t j = 0; j < 28; j++) {                                                         \
                T *out = row + (j + 2) * B;                                                            \
                const float *in = X + (i - 2) * 28 + j;                                                \
                for (int64_t b = b0; b < b1; b++) out[b] = STORE(in[b * 784]);                         \
            }                                                                                          \
        }                                                                                              \
    }                                                                                                  \
    _Pragma("omp parallel for collapse(2) schedule(static)")                                           \
    for (int64_t rs = 0; rs < 36; rs++) {                                                              \
        for (int64_t I = 0; I < 14; I++) {                                                             \
            int64_t r = rs / 6, s = rs % 6;                                                            \
            T *out = P + rs * 196 * B + I * 14 * B;                                                    \
            const T *in = xpad + (2 * I + r) * 32 * B + s * B;                                         \
            for (int64_t J = 0; J < 14; J++) memcpy(out + J * B, in + 2 * J * B, sizeof(T) * B);       \
        }                                                                                              \
    }                                                                                                  \
}                                                                                                      \
                                                                                                       \
/* conv1 + activation + pooling + conv2's patches.  Z1 (4, C1, 14, 14, B): the product W1 @ P, rows   \
 * (u, v, c); activated in place (the backward pass needs it).  p1 = the sum over (u, v) (4 x the      \
 * pooled map; conv2's matrix carries the 1/4), float scratch (C1, 14, 14, B).  Q rows (c, r, s) of   \
 * 6x6 patches at stride 2, columns (I2, J2, b): Q[c*36+r*6+s][(I2*5+J2)*B+b] = p1[c][2I2+r][2J2+s][b]. \
 * The bias row of Q is not touched. */                                                                \
void lenet_act_pool_s2d_##SUFFIX(T *Z1, int64_t C1, int64_t B, int relu, float *p1, T *Q) {          \
    const int64_t plane = C1 * 196 * B;                                                                \
    _Pragma("omp parallel for schedule(static)")                                                       \
    for (int64_t ci = 0; ci < C1 * 14; ci++) {                                                         \
        const int64_t off = ci * 14 * B;                                                               \
        float *sum = p1 + off;                                                                         \
        act_sum_##SUFFIX(Z1 + off, plane, 14 * B, relu, sum);                                          \
    }                                                                                                  \
    _Pragma("omp parallel for collapse(2) schedule(static)")                                           \
    for (int64_t crs = 0; crs < C1 * 36; crs++) {                                                      \
        for (int64_t I2 = 0; I2 < 5; I2++) {                                                           \
            int64_t c = crs / 36, r = (crs % 36) / 6, s = crs % 6;                                     \
            T *out = Q + crs * 25 * B + I2 * 5 * B;                                                    \
            const float *in = p1 + (c * 196 + (2 * I2 + r) * 14 + s) * B;                              \
            for (int64_t J2 = 0; J2 < 5; J2++) {                                                       \
                const float *src = in + 2 * J2 * B;                                                    \
                T *dst = out + J2 * B;                                                                 \
                for (int64_t b = 0; b < B; b++) dst[b] = STORE(src[b]);                                \
            }                                                                                          \
        }                                                                                              \
    }                                                                                                  \
}                                                                                                      \
                                                                                                       \
/* conv2's activation and pooling: Z2 (4, n) activated in place, f[k] = sum over the 4 rows. */       \
void lenet_act_pool_##SUFFIX(T *Z2, int64_t n, int relu, T *f) {                                       \
    _Pragma("omp parallel for schedule(static)")                                                       \
    for (int64_t k0 = 0; k0 < n; k0 += CHUNK) {                                                        \
        int64_t len = k0 + CHUNK < n ? CHUNK : n - k0;                                                 \
        float sum[CHUNK];                                                                              \
        act_sum_##SUFFIX(Z2 + k0, n, len, relu, sum);                                                  \
        for (int64_t k = 0; k < len; k++) f[k0 + k] = STORE(sum[k]);                                   \
    }                                                                                                  \
}                                                                                                      \
                                                                                                       \
/* The pooling's broadcast and the activation's derivative: gz[uv][k] = g[k] * act'(s[uv][k]). */     \
void lenet_pool_act_backward_##SUFFIX(const T *g, const T *S, int64_t n, int relu, T *gz) {           \
    _Pragma("omp parallel for schedule(static)")                                                       \
    for (int64_t k0 = 0; k0 < n; k0 += CHUNK) {                                                        \
        int64_t len = k0 + CHUNK < n ? CHUNK : n - k0;                                                 \
        float gk[CHUNK];                                                                               \
        for (int64_t k = 0; k < len; k++) gk[k] = LOAD(g[k0 + k]);                                     \
        for (int64_t uv = 0; uv < 4; uv++)                                                             \
            dact_mul_##SUFFIX(S + uv * n + k0, gk, len, relu, gz + uv * n + k0);                       \
    }                                                                                                  \
}                                                                                                      \
                                                                                                       \
/* conv2's input gradient folded back onto the pooled conv1 map (col2im of 6x6 patches at stride 2),  \
 * then conv1's pooling broadcast and activation derivative.  gQ rows (c, r, s), columns (I2, J2, b); \
 * S1 and gz1 (4, C1, 14, 14, B).  gp1[c][I][J] = sum over 2I2+r = I, 2J2+s = J of gQ[c][r][s][I2][J2]. */ \
void lenet_col2im_act_backward_##SUFFIX(const T *gQ, const T *S1, int64_t C1, int64_t B, int relu,    \
                                        float *scratch, T *gz1) {                                      \
    const int64_t plane = C1 * 196 * B;                                                                \
    _Pragma("omp parallel for schedule(static)")                                                       \
    for (int64_t ci = 0; ci < C1 * 14; ci++) {                                                         \
        const int64_t c = ci / 14, I = ci % 14;                                                        \
        float *acc = scratch + ci * 14 * B;                                                            \
        memset(acc, 0, sizeof(float) * 14 * B);                                                        \
        for (int64_t I2 = 0; I2 < 5; I2++) {                                                           \
            int64_t r = I - 2 * I2;                                                                    \
            if (r < 0 || r > 5) continue;                                                              \
            for (int64_t s = 0; s < 6; s++) {                                                          \
                const T *row = gQ + ((c * 36 + r * 6 + s) * 25 + I2 * 5) * B;                          \
                for (int64_t J2 = 0; J2 < 5; J2++) {                                                   \
                    const T *src = row + J2 * B;                                                       \
                    float *dst = acc + (2 * J2 + s) * B;                                               \
                    for (int64_t b = 0; b < B; b++) dst[b] += LOAD(src[b]);                            \
                }                                                                                      \
            }                                                                                          \
        }                                                                                              \
        const int64_t off = ci * 14 * B;                                                               \
        for (int64_t uv = 0; uv < 4; uv++)                                                             \
            dact_mul_##SUFFIX(S1 + uv * plane + off, acc, 14 * B, relu, gz1 + uv * plane + off);       \
    }                                                                                                  \
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
DEFINE_ROWS(bf16, uint16_t, bf16_to_f, f_to_bf16)
DEFINE_ROWS(f32, float, f_to_f, f_to_f)
DEFINE_PASSES(bf16, uint16_t, bf16_to_f, f_to_bf16)
DEFINE_PASSES(f32, float, f_to_f, f_to_f)

int lenet_native_abi_version(void) { return 2; }
