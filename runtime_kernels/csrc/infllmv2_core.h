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
#include <type_traits>
#include <utility>
#include <vector>

namespace edgecpm_infllmv2 {

struct Params {
  int64_t kernel_size, kernel_stride, init_blocks, block_size, window_size, topk;
};

// A tensor [B, H, N, D] whose last dimension is contiguous; strides in elements. Elements are fp32, or bf16
// bit patterns (uint16_t) for keys/values.
template <class T>
struct ViewT {
  const T* data;
  int64_t sb, sh, sn;
  const T* row(int64_t b, int64_t h, int64_t n) const { return data + b * sb + h * sh + n * sn; }
};
using View = ViewT<float>;
using ViewBF16 = ViewT<uint16_t>;

// n rows of D bf16 values (row stride `stride`) to contiguous fp32 (vectorizes: widen and shift).
inline void bf16_rows_to_f32(const uint16_t* src, int64_t stride, int64_t n, int64_t D, float* __restrict dst) {
  for (int64_t j = 0; j < n; ++j) {
    const uint16_t* row = src + j * stride;
    uint32_t* out = reinterpret_cast<uint32_t*>(dst + j * D);
#pragma omp simd
    for (int64_t d = 0; d < D; ++d) out[d] = static_cast<uint32_t>(row[d]) << 16;
  }
}

inline int64_t num_kernels(int64_t len, int64_t ks, int64_t st) { return len < ks ? 0 : (len - ks) / st + 1; }

inline int64_t floor_div(int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }

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

// ---- rows-in-lanes micro-kernels ---------------------------------------------------------------------
// Attention rows (query heads x queries of a tile) sit in the lanes of a 16-float vector (GCC/Clang vector
// extension: one zmm on AVX-512, two ymm on AVX2, four q registers on NEON). Scores and probabilities are
// [keys][rows], the output accumulator is [D][rows]: every FMA is a key/value element broadcast times a
// vector of rows, so there is no horizontal reduction anywhere and D can be any size.
constexpr int L = 16;
typedef float vf __attribute__((vector_size(L * sizeof(float))));
typedef int32_t vi __attribute__((vector_size(L * sizeof(int32_t))));

inline vf vsplat(float x) { return vf{} + x; }

inline vf vmax(vf a, vf b) { return a > b ? a : b; }

// exp(x) for x <= 0 (what softmax needs), on a vector: 2^n * exp(f) with n = round(x / ln 2), |f| <= ln2 / 2
// (Cody-Waite reduction) and exp(f) by its degree-6 Taylor polynomial; relative error below 3e-7.
inline vf vexp_neg(vf x) {
  x = vmax(x, vsplat(-87.0f));
  const vf t = x * 1.44269504088896341f;
  const vf magic = vsplat(12582912.0f);  // 1.5 * 2^23: (t + magic) - magic rounds to nearest
  const vf n = (t + 0.0f + magic) - magic;
  const vf f = (x - n * 0.693359375f) + n * 2.12194440e-4f;
  vf p = vsplat(1.0f / 720.0f);
  p = p * f + 1.0f / 120.0f;
  p = p * f + 1.0f / 24.0f;
  p = p * f + 1.0f / 6.0f;
  p = p * f + 0.5f;
  p = p * f + 1.0f;
  p = p * f + 1.0f;
  const vi e = (__builtin_convertvector(n, vi) + 127) << 23;
  vf scale;
  std::memcpy(&scale, &e, sizeof(scale));
  return p * scale;
}

// st[j][v] = sum_d key_j[d] * qt[d][v] for KB keys (key j at base + j * stride), NV row vectors; qt and st hold
// `ld` vectors per d / per key (ld = NV, or more when a call takes one vector of a wider tile).
template <int NV, int KB>
inline void qk_tile(const vf* __restrict qt, int64_t ld, const float* base, int64_t stride, int64_t D,
                    vf* __restrict st) {
  vf acc[KB][NV];
  for (int j = 0; j < KB; ++j)
    for (int v = 0; v < NV; ++v) acc[j][v] = vf{};
  for (int64_t d = 0; d < D; ++d) {
    vf qv[NV];
    for (int v = 0; v < NV; ++v) qv[v] = qt[d * ld + v];
    for (int j = 0; j < KB; ++j) {
      const float kk = base[j * stride + d];
      for (int v = 0; v < NV; ++v) acc[j][v] += kk * qv[v];
    }
  }
  for (int j = 0; j < KB; ++j)
    for (int v = 0; v < NV; ++v) st[j * ld + v] = acc[j][v];
}

template <int NV>
inline void qk_rows(const vf* qt, int64_t ld, const float* base, int64_t stride, int64_t n, int64_t D, vf* st) {
  constexpr int KB = NV == 1 ? 8 : 4;
  int64_t j = 0;
  for (; j + KB <= n; j += KB) qk_tile<NV, KB>(qt, ld, base + j * stride, stride, D, st + j * ld);
  for (; j < n; ++j) qk_tile<NV, 1>(qt, ld, base + j * stride, stride, D, st + j * ld);
}

// ot[d][v] += sum_j value_j[d] * p[j][v] for d in [d0, d0 + DB).
template <int NV, int DB>
inline void pv_tile(vf* __restrict ot, const vf* __restrict p, int64_t ld, const float* base, int64_t stride,
                    int64_t n, int64_t d0) {
  vf acc[DB][NV];
  for (int i = 0; i < DB; ++i)
    for (int v = 0; v < NV; ++v) acc[i][v] = ot[(d0 + i) * ld + v];
  for (int64_t j = 0; j < n; ++j) {
    vf pv[NV];
    for (int v = 0; v < NV; ++v) pv[v] = p[j * ld + v];
    const float* row = base + j * stride + d0;
    for (int i = 0; i < DB; ++i) {
      const float x = row[i];
      for (int v = 0; v < NV; ++v) acc[i][v] += x * pv[v];
    }
  }
  for (int i = 0; i < DB; ++i)
    for (int v = 0; v < NV; ++v) ot[(d0 + i) * ld + v] = acc[i][v];
}

template <int NV>
inline void pv_rows(vf* ot, const vf* p, int64_t ld, const float* base, int64_t stride, int64_t n, int64_t D) {
  constexpr int DB = NV == 1 ? 8 : 4;
  int64_t d = 0;
  for (; d + DB <= D; d += DB) pv_tile<NV, DB>(ot, p, ld, base, stride, n, d);
  for (; d < D; ++d) pv_tile<NV, 1>(ot, p, ld, base, stride, n, d);
}

// Dispatch on the number of row vectors (1..4; more in chunks of 4 handled by the caller); `ld` vectors per d /
// per key in qt, st and ot (ld = nv, or more when the call takes some vectors of a wider tile).
inline void qk_any(int nv, const vf* qt, const float* base, int64_t stride, int64_t n, int64_t D, vf* st,
                   int64_t ld = 0) {
  if (ld == 0) ld = nv;
  if (ld != nv) {
    switch (nv) {
      case 1: qk_rows<1>(qt, ld, base, stride, n, D, st); break;
      case 2: qk_rows<2>(qt, ld, base, stride, n, D, st); break;
      case 3: qk_rows<3>(qt, ld, base, stride, n, D, st); break;
      default: qk_rows<4>(qt, ld, base, stride, n, D, st); break;
    }
    return;
  }
  switch (nv) {
    case 1: qk_rows<1>(qt, 1, base, stride, n, D, st); break;
    case 2: qk_rows<2>(qt, 2, base, stride, n, D, st); break;
    case 3: qk_rows<3>(qt, 3, base, stride, n, D, st); break;
    default: qk_rows<4>(qt, 4, base, stride, n, D, st); break;
  }
}

inline void pv_any(int nv, vf* ot, const vf* p, const float* base, int64_t stride, int64_t n, int64_t D,
                   int64_t ld = 0) {
  if (ld == 0) ld = nv;
  if (ld != nv) {
    switch (nv) {
      case 1: pv_rows<1>(ot, p, ld, base, stride, n, D); break;
      case 2: pv_rows<2>(ot, p, ld, base, stride, n, D); break;
      case 3: pv_rows<3>(ot, p, ld, base, stride, n, D); break;
      default: pv_rows<4>(ot, p, ld, base, stride, n, D); break;
    }
    return;
  }
  switch (nv) {
    case 1: pv_rows<1>(ot, p, 1, base, stride, n, D); break;
    case 2: pv_rows<2>(ot, p, 2, base, stride, n, D); break;
    case 3: pv_rows<3>(ot, p, 3, base, stride, n, D); break;
    default: pv_rows<4>(ot, p, 4, base, stride, n, D); break;
  }
}

// Per-thread buffers, reused across work items (vector buffers 64-byte aligned by their type).
struct Scratch {
  std::vector<float> shared;
  std::vector<vf> qt, st, ot, sqt;
  std::vector<float> kbuf, vbuf;  // one block of bf16 keys/values widened to fp32
  std::vector<std::pair<float, int32_t>> free;
  std::vector<uint8_t> mark;
};

// Stage 1, part 1, for one query position `pos`: marks the forced blocks (init blocks and the local window:
// the query's own block and `win` before it) in mark[0 .. qblk]; returns how many more blocks the score
// chooses from the free ones [free_lo, free_hi), or 0 when none (all free blocks fit, or none is left),
// having marked them already.
inline int64_t mark_forced(int64_t pos, const Params& p, uint8_t* mark, int64_t& free_lo, int64_t& free_hi) {
  const int64_t bs = p.block_size;
  const int64_t qblk = pos / bs;
  const int64_t win = p.window_size / bs;
  const int64_t budget = p.topk + win;
  std::fill(mark, mark + qblk + 1, uint8_t(0));
  int64_t nforced = 0;
  const int64_t local_lo = std::max<int64_t>(0, qblk - win);
  for (int64_t j = 0; j <= qblk; ++j)
    if (j < p.init_blocks || j >= local_lo) {
      mark[j] = 1;
      ++nforced;
    }
  const int64_t extra = std::max<int64_t>(0, budget - nforced);
  free_hi = std::min<int64_t>(local_lo, qblk + 1);
  free_lo = std::min<int64_t>(p.init_blocks, free_hi);
  const int64_t nfree = free_hi - free_lo;
  if (extra == 0 || nfree <= 0) return 0;
  if (nfree <= extra) {
    for (int64_t j = free_lo; j < free_hi; ++j) mark[j] = 1;
    return 0;
  }
  return extra;
}

// Stage 1 for the nq queries of a tile (positions pos0 .. pos0 + nq - 1) of KV head (b, h): marks each
// query's chosen blocks in mark[qi * nb ...]. The score rows of all queries that need scoring (G heads each)
// sit in the lanes together, so every compressed-key read serves them all and no lane is left empty when G
// is smaller than a vector. sq: score queries [B, Hq, T, D] at tile offset t0; ck: nc compressed keys.
inline void select_blocks_tile(const View& sq, int64_t b, int64_t h, int64_t G, int64_t D, int64_t t0,
                               const View& ck, int64_t nc, int64_t pos0, int64_t nq, const Params& p, Scratch& s,
                               uint8_t* mark, int64_t nb) {
  const int64_t ks = p.kernel_size, st = p.kernel_stride, bs = p.block_size;
  // queries that need scores, with their free range, budget and visible kernels (entirely in their past)
  int64_t need[8 * L], lo_of[8 * L], hi_of[8 * L], extra_of[8 * L], nvis_of[8 * L];  // nq <= query_tile <= 8L
  int64_t nneed = 0, nvis_max = 0;
  for (int64_t qi = 0; qi < nq; ++qi) {
    const int64_t pos = pos0 + qi;
    int64_t flo, fhi;
    const int64_t extra = mark_forced(pos, p, mark + qi * nb, flo, fhi);
    if (extra == 0) continue;
    need[nneed] = qi, lo_of[nneed] = flo, hi_of[nneed] = fhi, extra_of[nneed] = extra;
    nvis_of[nneed] = std::min<int64_t>(nc, pos >= ks - 1 ? (pos - ks + 1) / st + 1 : 0);
    nvis_max = std::max(nvis_max, nvis_of[nneed]);
    ++nneed;
  }
  if (nneed == 0) return;
  const int64_t w_sh = std::max<int64_t>(nvis_max, 1);
  s.shared.assign(static_cast<size_t>(nneed * w_sh), 0.0f);
  if (nvis_max > 0) {
    // logits [kernel][row], rows = (needing query, head) in lanes, in chunks of 4 vectors
    const float inv_sqrt_d = 1.0f / std::sqrt(static_cast<float>(D));
    const int64_t R = nneed * G;
    for (int64_t r0 = 0; r0 < R; r0 += 4 * L) {
      const int64_t rn = std::min<int64_t>(R - r0, 4 * L);
      const int nv = static_cast<int>((rn + L - 1) / L);
      s.sqt.assign(static_cast<size_t>(D * nv), vf{});
      int32_t lane_q[4 * L];  // index into need[] of each lane's query; -1: padding
      vi lane_nvis[4];
      for (int64_t r = 0; r < static_cast<int64_t>(nv) * L; ++r) {
        const int32_t n = r < rn ? static_cast<int32_t>((r0 + r) / G) : -1;
        lane_q[r] = n;
        lane_nvis[r / L][r % L] = n >= 0 ? static_cast<int32_t>(nvis_of[n]) : 0;
        if (n < 0) continue;
        const float* src = sq.row(b, h * G + (r0 + r) % G, t0 + need[n]);
        for (int64_t d = 0; d < D; ++d) s.sqt[d * nv + r / L][r % L] = src[d] * inv_sqrt_d;
      }
      s.st.resize(static_cast<size_t>(nvis_max * nv));
      qk_any(nv, s.sqt.data(), ck.row(b, h, 0), ck.sn, nvis_max, D, s.st.data());
      int64_t nvis_min = nvis_max;
      for (int64_t r = 0; r < rn; ++r) nvis_min = std::min(nvis_min, nvis_of[lane_q[r]]);
      const vf neg_inf = vsplat(-std::numeric_limits<float>::infinity());
      for (int v = 0; v < nv; ++v) {
        // kernels a lane's query cannot see yet (its neighbours' last one or two) weigh nothing for it
        for (int64_t i = nvis_min; i < nvis_max; ++i) {
          const vi iv = vi{} + static_cast<int32_t>(i);
          s.st[i * nv + v] = iv < lane_nvis[v] ? s.st[i * nv + v] : neg_inf;
        }
        vf mx = neg_inf;
        for (int64_t i = 0; i < nvis_max; ++i) mx = vmax(mx, s.st[i * nv + v]);
        mx = mx == neg_inf ? vf{} : mx;  // padding lanes (and a query with nothing visible)
        vf sum = vf{};
        for (int64_t i = 0; i < nvis_max; ++i) {
          const vf x = s.st[i * nv + v];
          const vf e = x == neg_inf ? vf{} : vexp_neg(x - mx);
          s.st[i * nv + v] = e;
          sum += e;
        }
        vf inv = sum > 0.0f ? 1.0f / sum : vf{};
        for (int lane = 0; lane < L; ++lane)
          if (lane_q[v * L + lane] < 0) inv[lane] = 0.0f;
        // sum over the heads of each query: lanes of one query are contiguous (G of them, or all L)
        for (int lane0 = 0; lane0 < L;) {
          const int32_t n = lane_q[v * L + lane0];
          int lane1 = lane0 + 1;
          while (lane1 < L && lane_q[v * L + lane1] == n) ++lane1;
          if (n >= 0) {
            float* sh = s.shared.data() + n * w_sh;
            for (int64_t i = 0; i < nvis_max; ++i) {
              const vf w = s.st[i * nv + v] * inv;
              float acc = 0.0f;
              for (int lane = lane0; lane < lane1; ++lane) acc += w[lane];
              sh[i] += acc;
            }
          }
          lane0 = lane1;
        }
      }
    }
  }
  for (int64_t n = 0; n < nneed; ++n) {
    // pooled score of each free block: max over the kernels overlapping its tokens (0 if none visible)
    const float* sh = s.shared.data() + n * w_sh;
    const int64_t nvis = nvis_of[n];
    s.free.clear();
    for (int64_t j = lo_of[n]; j < hi_of[n]; ++j) {
      const int64_t lo = std::max<int64_t>(0, floor_div(j * bs - ks, st) + 1);
      const int64_t hi = std::min<int64_t>(nvis, ((j + 1) * bs + st - 1) / st);
      float best = 0.0f;
      for (int64_t i = lo; i < hi; ++i) best = std::max(best, sh[i]);
      s.free.emplace_back(best, static_cast<int32_t>(j));
    }
    auto better = [](const std::pair<float, int32_t>& a, const std::pair<float, int32_t>& c) {
      return a.first > c.first || (a.first == c.first && a.second < c.second);
    };
    const int64_t extra = extra_of[n];
    std::nth_element(s.free.begin(), s.free.begin() + (extra - 1), s.free.end(), better);
    uint8_t* mk = mark + need[n] * nb;
    for (int64_t i = 0; i < extra; ++i) mk[s.free[i].second] = 1;
  }
}

// Row vectors one attention walk carries: every key/value block it reads serves them all while in L1 (the
// micro-kernels take them four at a time). Eight: a block is read from the last-level cache once per 8 x 16 rows.
constexpr int64_t WALK_VECTORS = 8;

// Queries per tile: their rows (G heads each) fill up to WALK_VECTORS vectors and share every key/value block
// of their union. Decode: 1.
inline int64_t query_tile(int64_t T, int64_t G) { return T == 1 ? 1 : std::max<int64_t>(1, WALK_VECTORS * L / G); }

inline int64_t num_items(int64_t B, int64_t Hkv, int64_t T, int64_t G) {
  const int64_t qt = query_tile(T, G);
  return B * Hkv * ((T + qt - 1) / qt);
}

// Attention of rows [r0, r0 + nv*L) of a tile over its union blocks (online softmax, rows in lanes).
template <class KT>
inline void attend_rows(int64_t b, int64_t h, int64_t G, int64_t t0, int64_t T, int64_t S, int64_t D, int64_t r0,
                        int64_t rn, const View& q, const ViewT<KT>& k, const ViewT<KT>& v, const Params& p, float scale,
                        const uint8_t* mark, int64_t nb, const uint8_t* in_union, int64_t last_blk, Scratch& s,
                        float* out, int64_t Hq) {
  const int64_t bs = p.block_size;
  const int nv = static_cast<int>((rn + L - 1) / L);
  const float neg_inf = -std::numeric_limits<float>::infinity();
  // Q^T (scaled) of these rows; padded lanes stay zero
  s.qt.assign(static_cast<size_t>(D * nv), vf{});
  for (int64_t r = 0; r < rn; ++r) {
    const int64_t qi = (r0 + r) / G, g = (r0 + r) % G;
    const float* src = q.row(b, h * G + g, t0 + qi);
    for (int64_t d = 0; d < D; ++d) s.qt[d * nv + r / L][r % L] = src[d] * scale;
  }
  s.ot.assign(static_cast<size_t>(D * nv), vf{});
  s.st.resize(static_cast<size_t>(bs * nv));
  vf m[WALK_VECTORS], l[WALK_VECTORS];
  for (int w = 0; w < nv; ++w) {
    m[w] = vsplat(neg_inf);
    l[w] = vf{};
  }
  // per lane: its query's position and index (padded lanes: position -1, never attend)
  int32_t lane_pos[WALK_VECTORS * L], lane_q[WALK_VECTORS * L];
  for (int64_t r = 0; r < static_cast<int64_t>(nv) * L; ++r) {
    lane_q[r] = r < rn ? static_cast<int32_t>((r0 + r) / G) : -1;
    lane_pos[r] = r < rn ? static_cast<int32_t>(S - T + t0 + lane_q[r]) : -1;
  }
  const int64_t qlo = r0 / G, qhi = (r0 + rn - 1) / G;  // queries of these rows
  const int64_t pos_hi = S - T + t0 + qhi;
  int64_t vq_lo[WALK_VECTORS], vq_hi[WALK_VECTORS];  // the queries whose rows lie in vector w
  for (int w = 0; w < nv; ++w) {
    vq_lo[w] = (r0 + w * L) / G;
    vq_hi[w] = (r0 + std::min<int64_t>((w + 1) * L, rn) - 1) / G;
  }
  const unsigned full = (1u << nv) - 1;
  for (int64_t j = 0; j <= last_blk; ++j) {
    if (!in_union[j]) continue;
    bool all = true;
    unsigned need = 0;  // bit w: some row of vector w attends block j (the others skip it: exact, p would be 0)
    for (int w = 0; w < nv; ++w)
      for (int64_t qi = vq_lo[w]; qi <= vq_hi[w]; ++qi) {
        const bool on = j <= (S - T + t0 + qi) / bs && mark[qi * nb + j];
        need |= unsigned(on) << w;
        all &= on;
      }
    if (!need) continue;
    const int64_t k0 = j * bs;
    const int64_t n = std::min<int64_t>(std::min<int64_t>(k0 + bs, S), pos_hi + 1) - k0;
    vf* st = s.st.data();
    const float* kb;
    const float* vb;
    int64_t kstride, vstride;
    if constexpr (std::is_same<KT, float>::value) {
      kb = k.row(b, h, k0), vb = v.row(b, h, k0), kstride = k.sn, vstride = v.sn;
    } else {  // bf16 cache: widen this block once; the micro-kernels then read it from L1
      s.kbuf.resize(static_cast<size_t>(bs * D));
      s.vbuf.resize(static_cast<size_t>(bs * D));
      bf16_rows_to_f32(k.row(b, h, k0), k.sn, n, D, s.kbuf.data());
      bf16_rows_to_f32(v.row(b, h, k0), v.sn, n, D, s.vbuf.data());
      kb = s.kbuf.data(), vb = s.vbuf.data(), kstride = D, vstride = D;
    }
    if (need == full) {
      for (int w0 = 0; w0 < nv; w0 += 4) qk_any(std::min(4, nv - w0), s.qt.data() + w0, kb, kstride, n, D, st + w0, nv);
    } else {
      for (int w = 0; w < nv; ++w)
        if (need >> w & 1) qk_rows<1>(s.qt.data() + w, nv, kb, kstride, n, D, st + w);
    }
    // mask: block not chosen by the lane's query, or key in its future
    const bool causal_free = all && k0 + n - 1 <= S - T + t0 + qlo;
    if (!causal_free)
      for (int w = 0; w < nv; ++w)
        for (int lane = 0; lane < L && (need >> w & 1); ++lane) {
          const int64_t r = w * L + lane;
          const int32_t qi = lane_q[r];
          const bool chosen = qi >= 0 && mark[qi * nb + j];
          const int64_t lim = chosen ? std::min<int64_t>(n, lane_pos[r] - k0 + 1) : 0;
          for (int64_t jj = std::max<int64_t>(lim, 0); jj < n; ++jj) st[jj * nv + w][lane] = neg_inf;
        }
    for (int w = 0; w < nv; ++w) {
      if (!(need >> w & 1)) continue;
      vf mx = vsplat(neg_inf);
      for (int64_t jj = 0; jj < n; ++jj) mx = vmax(mx, st[jj * nv + w]);
      const vf m_new = vmax(m[w], mx);
      const vf safe = m_new == neg_inf ? vf{} : m_new;  // rows with nothing yet: keep exp() finite
      const vf alpha = m[w] == neg_inf ? vf{} : vexp_neg(m[w] - safe);
      vf sum = vf{};
      for (int64_t jj = 0; jj < n; ++jj) {
        const vf x = st[jj * nv + w];
        const vf e = x == neg_inf ? vf{} : vexp_neg(x - safe);
        st[jj * nv + w] = e;
        sum += e;
      }
      l[w] = l[w] * alpha + sum;
      m[w] = m_new;
      for (int64_t d = 0; d < D; ++d) s.ot[d * nv + w] *= alpha;
    }
    if (need == full) {
      for (int w0 = 0; w0 < nv; w0 += 4) pv_any(std::min(4, nv - w0), s.ot.data() + w0, st + w0, vb, vstride, n, D, nv);
    } else {
      for (int w = 0; w < nv; ++w)
        if (need >> w & 1) pv_rows<1>(s.ot.data() + w, st + w, nv, vb, vstride, n, D);
    }
  }
  for (int64_t r = 0; r < rn; ++r) {
    const int64_t qi = (r0 + r) / G, g = (r0 + r) % G;
    const int w = static_cast<int>(r / L), lane = static_cast<int>(r % L);
    const float inv = 1.0f / l[w][lane];
    float* dst = out + (((b * Hq + h * G + g) * T) + t0 + qi) * D;
    for (int64_t d = 0; d < D; ++d) dst[d] = s.ot[d * nv + w][lane] * inv;
  }
}

// Work items [begin, end) of the sparse attention: item = (batch, KV head, query tile).
// q, sq: [B, Hq, T, D]; k, v: [B, Hkv, S, D]; ck: [B, Hkv, >= nc, D]; out: contiguous [B, Hq, T, D].
// The T queries are the last T positions of the S keys.
// KT: float, or uint16_t for bf16 keys/values (q, score_q, ck and out are fp32).
template <class KT>
inline void sparse_attention_items(int64_t begin, int64_t end, int64_t B, int64_t Hq, int64_t Hkv, int64_t T,
                                   int64_t S, int64_t D, int64_t nc, const View& q, const View& sq,
                                   const ViewT<KT>& k, const ViewT<KT>& v, const View& ck, float* out,
                                   const Params& p, float scale) {
  (void)B;
  const int64_t G = Hq / Hkv;
  const int64_t qt = query_tile(T, G);
  const int64_t ntile = (T + qt - 1) / qt;
  const int64_t bs = p.block_size;
  const int64_t nb = (S + bs - 1) / bs;
  Scratch s;
  s.mark.resize(static_cast<size_t>(qt * nb));
  std::vector<uint8_t> in_union(static_cast<size_t>(nb));
  for (int64_t item = begin; item < end; ++item) {
    const int64_t tile = item % ntile;
    const int64_t h = (item / ntile) % Hkv;
    const int64_t b = item / (ntile * Hkv);
    const int64_t t0 = tile * qt;
    const int64_t nq = std::min<int64_t>(qt, T - t0);
    std::fill(in_union.begin(), in_union.end(), uint8_t(0));
    int64_t last_blk = 0;
    select_blocks_tile(sq, b, h, G, D, t0, ck, nc, S - T + t0, nq, p, s, s.mark.data(), nb);
    for (int64_t qi = 0; qi < nq; ++qi) {
      const int64_t qblk = (S - T + t0 + qi) / bs;
      const uint8_t* mk = s.mark.data() + qi * nb;
      for (int64_t j = 0; j <= qblk; ++j) in_union[j] |= mk[j];
      last_blk = std::max(last_blk, qblk);
    }
    // One walk over the union of the tile's blocks; a vector skips every block none of its rows chose (exact:
    // their probabilities would be 0), so queries that disagree (random data) cost their own choices and
    // queries that agree (real text) share each block read.
    const int64_t R = nq * G;
    for (int64_t r0 = 0; r0 < R; r0 += WALK_VECTORS * L)
      attend_rows(b, h, G, t0, T, S, D, r0, std::min<int64_t>(R - r0, WALK_VECTORS * L), q, k, v, p, scale, s.mark.data(),
                  nb, in_union.data(), last_blk, s, out, Hq);
  }
}

}  // namespace edgecpm_infllmv2
