// Token gather and recovery scatter (atedm.gather_tokens, atedm.recover_tokens): copies of whole token rows.
//
//   gather:   out[b, j] = x[b, idx[b, j]]                       x [B, N, C], idx [B, K]      -> out [B, K, C]
//   recover:  out[b, keep_idx[b, j]]  = x_kept[b, j]            x_kept [B, K, C]             -> out [B, N, C]
//             out[b, prune_idx[b, m]] = x_kept[b, src[b, m]]    keep_idx [B, K], prune_idx and src [B, N-K]
//
// A row is C*elt contiguous bytes, so both kernels copy raw words (the dtype only sets elt). The word is the widest
// of 16/8/4/2/1 bytes dividing the row pitch and both base addresses: 16-byte vector loads and stores whenever
// C*elt is a multiple of 16 (C % 8 == 0 for fp16/bf16, C % 4 == 0 for fp32) and the tensors are 16-byte aligned,
// narrower words otherwise, any C. A group of G threads (G a power of two, the row's word count rounded up, at most
// 32) moves one row; a 256-thread block moves 256/G rows per step of a grid-stride loop. Each thread reads its row's
// index itself (one broadcast load per group), so no thread waits on another and there is no shared memory.
//
// Bytes: gather reads and writes B*K*C*elt each (2*B*K*C*elt) plus 8*B*K of indices; recover 2*B*N*C*elt plus
// 16*B*N of indices. Indices are the caller's contract (ops.py does not read them on the device): a row whose
// destination or source index is out of range is skipped, never read or written out of bounds, and its output row
// keeps whatever the buffer held. recover writes every row of out only when keep_idx and prune_idx together list
// each of the N tokens once.
#include <algorithm>
#include <initializer_list>

#include "common.cuh"
#include "ops.h"

namespace atedm {
namespace {

constexpr int kCopyThreads = 256;  // threads per block: 256 / G rows in flight per block
// Grid-stride cap on the block count: rows beyond 2^20 blocks' worth are taken by later loop steps.
constexpr int64_t kMaxCopyBlocks = int64_t{1} << 20;

// Words [lane, lane + group, ...) of one row (unrolled so several loads are in flight before the stores).
template <typename Word>
__device__ __forceinline__ void copy_row(Word* __restrict__ dst, const Word* __restrict__ src, int64_t words,
                                         int lane, int group) {
#pragma unroll 4
  for (int64_t w = lane; w < words; w += group) dst[w] = src[w];
}

// Grid: min(ceil(B*K / (256/G)), 2^20); block: kCopyThreads; G = 1 << group_shift threads per row.
template <typename Word>
__global__ void __launch_bounds__(kCopyThreads)
    gather_tokens_kernel(const Word* __restrict__ x,      // [B, N, words]
                         const int64_t* __restrict__ idx,  // [B, K]
                         Word* __restrict__ out,           // [B, K, words]
                         int64_t batch_rows, int64_t n, int64_t k, int64_t words, int group_shift) {
  const int group = 1 << group_shift;
  const int lane = threadIdx.x & (group - 1);
  const int64_t groups_per_block = kCopyThreads >> group_shift;
  const int64_t rows = batch_rows * k;
  for (int64_t r = blockIdx.x * groups_per_block + (threadIdx.x >> group_shift); r < rows;
       r += static_cast<int64_t>(gridDim.x) * groups_per_block) {
    const int64_t batch = r / k;
    const int64_t token = idx[r];
    if (token < 0 || token >= n) continue;
    copy_row(out + r * words, x + (batch * n + token) * words, words, lane, group);
  }
}

// Grid: min(ceil(B*N / (256/G)), 2^20); block: kCopyThreads. Output row task t of batch b: t < K copies kept row t to
// token keep_idx[b, t]; t >= K copies kept row src[b, t-K] to token prune_idx[b, t-K].
template <typename Word>
__global__ void __launch_bounds__(kCopyThreads)
    recover_tokens_kernel(const Word* __restrict__ x_kept,         // [B, K, words]
                          const int64_t* __restrict__ keep_idx,   // [B, K]
                          const int64_t* __restrict__ prune_idx,  // [B, N-K]
                          const int64_t* __restrict__ src,        // [B, N-K]
                          Word* __restrict__ out,                 // [B, N, words]
                          int64_t batch_rows, int64_t n, int64_t keep, int64_t words, int group_shift) {
  const int group = 1 << group_shift;
  const int lane = threadIdx.x & (group - 1);
  const int64_t groups_per_block = kCopyThreads >> group_shift;
  const int64_t rows = batch_rows * n;
  for (int64_t r = blockIdx.x * groups_per_block + (threadIdx.x >> group_shift); r < rows;
       r += static_cast<int64_t>(gridDim.x) * groups_per_block) {
    const int64_t batch = r / n;
    const int64_t t = r - batch * n;
    int64_t token;
    int64_t from;
    if (t < keep) {
      token = keep_idx[batch * keep + t];
      from = t;
    } else {
      const int64_t m = batch * (n - keep) + (t - keep);
      token = prune_idx[m];
      from = src[m];
    }
    if (token < 0 || token >= n || from < 0 || from >= keep) continue;
    copy_row(out + (batch * n + token) * words, x_kept + (batch * keep + from) * words, words, lane, group);
  }
}

// The copy word: the widest of 16/8/4/2/1 bytes dividing the row pitch and every base address.
int word_bytes(int64_t row_bytes, std::initializer_list<std::uintptr_t> ptrs) {
  for (int w : {16, 8, 4, 2}) {
    bool ok = row_bytes % w == 0;
    for (std::uintptr_t p : ptrs) ok = ok && p % w == 0;
    if (ok) return w;
  }
  return 1;
}

template <typename F>
void dispatch_word(int bytes, F&& f) {
  switch (bytes) {
    case 16:
      f(TypeTag<uint4>{});
      return;
    case 8:
      f(TypeTag<uint2>{});
      return;
    case 4:
      f(TypeTag<uint32_t>{});
      return;
    case 2:
      f(TypeTag<uint16_t>{});
      return;
    default:
      f(TypeTag<uint8_t>{});
      return;
  }
}

// log2 of the threads per row: the row's word count rounded up to a power of two, capped at a warp.
int group_shift_for(int64_t words) {
  int shift = 0;
  while (shift < 5 && (int64_t{1} << shift) < words) ++shift;
  return shift;
}

unsigned copy_blocks(int64_t rows, int shift) {
  return static_cast<unsigned>(std::min(ceil_div(rows, kCopyThreads >> shift), kMaxCopyBlocks));
}

}  // namespace

void gather_tokens(std::uintptr_t x, std::uintptr_t idx, std::uintptr_t out, int64_t batch, int64_t n, int64_t k,
                   int64_t channels, int dtype, std::uintptr_t stream) {
  constexpr const char* kName = "gather_tokens";
  require(batch >= 0 && n >= 0 && k >= 0 && channels >= 0, kName,
          "sizes must be >= 0, got batch=" + std::to_string(batch) + " n=" + std::to_string(n) +
              " k=" + std::to_string(k) + " channels=" + std::to_string(channels));
  const int64_t row_bytes = channels * dtype_size(as_dtype(dtype));
  const int64_t out_rows = batch * k;
  require_ptr(x, out_rows * channels, kName, "x");
  require_ptr(idx, channels > 0 ? out_rows : 0, kName, "idx");  // indices are only read to copy a row
  require_ptr(out, out_rows * channels, kName, "out");
  if (out_rows == 0 || channels == 0) return;

  const int word = word_bytes(row_bytes, {x, out});
  const int64_t words = row_bytes / word;
  const int shift = group_shift_for(words);
  dispatch_word(word, [&](auto tag) {
    using Word = typename decltype(tag)::type;
    launch_kernel("gather_tokens_kernel", gather_tokens_kernel<Word>, copy_blocks(out_rows, shift), kCopyThreads, 0,
                  as_stream(stream), as_ptr<const Word>(x), as_ptr<const int64_t>(idx), as_ptr<Word>(out), batch, n,
                  k, words, shift);
  });
}

void recover_tokens(std::uintptr_t x_kept, std::uintptr_t keep_idx, std::uintptr_t prune_idx, std::uintptr_t src,
                    std::uintptr_t out, int64_t batch, int64_t n, int64_t keep, int64_t channels, int dtype,
                    std::uintptr_t stream) {
  constexpr const char* kName = "recover_tokens";
  require(batch >= 0 && channels >= 0, kName,
          "sizes must be >= 0, got batch=" + std::to_string(batch) + " channels=" + std::to_string(channels));
  require(n >= 1, kName, "n must be >= 1, got " + std::to_string(n));
  require(keep >= 1 && keep <= n, kName,
          "keep must be in 1..n=" + std::to_string(n) + ", got " + std::to_string(keep));
  const int64_t row_bytes = channels * dtype_size(as_dtype(dtype));
  const int64_t pruned = n - keep;
  const int64_t copies = channels > 0 ? batch : 0;  // indices are only read to copy a row
  require_ptr(x_kept, batch * keep * channels, kName, "x_kept");
  require_ptr(keep_idx, copies * keep, kName, "keep_idx");
  require_ptr(prune_idx, copies * pruned, kName, "prune_idx");
  require_ptr(src, copies * pruned, kName, "src");
  require_ptr(out, batch * n * channels, kName, "out");
  if (batch == 0 || channels == 0) return;

  const int word = word_bytes(row_bytes, {x_kept, out});
  const int64_t words = row_bytes / word;
  const int shift = group_shift_for(words);
  dispatch_word(word, [&](auto tag) {
    using Word = typename decltype(tag)::type;
    launch_kernel("recover_tokens_kernel", recover_tokens_kernel<Word>, copy_blocks(batch * n, shift), kCopyThreads,
                  0, as_stream(stream), as_ptr<const Word>(x_kept), as_ptr<const int64_t>(keep_idx),
                  as_ptr<const int64_t>(prune_idx), as_ptr<const int64_t>(src), as_ptr<Word>(out), batch, n, keep,
                  words, shift);
  });
}

}  // namespace atedm
