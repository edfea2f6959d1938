// Exact top-k token selection (atedm.select_tokens).
//
//   token i is kept  <=>  #{ j : s[j] > s[i]  or  (s[j] == s[i] and j < i) } < keep
//   keep_idx [B, K] and prune_idx [B, N-K] (int64) list the kept and the pruned tokens in ascending order.
//
// One block per batch row. Scores are mapped to order-preserving uint32 keys (see order_key). A most-significant-
// digit radix select, 8 bits per pass, finds T, the keep-th largest key, and R, how many of the keys equal to T are
// kept (the R lowest-indexed ones: the tie rule). A last pass walks the row in index order with a block-wide prefix
// scan of the flags (key > T, key == T) and writes every token to its slot: a token with g greater and e equal keys
// before it has min(e, R) + g kept tokens before it, so both lists come out ascending with no sort.
//
// Cost: 5 reads of the score row (4 radix passes + the scan pass; after the first they hit L1/L2) and one write of
// N int64 indices per batch row: B*N*(5*elt + 8) bytes, ~20 integer operations per token and pass. With one block per
// batch row the kernel takes a few microseconds at N = 4096: it is latency-bound, not bandwidth-bound.
//
// NaN: every NaN ranks above +inf and NaNs tie with each other (then the lower index wins), and -0.0 ties with +0.0,
// as in the reference's torch.sort(descending=True, stable=True).
#include "common.cuh"
#include "ops.h"

namespace atedm {
namespace {

constexpr int kSelectThreads = 1024;  // one block per batch row: the widest block keeps the five passes short
constexpr int kSelectWarps = kSelectThreads / kWarpSize;
constexpr int kRadixBits = 8;  // key bits resolved per radix pass (4 passes for 32-bit keys)
constexpr int kRadixBins = 1 << kRadixBits;
constexpr int kBinsPerLane = kRadixBins / kWarpSize;  // histogram bins each lane of warp 0 scans for the target bin
// The scan pass packs two per-chunk counts (greater, equal) into one uint32: 16 bits each, enough for a chunk of
// kSelectThreads tokens.
constexpr int kCountBits = 16;
constexpr uint32_t kCountMask = (1u << kCountBits) - 1;
static_assert(kSelectThreads <= static_cast<int>(kCountMask), "a chunk count must fit kCountBits");
// Largest N: token indices and chunk bases (index + kSelectThreads) stay inside int.
constexpr int64_t kMaxTokens = int64_t{1} << 30;
static_assert(kRadixBins % kWarpSize == 0, "warp 0 splits the bins evenly");

// Order-preserving key: key(a) < key(b) <=> a ranks below b. NaN (any sign or payload) -> 0xffffffff, above +inf
// (0xff800000); -0.0 -> the key of +0.0; negatives flip all bits, non-negatives set the sign bit.
__device__ __forceinline__ uint32_t order_key(float f) {
  if (isnan(f)) return 0xffffffffu;
  const uint32_t u = __float_as_uint(f == 0.f ? 0.f : f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// Exclusive prefix sum of v over the block's threads in threadIdx order; `total` gets the block's sum. Called by
// every thread of the block; `warp_totals` is shared scratch of kSelectWarps entries.
__device__ __forceinline__ uint32_t block_exclusive_sum(uint32_t v, uint32_t* warp_totals, uint32_t& total) {
  const int lane = threadIdx.x % kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
  const uint32_t inclusive = warp_inclusive_sum(v);
  __syncthreads();  // the previous call's reads of warp_totals are done
  if (lane == kWarpSize - 1) warp_totals[warp] = inclusive;
  __syncthreads();
  if (warp == 0) {
    const uint32_t t = warp_inclusive_sum(lane < kSelectWarps ? warp_totals[lane] : 0u);
    if (lane < kSelectWarps) warp_totals[lane] = t;
  }
  __syncthreads();
  total = warp_totals[kSelectWarps - 1];
  return (warp == 0 ? 0u : warp_totals[warp - 1]) + inclusive - v;
}

// Grid: (B); block: kSelectThreads. Shared memory: 1 KiB histogram + 128 B scan scratch (static).
template <typename T>
__global__ void __launch_bounds__(kSelectThreads)
    select_tokens_kernel(const T* __restrict__ scores,  // [B, N]
                         int64_t* __restrict__ keep_idx,   // [B, K]
                         int64_t* __restrict__ prune_idx,  // [B, N-K]
                         int n, int keep) {
  __shared__ uint32_t s_hist[kRadixBins];
  __shared__ uint32_t s_warp_totals[kSelectWarps];
  __shared__ uint32_t s_digit;  // the bin holding the keep-th largest key, this pass
  __shared__ uint32_t s_above;  // candidates in higher bins, this pass

  const int lane = threadIdx.x % kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
  const int64_t batch = blockIdx.x;
  const T* row = scores + batch * n;

  // Radix select. Candidates are the keys whose bits above `shift` equal `prefix`; the target is the
  // `remaining`-th largest candidate. Each pass histograms the next 8 bits of the candidates and keeps the bin
  // holding the target.
  uint32_t prefix = 0;
  uint32_t prefix_mask = 0;
  uint32_t remaining = static_cast<uint32_t>(keep);
  for (int shift = 32 - kRadixBits; shift >= 0; shift -= kRadixBits) {
    for (int i = threadIdx.x; i < kRadixBins; i += kSelectThreads) s_hist[i] = 0;
    __syncthreads();
    for (int base = 0; base < n; base += kSelectThreads) {  // whole warps iterate together (__match_any_sync)
      const int i = base + static_cast<int>(threadIdx.x);
      int digit = -1;  // -1: not a candidate
      if (i < n) {
        const uint32_t key = order_key(to_float(row[i]));
        if ((key & prefix_mask) == prefix) digit = static_cast<int>((key >> shift) & (kRadixBins - 1));
      }
      // One shared atomic per distinct digit in the warp: constant or few-valued scores do not serialise.
      const unsigned peers = __match_any_sync(kFullWarpMask, digit);
      if (digit >= 0 && lane == __ffs(peers) - 1) atomicAdd(&s_hist[digit], static_cast<uint32_t>(__popc(peers)));
    }
    __syncthreads();
    if (warp == 0) {
      // Lane l owns bins [8l, 8l + 8). `suffix`: candidates in this lane's bins and above; exactly one lane has
      // suffix - own < remaining <= suffix, and it walks its bins from the top to find the target's.
      uint32_t counts[kBinsPerLane];
      uint32_t own = 0;
#pragma unroll
      for (int k = 0; k < kBinsPerLane; ++k) {
        counts[k] = s_hist[lane * kBinsPerLane + k];
        own += counts[k];
      }
      uint32_t suffix = own;
#pragma unroll
      for (int offset = 1; offset < kWarpSize; offset *= 2) {
        const uint32_t other = __shfl_down_sync(kFullWarpMask, suffix, offset);
        if (lane + offset < kWarpSize) suffix += other;
      }
      uint32_t above = suffix - own;
      if (above < remaining && remaining <= suffix) {
        for (int k = kBinsPerLane - 1; k >= 0; --k) {
          if (above + counts[k] >= remaining) {
            s_digit = static_cast<uint32_t>(lane * kBinsPerLane + k);
            s_above = above;
            break;
          }
          above += counts[k];
        }
      }
    }
    __syncthreads();  // s_digit/s_above are rewritten only after two more barriers of the next pass
    prefix |= s_digit << shift;
    prefix_mask |= static_cast<uint32_t>(kRadixBins - 1) << shift;
    remaining -= s_above;
  }
  const uint32_t threshold = prefix;    // T: the keep-th largest key
  const uint32_t ties_kept = remaining;  // R: keys equal to T that are kept, lowest indices first

  // Scan pass, chunk by chunk in index order; greater/equal counts of earlier chunks carried in registers.
  int64_t* keep_row = keep_idx + batch * keep;
  int64_t* prune_row = prune_idx + batch * (n - keep);
  uint32_t greater_before = 0;
  uint32_t equal_before = 0;
  for (int base = 0; base < n; base += kSelectThreads) {
    const int i = base + static_cast<int>(threadIdx.x);
    bool greater = false;
    bool equal = false;
    if (i < n) {
      const uint32_t key = order_key(to_float(row[i]));
      greater = key > threshold;
      equal = key == threshold;
    }
    uint32_t chunk_total;
    const uint32_t before = block_exclusive_sum(
        static_cast<uint32_t>(greater) | (static_cast<uint32_t>(equal) << kCountBits), s_warp_totals, chunk_total);
    if (i < n) {
      const uint32_t g = greater_before + (before & kCountMask);
      const uint32_t e = equal_before + (before >> kCountBits);
      const uint32_t kept_before = g + (e < ties_kept ? e : ties_kept);
      if (greater || (equal && e < ties_kept)) {
        keep_row[kept_before] = i;
      } else {
        prune_row[i - kept_before] = i;
      }
    }
    greater_before += chunk_total & kCountMask;
    equal_before += chunk_total >> kCountBits;
  }
}

}  // namespace

void select_tokens(std::uintptr_t scores, std::uintptr_t keep_idx, std::uintptr_t prune_idx, int64_t batch,
                   int64_t n, int64_t keep, int dtype, std::uintptr_t stream) {
  constexpr const char* kName = "select_tokens";
  require(batch >= 0 && batch <= INT32_MAX, kName, "batch must be in 0..2^31-1, got " + std::to_string(batch));
  require(n >= 1 && n <= kMaxTokens, kName, "n must be in 1..2^30, got " + std::to_string(n));
  require(keep >= 1 && keep <= n, kName,
          "keep must be in 1..n=" + std::to_string(n) + ", got " + std::to_string(keep));
  const DType dt = as_dtype(dtype);
  require_ptr(scores, batch * n, kName, "scores");
  require_ptr(keep_idx, batch * keep, kName, "keep_idx");
  require_ptr(prune_idx, batch * (n - keep), kName, "prune_idx");
  if (batch == 0) return;

  dispatch_dtype(dt, [&](auto tag) {
    using T = typename decltype(tag)::type;
    launch_kernel("select_tokens_kernel", select_tokens_kernel<T>, static_cast<unsigned>(batch), kSelectThreads, 0,
                  as_stream(stream), as_ptr<const T>(scores), as_ptr<int64_t>(keep_idx), as_ptr<int64_t>(prune_idx),
                  static_cast<int>(n), static_cast<int>(keep));
  });
}

}  // namespace atedm
