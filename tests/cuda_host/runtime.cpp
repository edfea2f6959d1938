// The scheduler and runtime of the CPU test build (cuda_host.h): blocks one after another, a block's threads as
// glibc ucontext fibers that switch only at __syncthreads() and warp exchanges, shared memory poisoned before every
// block, misuse refused with one line on stderr and abort().
//
// Sanitizer builds (tests/cuda_host/build.py) define CUDA_HOST_ASAN or CUDA_HOST_TSAN: every fiber switch is
// announced to the sanitizer (__sanitizer_start/finish_switch_fiber, __tsan_switch_to_fiber without implied
// synchronisation), __syncthreads() and __syncwarp() are release/acquire points for ThreadSanitizer, and so are a
// block's end and the next one's start (blocks run in order, and the launcher poisons shared memory between them),
// so a missing barrier between two threads of a block is reported as a race.
// Under ThreadSanitizer this file itself is compiled uninstrumented: its bookkeeping is not kernel memory.
#include <link.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <vector>

#include "cuda_host.h"

#if defined(CUDA_HOST_ASAN)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif
#if defined(CUDA_HOST_TSAN)
#include <sanitizer/tsan_interface.h>
#endif

// The kernels' `extern __shared__` arrays are aliases of this buffer (defined by the generated TU, see build.py).
extern "C" __thread unsigned char cuda_host_dynamic_shared[];

namespace cuda_host {
namespace detail {

const ThreadIndex* current_index = nullptr;

namespace {

constexpr int kWarpSize = 32;
constexpr unsigned kMaxThreads = 1024;
constexpr unsigned char kSharedPoison = 0xff;  // NaN as a float, 0xffffffff as an integer: never a plausible value
constexpr unsigned char kCanary = 0xa5;        // fills the dynamic buffer past the launch's size
// Fiber stacks: kernels use little stack, sanitizer frames several times more. AddressSanitizer clears a target
// stack's shadow on every swapcontext, with system calls once the shadow exceeds 64 KiB (a 512 KiB stack): 256 KiB
// keeps the switch a memset.
#if defined(CUDA_HOST_ASAN) || defined(CUDA_HOST_TSAN)
constexpr size_t kStackBytes = size_t{256} << 10;
#else
constexpr size_t kStackBytes = size_t{128} << 10;
#endif

// The device the runtime calls describe: an H100-like GPU (compute capability 9.0, 50 MiB of L2).
constexpr int kL2Bytes = 50 << 20;
constexpr int kMultiProcessors = 132;

enum class State { kReady, kRunning, kBarrier, kWarp, kExited };

struct Fiber {
  ucontext_t context;
  void* stack = nullptr;  // lowest address and size: what the sanitizers are told when switching to this fiber
  size_t stack_bytes = 0;
  void* fake_stack = nullptr;  // AddressSanitizer's fake stack of this fiber while it is switched out
  void* tsan = nullptr;        // ThreadSanitizer's fiber
};

struct Thread {
  Fiber fiber;
  ThreadIndex index;
  int linear = 0;  // x + y*Bx + z*Bx*By: warp linear/32, lane linear%32
  State state = State::kReady;
};

struct Warp {
  unsigned present = 0;  // lanes that exist (the last warp of a block may be partial)
  unsigned exited = 0;
  bool pending = false;  // an exchange some named lanes have reached
  WarpOp op = WarpOp::kSyncWarp;
  unsigned mask = 0;
  unsigned arrived = 0;
  int width = kWarpSize;
  Site site{nullptr, 0};  // of the first lane to arrive
  uint64_t in[kWarpSize] = {};
  int arg[kWarpSize] = {};
  uint64_t out[kWarpSize] = {};
};

// The TLS block of this module holds exactly the kernels' __shared__ variables and the dynamic buffer.
struct SharedMemory {
  unsigned char* block = nullptr;
  size_t bytes = 0;
};

struct Launch {
  const char* kernel;
  dim3 grid;
  void (*body)(void*);
  void* closure;
  unsigned threads;
  std::unique_ptr<Thread[]> thread;
  std::vector<Warp> warps;
  // Threads ready to run, a ring of `threads` slots allocated before any fiber runs: the scheduler allocates no
  // memory while fibers run (ThreadSanitizer would see the allocator's bookkeeping race between fibers).
  std::vector<int> ready;
  size_t ready_head = 0;
  size_t ready_count = 0;
  bool shuffle = false;
  std::mt19937_64 rng;
  unsigned live = 0;
  unsigned at_barrier = 0;
  Site barrier_site{nullptr, 0};
  unsigned barrier_generation = 0;
  char barrier_sync[2] = {};  // ThreadSanitizer sync objects of alternate barrier generations
  char warp_sync = 0;         // ... of __syncwarp()
  char exit_sync = 0;         // ... of the threads' exits, acquired by the launcher after every block
  char start_sync = 0;        // ... of the launcher's poisoning, acquired by the threads when a block starts
  Fiber main;
  Thread* running = nullptr;
  Fiber* switch_from = nullptr;
};

std::mutex launch_mutex;  // one launch at a time: the scheduler state below is global
Launch* launch = nullptr;
std::vector<void*> stacks;  // reused across launches; each has a PROT_NONE guard page below it
cudaError_t last_error = cudaSuccess;

const char* op_name(WarpOp op) {
  switch (op) {
    case WarpOp::kShflIdx:
      return "__shfl_sync";
    case WarpOp::kShflUp:
      return "__shfl_up_sync";
    case WarpOp::kShflDown:
      return "__shfl_down_sync";
    case WarpOp::kShflXor:
      return "__shfl_xor_sync";
    case WarpOp::kMatchAny:
      return "__match_any_sync";
    case WarpOp::kBallot:
      return "__ballot_sync";
    case WarpOp::kSyncWarp:
      return "__syncwarp";
  }
  return "?";
}

std::string format(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
std::string format(const char* fmt, ...) {
  char buffer[512];
  va_list args;
  va_start(args, fmt);
  vsnprintf(buffer, sizeof buffer, fmt, args);
  va_end(args);
  return buffer;
}

std::string where(Site site) { return format("%s:%d", site.file, site.line); }

// Prints "cuda_host: <kernel> block (x,y,z) thread (x,y,z): <what>" and aborts.
[[noreturn]] void fail(const std::string& what) {
  std::string prefix = "cuda_host: ";
  if (launch != nullptr) {
    prefix += launch->kernel;
    if (launch->running != nullptr) {
      const ThreadIndex& i = launch->running->index;
      prefix += format(" block (%u,%u,%u) thread (%u,%u,%u)", i.block.x, i.block.y, i.block.z, i.thread.x,
                       i.thread.y, i.thread.z);
    }
    prefix += ": ";
  }
  fprintf(stderr, "%s%s\n", prefix.c_str(), what.c_str());
  fflush(stderr);
  abort();
}

void tsan_release(void* address) {
#if defined(CUDA_HOST_TSAN)
  __tsan_release(address);
#else
  (void)address;
#endif
}

void tsan_acquire(void* address) {
#if defined(CUDA_HOST_TSAN)
  __tsan_acquire(address);
#else
  (void)address;
#endif
}

// ---- Fibers -----------------------------------------------------------------------------------------------------

void* stack_at(size_t i) {
  while (stacks.size() <= i) {
    const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    void* base = mmap(nullptr, kStackBytes + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED || mprotect(base, page, PROT_NONE) != 0) fail("cannot map a fiber stack");
    stacks.push_back(static_cast<char*>(base) + page);
  }
  return stacks[i];
}

// Completes a switch on the side of the fiber that was switched to.
void landed(Fiber& self) {
#if defined(CUDA_HOST_ASAN)
  const void* bottom = nullptr;
  size_t bytes = 0;
  __sanitizer_finish_switch_fiber(self.fake_stack, &bottom, &bytes);
  Fiber& from = *launch->switch_from;
  if (from.stack == nullptr) {  // the launcher's own stack, learned on its first switch
    from.stack = const_cast<void*>(bottom);
    from.stack_bytes = bytes;
  }
#else
  (void)self;
#endif
}

void switch_fiber(Fiber& from, Fiber& to) {
#if defined(CUDA_HOST_ASAN)
  __sanitizer_start_switch_fiber(&from.fake_stack, to.stack, to.stack_bytes);
#endif
#if defined(CUDA_HOST_TSAN)
  __tsan_switch_to_fiber(to.tsan, __tsan_switch_to_fiber_no_sync);
#endif
  launch->switch_from = &from;
  swapcontext(&from.context, &to.context);
  landed(from);
}

void resume(Fiber& from, Thread& next) {
  next.state = State::kRunning;
  launch->running = &next;
  current_index = &next.index;
  switch_fiber(from, next.fiber);
}

void push_ready(Thread& thread) {
  Launch& l = *launch;
  thread.state = State::kReady;
  l.ready[(l.ready_head + l.ready_count++) % l.threads] = thread.linear;
}

// The first ready thread, or a random one when shuffling.
Thread& pop_ready() {
  Launch& l = *launch;
  if (l.shuffle) {
    const size_t pick = std::uniform_int_distribution<size_t>(0, l.ready_count - 1)(l.rng);
    std::swap(l.ready[(l.ready_head + pick) % l.threads], l.ready[l.ready_head]);
  }
  Thread& next = l.thread[l.ready[l.ready_head]];
  l.ready_head = (l.ready_head + 1) % l.threads;
  --l.ready_count;
  return next;
}

std::string lanes(unsigned mask) { return format("0x%08x", mask); }

// No thread can run and some have not exited: name what each waits for.
[[noreturn]] void deadlock() {
  Launch& l = *launch;
  std::string what = "deadlock:";
  if (l.at_barrier > 0) {
    what += format(" %u of %u live threads wait at __syncthreads() (%s);", l.at_barrier, l.live,
                   where(l.barrier_site).c_str());
  }
  for (size_t w = 0; w < l.warps.size(); ++w) {
    const Warp& warp = l.warps[w];
    if (!warp.pending) continue;
    const unsigned missing = warp.mask & ~warp.arrived;
    unsigned at_barrier = 0;
    for (int lane = 0; lane < kWarpSize; ++lane) {
      if ((missing >> lane & 1u) && l.thread[w * kWarpSize + lane].state == State::kBarrier) at_barrier |= 1u << lane;
    }
    what += format(" warp %zu lanes %s wait in %s(mask %s) at %s for lanes %s (of which %s wait at __syncthreads());",
                   w, lanes(warp.arrived).c_str(), op_name(warp.op), lanes(warp.mask).c_str(),
                   where(warp.site).c_str(), lanes(missing).c_str(), lanes(at_barrier).c_str());
  }
  l.running = nullptr;
  fail(what);
}

// `self` waits or has exited: run the next ready thread, or return to the launcher once every thread has exited.
void run_next(Thread& self) {
  Launch& l = *launch;
  if (l.ready_count > 0) {
    resume(self.fiber, pop_ready());
  } else if (l.live == 0) {
    l.running = nullptr;
    current_index = nullptr;
    switch_fiber(self.fiber, l.main);
  } else {
    deadlock();
  }
}

void release_barrier() {
  Launch& l = *launch;
  for (unsigned t = 0; t < l.threads; ++t) {
    if (l.thread[t].state == State::kBarrier) push_ready(l.thread[t]);
  }
  l.at_barrier = 0;
  ++l.barrier_generation;
}

void exit_thread(Thread& self) {
  Launch& l = *launch;
  Warp& warp = l.warps[self.linear / kWarpSize];
  const unsigned bit = 1u << (self.linear % kWarpSize);
  if (warp.pending && (warp.mask & bit)) {
    fail(format("exits while lanes %s of its warp wait in %s(mask %s) at %s, which names it", lanes(warp.arrived).c_str(),
                op_name(warp.op), lanes(warp.mask).c_str(), where(warp.site).c_str()));
  }
  warp.exited |= bit;
  self.state = State::kExited;
  --l.live;
  tsan_release(&l.exit_sync);
  if (l.at_barrier > 0 && l.at_barrier == l.live) release_barrier();
  run_next(self);
}

void fiber_main(int linear) {
  Thread& self = launch->thread[linear];
  landed(self.fiber);
  for (;;) {  // one iteration per block; exit_thread returns when the next block starts this thread
    tsan_acquire(&launch->start_sync);
    launch->body(launch->closure);
    exit_thread(self);
  }
}

// A fiber that starts in fiber_main(linear) on the stack of slot `linear`.
void make_fiber(Fiber& fiber, unsigned linear) {
  fiber.stack = stack_at(linear);
  fiber.stack_bytes = kStackBytes;
  getcontext(&fiber.context);
  fiber.context.uc_stack.ss_sp = fiber.stack;
  fiber.context.uc_stack.ss_size = fiber.stack_bytes;
  fiber.context.uc_link = nullptr;  // fiber_main never returns
  makecontext(&fiber.context, reinterpret_cast<void (*)()>(fiber_main), 1, static_cast<int>(linear));
#if defined(CUDA_HOST_TSAN)
  fiber.tsan = __tsan_create_fiber(0);
#endif
}

// ---- Shared memory ----------------------------------------------------------------------------------------------

struct TlsSearch {
  const unsigned char* dynamic;  // this OS thread's dynamic buffer: inside the block searched for
  SharedMemory found;
};

int find_tls_block(dl_phdr_info* info, size_t, void* data) {
  auto* search = static_cast<TlsSearch*>(data);
  const unsigned char* dynamic = search->dynamic;
  for (int i = 0; i < info->dlpi_phnum; ++i) {
    if (info->dlpi_phdr[i].p_type != PT_TLS || info->dlpi_tls_data == nullptr) continue;
    auto* block = static_cast<unsigned char*>(info->dlpi_tls_data);
    if (dynamic >= block && dynamic < block + info->dlpi_phdr[i].p_memsz) {
      search->found = {block, info->dlpi_phdr[i].p_memsz};
      return 1;
    }
  }
  return 0;
}

SharedMemory shared_memory() {
  // Taking the buffer's address allocates this OS thread's TLS block of the module if it is not yet.
  TlsSearch search{cuda_host_dynamic_shared, {}};
  if (dl_iterate_phdr(find_tls_block, &search) == 0) fail("cannot find the shared-memory TLS block of the test build");
  return search.found;
}

void poison_shared(const SharedMemory& memory, size_t dynamic_bytes) {
  unsigned char* tail = cuda_host_dynamic_shared + dynamic_bytes;
  const size_t tail_bytes = kMaxDynamicShared - dynamic_bytes;
#if defined(CUDA_HOST_ASAN)
  __asan_unpoison_memory_region(memory.block, memory.bytes);
#endif
  memset(memory.block, kSharedPoison, memory.bytes);
  memset(tail, kCanary, tail_bytes);
#if defined(CUDA_HOST_ASAN)
  __asan_poison_memory_region(tail, tail_bytes);  // reads past the launch's size are reported too
#endif
}

void check_dynamic_tail(size_t dynamic_bytes) {
  unsigned char* tail = cuda_host_dynamic_shared + dynamic_bytes;
  const size_t tail_bytes = kMaxDynamicShared - dynamic_bytes;
#if defined(CUDA_HOST_ASAN)
  __asan_unpoison_memory_region(tail, tail_bytes);
#endif
  static const std::vector<unsigned char> canary(kMaxDynamicShared, kCanary);
  if (memcmp(tail, canary.data(), tail_bytes) == 0) return;
  size_t i = 0;
  while (tail[i] == kCanary) ++i;
  fail(format("wrote dynamic shared memory at byte %zu, past the launch's %zu bytes", dynamic_bytes + i,
              dynamic_bytes));
}

// ---- Launch -----------------------------------------------------------------------------------------------------

cudaError_t check_config(dim3 grid, dim3 block, size_t dynamic_shared) {
  const uint64_t threads = uint64_t{block.x} * block.y * block.z;
  if (block.x == 0 || block.y == 0 || block.z == 0 || block.x > 1024 || block.y > 1024 || block.z > 64 ||
      threads > kMaxThreads) {
    return cudaErrorInvalidConfiguration;
  }
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.x > 0x7fffffffu || grid.y > 65535 || grid.z > 65535) {
    return cudaErrorInvalidConfiguration;
  }
  if (dynamic_shared > kMaxDynamicShared) return cudaErrorInvalidValue;
  return cudaSuccess;
}

uint64_t shuffle_seed() {
  const char* text = getenv("CUDA_HOST_SHUFFLE");
  return text == nullptr ? 0 : strtoull(text, nullptr, 10);
}

void start_block(Launch& l, uint64_t linear_block) {
  const uint3 block{static_cast<unsigned>(linear_block % l.grid.x),
                    static_cast<unsigned>(linear_block / l.grid.x % l.grid.y),
                    static_cast<unsigned>(linear_block / (uint64_t{l.grid.x} * l.grid.y))};
  for (unsigned t = 0; t < l.threads; ++t) {
    l.thread[t].index.block = block;
    push_ready(l.thread[t]);
  }
  for (Warp& warp : l.warps) {
    warp.exited = 0;
    warp.pending = false;
  }
  l.live = l.threads;
  l.at_barrier = 0;
}

}  // namespace

void run_grid(const char* kernel, dim3 grid, dim3 block, size_t dynamic_shared, void (*body)(void*), void* closure) {
  const cudaError_t config = check_config(grid, block, dynamic_shared);
  if (config != cudaSuccess) {
    last_error = config;
    return;
  }
  std::lock_guard<std::mutex> lock(launch_mutex);
  Launch l;
  l.kernel = kernel;
  l.grid = grid;
  l.body = body;
  l.closure = closure;
  l.threads = block.x * block.y * block.z;
  l.thread = std::make_unique<Thread[]>(l.threads);
  l.warps.resize((l.threads + kWarpSize - 1) / kWarpSize);
  l.ready.resize(l.threads);
  const uint64_t seed = shuffle_seed();
  l.shuffle = seed != 0;
  l.rng.seed(seed);
  launch = &l;

  for (unsigned t = 0; t < l.threads; ++t) {
    Thread& thread = l.thread[t];
    thread.linear = static_cast<int>(t);
    thread.index.thread = {t % block.x, t / block.x % block.y, t / (block.x * block.y)};
    thread.index.block_dim = block;
    thread.index.grid_dim = grid;
    l.warps[t / kWarpSize].present |= 1u << (t % kWarpSize);
    make_fiber(thread.fiber, t);
  }
#if defined(CUDA_HOST_TSAN)
  l.main.tsan = __tsan_get_current_fiber();
#endif

  const uint64_t blocks = uint64_t{grid.x} * grid.y * grid.z;
  std::vector<uint64_t> order;
  if (l.shuffle) {
    order.resize(blocks);
    for (uint64_t b = 0; b < blocks; ++b) order[b] = b;
    std::shuffle(order.begin(), order.end(), l.rng);
  }
  const SharedMemory memory = shared_memory();
  for (uint64_t b = 0; b < blocks; ++b) {
    start_block(l, l.shuffle ? order[b] : b);
    poison_shared(memory, dynamic_shared);
    tsan_release(&l.start_sync);
    resume(l.main, pop_ready());
    tsan_acquire(&l.exit_sync);  // the launcher (not the next block) is ordered after the block's threads
    check_dynamic_tail(dynamic_shared);
  }
#if defined(CUDA_HOST_TSAN)
  for (unsigned t = 0; t < l.threads; ++t) __tsan_destroy_fiber(l.thread[t].fiber.tsan);
#endif
  launch = nullptr;
  current_index = nullptr;
}

void sync_threads(Site site) {
  Launch& l = *launch;
  Thread& self = *l.running;
  if (l.at_barrier == 0) {
    l.barrier_site = site;
  } else if (site.line != l.barrier_site.line || strcmp(site.file, l.barrier_site.file) != 0) {
    fail(format("reaches __syncthreads() at %s while %u threads wait at the one at %s", where(site).c_str(),
                l.at_barrier, where(l.barrier_site).c_str()));
  }
  const unsigned generation = l.barrier_generation;
  tsan_release(&l.barrier_sync[generation & 1]);
  if (++l.at_barrier == l.live) {
    release_barrier();
  } else {
    self.state = State::kBarrier;
    run_next(self);
  }
  tsan_acquire(&l.barrier_sync[generation & 1]);
}

namespace {

// Every named lane has arrived: compute each one's result.
void complete(Warp& warp, int warp_index) {
  for (int lane = 0; lane < kWarpSize; ++lane) {
    if (!(warp.mask >> lane & 1u)) continue;
    const int base = lane & ~(warp.width - 1);  // the lane's segment of `width` lanes
    int source = lane;
    switch (warp.op) {
      case WarpOp::kShflIdx:
        source = base + (warp.arg[lane] & (warp.width - 1));
        break;
      case WarpOp::kShflUp:
        source = lane - warp.arg[lane] >= base ? lane - warp.arg[lane] : lane;
        break;
      case WarpOp::kShflDown:
        source = lane + warp.arg[lane] < base + warp.width ? lane + warp.arg[lane] : lane;
        break;
      case WarpOp::kShflXor:
        source = (lane ^ warp.arg[lane]) < base + warp.width ? lane ^ warp.arg[lane] : lane;
        break;
      case WarpOp::kMatchAny:
      case WarpOp::kBallot:
      case WarpOp::kSyncWarp: {
        uint64_t result = 0;
        for (int other = 0; other < kWarpSize; ++other) {
          if (!(warp.mask >> other & 1u)) continue;
          const bool hit = warp.op == WarpOp::kMatchAny ? warp.in[other] == warp.in[lane] : warp.in[other] != 0;
          if (hit) result |= uint64_t{1} << other;
        }
        warp.out[lane] = warp.op == WarpOp::kSyncWarp ? 0 : result;
        continue;
      }
    }
    if (source < 0 || source >= kWarpSize || !(warp.mask >> source & 1u)) {
      launch->running = &launch->thread[warp_index * kWarpSize + lane];
      fail(format("%s(mask %s) at %s reads lane %d, which the mask does not name", op_name(warp.op),
                  lanes(warp.mask).c_str(), where(warp.site).c_str(), source));
    }
    warp.out[lane] = warp.in[source];
  }
}

}  // namespace

uint64_t warp_exchange(WarpOp op, unsigned mask, uint64_t value, int arg, int width, Site site) {
  Launch& l = *launch;
  Thread& self = *l.running;
  const int warp_index = self.linear / kWarpSize;
  const int lane = self.linear % kWarpSize;
  Warp& warp = l.warps[warp_index];
  if (!(mask >> lane & 1u)) fail(format("%s at %s with mask %s, which does not name its own lane %d", op_name(op),
                                        where(site).c_str(), lanes(mask).c_str(), lane));
  if (mask & ~warp.present) {
    fail(format("%s at %s: mask %s names lanes %s, which do not exist in this block", op_name(op),
                where(site).c_str(), lanes(mask).c_str(), lanes(mask & ~warp.present).c_str()));
  }
  if (mask & warp.exited) {
    fail(format("%s at %s: mask %s names lanes %s, which have exited", op_name(op), where(site).c_str(),
                lanes(mask).c_str(), lanes(mask & warp.exited).c_str()));
  }
  if (width < 1 || width > kWarpSize || (width & (width - 1)) != 0) {
    fail(format("%s at %s: width %d is not a power of two in 1..32", op_name(op), where(site).c_str(), width));
  }
  if (!warp.pending) {
    warp.pending = true;
    warp.op = op;
    warp.mask = mask;
    warp.width = width;
    warp.arrived = 0;
    warp.site = site;
  } else if (warp.op != op || warp.mask != mask || warp.width != width) {
    fail(format("%s(mask %s, width %d) at %s while lanes %s of its warp wait in %s(mask %s, width %d) at %s",
                op_name(op), lanes(mask).c_str(), width, where(site).c_str(), lanes(warp.arrived).c_str(),
                op_name(warp.op), lanes(warp.mask).c_str(), warp.width, where(warp.site).c_str()));
  }
  warp.in[lane] = value;
  warp.arg[lane] = arg;
  warp.arrived |= 1u << lane;
  if (op == WarpOp::kSyncWarp) tsan_release(&l.warp_sync);
  if (warp.arrived == warp.mask) {
    complete(warp, warp_index);
    warp.pending = false;
    for (int other = 0; other < kWarpSize; ++other) {
      Thread& peer = l.thread[warp_index * kWarpSize + other];
      if ((warp.mask >> other & 1u) && other != lane) push_ready(peer);
    }
  } else {
    self.state = State::kWarp;
    run_next(self);
  }
  if (op == WarpOp::kSyncWarp) tsan_acquire(&l.warp_sync);
  return warp.out[lane];
}

}  // namespace detail
}  // namespace cuda_host

// ---- Runtime API ------------------------------------------------------------------------------------------------

using cuda_host::detail::fail;
using cuda_host::detail::last_error;

cudaError_t cudaGetLastError() {
  const cudaError_t error = last_error;
  last_error = cudaSuccess;
  return error;
}

cudaError_t cudaPeekAtLastError() { return last_error; }

const char* cudaGetErrorString(cudaError_t error) {
  switch (error) {
    case cudaSuccess:
      return "no error";
    case cudaErrorInvalidValue:
      return "invalid argument";
    case cudaErrorInvalidConfiguration:
      return "invalid configuration argument";
    case cudaErrorInvalidDevice:
      return "invalid device ordinal";
  }
  return "unrecognized error code";
}

cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attribute, int device) {
  if (device != 0) return last_error = cudaErrorInvalidDevice;
  switch (attribute) {
    case cudaDevAttrMaxThreadsPerBlock:
      *value = static_cast<int>(cuda_host::detail::kMaxThreads);
      return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlock:
      *value = static_cast<int>(cuda_host::kMaxDynamicShared);
      return cudaSuccess;
    case cudaDevAttrWarpSize:
      *value = cuda_host::detail::kWarpSize;
      return cudaSuccess;
    case cudaDevAttrMultiProcessorCount:
      *value = cuda_host::detail::kMultiProcessors;
      return cudaSuccess;
    case cudaDevAttrComputeCapabilityMajor:
      *value = 9;
      return cudaSuccess;
    case cudaDevAttrComputeCapabilityMinor:
      *value = 0;
      return cudaSuccess;
    case cudaDevAttrL2CacheSize:
      *value = cuda_host::detail::kL2Bytes;
      return cudaSuccess;
  }
  fail(cuda_host::detail::format("cudaDeviceGetAttribute: attribute %d is not modelled by the CPU test build",
                                 static_cast<int>(attribute)));
}

cudaError_t cudaRuntimeGetVersion(int* version) {
  *version = 0;  // no CUDA runtime in the CPU test build
  return cudaSuccess;
}

cudaError_t cudaMemsetAsync(void* pointer, int value, size_t bytes, cudaStream_t) {
  memset(pointer, value, bytes);
  return cudaSuccess;
}
