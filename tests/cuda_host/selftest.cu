// The emulator's own tests (tests/test_cuda_host.py runs `selftest <case>`): "semantics" checks the intrinsics and
// runtime calls against their CUDA definitions and prints "ok"; every other case misuses CUDA once and must be
// refused with one line on stderr and abort().
#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

constexpr unsigned kFull = 0xffffffffu;

void expect(bool ok, const char* what) {
  if (!ok) {
    fprintf(stderr, "selftest: %s\n", what);
    exit(1);
  }
}

// ---- semantics -------------------------------------------------------------------------------------------------

// out[t] for 40 threads (a full warp and a partial one of 8 lanes): each lane's results of the warp intrinsics.
struct WarpResults {
  int up, down, idx, xor_sum;
  unsigned ballot, match;
};

__global__ void warp_kernel(WarpResults* out) {
  const int t = threadIdx.x;
  const int lane = t % 32;
  const unsigned mask = t < 32 ? kFull : 0xffu;  // the second warp has lanes 0..7
  WarpResults r;
  r.up = __shfl_up_sync(mask, t, 3);
  r.down = __shfl_down_sync(mask, t, 2, 8);  // segments of 8 lanes
  r.idx = __shfl_sync(mask, t * 10, 5);
  int sum = t;
  for (int offset = 1; offset < (t < 32 ? 32 : 8); offset *= 2) sum += __shfl_xor_sync(mask, sum, offset);
  r.xor_sum = sum;
  r.ballot = __ballot_sync(mask, lane % 3 == 0);
  r.match = __match_any_sync(mask, lane % 4);
  __syncwarp(mask);
  out[t] = r;
}

// Threads 0..99 of 128 count into shared memory; threads 100..127 exit before the barrier, which then waits for the
// 100 live threads only.
__global__ void barrier_kernel(unsigned* out) {
  __shared__ unsigned count;
  extern __shared__ unsigned dynamic[];  // [blockDim.x]
  if (threadIdx.x == 0) count = 0;
  __syncthreads();
  if (threadIdx.x >= 100) return;
  atomicAdd(&count, 1u);
  dynamic[threadIdx.x] = threadIdx.x * 2;
  __syncthreads();
  out[blockIdx.x * 100 + threadIdx.x] = count + dynamic[99 - threadIdx.x];
}

// Reads shared memory before any thread of the block wrote it; the previous block's value must not show through.
__global__ void poison_kernel(unsigned* out) {
  __shared__ unsigned left_over;
  if (threadIdx.x == 0) {
    out[blockIdx.x] = left_over;
    left_over = 7;
  }
}

void semantics() {
  std::vector<WarpResults> w(40);
  cuda_host::launch("warp_kernel", warp_kernel, 1, 40, 0, nullptr, w.data());
  expect(cudaGetLastError() == cudaSuccess, "warp_kernel launch");
  for (int t = 0; t < 40; ++t) {
    const int lane = t % 32, base = t - lane, width = t < 32 ? 32 : 8;
    expect(w[t].up == (lane >= 3 ? t - 3 : t), "__shfl_up_sync");
    expect(w[t].down == (lane % 8 + 2 < 8 ? t + 2 : t), "__shfl_down_sync width 8");
    expect(w[t].idx == (base + 5) * 10, "__shfl_sync");
    const int lanes = width, first = base;
    expect(w[t].xor_sum == lanes * first + lanes * (lanes - 1) / 2, "__shfl_xor_sync butterfly sum");
    unsigned ballot = 0, match = 0;
    for (int l = 0; l < lanes; ++l) {
      if (l % 3 == 0) ballot |= 1u << l;
      if (l % 4 == lane % 4) match |= 1u << l;
    }
    expect(w[t].ballot == ballot, "__ballot_sync");
    expect(w[t].match == match, "__match_any_sync");
  }

  std::vector<unsigned> counts(3 * 100);
  cuda_host::launch("barrier_kernel", barrier_kernel, 3, 128, 128 * sizeof(unsigned), nullptr, counts.data());
  expect(cudaGetLastError() == cudaSuccess, "barrier_kernel launch");
  for (int i = 0; i < 300; ++i) expect(counts[i] == 100 + 2 * (99 - i % 100), "barrier over live threads");

  unsigned poisoned[2] = {0, 0};
  cuda_host::launch("poison_kernel", poison_kernel, 2, 32, 0, nullptr, poisoned);
  expect(poisoned[0] == 0xffffffffu && poisoned[1] == 0xffffffffu, "shared memory poisoned before every block");

  cuda_host::launch("warp_kernel", warp_kernel, 1, 1025, 0, nullptr, w.data());
  expect(cudaGetLastError() == cudaErrorInvalidConfiguration, "1025 threads per block is a configuration error");
  expect(cudaGetLastError() == cudaSuccess, "cudaGetLastError resets the error");
  cuda_host::launch("barrier_kernel", barrier_kernel, 1, 128, 48 * 1024 + 1, nullptr, counts.data());
  expect(cudaGetLastError() == cudaErrorInvalidValue, "dynamic shared memory over 48 KiB is refused");

  int l2 = 0;
  expect(cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, 0) == cudaSuccess && l2 == 50 << 20, "L2 size");
  unsigned char bytes[5] = {1, 2, 3, 4, 5};
  expect(cudaMemsetAsync(bytes + 1, 9, 3) == cudaSuccess && bytes[0] == 1 && bytes[1] == 9 && bytes[3] == 9 &&
             bytes[4] == 5,
         "cudaMemsetAsync");
  printf("ok\n");
}

// ---- misuse: each is refused --------------------------------------------------------------------------------------

__global__ void divergent_barrier() {
  if (threadIdx.x < 16) {
    __syncthreads();
  } else {
    __syncthreads();
  }
}

__global__ void barrier_never_reached(int* out) {
  if (threadIdx.x == 0) {
    __syncthreads();  // the other 31 lanes wait in the shuffle, which needs lane 0
  } else {
    out[threadIdx.x] = __shfl_sync(kFull, static_cast<int>(threadIdx.x), 0);
  }
}

__global__ void absent_lane(int* out) {
  if (threadIdx.x < 16) out[threadIdx.x] = __shfl_down_sync(0x0000ffffu, static_cast<int>(threadIdx.x), 1);
}

__global__ void exited_lane(int* out) {
  if (threadIdx.x >= 16) return;
  out[threadIdx.x] = __shfl_up_sync(kFull, static_cast<int>(threadIdx.x), 1);
}

__global__ void nonexistent_lane(int* out) { out[threadIdx.x] = __shfl_sync(kFull, static_cast<int>(threadIdx.x), 0); }

__global__ void foreign_mask(int* out) {
  out[threadIdx.x] = __shfl_sync(threadIdx.x == 3 ? 0x1u : kFull, static_cast<int>(threadIdx.x), 0);
}

__global__ void mixed_intrinsics(int* out) {
  const int v = static_cast<int>(threadIdx.x);
  out[threadIdx.x] = threadIdx.x % 2 ? __shfl_up_sync(kFull, v, 1) : __shfl_down_sync(kFull, v, 1);
}

__global__ void dynamic_overflow() {
  extern __shared__ float scratch[];  // 64 bytes: 16 floats
  scratch[threadIdx.x] = 1.f;         // 32 threads
}

void misuse(const std::string& name) {
  std::vector<int> out(64);
  if (name == "divergent_barrier") {
    cuda_host::launch("divergent_barrier", divergent_barrier, 1, 32, 0, nullptr);
  } else if (name == "barrier_never_reached") {
    cuda_host::launch("barrier_never_reached", barrier_never_reached, 1, 32, 0, nullptr, out.data());
  } else if (name == "absent_lane") {
    cuda_host::launch("absent_lane", absent_lane, 1, 32, 0, nullptr, out.data());
  } else if (name == "exited_lane") {
    cuda_host::launch("exited_lane", exited_lane, 1, 32, 0, nullptr, out.data());
  } else if (name == "nonexistent_lane") {
    cuda_host::launch("nonexistent_lane", nonexistent_lane, 1, 20, 0, nullptr, out.data());
  } else if (name == "foreign_mask") {
    cuda_host::launch("foreign_mask", foreign_mask, 1, 32, 0, nullptr, out.data());
  } else if (name == "mixed_intrinsics") {
    cuda_host::launch("mixed_intrinsics", mixed_intrinsics, 1, 32, 0, nullptr, out.data());
  } else if (name == "dynamic_overflow") {
    cuda_host::launch("dynamic_overflow", dynamic_overflow, 1, 32, 64, nullptr);
  } else {
    fprintf(stderr, "selftest: unknown case %s\n", name.c_str());
    exit(2);
  }
  printf("not refused\n");
}

}  // namespace

int main(int argc, char** argv) {
  const std::string name = argc > 1 ? argv[1] : "semantics";
  if (name == "semantics") {
    semantics();
  } else {
    misuse(name);
  }
  return 0;
}
