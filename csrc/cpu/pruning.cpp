// G-WPR and similarity sources on x86-64 CPUs (AVX2 + FMA + F16C), for float32, float16 and bfloat16 maps.
//
// gwpr: s_0 = 1/N, s_{t+1}[j] = (1 - d) sum_i A_b[i, j] s_t[i] + d / N, num_iters times per batch element. Each
// iteration streams the map once, kRowBlock rows at a time: for 8 columns j, the kRowBlock products s_t[i] A[i, j]
// are summed in float32 registers (rows converted to float32 8 lanes at a time), and that partial sum is added to
// s_{t+1}[j] in float64, so that the N-term sums keep float32's accuracy of the result (each partial is off by at
// most kRowBlock float32 roundings; the N / kRowBlock partials add no float32 error). 2 N^2 FLOPs and
// N^2 * sizeof(map) bytes per iteration; with the float64 work cut kRowBlock-fold the loop keeps up with memory, so
// a 16-bit map runs in about half the time of a float32 one.
//
// similarity_sources: src[b, m] = argmax_j A_b[keep_idx[b, j], prune_idx[b, m]], ties to the lowest j, NaN never
// wins (all NaN or -inf: j = 0). Kept rows are read in order j = 0, 1, ...; each is converted to float32 once, the
// pruned columns gathered 8 at a time and compared with the running maximum (strictly greater, so the first
// maximum stays). K (N - K) gathers per batch element; the rows touched are read once.
//
// Both run one batch element per task on up to `threads` threads (common.h's parallel_tasks).
#include "pruning.h"

#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <vector>

namespace atedm::cpu {
namespace {

// 8 map entries from `p` (element type by dtype code) as float32.
inline __m256 load8(const void* p, int64_t i, int dtype) {
  switch (dtype) {
    case kFloat16:
      return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(p) + i)));
    case kBFloat16: {
      const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(p) + i));
      return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(raw), 16));
    }
    default:
      return _mm256_loadu_ps(static_cast<const float*>(p) + i);
  }
}

inline float load1(const void* p, int64_t i, int dtype) {
  switch (dtype) {
    case kFloat16:
      return _cvtsh_ss(static_cast<const uint16_t*>(p)[i]);
    case kBFloat16: {
      const uint32_t bits = static_cast<uint32_t>(static_cast<const uint16_t*>(p)[i]) << 16;
      float f;
      std::memcpy(&f, &bits, sizeof f);
      return f;
    }
    default:
      return static_cast<const float*>(p)[i];
  }
}

// Rows of the map whose G-WPR products are summed in float32 before the float64 accumulator takes them.
constexpr int kRowBlock = 8;

void check_dtype(int dtype) {
  if (!is_map_dtype(dtype)) throw std::invalid_argument("dtype must be 0 (float16), 1 (bfloat16) or 2 (float32)");
}

// G-WPR of one batch element's map (element type kDtype, a template argument so that the row loads of the inner
// loop carry no dtype switch) into scores[0, n).
template <int kDtype>
void gwpr_one(const char* map_b, float* scores, int64_t n, int64_t num_iters, double damping) {
  const int64_t row_bytes = n * map_element_bytes(kDtype);
  const int64_t full = n / 8 * 8;
  std::vector<float> s(n, static_cast<float>(1.0 / static_cast<double>(n)));  // s_t
  std::vector<double> next(n);                                                  // s_{t+1}, accumulated
  for (int64_t t = 0; t < num_iters; ++t) {
    std::fill(next.begin(), next.end(), 0.0);
    int64_t i = 0;
    for (; i + kRowBlock <= n; i += kRowBlock) {
      const char* rows = map_b + i * row_bytes;
      __m256 c[kRowBlock];  // s_t of the block's rows, broadcast
      for (int r = 0; r < kRowBlock; ++r) c[r] = _mm256_set1_ps(s[i + r]);
      for (int64_t j = 0; j < full; j += 8) {
        __m256 partial = _mm256_mul_ps(c[0], load8(rows, j, kDtype));
        for (int r = 1; r < kRowBlock; ++r) {
          partial = _mm256_fmadd_ps(c[r], load8(rows + r * row_bytes, j, kDtype), partial);
        }
        double* acc = next.data() + j;
        _mm256_storeu_pd(acc, _mm256_add_pd(_mm256_loadu_pd(acc), _mm256_cvtps_pd(_mm256_castps256_ps128(partial))));
        _mm256_storeu_pd(acc + 4,
                         _mm256_add_pd(_mm256_loadu_pd(acc + 4), _mm256_cvtps_pd(_mm256_extractf128_ps(partial, 1))));
      }
      for (int64_t j = full; j < n; ++j) {
        float partial = 0.0f;
        for (int r = 0; r < kRowBlock; ++r) partial += s[i + r] * load1(rows + r * row_bytes, j, kDtype);
        next[j] += partial;
      }
    }
    for (; i < n; ++i) {  // the last n % kRowBlock rows, one at a time, in float64
      const char* row = map_b + i * row_bytes;
      for (int64_t j = 0; j < n; ++j) next[j] += static_cast<double>(s[i]) * load1(row, j, kDtype);
    }
    for (int64_t j = 0; j < n; ++j) {
      // the same rounding as the reference: the product in float32, then the damping
      float v = static_cast<float>(next[j]);
      if (damping != 0.0) {
        v = v * static_cast<float>(1.0 - damping) + static_cast<float>(damping / static_cast<double>(n));
      }
      s[j] = v;
    }
  }
  std::copy(s.begin(), s.end(), scores);
}

}  // namespace

void gwpr(const void* amap, int dtype, float* scores, int64_t batch, int64_t n, int64_t num_iters, double damping,
          int threads) {
  check_dtype(dtype);
  if (batch < 0 || n < 1 || num_iters < 0 || threads < 1) {
    throw std::invalid_argument("gwpr: need batch >= 0, n >= 1, num_iters >= 0, threads >= 1");
  }
  const auto one = dtype == kFloat16 ? gwpr_one<kFloat16> : dtype == kBFloat16 ? gwpr_one<kBFloat16> : gwpr_one<kFloat32>;
  parallel_tasks(batch, threads, [&](int64_t b, int) {
    one(static_cast<const char*>(amap) + b * n * n * map_element_bytes(dtype), scores + b * n, n, num_iters, damping);
  });
}

void similarity_sources(const void* amap, int dtype, const int64_t* keep_idx, const int64_t* prune_idx, int64_t* src,
                        int64_t batch, int64_t n, int64_t keep, int threads) {
  check_dtype(dtype);
  if (batch < 0 || n < 1 || keep < 1 || keep > n || threads < 1) {
    throw std::invalid_argument("similarity_sources: need batch >= 0, 1 <= keep <= n, threads >= 1");
  }
  const int64_t pruned = n - keep;
  const int64_t full = pruned / 8 * 8;
  // indices are checked here, before any worker starts (an exception may not leave a worker thread)
  const bool in_range = std::all_of(keep_idx, keep_idx + batch * keep, [n](int64_t i) { return i >= 0 && i < n; }) &&
                        std::all_of(prune_idx, prune_idx + batch * pruned, [n](int64_t i) { return i >= 0 && i < n; });
  if (!in_range) throw std::invalid_argument("similarity_sources: keep_idx and prune_idx must lie in [0, n)");
  parallel_tasks(batch, threads, [&](int64_t b, int) {
    const char* map_b = static_cast<const char*>(amap) + b * n * n * map_element_bytes(dtype);
    std::vector<int32_t> cols(prune_idx + b * pruned, prune_idx + (b + 1) * pruned);
    std::vector<float> row(n);  // the current kept row, as float32
    std::vector<float> best(pruned, -std::numeric_limits<float>::infinity());
    std::vector<int32_t> arg(pruned, 0);
    for (int64_t j = 0; j < keep; ++j) {
      const int64_t r = keep_idx[b * keep + j];
      const void* src_row = map_b + r * n * map_element_bytes(dtype);
      int64_t i = 0;
      for (; i + 8 <= n; i += 8) _mm256_storeu_ps(row.data() + i, load8(src_row, i, dtype));
      for (; i < n; ++i) row[i] = load1(src_row, i, dtype);
      const __m256i jv = _mm256_set1_epi32(static_cast<int32_t>(j));
      for (int64_t m = 0; m < full; m += 8) {
        const __m256i idx = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(cols.data() + m));
        const __m256 val = _mm256_i32gather_ps(row.data(), idx, 4);
        const __m256 cur = _mm256_loadu_ps(best.data() + m);
        const __m256 wins = _mm256_cmp_ps(val, cur, _CMP_GT_OQ);  // false for NaN: NaN never wins
        _mm256_storeu_ps(best.data() + m, _mm256_blendv_ps(cur, val, wins));
        const __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(arg.data() + m));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(arg.data() + m),
                            _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(a), _mm256_castsi256_ps(jv), wins)));
      }
      for (int64_t m = full; m < pruned; ++m) {
        const float val = row[cols[m]];
        if (val > best[m]) {
          best[m] = val;
          arg[m] = static_cast<int32_t>(j);
        }
      }
    }
    for (int64_t m = 0; m < pruned; ++m) src[b * pruned + m] = arg[m];
  });
}

}  // namespace atedm::cpu
