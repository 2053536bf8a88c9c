// InfLLM v2 sparse attention on CPU, free of any framework: raw fp32 pointers with strides.
//
// The same header backs the torch op (infllmv2_cpu.cpp) and can back a custom-kernel library of another
// runtime: callers pass views and a parallel-for. Semantics (docs/kernels.md, "InfLLM v2: the exact
// semantics implemented"): per query, score the mean-pooled key kernels (softmax per query head, summed over
// the GQA group), max-pool kernels to blocks, force the init and local-window blocks, choose the top
// `topk + window_size / block_size` blocks (ties: lower block index), then exact softmax attention over the
// tokens of the chosen blocks, causal at token level.
//
// Speed: inner loops are written so the compiler vectorizes them (`#pragma omp simd` with -fopenmp-simd,
// -O3 -march=native; no intrinsics, so the same source builds for x86 AVX2/AVX-512 and ARM NEON), exp is a
// polynomial that vectorizes, attention walks the chosen blocks with an online softmax (no gathered copy of
// the keys), and the queries of a tile share each key/value block while it is in cache.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <utility>
#include <vector>

namespace edgecpm_infllmv2 {

struct Params {
  int64_t kernel_size, kernel_stride, init_blocks, block_size, window_size, topk;
};

// A float tensor [B, H, N, D] whose last dimension is contiguous; strides in elements.
struct View {
  const float* data;
  int64_t sb, sh, sn;
  const float* row(int64_t b, int64_t h, int64_t n) const { return data + b * sb + h * sh + n * sn; }
};

inline int64_t num_kernels(int64_t len, int64_t ks, int64_t st) { return len < ks ? 0 : (len - ks) / st + 1; }

inline int64_t floor_div(int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }

// exp(x) for x <= 0 (what softmax needs): 2^n * 2^f with n = round(x / ln 2), |f| <= 1/2, and 2^f by its
// degree-6 Taylor polynomial (relative error below 2e-7). Plain arithmetic and bit operations, so loops
// over it vectorize.
inline float exp_neg(float x) {
  x = x < -87.0f ? -87.0f : x;
  const float t = x * 1.44269504088896341f;  // x / ln 2
  const float n = std::floor(t + 0.5f);
  const float f = (x - n * 0.693359375f) + n * 2.12194440e-4f;  // x - n ln 2 (Cody-Waite), |f| <= ln2 / 2
  float p = 1.0f / 720.0f;
  p = p * f + 1.0f / 120.0f;
  p = p * f + 1.0f / 24.0f;
  p = p * f + 1.0f / 6.0f;
  p = p * f + 0.5f;
  p = p * f + 1.0f;
  p = p * f + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

inline float dot(const float* __restrict a, const float* __restrict b, int64_t d) {
  float s = 0.0f;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < d; ++i) s += a[i] * b[i];
  return s;
}

// Four dot products of one query row against four key rows (the query is loaded once).
inline void dot4(const float* __restrict q, const float* __restrict k0, const float* __restrict k1,
                 const float* __restrict k2, const float* __restrict k3, int64_t d, float* out) {
  float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
#pragma omp simd reduction(+ : s0, s1, s2, s3)
  for (int64_t i = 0; i < d; ++i) {
    const float x = q[i];
    s0 += x * k0[i];
    s1 += x * k1[i];
    s2 += x * k2[i];
    s3 += x * k3[i];
  }
  out[0] = s0;
  out[1] = s1;
  out[2] = s2;
  out[3] = s3;
}

// acc += p0 v0 + p1 v1 + p2 v2 + p3 v3 (one load/store of acc per four value rows).
inline void axpy4(float* __restrict acc, const float* __restrict v0, const float* __restrict v1,
                  const float* __restrict v2, const float* __restrict v3, const float* p, int64_t d) {
  const float p0 = p[0], p1 = p[1], p2 = p[2], p3 = p[3];
#pragma omp simd
  for (int64_t i = 0; i < d; ++i) acc[i] += p0 * v0[i] + p1 * v1[i] + p2 * v2[i] + p3 * v3[i];
}

inline void axpy(float* __restrict acc, const float* __restrict v, float p, int64_t d) {
#pragma omp simd
  for (int64_t i = 0; i < d; ++i) acc[i] += p * v[i];
}

// Compressed keys: ck[b, h, i] = mean(k[b, h, i*st : i*st + ks]) for i in [from, to). ck is contiguous
// [B, H, NCmax, D] (so an exported graph can keep it as a preallocated state and fill only new kernels).
inline void compress_range(const View& k, int64_t B, int64_t H, int64_t D, int64_t ks, int64_t st, int64_t from,
                           int64_t to, float* ck, int64_t nc_max) {
  const float inv = 1.0f / static_cast<float>(ks);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = from; i < to; ++i) {
        float* dst = ck + ((b * H + h) * nc_max + i) * D;
        std::fill(dst, dst + D, 0.0f);
        for (int64_t j = 0; j < ks; ++j) axpy(dst, k.row(b, h, i * st + j), 1.0f, D);
        for (int64_t e = 0; e < D; ++e) dst[e] *= inv;
      }
}

// Per-thread buffers, reused across work items.
struct Scratch {
  std::vector<float> logits, shared, scores, m, l, acc;
  std::vector<std::pair<float, int32_t>> free;
  std::vector<uint8_t> mark;
  std::vector<int32_t> blocks;
};

// Stage 1 for one query position `pos` of KV head (b, h): marks the chosen blocks in mark[0 .. qblk].
// sq: the G score-query rows of the group. ck: compressed keys, nc of them.
inline void select_blocks(const float* const* sq, int64_t G, int64_t D, const View& ck, int64_t b, int64_t h,
                          int64_t nc, int64_t pos, const Params& p, Scratch& s, uint8_t* mark) {
  const int64_t ks = p.kernel_size, st = p.kernel_stride, bs = p.block_size;
  const int64_t qblk = pos / bs;
  const int64_t win = p.window_size / bs;
  const int64_t budget = p.topk + win;
  std::fill(mark, mark + qblk + 1, uint8_t(0));
  // forced: init blocks and the local window (the query's own block and `win` before it)
  int64_t nforced = 0;
  const int64_t local_lo = std::max<int64_t>(0, qblk - win);
  for (int64_t j = 0; j <= qblk; ++j)
    if (j < p.init_blocks || j >= local_lo) {
      mark[j] = 1;
      ++nforced;
    }
  const int64_t extra = std::max<int64_t>(0, budget - nforced);
  const int64_t free_hi = std::min<int64_t>(local_lo, qblk + 1);  // free blocks: [init_blocks, local_lo)
  const int64_t free_lo = std::min<int64_t>(p.init_blocks, free_hi);
  const int64_t nfree = free_hi - free_lo;
  if (extra == 0 || nfree <= 0) return;
  if (nfree <= extra) {
    for (int64_t j = free_lo; j < free_hi; ++j) mark[j] = 1;
    return;
  }
  // kernels entirely in the past of the query
  const int64_t nvis = std::min<int64_t>(nc, pos >= ks - 1 ? (pos - ks + 1) / st + 1 : 0);
  s.shared.assign(static_cast<size_t>(std::max<int64_t>(nvis, 1)), 0.0f);
  if (nvis > 0) {
    s.logits.resize(static_cast<size_t>(G * nvis));
    const float inv_sqrt_d = 1.0f / std::sqrt(static_cast<float>(D));
    for (int64_t g = 0; g < G; ++g) {
      float* lg = s.logits.data() + g * nvis;
      int64_t i = 0;
      for (; i + 4 <= nvis; i += 4)
        dot4(sq[g], ck.row(b, h, i), ck.row(b, h, i + 1), ck.row(b, h, i + 2), ck.row(b, h, i + 3), D, lg + i);
      for (; i < nvis; ++i) lg[i] = dot(sq[g], ck.row(b, h, i), D);
      float mx = -std::numeric_limits<float>::infinity();
      for (int64_t j = 0; j < nvis; ++j) {
        lg[j] *= inv_sqrt_d;
        mx = std::max(mx, lg[j]);
      }
      float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
      for (int64_t j = 0; j < nvis; ++j) {
        lg[j] = exp_neg(lg[j] - mx);
        sum += lg[j];
      }
      const float inv = 1.0f / sum;
      float* sh = s.shared.data();
#pragma omp simd
      for (int64_t j = 0; j < nvis; ++j) sh[j] += lg[j] * inv;
    }
  }
  // pooled score of each free block: max over the kernels overlapping its tokens (0 if none visible)
  s.free.clear();
  for (int64_t j = free_lo; j < free_hi; ++j) {
    const int64_t lo = std::max<int64_t>(0, floor_div(j * bs - ks, st) + 1);
    const int64_t hi = std::min<int64_t>(nvis, ((j + 1) * bs + st - 1) / st);
    float best = 0.0f;
    for (int64_t i = lo; i < hi; ++i) best = std::max(best, s.shared[i]);
    s.free.emplace_back(best, static_cast<int32_t>(j));
  }
  auto better = [](const std::pair<float, int32_t>& a, const std::pair<float, int32_t>& c) {
    return a.first > c.first || (a.first == c.first && a.second < c.second);
  };
  std::nth_element(s.free.begin(), s.free.begin() + (extra - 1), s.free.end(), better);
  for (int64_t i = 0; i < extra; ++i) mark[s.free[i].second] = 1;
}

// Online-softmax attention of one row (query head) over keys [k0, k1) of KV head (b, h).
inline void attend_keys(const float* qrow, const View& k, const View& v, int64_t b, int64_t h, int64_t k0,
                        int64_t k1, int64_t D, float scale, float* sc, float& m, float& l, float* acc) {
  const int64_t n = k1 - k0;
  int64_t j = 0;
  for (; j + 4 <= n; j += 4)
    dot4(qrow, k.row(b, h, k0 + j), k.row(b, h, k0 + j + 1), k.row(b, h, k0 + j + 2), k.row(b, h, k0 + j + 3), D,
         sc + j);
  for (; j < n; ++j) sc[j] = dot(qrow, k.row(b, h, k0 + j), D);
  float mx = -std::numeric_limits<float>::infinity();
  for (j = 0; j < n; ++j) {
    sc[j] *= scale;
    mx = std::max(mx, sc[j]);
  }
  const float m_new = std::max(m, mx);
  if (m_new > m) {
    const float alpha = exp_neg(m - m_new);  // 0 on the first block (m = -inf clamps to exp(-87))
    if (m == -std::numeric_limits<float>::infinity()) {
      std::fill(acc, acc + D, 0.0f);
      l = 0.0f;
    } else {
      l *= alpha;
#pragma omp simd
      for (int64_t e = 0; e < D; ++e) acc[e] *= alpha;
    }
    m = m_new;
  }
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (j = 0; j < n; ++j) {
    sc[j] = exp_neg(sc[j] - m);
    sum += sc[j];
  }
  l += sum;
  for (j = 0; j + 4 <= n; j += 4)
    axpy4(acc, v.row(b, h, k0 + j), v.row(b, h, k0 + j + 1), v.row(b, h, k0 + j + 2), v.row(b, h, k0 + j + 3),
          sc + j, D);
  for (; j < n; ++j) axpy(acc, v.row(b, h, k0 + j), sc[j], D);
}

// Queries per tile: they share each key/value block of their union while it is cached. Decode: 1.
inline int64_t query_tile(int64_t T, int64_t G) { return T == 1 ? 1 : std::max<int64_t>(1, 64 / G); }

inline int64_t num_items(int64_t B, int64_t Hkv, int64_t T, int64_t G) {
  const int64_t qt = query_tile(T, G);
  return B * Hkv * ((T + qt - 1) / qt);
}

// Work items [begin, end) of the sparse attention: item = (batch, KV head, query tile).
// q, sq: [B, Hq, T, D]; k, v: [B, Hkv, S, D]; ck: [B, Hkv, >= nc, D]; out: contiguous [B, Hq, T, D].
// The T queries are the last T positions of the S keys.
inline void sparse_attention_items(int64_t begin, int64_t end, int64_t B, int64_t Hq, int64_t Hkv, int64_t T,
                                   int64_t S, int64_t D, int64_t nc, const View& q, const View& sq, const View& k,
                                   const View& v, const View& ck, float* out, const Params& p, float scale) {
  (void)B;
  const int64_t G = Hq / Hkv;
  const int64_t qt = query_tile(T, G);
  const int64_t ntile = (T + qt - 1) / qt;
  const int64_t bs = p.block_size;
  const int64_t nb = (S + bs - 1) / bs;
  Scratch s;
  s.mark.resize(static_cast<size_t>(qt * nb));
  s.scores.resize(static_cast<size_t>(bs));
  s.m.resize(static_cast<size_t>(qt * G));
  s.l.resize(static_cast<size_t>(qt * G));
  s.acc.resize(static_cast<size_t>(qt * G * D));
  std::vector<const float*> sq_rows(static_cast<size_t>(G));
  std::vector<uint8_t> in_union(static_cast<size_t>(nb));
  for (int64_t item = begin; item < end; ++item) {
    const int64_t tile = item % ntile;
    const int64_t h = (item / ntile) % Hkv;
    const int64_t b = item / (ntile * Hkv);
    const int64_t t0 = tile * qt;
    const int64_t nq = std::min<int64_t>(qt, T - t0);
    std::fill(in_union.begin(), in_union.end(), uint8_t(0));
    int64_t last_blk = 0;
    for (int64_t qi = 0; qi < nq; ++qi) {
      const int64_t pos = S - T + t0 + qi;
      for (int64_t g = 0; g < G; ++g) sq_rows[g] = sq.row(b, h * G + g, t0 + qi);
      uint8_t* mk = s.mark.data() + qi * nb;
      select_blocks(sq_rows.data(), G, D, ck, b, h, nc, pos, p, s, mk);
      const int64_t qblk = pos / bs;
      for (int64_t j = 0; j <= qblk; ++j) in_union[j] |= mk[j];
      last_blk = std::max(last_blk, qblk);
    }
    const int64_t R = nq * G;
    std::fill(s.m.begin(), s.m.begin() + R, -std::numeric_limits<float>::infinity());
    std::fill(s.l.begin(), s.l.begin() + R, 0.0f);
    for (int64_t j = 0; j <= last_blk; ++j) {
      if (!in_union[j]) continue;
      const int64_t k0 = j * bs;
      const int64_t k1 = std::min<int64_t>(k0 + bs, S);
      for (int64_t qi = 0; qi < nq; ++qi) {
        const int64_t pos = S - T + t0 + qi;
        if (j > pos / bs || !s.mark[qi * nb + j]) continue;
        const int64_t kend = std::min<int64_t>(k1, pos + 1);
        for (int64_t g = 0; g < G; ++g) {
          const int64_t r = qi * G + g;
          attend_keys(q.row(b, h * G + g, t0 + qi), k, v, b, h, k0, kend, D, scale, s.scores.data(), s.m[r],
                      s.l[r], s.acc.data() + r * D);
        }
      }
    }
    for (int64_t qi = 0; qi < nq; ++qi)
      for (int64_t g = 0; g < G; ++g) {
        const int64_t r = qi * G + g;
        const float inv = 1.0f / s.l[r];
        float* dst = out + (((b * Hq + h * G + g) * T) + t0 + qi) * D;
        const float* a = s.acc.data() + r * D;
        for (int64_t e = 0; e < D; ++e) dst[e] = a[e] * inv;
      }
  }
}

}  // namespace edgecpm_infllmv2
