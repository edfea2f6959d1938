// Attention with the head-averaged map on x86-64 CPUs (AVX2 + FMA + F16C): one pass over the logits, L2-resident tiles.
//
//   P[b, h, i, :] = softmax_j(scale * q[b, h, i] . k[b, h, j])          exact row softmax over all M keys
//   out[b, h, i]  = P[b, h, i, :] @ v[b, h]                             [D]
//   amap[b, i, :] = (1 / H) * sum_h P[b, h, i, :]                       summed in float32, written once (f32/f16/bf16)
//
// Work is split into tasks of (batch element, block of R query rows); a task loops over the heads, so the map rows
// [R, M] it owns are accumulated in cache and written to memory once (see kTaskFloats for R). Per head:
//   1. S = (scale * Q) K^T with a 3x32 register-tiled micro-kernel over K^T packed in 32-key panels [D, 32];
//   2. each row of S: max, e = exp(s - max) (a vectorised Cephes-style polynomial) in place, sum, and e / sum added
//      to the map rows;
//   3. O = (e V) / sum with a 3x32 micro-kernel over V padded to Dp columns, in blocks of kKeyBlock keys (the V block
//      stays in L2 while every row group and column chunk passes over it).
// FLOPs: 4 B H N M D (the two products, exactly those of plain attention) plus B H N M exps; bytes from DRAM: q, k,
// v and out once each, and the map written once (4 B N M). K^T and V are packed once per call (one pass each).
//
// Threads: common.h's parallel_tasks, plain std::threads taking tasks from an atomic counter.
// Each thread has its own scratch (Q tile, S rows, O tile), so tasks never share writable memory.
#include "attention_with_map.h"

#include "common.h"

#include <immintrin.h>
#include <sys/mman.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <vector>

namespace atedm::cpu {
namespace {

// Micro-tiles of both products: 3 rows x 32 columns, 3 x 4 ymm accumulators = 12 of AVX2's 16 registers, plus the 4
// vectors of the shared operand row; per step 4 loads and 3 broadcasts feed 12 FMAs. (6 x 16 tiles, 2 loads and 6
// broadcasts per 12 FMAs, ran 10-15% slower at 4096 keys.)
constexpr int kTileRows = 3;
constexpr int kTileCols = 32;       // also the K^T panel width and the padding of M and D
constexpr int64_t kKeyBlock = 256;  // keys per P @ V block: a [256, Dp] slice of V (64 KiB at Dp = 64) stays in L2
// R * Mp of a task. Measured at M = 4096 on a 2-core AMD EPYC (1 MiB L2, 32 MiB L3): R = 60 (1 MiB of logits and
// 1 MiB of map rows, L3-resident) ran 1.5x faster than R = 12 (both in L2), because each task streams the head's
// packed K^T and V (2 MiB) once: fewer, taller tasks read them fewer times.
constexpr int64_t kTaskFloats = 262144;
constexpr int64_t kMaxTaskRows = 96;

int64_t round_up(int64_t x, int64_t to) { return (x + to - 1) / to * to; }

struct AlignedFree {
  void operator()(float* p) const { std::free(p); }
};
using Buffer = std::unique_ptr<float[], AlignedFree>;

Buffer alloc_floats(int64_t n) {
  const size_t bytes = static_cast<size_t>(round_up(std::max<int64_t>(n, 1) * 4, 64));
  auto* p = static_cast<float*>(std::aligned_alloc(64, bytes));
  if (p == nullptr) throw std::bad_alloc();
  return Buffer(p);
}

// Buffers kept between calls: a fresh 40 MiB of packed K and V per SD-XL layer cost ~10 ms of page faults each call.
// One call at a time uses them (a concurrent call allocates its own); they only grow, and live until exit.
class Workspace {
 public:
  float* get(size_t slot, int64_t floats) {
    if (slot >= buffers_.size()) {
      buffers_.resize(slot + 1);
      sizes_.resize(slot + 1, 0);
    }
    if (sizes_[slot] < floats) {
      buffers_[slot] = alloc_floats(floats);
      sizes_[slot] = floats;
    }
    return buffers_[slot].get();
  }

 private:
  std::vector<Buffer> buffers_;
  std::vector<int64_t> sizes_;
};

std::mutex shared_workspace_mutex;
Workspace shared_workspace;

// Ask Linux for transparent huge pages on the 2 MiB-aligned interior of a region about to be written for the first
// time (a hint: without THP, or with it off, nothing changes). torch.empty hands the map over untouched; faulting in
// SD-XL's 134 MB float32 map in 4 KiB pages took 35-50 ms per 4096-token layer, against 6 ms in 2 MiB pages.
void advise_huge_pages(void* data, int64_t bytes) {
#ifdef MADV_HUGEPAGE
  constexpr uintptr_t kHuge = uintptr_t{1} << 21;
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(data) + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(data) + static_cast<uintptr_t>(bytes)) & ~(kHuge - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#else
  (void)data;
  (void)bytes;
#endif
}

// 8 float32 lanes stored as the map's dtype (round to nearest even; NaN stays NaN).
inline void store8(void* dst, int64_t j, __m256 v, int dtype) {
  if (dtype == kFloat32) {
    _mm256_storeu_ps(static_cast<float*>(dst) + j, v);
    return;
  }
  __m128i half;
  if (dtype == kFloat16) {
    half = _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  } else {
    const __m256i bits = _mm256_castps_si256(v);
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
    __m256i rounded = _mm256_add_epi32(bits, _mm256_add_epi32(_mm256_set1_epi32(0x7FFF), lsb));
    const __m256 is_nan = _mm256_cmp_ps(v, v, _CMP_UNORD_Q);
    rounded = _mm256_castps_si256(
        _mm256_blendv_ps(_mm256_castsi256_ps(rounded), _mm256_castsi256_ps(_mm256_or_si256(bits, _mm256_set1_epi32(0x400000))), is_nan));
    const __m256i high = _mm256_srli_epi32(rounded, 16);  // [8 x u32], values < 2^16
    half = _mm_packus_epi32(_mm256_castsi256_si128(high), _mm256_extracti128_si256(high, 1));
  }
  _mm_storeu_si128(reinterpret_cast<__m128i*>(static_cast<uint16_t*>(dst) + j), half);
}

inline void store1(void* dst, int64_t j, float v, int dtype) {
  if (dtype == kFloat32) {
    static_cast<float*>(dst)[j] = v;
    return;
  }
  alignas(32) uint16_t lanes[8];
  store8(lanes, 0, _mm256_set1_ps(v), dtype);
  static_cast<uint16_t*>(dst)[j] = lanes[0];
}

// exp(x) for x <= 0 (a logit minus its row maximum), relative error ~2 ulp; NaN stays NaN. Below -87.3 the result
// is clamped to exp(-87.3) ~ 1e-38, which changes no probability at float32 precision.
inline __m256 exp_nonpositive(__m256 x) {
  x = _mm256_max_ps(_mm256_set1_ps(-87.3f), x);  // max_ps returns its second operand for NaN: NaN passes through
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  // r = x - n ln2, with ln2 split in two so that n * ln2_hi is exact
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  // e^r on |r| <= ln2 / 2: 1 + r + r^2 * p(r), p of degree 5 (Cephes expf's minimax coefficients)
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  // times 2^n, built in the exponent field (n >= -126 after the clamp)
  const __m256i pow2n = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(pow2n));
}

float horizontal_max(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_movehdup_ps(m));
  return _mm_cvtss_f32(m);
}

double horizontal_sum(__m256d v) {
  __m128d s = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
  s = _mm_add_sd(s, _mm_unpackhi_pd(s, s));
  return _mm_cvtsd_f64(s);
}

// The micro-kernel of both products: c[r, 0:32] (+)= sum_{t < len} a[r, t] * b[t, 0:32] for r < ROWS, a rows at stride
// `a_stride`, b rows at `b_stride`, c rows at `c_stride`; `accumulate` adds to c, otherwise c is overwritten.
// Logits: a = scaled q rows, b = a K^T panel, t over D. Values: a = e rows, b = V rows, t over a key block.
template <int ROWS>
inline void tile_product(const float* a, int64_t a_stride, const float* b, int64_t b_stride, int64_t len, float* c,
                         int64_t c_stride, bool accumulate) {
  __m256 acc[ROWS][4];
  for (int r = 0; r < ROWS; ++r)
    for (int col = 0; col < 4; ++col)
      acc[r][col] = accumulate ? _mm256_load_ps(c + r * c_stride + 8 * col) : _mm256_setzero_ps();
  for (int64_t t = 0; t < len; ++t) {
    __m256 bt[4];
    for (int col = 0; col < 4; ++col) bt[col] = _mm256_load_ps(b + t * b_stride + 8 * col);
    for (int r = 0; r < ROWS; ++r) {
      const __m256 at = _mm256_broadcast_ss(a + r * a_stride + t);
      for (int col = 0; col < 4; ++col) acc[r][col] = _mm256_fmadd_ps(at, bt[col], acc[r][col]);
    }
  }
  for (int r = 0; r < ROWS; ++r)
    for (int col = 0; col < 4; ++col) _mm256_store_ps(c + r * c_stride + 8 * col, acc[r][col]);
}

// tile_product for a runtime row count 1..kTileRows.
inline void tile_product_rows(int rows, const float* a, int64_t a_stride, const float* b, int64_t b_stride,
                              int64_t len, float* c, int64_t c_stride, bool accumulate) {
  static_assert(kTileRows == 3, "tile_product_rows instantiates rows 1..3");
  switch (rows) {
    case 3: tile_product<3>(a, a_stride, b, b_stride, len, c, c_stride, accumulate); break;
    case 2: tile_product<2>(a, a_stride, b, b_stride, len, c, c_stride, accumulate); break;
    default: tile_product<1>(a, a_stride, b, b_stride, len, c, c_stride, accumulate); break;
  }
}

// One logits row s[0:m]: s[j] <- e_j = exp(s[j] - max) in place (entries m..m_pad-1 become 0, so that P @ V may run
// over whole panels), and the head sum of p_j = e_j / sum(e) in float32 `acc`: acc = p (first head), acc += p
// (middle heads); at the last head (acc + p) * inv_heads goes to `map_row` in the map's dtype instead. Returns
// 1 / sum(e), the factor that turns e @ V into P @ V.
float softmax_row(float* s, int64_t m, int64_t m_pad, float* acc, void* map_row, int map_dtype, bool first, bool last,
                  float inv_heads) {
  const int64_t full = m / 8 * 8;
  const int tail = static_cast<int>(m - full);
  alignas(32) int32_t lane[8];
  for (int i = 0; i < 8; ++i) lane[i] = i < tail ? -1 : 0;
  const __m256 tail_mask = _mm256_castsi256_ps(_mm256_load_si256(reinterpret_cast<const __m256i*>(lane)));
  const __m256 neg_inf = _mm256_set1_ps(-std::numeric_limits<float>::infinity());

  __m256 vmax = neg_inf;
  for (int64_t j = 0; j < full; j += 8) vmax = _mm256_max_ps(_mm256_load_ps(s + j), vmax);
  if (tail) vmax = _mm256_max_ps(_mm256_blendv_ps(neg_inf, _mm256_load_ps(s + full), tail_mask), vmax);
  const __m256 row_max = _mm256_set1_ps(horizontal_max(vmax));

  // the sum in float64: float32 lanes summing M / 8 terms each lost up to 3x the reference's accuracy at M = 4096
  __m256d vsum = _mm256_setzero_pd();
  auto add = [&vsum](__m256 e) {
    vsum = _mm256_add_pd(vsum, _mm256_cvtps_pd(_mm256_castps256_ps128(e)));
    vsum = _mm256_add_pd(vsum, _mm256_cvtps_pd(_mm256_extractf128_ps(e, 1)));
  };
  for (int64_t j = 0; j < full; j += 8) {
    const __m256 e = exp_nonpositive(_mm256_sub_ps(_mm256_load_ps(s + j), row_max));
    _mm256_store_ps(s + j, e);
    add(e);
  }
  int64_t zero_from = full;
  if (tail) {
    const __m256 e = _mm256_and_ps(exp_nonpositive(_mm256_sub_ps(_mm256_load_ps(s + full), row_max)), tail_mask);
    _mm256_store_ps(s + full, e);
    add(e);
    zero_from += 8;
  }
  std::fill(s + zero_from, s + m_pad, 0.0f);
  const float inv_sum = static_cast<float>(1.0 / horizontal_sum(vsum));
  const __m256 vinv = _mm256_set1_ps(inv_sum);
  const __m256 vinv_heads = _mm256_set1_ps(inv_heads);
  for (int64_t j = 0; j < full; j += 8) {
    const __m256 p = _mm256_mul_ps(_mm256_load_ps(s + j), vinv);
    const __m256 sum = first ? p : _mm256_add_ps(_mm256_load_ps(acc + j), p);
    if (last) {
      store8(map_row, j, _mm256_mul_ps(sum, vinv_heads), map_dtype);
    } else {
      _mm256_store_ps(acc + j, sum);
    }
  }
  for (int64_t j = full; j < m; ++j) {
    const float sum = first ? s[j] * inv_sum : acc[j] + s[j] * inv_sum;
    if (last) {
      store1(map_row, j, sum * inv_heads, map_dtype);
    } else {
      acc[j] = sum;
    }
  }
  return inv_sum;
}

}  // namespace

bool supported() {
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
}

int64_t task_rows(int64_t n_keys) {
  const int64_t rows = kTaskFloats / round_up(n_keys, kTileCols) / kTileRows * kTileRows;
  return std::clamp<int64_t>(rows, kTileRows, kMaxTaskRows);
}

void attention_with_map_f32(const float* q, Strides qs, const float* k, Strides ks, const float* v, Strides vs,
                            float* out, Strides os, void* amap, int map_dtype, int64_t batch, int64_t heads,
                            int64_t n_q, int64_t n_k, int64_t d, float scale, int threads) {
  if (batch < 0 || heads < 1 || n_q < 0 || n_k < 1 || d < 1 || threads < 1) {
    throw std::invalid_argument("attention_with_map_f32: sizes must be positive (heads, n_k, d, threads >= 1)");
  }
  if (!is_map_dtype(map_dtype)) {
    throw std::invalid_argument("attention_with_map_f32: map_dtype must be 0 (float16), 1 (bfloat16) or 2 (float32)");
  }
  std::unique_lock<std::mutex> lock(shared_workspace_mutex, std::try_to_lock);
  Workspace own;
  Workspace& ws = lock.owns_lock() ? shared_workspace : own;
  if (batch == 0 || n_q == 0) return;
  const int64_t m_pad = round_up(n_k, kTileCols);  // keys, padded to whole panels
  const int64_t d_pad = round_up(d, kTileCols);    // value columns, padded to whole column chunks
  const int64_t bh = batch * heads;

  // Pack once per call: K^T as panels [Mp / 32][D][32] and V as [Mp, Dp], both zero-padded.
  float* const keys_t = ws.get(0, bh * m_pad * d);
  float* const values = ws.get(1, bh * m_pad * d_pad);
  parallel_tasks(bh, threads, [&](int64_t i, int) {
    const int64_t b = i / heads, h = i % heads;
    const float* kbh = k + b * ks.batch + h * ks.head;
    const float* vbh = v + b * vs.batch + h * vs.head;
    float* kt = keys_t + i * m_pad * d;
    float* vp = values + i * m_pad * d_pad;
    for (int64_t panel = 0; panel < m_pad / kTileCols; ++panel) {
      float* dst = kt + panel * d * kTileCols;  // [D, 32]
      for (int64_t c = 0; c < kTileCols; ++c) {
        const int64_t j = panel * kTileCols + c;
        for (int64_t e = 0; e < d; ++e) dst[e * kTileCols + c] = j < n_k ? kbh[j * ks.row + e] : 0.0f;
      }
    }
    for (int64_t j = 0; j < m_pad; ++j) {
      float* dst = vp + j * d_pad;
      if (j < n_k) {
        std::memcpy(dst, vbh + j * vs.row, d * sizeof(float));
        std::fill(dst + d, dst + d_pad, 0.0f);
      } else {
        std::fill(dst, dst + d_pad, 0.0f);
      }
    }
  });

  const int64_t rows_per_task = task_rows(n_k);
  const int64_t blocks = (n_q + rows_per_task - 1) / rows_per_task;
  const float inv_heads = 1.0f / static_cast<float>(heads);
  const int workers = worker_count(batch * blocks, threads);
  std::vector<float*> q_tiles, s_rows, acc_rows, o_tiles;  // scratch of each worker
  for (int w = 0; w < workers; ++w) {
    q_tiles.push_back(ws.get(2 + 4 * w, rows_per_task * d));
    s_rows.push_back(ws.get(3 + 4 * w, rows_per_task * m_pad));
    acc_rows.push_back(ws.get(4 + 4 * w, rows_per_task * m_pad));
    o_tiles.push_back(ws.get(5 + 4 * w, rows_per_task * d_pad));
  }
  const int64_t map_bytes = map_element_bytes(map_dtype);
  advise_huge_pages(amap, batch * n_q * n_k * map_bytes);
  parallel_tasks(batch * blocks, threads, [&](int64_t task, int w) {
    float* qt = q_tiles[w];     // [R, D], scaled queries
    float* s = s_rows[w];       // [R, Mp], logits, then e = exp(logit - row max)
    float* acc = acc_rows[w];   // [R, Mp], the head sum of the probabilities so far
    float* o = o_tiles[w];      // [R, Dp], output rows
    float inv_sums[kMaxTaskRows];  // 1 / sum(e) of each row
    const int64_t b = task / blocks;
    const int64_t row0 = (task % blocks) * rows_per_task;
    const int64_t rows = std::min(rows_per_task, n_q - row0);
    for (int64_t h = 0; h < heads; ++h) {
      const float* kt = keys_t + (b * heads + h) * m_pad * d;
      const float* vp = values + (b * heads + h) * m_pad * d_pad;
      for (int64_t r = 0; r < rows; ++r) {
        const float* src = q + b * qs.batch + h * qs.head + (row0 + r) * qs.row;
        for (int64_t e = 0; e < d; ++e) qt[r * d + e] = src[e] * scale;
      }
      // 1. logits: every 32-key panel (8 KiB at D = 64) stays in L1 while all row groups pass over it
      for (int64_t panel = 0; panel < m_pad / kTileCols; ++panel) {
        for (int64_t r = 0; r < rows; r += kTileRows) {
          tile_product_rows(static_cast<int>(std::min<int64_t>(kTileRows, rows - r)), qt + r * d, d,
                            kt + panel * d * kTileCols, kTileCols, d, s + r * m_pad + panel * kTileCols, m_pad,
                            /*accumulate=*/false);
        }
      }
      // 2. softmax (e = exp(s - max), left unnormalised) and the head sum of the probabilities, row by row
      for (int64_t r = 0; r < rows; ++r) {
        void* map_row = static_cast<char*>(amap) + (b * n_q + row0 + r) * n_k * map_bytes;
        inv_sums[r] = softmax_row(s + r * m_pad, n_k, m_pad, acc + r * m_pad, map_row, map_dtype, h == 0,
                                  h == heads - 1, inv_heads);
      }
      // 3. out = (e V) / sum(e), V in blocks of kKeyBlock keys
      std::fill(o, o + rows * d_pad, 0.0f);
      for (int64_t key0 = 0; key0 < m_pad; key0 += kKeyBlock) {
        const int64_t len = std::min(kKeyBlock, m_pad - key0);
        for (int64_t col = 0; col < d_pad; col += kTileCols) {
          for (int64_t r = 0; r < rows; r += kTileRows) {
            tile_product_rows(static_cast<int>(std::min<int64_t>(kTileRows, rows - r)), s + r * m_pad + key0,
                              m_pad, vp + key0 * d_pad + col, d_pad, len, o + r * d_pad + col, d_pad,
                              /*accumulate=*/true);
          }
        }
      }
      for (int64_t r = 0; r < rows; ++r) {
        float* dst = out + b * os.batch + h * os.head + (row0 + r) * os.row;
        for (int64_t e = 0; e < d; ++e) dst[e] = o[r * d_pad + e] * inv_sums[r];
      }
    }
  });
}

}  // namespace atedm::cpu
