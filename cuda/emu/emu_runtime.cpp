// The emulator's launcher and collectives (see cuda_emu.h for the model and its limits).
#include "cuda_emu.h"

#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace emu {

struct Warp {
  std::unique_ptr<std::barrier<>> bar;
  uint64_t slots[32];
  int size = 32;
  unsigned char gather[32 * 256];  // warp_allgather's staging area (256 bytes per lane)
};

struct Block {
  std::unique_ptr<std::barrier<>> sync;  // __syncthreads; exited threads drop out of it
  std::vector<Warp> warps;
  std::vector<unsigned char> smem;
  unsigned nthreads = 0;

  void reset_barriers() {
    sync = std::make_unique<std::barrier<>>((std::ptrdiff_t)nthreads);
    for (auto& w : warps) w.bar = std::make_unique<std::barrier<>>(w.size);
  }
};

static thread_local std::string t_error;

const char* launch_error() { return t_error.c_str(); }

void syncthreads() { t_block->sync->arrive_and_wait(); }

static Warp& my_warp() { return t_block->warps[t_linear_tid / 32]; }

int warp_size_of_current() { return my_warp().size; }

void syncwarp() { my_warp().bar->arrive_and_wait(); }

uint64_t warp_exchange(uint64_t mine, int src_lane, bool* src_valid) {
  Warp& w = my_warp();
  w.slots[t_linear_tid % 32] = mine;
  w.bar->arrive_and_wait();
  *src_valid = src_lane >= 0 && src_lane < w.size;
  uint64_t got = *src_valid ? w.slots[src_lane] : mine;
  w.bar->arrive_and_wait();  // nobody overwrites a slot before every lane has read
  return got;
}

void warp_allgather(const void* mine, size_t bytes, void* all) {
  Warp& w = my_warp();
  if (bytes > sizeof(w.gather) / 32) {
    std::fprintf(stderr, "emu: warp_allgather of %zu bytes per lane (max %zu)\n", bytes,
                 sizeof(w.gather) / 32);
    std::abort();
  }
  unsigned char* area = w.gather;
  int lane = (int)(t_linear_tid % 32);
  std::memcpy(area + (size_t)lane * bytes, mine, bytes);
  w.bar->arrive_and_wait();
  std::memcpy(all, area, (size_t)w.size * bytes);
  w.bar->arrive_and_wait();  // nobody overwrites the area before every lane has read it
}

unsigned warp_ballot(bool pred) {
  Warp& w = my_warp();
  w.slots[t_linear_tid % 32] = pred ? 1 : 0;
  w.bar->arrive_and_wait();
  unsigned bits = 0;
  for (int l = 0; l < w.size; l++) bits |= (w.slots[l] ? 1u : 0u) << l;
  w.bar->arrive_and_wait();
  return bits;
}

void* dynamic_smem() { return t_block->smem.empty() ? nullptr : t_block->smem.data(); }

// Worker threads kept between launches: creating up to 1024 OS threads per launch was most of the
// emulator's cost. One pool per block size (kernels use a handful), so a launch wakes exactly the
// threads it needs. Every worker runs the same job with its own thread index.
class ThreadPool {
 public:
  explicit ThreadPool(unsigned n) {
    for (unsigned i = 0; i < n; i++) threads_.emplace_back([this, i] { loop(i); });
  }
  ~ThreadPool() {
    {
      std::lock_guard<std::mutex> lk(mu_);
      quit_ = true;
      ++generation_;
    }
    cv_.notify_all();
    for (auto& t : threads_) t.join();
  }
  void run(const std::function<void(unsigned)>& job) {
    {
      std::lock_guard<std::mutex> lk(mu_);
      job_ = &job;
      remaining_ = (unsigned)threads_.size();
      ++generation_;
    }
    cv_.notify_all();
    std::unique_lock<std::mutex> lk(mu_);
    done_cv_.wait(lk, [&] { return remaining_ == 0; });
    job_ = nullptr;
  }

 private:
  void loop(unsigned tid) {
    std::unique_lock<std::mutex> lk(mu_);
    uint64_t seen = 0;  // the generation at construction: a run() may already have bumped it
    for (;;) {
      cv_.wait(lk, [&] { return generation_ != seen; });
      seen = generation_;
      if (quit_) return;
      const std::function<void(unsigned)>* job = job_;
      lk.unlock();
      (*job)(tid);
      lk.lock();
      if (--remaining_ == 0) done_cv_.notify_one();
    }
  }
  std::vector<std::thread> threads_;
  std::mutex mu_;
  std::condition_variable cv_, done_cv_;
  uint64_t generation_ = 0;
  unsigned remaining_ = 0;
  bool quit_ = false;
  const std::function<void(unsigned)>* job_ = nullptr;
};

static std::mutex g_launch_mu;  // one launch at a time (blocks share function-static __shared__)
// Never destroyed: at process exit the workers just stop with the process (a destructor there
// would race with a launch from another thread and join threads a dlclose'd library owns).
static auto* g_pools = new std::map<unsigned, std::unique_ptr<ThreadPool>>();

int launch(dim3 grid, dim3 block, size_t dynamic_smem_bytes, const std::function<void()>& body) {
  unsigned long long nthreads = (unsigned long long)block.x * block.y * block.z;
  unsigned long long nblocks = (unsigned long long)grid.x * grid.y * grid.z;
  // Dynamic shared memory: the most an sm_80 block can opt into (A100: 163 KB), not sm_90's 227 KB,
  // so that a kernel configuration the tests pass here also launches on an A100.
  if (dynamic_smem_bytes > kMaxDynamicSmemSm80) {
    char buf[256];
    std::snprintf(buf, sizeof buf,
                  "dynamic shared memory %zu bytes is above sm_80's %zu (163 KB) per block: an A100 "
                  "could not launch this (the emulator holds every kernel to sm_80's limit)",
                  dynamic_smem_bytes, kMaxDynamicSmemSm80);
    t_error = buf;
    return 9;  // cudaErrorInvalidConfiguration
  }
  if (nthreads == 0 || nthreads > 1024 || block.z > 64 || nblocks == 0 || grid.y > 65535 ||
      grid.z > 65535) {
    char buf[256];
    std::snprintf(buf, sizeof buf,
                  "invalid launch configuration: grid (%u,%u,%u) block (%u,%u,%u) smem %zu bytes",
                  grid.x, grid.y, grid.z, block.x, block.y, block.z, dynamic_smem_bytes);
    t_error = buf;
    return 9;  // cudaErrorInvalidConfiguration
  }
  Block blk;
  blk.nthreads = (unsigned)nthreads;
  // Poison dynamic shared memory: a kernel that reads what it never wrote sees NaNs, not zeros.
  blk.smem.assign(dynamic_smem_bytes, 0xFF);
  for (unsigned w = 0; w < (nthreads + 31) / 32; w++) {
    blk.warps.emplace_back();
    blk.warps.back().size = (int)std::min<unsigned long long>(32, nthreads - 32ull * w);
  }
  blk.reset_barriers();
  // All threads leave a block together; the last one to arrive re-arms the barriers (threads that
  // returned early dropped out of them) before anybody starts the next block.
  std::barrier block_end((std::ptrdiff_t)nthreads, [&blk]() noexcept { blk.reset_barriers(); });

  std::function<void(unsigned)> worker = [&](unsigned tid) {
    t_block = &blk;
    t_linear_tid = tid;
    t_block_dim = block;
    t_grid_dim = grid;
    t_thread_idx = uint3{tid % block.x, (tid / block.x) % block.y, tid / (block.x * block.y)};
    for (unsigned long long b = 0; b < nblocks; b++) {
      t_block_idx = uint3{(unsigned)(b % grid.x), (unsigned)((b / grid.x) % grid.y),
                          (unsigned)(b / ((unsigned long long)grid.x * grid.y))};
      body();
      blk.sync->arrive_and_drop();
      my_warp().bar->arrive_and_drop();
      block_end.arrive_and_wait();
    }
    t_block = nullptr;
  };
  std::lock_guard<std::mutex> lk(g_launch_mu);
  auto& pool = (*g_pools)[(unsigned)nthreads];
  if (!pool) pool = std::make_unique<ThreadPool>((unsigned)nthreads);
  pool->run(worker);
  return 0;
}

}  // namespace emu
