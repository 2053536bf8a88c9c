// ExecuTorch kernels of edgecpm::infllmv2_sparse_cpu.out and edgecpm::infllmv2_sparse_cache.out (the same
// infllmv2_core.h as the torch op).
//
// infllmv2_sparse_cache reads an exported program's state in place: the seq-major KV cache and compressed-key
// buffers [B, rows, Hkv, D] (rows >= the visible length) and queries [B, T, Hq, D] (the layout of
// llama::custom_sdpa's inputs), with the visible length start_pos + T, so the program copies no cache slice.
// Output [B, Hq, T, D] as infllmv2_sparse_cpu's.
//
// Built against the headers and libexecutorch.so of the executorch wheel (include/, lib/); loading the
// library (dlopen, RTLD_GLOBAL) runs the static registration below into the runtime's operator registry, so
// a program whose graph holds the op runs it. Work is split over (batch, KV head, query tile) with
// ExecuTorch's parallel_for (its thread pool).
#include <executorch/extension/kernel_util/make_boxed_from_unboxed_functor.h>
#include <executorch/runtime/core/exec_aten/util/tensor_util.h>
#include <executorch/runtime/kernel/kernel_includes.h>
#include <executorch/runtime/kernel/thread_parallel_interface.h>

#include "infllmv2_core.h"

namespace {

using executorch::aten::ScalarType;
using executorch::aten::Tensor;
using executorch::runtime::KernelRuntimeContext;
using edgecpm_infllmv2::View;

bool fits(const Tensor& t) {
  return t.dim() == 4 && t.scalar_type() == ScalarType::Float && t.strides()[3] == 1;
}

View view_of(const Tensor& t) {
  return View{t.const_data_ptr<float>(), static_cast<int64_t>(t.strides()[0]), static_cast<int64_t>(t.strides()[1]),
              static_cast<int64_t>(t.strides()[2])};
}

Tensor& infllmv2_sparse_out(KernelRuntimeContext& ctx, const Tensor& q, const Tensor& k, const Tensor& v,
                            const Tensor& ck, const Tensor& sq, int64_t kernel_size, int64_t kernel_stride,
                            int64_t init_blocks, int64_t block_size, int64_t window_size, int64_t topk, double scale,
                            Tensor& out) {
  ET_KERNEL_CHECK_MSG(ctx, fits(q) && fits(k) && fits(v) && fits(ck) && fits(sq), InvalidArgument, out,
                      "infllmv2_sparse_cpu: 4-D float32 tensors with a contiguous last dimension expected");
  const int64_t B = q.size(0), Hq = q.size(1), T = q.size(2), D = q.size(3);
  const int64_t Hkv = k.size(1), S = k.size(2);
  ET_KERNEL_CHECK_MSG(ctx,
                      k.size(0) == B && k.size(3) == D && Hkv > 0 && Hq % Hkv == 0 && T <= S && v.size(0) == B &&
                          v.size(1) == Hkv && v.size(2) == S && v.size(3) == D && ck.size(1) == Hkv &&
                          ck.size(3) == D && sq.size(2) == T,
                      InvalidArgument, out, "infllmv2_sparse_cpu: q, k, v, ck, score_q shapes do not fit");
  ET_KERNEL_CHECK_MSG(ctx, kernel_size > 0 && kernel_stride > 0 && block_size > 0 && topk >= 0, InvalidArgument,
                      out, "infllmv2_sparse_cpu: invalid sparse settings");
  ET_KERNEL_CHECK(ctx, executorch::runtime::resize_tensor(out, q.sizes()) == executorch::runtime::Error::Ok,
                  InvalidArgument, out);
  ET_KERNEL_CHECK_MSG(ctx, out.scalar_type() == ScalarType::Float, InvalidArgument, out,
                      "infllmv2_sparse_cpu: out must be float32");
  const int64_t nc = std::min<int64_t>(ck.size(2), edgecpm_infllmv2::num_kernels(S, kernel_size, kernel_stride));
  const edgecpm_infllmv2::Params p{kernel_size, kernel_stride, init_blocks, block_size, window_size, topk};
  const View qv = view_of(q), sqv = view_of(sq), kv = view_of(k), vv = view_of(v), ckv = view_of(ck);
  float* o = out.mutable_data_ptr<float>();
  const float sc = static_cast<float>(scale);
  const int64_t items = edgecpm_infllmv2::num_items(B, Hkv, T, Hq / Hkv);
  executorch::extension::parallel_for(0, items, 1, [&](int64_t begin, int64_t end) {
    edgecpm_infllmv2::sparse_attention_items<float>(begin, end, B, Hq, Hkv, T, S, D, nc, qv, sqv, kv, vv, ckv, o, p,
                                                    sc);
  });
  return out;
}

// [B, N, H, D] tensor (seq-major) as the core's (b, h, n) view.
View seq_major_view(const Tensor& t) {
  return View{t.const_data_ptr<float>(), static_cast<int64_t>(t.strides()[0]), static_cast<int64_t>(t.strides()[2]),
              static_cast<int64_t>(t.strides()[1])};
}

Tensor& infllmv2_sparse_cache_out(KernelRuntimeContext& ctx, const Tensor& q, const Tensor& k_cache,
                                  const Tensor& v_cache, const Tensor& ck_cache, int64_t start_pos,
                                  int64_t kernel_size, int64_t kernel_stride, int64_t init_blocks, int64_t block_size,
                                  int64_t window_size, int64_t topk, double scale, Tensor& out) {
  ET_KERNEL_CHECK_MSG(ctx, fits(q) && fits(k_cache) && fits(v_cache) && fits(ck_cache), InvalidArgument, out,
                      "infllmv2_sparse_cache: 4-D float32 tensors with a contiguous last dimension expected");
  const int64_t B = q.size(0), T = q.size(1), Hq = q.size(2), D = q.size(3);
  const int64_t Hkv = k_cache.size(2), S = start_pos + T;
  ET_KERNEL_CHECK_MSG(ctx,
                      start_pos >= 0 && k_cache.size(0) == B && k_cache.size(3) == D && Hkv > 0 && Hq % Hkv == 0 &&
                          S <= k_cache.size(1) && v_cache.size(0) == B && v_cache.size(2) == Hkv &&
                          S <= v_cache.size(1) && v_cache.size(3) == D && ck_cache.size(0) == B &&
                          ck_cache.size(2) == Hkv && ck_cache.size(3) == D,
                      InvalidArgument, out, "infllmv2_sparse_cache: q, caches and start_pos do not fit");
  ET_KERNEL_CHECK_MSG(ctx, kernel_size > 0 && kernel_stride > 0 && block_size > 0 && topk >= 0, InvalidArgument,
                      out, "infllmv2_sparse_cache: invalid sparse settings");
  const executorch::aten::SizesType sizes[4] = {static_cast<executorch::aten::SizesType>(B),
                                                static_cast<executorch::aten::SizesType>(Hq),
                                                static_cast<executorch::aten::SizesType>(T),
                                                static_cast<executorch::aten::SizesType>(D)};
  ET_KERNEL_CHECK(ctx, executorch::runtime::resize_tensor(out, {sizes, 4}) == executorch::runtime::Error::Ok,
                  InvalidArgument, out);
  ET_KERNEL_CHECK_MSG(ctx, out.scalar_type() == ScalarType::Float, InvalidArgument, out,
                      "infllmv2_sparse_cache: out must be float32");
  // kernels lying entirely inside the visible keys (later rows of ck_cache are partial or stale)
  const int64_t nc =
      std::min<int64_t>(ck_cache.size(1), edgecpm_infllmv2::num_kernels(S, kernel_size, kernel_stride));
  const edgecpm_infllmv2::Params p{kernel_size, kernel_stride, init_blocks, block_size, window_size, topk};
  const View qv = seq_major_view(q), kv = seq_major_view(k_cache), vv = seq_major_view(v_cache),
             ckv = seq_major_view(ck_cache);
  float* o = out.mutable_data_ptr<float>();
  const float sc = static_cast<float>(scale);
  const int64_t items = edgecpm_infllmv2::num_items(B, Hkv, T, Hq / Hkv);
  executorch::extension::parallel_for(0, items, 1, [&](int64_t begin, int64_t end) {
    edgecpm_infllmv2::sparse_attention_items<float>(begin, end, B, Hq, Hkv, T, S, D, nc, qv, qv, kv, vv, ckv, o, p,
                                                    sc);
  });
  return out;
}

}  // namespace

EXECUTORCH_LIBRARY(edgecpm, "infllmv2_sparse_cpu.out", infllmv2_sparse_out);
EXECUTORCH_LIBRARY(edgecpm, "infllmv2_sparse_cache.out", infllmv2_sparse_cache_out);
