// What the kernels of atedm_kernels._cpu share: the map's dtype codes and the task pool their threads run.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <thread>
#include <vector>

#include "../dtype_codes.h"

namespace atedm::cpu {

// dtype codes of a map: atedm::DType's (dtype_codes.h), as plain ints for switches and template arguments.
enum MapDtype : int {
  kFloat16 = dtype_code(DType::kFloat16),
  kBFloat16 = dtype_code(DType::kBFloat16),
  kFloat32 = dtype_code(DType::kFloat32),
};

inline bool is_map_dtype(int dtype) { return dtype == kFloat16 || dtype == kBFloat16 || dtype == kFloat32; }

inline int64_t map_element_bytes(int dtype) { return dtype == kFloat32 ? 4 : 2; }

inline int worker_count(int64_t tasks, int threads) {
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, tasks)));
}

// Run body(i, w) for tasks i in [0, count), taken in order by worker_count(count, threads) workers w (the calling
// thread is worker 0): plain std::threads on an atomic counter, no OpenMP runtime of our own next to torch's.
template <typename Body>
void parallel_tasks(int64_t count, int threads, const Body& body) {
  const int workers = worker_count(count, threads);
  std::atomic<int64_t> next{0};
  auto worker = [&](int w) {
    for (int64_t i = next.fetch_add(1); i < count; i = next.fetch_add(1)) body(i, w);
  };
  std::vector<std::thread> pool;
  pool.reserve(workers - 1);
  for (int w = 1; w < workers; ++w) pool.emplace_back(worker, w);
  worker(0);
  for (auto& t : pool) t.join();
}

}  // namespace atedm::cpu
