// C entry points of the CPU test build for ctypes (tests/cuda_host/extension.py): the launchers of csrc/ops.h with
// their exceptions turned into a status code and a message, so Python raises what atedm_kernels._C raises.
#include <cstdint>
#include <cstdio>
#include <stdexcept>

#include "ops.h"

namespace {

// 0: done; 1: std::invalid_argument (ValueError); 2: any other exception (RuntimeError). `message` gets what().
template <typename F>
int guarded(char* message, size_t message_bytes, F&& call) {
  try {
    call();
    return 0;
  } catch (const std::invalid_argument& e) {
    snprintf(message, message_bytes, "%s", e.what());
    return 1;
  } catch (const std::exception& e) {
    snprintf(message, message_bytes, "%s", e.what());
    return 2;
  }
}

}  // namespace

extern "C" {

int cuda_host_gwpr_workspace_floats(int64_t* floats, int64_t batch, int64_t n, int dtype, char* message,
                                    size_t message_bytes) {
  return guarded(message, message_bytes, [&] { *floats = atedm::gwpr_workspace_floats(batch, n, dtype); });
}

int cuda_host_gwpr(uintptr_t amap, uintptr_t scores, uintptr_t workspace, int64_t workspace_floats, int64_t batch,
                   int64_t n, int64_t num_iters, double damping, int dtype, uintptr_t stream, char* message,
                   size_t message_bytes) {
  return guarded(message, message_bytes, [&] {
    atedm::gwpr(amap, scores, workspace, workspace_floats, batch, n, num_iters, damping, dtype, stream);
  });
}

int cuda_host_select_tokens(uintptr_t scores, uintptr_t keep_idx, uintptr_t prune_idx, int64_t batch, int64_t n,
                            int64_t keep, int dtype, uintptr_t stream, char* message, size_t message_bytes) {
  return guarded(message, message_bytes,
                 [&] { atedm::select_tokens(scores, keep_idx, prune_idx, batch, n, keep, dtype, stream); });
}

int cuda_host_similarity_sources(uintptr_t amap, uintptr_t keep_idx, uintptr_t prune_idx, uintptr_t src,
                                 int64_t batch, int64_t n, int64_t keep, int dtype, uintptr_t stream, char* message,
                                 size_t message_bytes) {
  return guarded(message, message_bytes, [&] {
    atedm::similarity_sources(amap, keep_idx, prune_idx, src, batch, n, keep, dtype, stream);
  });
}

int cuda_host_gather_tokens(uintptr_t x, uintptr_t idx, uintptr_t out, int64_t batch, int64_t n, int64_t k,
                            int64_t channels, int dtype, uintptr_t stream, char* message, size_t message_bytes) {
  return guarded(message, message_bytes,
                 [&] { atedm::gather_tokens(x, idx, out, batch, n, k, channels, dtype, stream); });
}

int cuda_host_recover_tokens(uintptr_t x_kept, uintptr_t keep_idx, uintptr_t prune_idx, uintptr_t src, uintptr_t out,
                             int64_t batch, int64_t n, int64_t keep, int64_t channels, int dtype, uintptr_t stream,
                             char* message, size_t message_bytes) {
  return guarded(message, message_bytes, [&] {
    atedm::recover_tokens(x_kept, keep_idx, prune_idx, src, out, batch, n, keep, channels, dtype, stream);
  });
}

}  // extern "C"
