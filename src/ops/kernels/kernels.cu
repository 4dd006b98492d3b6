// CUDA paths of the fused kernels (src/ops/kernels/*.rs hold the CPU versions, the math
// and the docs): f32 data, f64 accumulators. Compiled to PTX by build.rs with the `cuda`
// feature and loaded by src/ops/kernels/cuda.rs.
//
// Layouts follow the CPU kernels: a per-channel map sees its input as runs of `inner`
// contiguous entries sharing channel `c = (i / inner) % C`. Reductions run on a grid of
// (run, chunk) blocks: block (r, k) reads entries k*CHUNK.. of run r, reduces them in the
// block and adds the block's sum to an f64 accumulator with one atomicAdd.

#define BLOCK 256
#define CHUNK (BLOCK * 8)

// Adds the K values `v` of every thread of the block to dst[0..K] (one atomicAdd each, by
// thread 0). Every thread of the block must call it.
template <int K>
__device__ void block_add(double (&v)[K], double *dst) {
  __shared__ double sh[K][32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();  // sh may still be read by a previous call
#pragma unroll
  for (int k = 0; k < K; k++) {
    double x = v[k];
    for (int o = 16; o > 0; o >>= 1) x += __shfl_down_sync(0xffffffffu, x, o);
    if (lane == 0) sh[k][warp] = x;
  }
  __syncthreads();
  if (warp == 0) {
    const int warps = (blockDim.x + 31) >> 5;
#pragma unroll
    for (int k = 0; k < K; k++) {
      double x = lane < warps ? sh[k][lane] : 0.0;
      for (int o = 16; o > 0; o >>= 1) x += __shfl_down_sync(0xffffffffu, x, o);
      if (lane == 0) atomicAdd(dst + k, x);
    }
  }
}

// The entries [lo, hi) of run `blockIdx.x` (of length `len`) this block reads.
__device__ void chunk(long len, long *lo, long *hi) {
  *lo = (long)blockIdx.y * CHUNK;
  *hi = min(len, *lo + CHUNK);
}

#define GRID_STRIDE(i, n) \
  for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (long)blockDim.x * gridDim.x)

extern "C" __global__ void f64_to_f32(const double *a, float *b, long n) {
  GRID_STRIDE(i, n) b[i] = (float)a[i];
}

// ---- per-channel maps (prelu.rs, affine.rs) ----
// mode 0: PReLU with slope s; 1: x * s + b; 2: x + b.
extern "C" __global__ void channel_map(const float *x, const float *s, const float *b, float *y,
                                       long n, long C, long inner, int mode) {
  GRID_STRIDE(i, n) {
    const long c = (i / inner) % C;
    const float v = x[i];
    y[i] = mode == 0 ? (v > 0.f ? v : s[c] * v) : mode == 1 ? v * s[c] + b[c] : v + b[c];
  }
}

// Backward of channel_map, on the (run, chunk) grid; out: dx, acc: f64 parameter sums.
// mode 0 (PReLU): dx = x > 0 ? dy : s dy, acc[c] += x dy where x <= 0.
// mode 1 (affine): dx = s dy, acc[c] += x dy, acc[C + c] += dy.
extern "C" __global__ void channel_map_grad(const float *x, const float *dy, const float *s,
                                            float *dx, double *acc, long C, long inner,
                                            int mode) {
  const long r = blockIdx.x, c = r % C;
  long lo, hi;
  chunk(inner, &lo, &hi);
  const float a = s[c];
  double v[2] = {0.0, 0.0};
  for (long j = lo + threadIdx.x; j < hi; j += blockDim.x) {
    const long i = r * inner + j;
    const float xv = x[i], d = dy[i];
    if (mode == 0) {
      dx[i] = xv > 0.f ? d : a * d;
      if (xv <= 0.f) v[0] += (double)xv * d;
    } else {
      dx[i] = a * d;
      v[0] += (double)xv * d;
      v[1] += d;
    }
  }
  if (mode == 0) {
    double w[1] = {v[0]};
    block_add<1>(w, acc + c);
  } else {
    double w[1] = {v[0]};
    block_add<1>(w, acc + c);
    double z[1] = {v[1]};
    block_add<1>(z, acc + C + c);
  }
}

// acc[c] += sum of the entries of channel c (a bias gradient), on the (run, chunk) grid.
extern "C" __global__ void channel_sums(const float *dy, double *acc, long C, long inner) {
  const long r = blockIdx.x, c = r % C;
  long lo, hi;
  chunk(inner, &lo, &hi);
  double v[1] = {0.0};
  for (long j = lo + threadIdx.x; j < hi; j += blockDim.x) v[0] += dy[r * inner + j];
  block_add<1>(v, acc + c);
}

// ---- depthwise 1-D convolution (depthwise.rs) ----
// y[row, t] = sum_j w[c, j] x[row, t + j dil - pad], zero outside x; row = n C + c.
extern "C" __global__ void depthwise_fwd(const float *x, const float *w, float *y, long rows,
                                         long C, long T, long K, long dil, long pad,
                                         long T_out) {
  GRID_STRIDE(i, rows * T_out) {
    const long row = i / T_out, t = i % T_out, c = row % C;
    const float *xr = x + row * T;
    float acc = 0.f;
    for (long j = 0; j < K; j++) {
      const long s = t + j * dil - pad;
      if (s >= 0 && s < T) acc += w[c * K + j] * xr[s];
    }
    y[i] = acc;
  }
}

// dx[row, s] = sum_j w[c, j] dy[row, s - j dil + pad].
extern "C" __global__ void depthwise_grad_x(const float *dy, const float *w, float *dx,
                                            long rows, long C, long T, long K, long dil,
                                            long pad, long T_out) {
  GRID_STRIDE(i, rows * T) {
    const long row = i / T, s = i % T, c = row % C;
    const float *dr = dy + row * T_out;
    float acc = 0.f;
    for (long j = 0; j < K; j++) {
      const long t = s - j * dil + pad;
      if (t >= 0 && t < T_out) acc += w[c * K + j] * dr[t];
    }
    dx[i] = acc;
  }
}

// acc[c K + j] += sum_t dy[row, t] x[row, t + j dil - pad], on the (row, chunk of t) grid.
extern "C" __global__ void depthwise_grad_w(const float *x, const float *dy, double *acc,
                                            long C, long T, long K, long dil, long pad,
                                            long T_out) {
  const long row = blockIdx.x, c = row % C;
  long lo, hi;
  chunk(T_out, &lo, &hi);
  const float *xr = x + row * T, *dr = dy + row * T_out;
  for (long j = 0; j < K; j++) {
    double v[1] = {0.0};
    for (long t = lo + threadIdx.x; t < hi; t += blockDim.x) {
      const long s = t + j * dil - pad;
      if (s >= 0 && s < T) v[0] += (double)dr[t] * xr[s];
    }
    block_add<1>(v, acc + c * K + j);
  }
}

// ---- normalisation over rows of `len` entries (normalize.rs) ----
// acc[2 r] += sum x, acc[2 r + 1] += sum x^2 over row r, on the (row, chunk) grid.
extern "C" __global__ void row_moments(const float *x, double *acc, long len) {
  const long r = blockIdx.x;
  long lo, hi;
  chunk(len, &lo, &hi);
  double v[2] = {0.0, 0.0};
  for (long j = lo + threadIdx.x; j < hi; j += blockDim.x) {
    const double a = x[r * len + j];
    v[0] += a;
    v[1] += a * a;
  }
  block_add<2>(v, acc + 2 * r);
}

// Mean and 1 / sqrt(var + eps) of a row from its moments (population variance).
__device__ void row_stats(const double *m, long len, double eps, double *mean, double *inv) {
  const double n = (double)len;
  *mean = m[0] / n;
  const double var = fmax(m[1] / n - *mean * *mean, 0.0);
  *inv = 1.0 / sqrt(var + eps);
}

// In place, one thread per row: moments[2 r ..] (sums of x and x^2) become (mean, inv).
extern "C" __global__ void row_stats_of(double *moments, long rows, long len, double eps) {
  const long r = (long)blockIdx.x * blockDim.x + threadIdx.x;
  if (r >= rows) return;
  double mean, inv;
  row_stats(moments + 2 * r, len, eps, &mean, &inv);
  moments[2 * r] = mean;
  moments[2 * r + 1] = inv;
}

// y = (x - mean) inv, then * s[c] + b[c] when `affine` (c = (i / inner) % C), in f32 with
// the row's (mean, inv) from row_stats_of (as the CPU kernel rounds them).
extern "C" __global__ void normalize_fwd(const float *x, const double *stats, const float *s,
                                         const float *b, float *y, long n, long len,
                                         long C, long inner, int affine) {
  GRID_STRIDE(i, n) {
    const double *st = stats + 2 * (i / len);
    const float m = (float)(-st[0]);
    if (affine) {
      const long c = (i / inner) % C;
      y[i] = (x[i] + m) * (float)(st[1] * s[c]) + b[c];
    } else {
      y[i] = (x[i] + m) * (float)st[1];
    }
  }
}

// acc[4 r ..]: sum x, sum x^2, sum dy, sum dy y over row r, on the (row, chunk) grid.
extern "C" __global__ void normalize_grad_sums(const float *x, const float *y, const float *dy,
                                               double *acc, long len) {
  const long r = blockIdx.x;
  long lo, hi;
  chunk(len, &lo, &hi);
  double v[4] = {0.0, 0.0, 0.0, 0.0};
  for (long j = lo + threadIdx.x; j < hi; j += blockDim.x) {
    const long i = r * len + j;
    const double a = x[i], d = dy[i];
    v[0] += a;
    v[1] += a * a;
    v[2] += d;
    v[3] += d * y[i];
  }
  block_add<4>(v, acc + 4 * r);
}

// In place, one thread per row: acc[4 r ..] (sums of x, x^2, dy, dy y) become the
// coefficients of dx = (dy + a + b y) s: a = -mean(dy), b = -mean(dy y), s = inv.
extern "C" __global__ void normalize_grad_coef(double *acc, long rows, long len, double eps) {
  const long r = (long)blockIdx.x * blockDim.x + threadIdx.x;
  if (r >= rows) return;
  double *a = acc + 4 * r;
  double mean, inv;
  row_stats(a, len, eps, &mean, &inv);
  const double n = (double)len;
  const double sd = a[2], sdy = a[3];
  a[0] = -sd / n;
  a[1] = -sdy / n;
  a[2] = inv;
}

// dx = (dy + a + b y) s, in f32 (as the CPU kernel).
extern "C" __global__ void normalize_grad_x(const float *y, const float *dy, const double *acc,
                                            float *dx, long n, long len) {
  GRID_STRIDE(i, n) {
    const double *k = acc + 4 * (i / len);
    dx[i] = (dy[i] + (float)k[0] + (float)k[1] * y[i]) * (float)k[2];
  }
}

// normalize_affine backward, step 1 on the (run, chunk) grid, runs of `inner` entries
// (a row is `len / inner` runs; run r has channel r % C): row[2 row ..] += sum x, sum x^2;
// rc[2 (row C + c) ..] += sum dy, sum dy x.
extern "C" __global__ void norm_affine_sums(const float *x, const float *dy, double *row,
                                            double *rc, long len, long C, long inner) {
  const long r = blockIdx.x, c = r % C, rw = r * inner / len;
  long lo, hi;
  chunk(inner, &lo, &hi);
  double v[2] = {0.0, 0.0}, w[2] = {0.0, 0.0};
  for (long j = lo + threadIdx.x; j < hi; j += blockDim.x) {
    const long i = r * inner + j;
    const double a = x[i], d = dy[i];
    v[0] += a;
    v[1] += a * a;
    w[0] += d;
    w[1] += d * a;
  }
  block_add<2>(v, row + 2 * rw);
  block_add<2>(w, rc + 2 * (rw * C + c));
}

// Step 2, on a (row, channel block) grid: s12[2 row ..] += S1 = sum_c s[c] sum(dy),
// S2 = sum_c s[c] sdn_c with sdn_c = (sum(dy x) - mean sum(dy)) inv.
extern "C" __global__ void norm_affine_s12(const double *row, const double *rc, const float *s,
                                           double *s12, long len, long C, double eps) {
  const long r = blockIdx.x, c = (long)blockIdx.y * blockDim.x + threadIdx.x;
  double mean, inv;
  row_stats(row + 2 * r, len, eps, &mean, &inv);
  double v[2] = {0.0, 0.0};
  if (c < C) {
    const double sd = rc[2 * (r * C + c)], sdx = rc[2 * (r * C + c) + 1];
    v[0] = s[c] * sd;
    v[1] = s[c] * (sdx - mean * sd) * inv;
  }
  block_add<2>(v, s12 + 2 * r);
}

// Step 2b, one thread per row: coef[4 row ..] = mean, inv, b = -S2 / n inv^2, o = -S1 / n inv.
extern "C" __global__ void norm_affine_coef(const double *row, const double *s12, double *coef,
                                            long rows, long len, double eps) {
  const long r = (long)blockIdx.x * blockDim.x + threadIdx.x;
  if (r >= rows) return;
  double mean, inv;
  row_stats(row + 2 * r, len, eps, &mean, &inv);
  const double n = (double)len;
  coef[4 * r] = mean;
  coef[4 * r + 1] = inv;
  coef[4 * r + 2] = -s12[2 * r + 1] / n * inv * inv;
  coef[4 * r + 3] = -s12[2 * r] / n * inv;
}

// Step 3, one thread per channel: ds[c] = sum_rows sdn_c, db[c] = sum_rows sum(dy)
// (written as f32 to out[0..C] and out[C..2C]).
extern "C" __global__ void norm_affine_params(const double *rc, const double *coef, float *out,
                                              long rows, long C) {
  const long c = (long)blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= C) return;
  double ds = 0.0, db = 0.0;
  for (long r = 0; r < rows; r++) {
    const double sd = rc[2 * (r * C + c)], sdx = rc[2 * (r * C + c) + 1];
    ds += (sdx - coef[4 * r] * sd) * coef[4 * r + 1];
    db += sd;
  }
  out[c] = (float)ds;
  out[C + c] = (float)db;
}

// Step 4: dx = dy (s[c] inv) + (x - mean) b + o, in f32 (as the CPU kernel).
extern "C" __global__ void norm_affine_dx(const float *x, const float *dy, const float *s,
                                          const double *coef, float *dx, long n, long len,
                                          long C, long inner) {
  GRID_STRIDE(i, n) {
    const double *k = coef + 4 * (i / len);
    const long c = (i / inner) % C;
    dx[i] = dy[i] * (float)(s[c] * k[1]) + (x[i] + (float)(-k[0])) * (float)k[2] + (float)k[3];
  }
}

// ---- multi-tensor AdamW and gradient norm (learn/adam.rs): one launch for all tensors ----
// `table` holds `count` arrays of k device pointers (tensor t's j-th buffer at
// table[j * k + t]), the k lengths at table[count * k + t], then one entry per block:
// tensor << 40 | first entry of its chunk of MT_CHUNK entries.
#define MT_CHUNK (BLOCK * 16)

__device__ void mt_chunk(const unsigned long long *table, int count, int k, int *t, long *lo,
                         long *hi, long *n) {
  const unsigned long long e = table[(count + 1) * k + blockIdx.x];
  *t = (int)(e >> 40);
  *lo = (long)(e & ((1ull << 40) - 1));
  *n = (long)table[count * k + *t];
  *hi = min(*n, *lo + MT_CHUNK);
}

// AdamW on every tensor at once: m = b1 m + (1 - b1) g', v = b2 v + (1 - b2) g'^2 with
// g' = scale g, then w = w (1 - lr wd) - lr (m c1) / (sqrt(v c2) + eps), c1, c2 the bias
// corrections 1 / (1 - b^t); buffers w, g, mv = [m; v] (count 3).
extern "C" __global__ void adam_multi(const unsigned long long *table, int k, float b1, float b2,
                                      float scale, float lr, float wd, float c1, float c2,
                                      float eps) {
  int t;
  long lo, hi, n;
  mt_chunk(table, 3, k, &t, &lo, &hi, &n);
  float *w = (float *)table[t];
  const float *g = (const float *)table[k + t];
  float *mv = (float *)table[2 * k + t];
  for (long i = lo + threadIdx.x; i < hi; i += blockDim.x) {
    const float d = scale * g[i];
    const float m = b1 * mv[i] + (1.f - b1) * d;
    const float v = b2 * mv[n + i] + (1.f - b2) * d * d;
    mv[i] = m;
    mv[n + i] = v;
    w[i] = w[i] * (1.f - lr * wd) - lr * (m * c1) / (sqrtf(v * c2) + eps);
  }
}

// out[0] += the sum of squares of every buffer (count 1), in f64.
extern "C" __global__ void sq_sum_multi(const unsigned long long *table, int k, double *out) {
  int t;
  long lo, hi, n;
  mt_chunk(table, 1, k, &t, &lo, &hi, &n);
  const float *g = (const float *)table[t];
  double v[1] = {0.0};
  for (long i = lo + threadIdx.x; i < hi; i += blockDim.x) v[0] += (double)g[i] * (double)g[i];
  block_add<1>(v, out);
}
