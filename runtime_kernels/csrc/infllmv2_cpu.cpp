// torch binding of the compiled InfLLM v2 CPU kernel (infllmv2_core.h):
//   edgecpm::infllmv2_sparse_cpu(q, k, v, ck, score_q, kernel_size, kernel_stride, init_blocks, block_size,
//                                window_size, topk, scale) -> Tensor
// Always sparse (the dense_len switch is the caller's); ck = compressed keys of score_k (the decode state).
// fp32 math; k and v are read in place when fp32 or both bf16, other dtypes are converted to fp32 first.
// Work is split over (batch, KV head, query tile) with at::parallel_for, so torch.set_num_threads applies.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "infllmv2_core.h"

namespace {

using edgecpm_infllmv2::View;

View view_of(const at::Tensor& t) {
  return View{t.data_ptr<float>(), t.stride(0), t.stride(1), t.stride(2)};
}

edgecpm_infllmv2::ViewBF16 bf16_view_of(const at::Tensor& t) {
  return edgecpm_infllmv2::ViewBF16{reinterpret_cast<const uint16_t*>(t.data_ptr<at::BFloat16>()), t.stride(0),
                                    t.stride(1), t.stride(2)};
}

// fp32 (or, with keep_bf16, bf16 kept as is) with a contiguous last dimension; other dtypes are converted.
at::Tensor rows_contiguous(const at::Tensor& t, const char* name, bool keep_bf16 = false) {
  TORCH_CHECK(t.dim() == 4, "infllmv2_sparse_cpu: ", name, " must be 4-D, got ", t.dim(), "-D");
  TORCH_CHECK(t.device().is_cpu(), "infllmv2_sparse_cpu: ", name, " must be on the CPU");
  const bool keep = t.scalar_type() == at::kFloat || (keep_bf16 && t.scalar_type() == at::kBFloat16);
  at::Tensor f = keep ? t : t.to(at::kFloat);
  return f.stride(3) == 1 ? f : f.contiguous();
}

at::Tensor infllmv2_sparse_cpu(const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
                               const at::Tensor& ck_in, const at::Tensor& sq_in, int64_t kernel_size,
                               int64_t kernel_stride, int64_t init_blocks, int64_t block_size, int64_t window_size,
                               int64_t topk, double scale) {
  // a bf16 cache is read as bf16 (half the bytes); anything else runs in fp32
  const bool bf16 = k_in.scalar_type() == at::kBFloat16 && v_in.scalar_type() == at::kBFloat16;
  const at::Tensor q = rows_contiguous(q_in, "q");
  const at::Tensor k = rows_contiguous(k_in, "k", bf16), v = rows_contiguous(v_in, "v", bf16);
  const at::Tensor ck = rows_contiguous(ck_in, "ck"), sq = rows_contiguous(sq_in, "score_q");
  const int64_t B = q.size(0), Hq = q.size(1), T = q.size(2), D = q.size(3);
  const int64_t Hkv = k.size(1), S = k.size(2);
  TORCH_CHECK(k.sizes() == v.sizes(), "infllmv2_sparse_cpu: k and v differ in shape");
  TORCH_CHECK(k.size(0) == B && k.size(3) == D && Hkv > 0 && Hq % Hkv == 0 && T <= S,
              "infllmv2_sparse_cpu: q ", q.sizes(), " does not fit k ", k.sizes());
  TORCH_CHECK(sq.sizes() == q.sizes(), "infllmv2_sparse_cpu: score_q must have q's shape");
  TORCH_CHECK(ck.size(0) == B && ck.size(1) == Hkv && ck.size(3) == D, "infllmv2_sparse_cpu: ck ", ck.sizes(),
              " does not fit k ", k.sizes());
  TORCH_CHECK(kernel_size > 0 && kernel_stride > 0 && block_size > 0 && window_size >= 0 && topk >= 0 &&
                  init_blocks >= 0,
              "infllmv2_sparse_cpu: invalid sparse settings");
  const int64_t nc = std::min<int64_t>(ck.size(2), edgecpm_infllmv2::num_kernels(S, kernel_size, kernel_stride));
  at::Tensor out = at::empty({B, Hq, T, D}, q.options());
  if (out.numel() == 0) return out;
  const edgecpm_infllmv2::Params p{kernel_size, kernel_stride, init_blocks, block_size, window_size, topk};
  const View qv = view_of(q), sqv = view_of(sq), ckv = view_of(ck);
  float* o = out.data_ptr<float>();
  const float sc = static_cast<float>(scale);
  const int64_t items = edgecpm_infllmv2::num_items(B, Hkv, T, Hq / Hkv);
  if (bf16) {
    const auto kv = bf16_view_of(k), vv = bf16_view_of(v);
    at::parallel_for(0, items, 1, [&](int64_t begin, int64_t end) {
      edgecpm_infllmv2::sparse_attention_items(begin, end, B, Hq, Hkv, T, S, D, nc, qv, sqv, kv, vv, ckv, o, p, sc);
    });
  } else {
    const View kv = view_of(k), vv = view_of(v);
    at::parallel_for(0, items, 1, [&](int64_t begin, int64_t end) {
      edgecpm_infllmv2::sparse_attention_items(begin, end, B, Hq, Hkv, T, S, D, nc, qv, sqv, kv, vv, ckv, o, p, sc);
    });
  }
  return out;
}

// The out variant: what ExecuTorch's to_executorch rewrites the op to (its runtime kernel has this schema).
at::Tensor& infllmv2_sparse_cpu_out(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                    const at::Tensor& ck, const at::Tensor& sq, int64_t kernel_size,
                                    int64_t kernel_stride, int64_t init_blocks, int64_t block_size,
                                    int64_t window_size, int64_t topk, double scale, at::Tensor& out) {
  const at::Tensor r = infllmv2_sparse_cpu(q, k, v, ck, sq, kernel_size, kernel_stride, init_blocks, block_size,
                                           window_size, topk, scale);
  out.resize_(r.sizes());
  out.copy_(r);
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(edgecpm, m) {
  m.def(
      "infllmv2_sparse_cpu(Tensor q, Tensor k, Tensor v, Tensor ck, Tensor score_q, int kernel_size, "
      "int kernel_stride, int init_blocks, int block_size, int window_size, int topk, float scale) -> Tensor");
  m.def(
      "infllmv2_sparse_cpu.out(Tensor q, Tensor k, Tensor v, Tensor ck, Tensor score_q, int kernel_size, "
      "int kernel_stride, int init_blocks, int block_size, int window_size, int topk, float scale, *, "
      "Tensor(a!) out) -> Tensor(a!)");
}

TORCH_LIBRARY_IMPL(edgecpm, CPU, m) {
  m.impl("infllmv2_sparse_cpu", &infllmv2_sparse_cpu);
  m.impl("infllmv2_sparse_cpu.out", &infllmv2_sparse_cpu_out);
}
