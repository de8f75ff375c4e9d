#include "slot_pool.h"

#include <ATen/Config.h>
#include <ATen/Parallel.h>
#if AT_PARALLEL_OPENMP
#include <omp.h>
#endif

#include <linux/futex.h>
#include <pthread.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <mutex>
#include <system_error>
#include <thread>

namespace fusedopt {
namespace cpu {
namespace {

constexpr int kMaxHelpers = 63;

void futex_wait(std::atomic<uint32_t>* word, uint32_t expected) {
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), FUTEX_WAIT_PRIVATE, expected, nullptr, nullptr, 0);
}

void futex_wake(std::atomic<uint32_t>* word, int count) {
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), FUTEX_WAKE_PRIVATE, count, nullptr, nullptr, 0);
}

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

// Spins until done() or `us` microseconds have passed; returns done().
template <class Done>
bool spin_until(Done&& done, int us) {
  if (done()) return true;
  if (us <= 0) return false;
  const auto stop = std::chrono::steady_clock::now() + std::chrono::microseconds(us);
  for (;;) {
    for (int i = 0; i < 64; ++i) {
      cpu_relax();
      if (done()) return true;
    }
    if (std::chrono::steady_clock::now() >= stop) return false;
  }
}

// A step hands out up to three jobs in a row (its lists, its step counts,
// its kernel) a few tens of us apart: a helper keeps looking for the next one
// that long, so the caller wakes it once per step, not three times (a wake
// costs the caller about 6 us here). Past that it sleeps and costs nothing.
constexpr int kHelperSpinUs = 50;
// The caller spins this long on slots still running on helpers (a slot is
// about 5 us of work) before it sleeps: a helper that is still running then
// is one the scheduler has taken off its core, and sleeping gives ours to
// whoever needs it, that helper included.
constexpr int kCallerSpinUs = 20;

// Who helps the caller. Our own helpers by default. But right after torch's
// own parallel work (a backward pass) torch's OpenMP threads keep spinning on
// the other cores for a few ms, and a helper of ours that is woken then waits
// for the scheduler to take a core from one of them: a 16.8M-param bfloat16
// SGD step after a backward pass ran at one thread's speed, 5.6-6.0 ms median
// against 4.0 for torch fused, whose OpenMP region reuses the spinning
// threads. So a job whose helpers started late is followed by jobs on torch's
// OpenMP team, which then starts at once (3.9-4.2 ms), for as long as its
// threads keep starting at once; where they start late too (other processes
// hold the cores, where an OpenMP region's closing barrier waits for its last
// thread), back to our helpers, trying the team again after 1, 2, 4 ... 64 late jobs. Slots are
// claimed the same way on both, so the bits are the same.
constexpr auto kLateStart = std::chrono::microseconds(250);
constexpr int kMaxBackoff = 64;

enum class Helpers { kAuto, kPool, kOpenMP };

// FUSEDOPT_CPU_HELPERS=pool | openmp fixes the choice (for tests and
// benchmarks); read at every job, so a test can switch it.
Helpers helpers_asked() {
  const char* v = std::getenv("FUSEDOPT_CPU_HELPERS");
  if (v == nullptr) return Helpers::kAuto;
  if (std::strcmp(v, "pool") == 0) return Helpers::kPool;
  if (std::strcmp(v, "openmp") == 0) return Helpers::kOpenMP;
  return Helpers::kAuto;
}

// A forked child never enters OpenMP: GNU OpenMP has no fork handler, and a
// team the parent used hangs there.
std::atomic<bool> forked_child{false};

struct alignas(64) Worker {
  std::atomic<uint32_t> wake{0};      // the epoch of the job this helper is asked to join
  std::atomic<uint32_t> sleeping{0};  // 1 while it waits (or is about to wait) on `wake`
};

// One participant's share of a job: slots [next, end) of its contiguous
// region, with the job's epoch, in one word so that a claim is one CAS. The
// owner takes slots from the front, others steal from the back, so each
// thread streams through memory in order (a step's streams are read once:
// slots handed out in turn, 128 KB to one thread and the next 128 KB to the
// other, cost large steps 15-25% against two contiguous halves).
struct alignas(64) Region {
  std::atomic<uint64_t> word{0};  // epoch << 32 | next << 16 | end
};

class Pool {
 public:
  // Whether this caller got the pool; the pool serves one caller at a time.
  bool acquire() { return !busy_.exchange(true, std::memory_order_acquire); }
  void release() { busy_.store(false, std::memory_order_release); }

  void run(int64_t slots, int helpers, SlotFn fn, void* context) {
    const bool openmp = use_openmp();
    helpers = openmp ? std::min(helpers, kMaxHelpers) : start_workers(helpers);
    const int participants = helpers + 1;
    fn_ = fn;
    context_ = context;
    error_ = nullptr;
    slots_.store(static_cast<uint32_t>(slots), std::memory_order_relaxed);
    participants_.store(participants, std::memory_order_relaxed);
    done_.store(0, std::memory_order_relaxed);
    caller_sleeps_.store(0, std::memory_order_relaxed);
    const uint32_t epoch = ++epoch_;
    for (int r = 0; r < participants; ++r) {
      const uint64_t begin = static_cast<uint64_t>(slots * r / participants);
      const uint64_t end = static_cast<uint64_t>(slots * (r + 1) / participants);
      regions_[r].word.store(static_cast<uint64_t>(epoch) << 32 | begin << 16 | end, std::memory_order_seq_cst);
    }
    first_help_.store(0, std::memory_order_relaxed);
    start_.store(now_ns(), std::memory_order_relaxed);
    timed_.store(epoch, std::memory_order_seq_cst);
    if (openmp) {
      run_openmp(epoch, participants);
    } else {
      for (int i = 0; i < helpers; ++i) {
        workers_[i].wake.store(epoch, std::memory_order_seq_cst);
        if (workers_[i].sleeping.load(std::memory_order_seq_cst)) futex_wake(&workers_[i].wake, 1);
      }
      help(epoch, 0);
      const uint32_t total = static_cast<uint32_t>(slots);
      const auto finished = [&] { return done_.load(std::memory_order_acquire) == total; };
      if (!spin_until(finished, kCallerSpinUs)) {
        // What is left runs on helpers the scheduler may have taken the core
        // from: sleeping gives our core back to whoever needs it (the helper too).
        caller_sleeps_.store(1, std::memory_order_seq_cst);
        for (uint32_t d; (d = done_.load(std::memory_order_seq_cst)) != total;) futex_wait(&done_, d);
      }
    }
    judge(openmp);
    if (error_) std::rethrow_exception(error_);
  }

 private:
  // Takes a slot of job `epoch` from region r: its first (front) or its last.
  bool take(Region& r, uint32_t epoch, bool front, int64_t& slot) {
    uint64_t word = r.word.load(std::memory_order_acquire);
    for (;;) {
      if (static_cast<uint32_t>(word >> 32) != epoch) return false;
      const uint64_t next = (word >> 16) & 0xffff, end = word & 0xffff;
      if (next >= end) return false;
      const uint64_t taken = front ? word + (uint64_t{1} << 16) : word - 1;
      if (r.word.compare_exchange_weak(word, taken, std::memory_order_acq_rel, std::memory_order_acquire)) {
        slot = static_cast<int64_t>(front ? next : end - 1);
        return true;
      }
    }
  }

  // Participant p's next slot of job `epoch`: from its own region, then the
  // last slots of the others' (a helper the scheduler has not run leaves its
  // whole region to be taken), nearest region first.
  bool claim(uint32_t epoch, int p, int64_t& slot) {
    if (take(regions_[p], epoch, true, slot)) return true;
    const int participants = participants_.load(std::memory_order_relaxed);
    for (int k = 1; k < participants; ++k) {
      if (take(regions_[(p + k) % participants], epoch, false, slot)) return true;
    }
    return false;
  }

  // Runs slots of job `epoch` as participant p until none is left. A slot
  // claimed keeps the job (fn_, context_, slots_) alive: the caller does not
  // return before it is done.
  void help(uint32_t epoch, int p) {
    int64_t slot;
    while (claim(epoch, p, slot)) {
      try {
        fn_(context_, slot);
      } catch (...) {
        std::lock_guard<std::mutex> lock(error_mutex_);
        if (!error_) error_ = std::current_exception();
      }
      if (done_.fetch_add(1, std::memory_order_seq_cst) + 1 == slots_.load(std::memory_order_relaxed) &&
          caller_sleeps_.load(std::memory_order_seq_cst)) {
        futex_wake(&done_, 1);
      }
    }
  }

  static int64_t now_ns() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
        .count();
  }

  bool use_openmp() const {
#if AT_PARALLEL_OPENMP
    if (forked_child.load(std::memory_order_relaxed)) return false;
    switch (helpers_asked()) {
      case Helpers::kPool: return false;
      case Helpers::kOpenMP: return true;
      case Helpers::kAuto: break;
    }
    return openmp_;
#else
    return false;
#endif
  }

  // When the first helper (or team thread) other than the caller started on
  // job `epoch`; not for a helper woken for a job that is already over.
  void note_start(uint32_t epoch) {
    if (timed_.load(std::memory_order_acquire) != epoch) return;
    int64_t none = 0;
    first_help_.compare_exchange_strong(none, now_ns(), std::memory_order_relaxed);
  }

  // The participants of job `epoch` on torch's OpenMP team: the caller is
  // its thread 0. help() catches what fn throws, so nothing leaves the region.
  void run_openmp(uint32_t epoch, int participants) {
#if AT_PARALLEL_OPENMP
#pragma omp parallel num_threads(participants)
    {
      const int p = omp_get_thread_num();
      if (p != 0) note_start(epoch);
      help(epoch, p);  // a team smaller than asked leaves regions for the others to take
    }
#else
    (void)participants;
    help(epoch, 0);
#endif
  }

  // Whether the next job goes to torch's OpenMP team (see Helpers). Only jobs
  // long enough for a late start to matter count.
  void judge(bool openmp) {
    const int64_t start = start_.load(std::memory_order_relaxed), late_ns = kLateStart.count() * 1000;
    if (now_ns() - start < 4 * late_ns) return;
    const int64_t first = first_help_.load(std::memory_order_relaxed);
    const bool late = first == 0 || first - start > late_ns;
    if (openmp) {
      // The wait only grows: under steady contention a team thread that
      // happens to start at once should not bring the probes back.
      if (late) {
        openmp_ = false;
        skip_ = backoff_;
        backoff_ = std::min(2 * backoff_, kMaxBackoff);
      }
    } else if (late) {
      if (skip_ > 0) {
        --skip_;
      } else {
        openmp_ = true;
      }
    }
  }

  // seen: the epoch when it was started; it joins jobs published after it.
  void helper_main(int index, uint32_t seen) {
    Worker& w = workers_[index];
    for (;;) {
      const auto asked = [&] { return w.wake.load(std::memory_order_acquire) != seen; };
      if (!spin_until(asked, kHelperSpinUs)) {
        w.sleeping.store(1, std::memory_order_seq_cst);
        while (w.wake.load(std::memory_order_seq_cst) == seen) futex_wait(&w.wake, seen);
        w.sleeping.store(0, std::memory_order_relaxed);
      }
      seen = w.wake.load(std::memory_order_acquire);
      note_start(seen);
      help(seen, index + 1);
    }
  }

  // Starts helper threads up to `helpers`; returns how many there are.
  int start_workers(int helpers) {
    helpers = std::min(helpers, kMaxHelpers);
    while (started_ < helpers) {
      workers_[started_].wake.store(epoch_, std::memory_order_relaxed);
      try {
        std::thread(&Pool::helper_main, this, started_, epoch_).detach();
      } catch (const std::system_error&) {
        break;  // no more threads for this process: fewer helpers
      }
      ++started_;
    }
    return std::min(helpers, started_);
  }

  Region regions_[kMaxHelpers + 1];            // participant 0 is the caller, i + 1 helper i
  alignas(64) std::atomic<uint32_t> done_{0};  // slots of this job finished
  std::atomic<uint32_t> caller_sleeps_{0};
  std::atomic<uint32_t> slots_{0};
  std::atomic<int> participants_{1};
  alignas(64) std::atomic<bool> busy_{false};
  uint32_t epoch_ = 0;
  int started_ = 0;
  std::atomic<uint32_t> timed_{0};      // the job whose start start_ holds
  std::atomic<int64_t> start_{0};       // steady-clock ns
  std::atomic<int64_t> first_help_{0};  // when the first helper started on it; 0: none yet
  bool openmp_ = false;                 // the next job on torch's OpenMP team
  int skip_ = 0;                        // late jobs to leave on our helpers before trying the team again
  int backoff_ = 1;
  SlotFn fn_ = nullptr;
  void* context_ = nullptr;
  std::exception_ptr error_;
  std::mutex error_mutex_;
  Worker workers_[kMaxHelpers];
};

std::atomic<Pool*> pool{nullptr};
std::atomic<int64_t> helped{0};

// A forked child has none of the parent's threads (and may have been forked
// while a caller held the pool): it starts a new pool when it first needs
// one. The old one is left as it is; its memory is the parent's copy.
void forget_pool_in_child() {
  pool.store(nullptr, std::memory_order_relaxed);
  forked_child.store(true, std::memory_order_relaxed);
}

Pool* the_pool() {
  Pool* p = pool.load(std::memory_order_acquire);
  if (p != nullptr) return p;
  static std::once_flag at_fork;
  std::call_once(at_fork, [] { pthread_atfork(nullptr, nullptr, &forget_pool_in_child); });
  // Never deleted: detached helpers use it until the process ends.
  Pool* fresh = new Pool();
  if (pool.compare_exchange_strong(p, fresh, std::memory_order_acq_rel)) return fresh;
  delete fresh;
  return p;
}

void run_serially(int64_t slots, SlotFn fn, void* context) {
  for (int64_t s = 0; s < slots; ++s) fn(context, s);
}

}  // namespace

int64_t helped_runs() { return helped.load(std::memory_order_relaxed); }

int host_threads() { return at::in_parallel_region() ? 1 : at::get_num_threads(); }

void run_slots(int64_t slots, int helpers, SlotFn fn, void* context) {
  helpers = static_cast<int>(std::min<int64_t>(helpers, slots - 1));
  if (helpers < 1 || slots > kMaxSlots) return run_serially(slots, fn, context);
  Pool* p = the_pool();
  if (!p->acquire()) return run_serially(slots, fn, context);
  helped.fetch_add(1, std::memory_order_relaxed);
  try {
    p->run(slots, helpers, fn, context);
  } catch (...) {
    p->release();
    throw;
  }
  p->release();
}

}  // namespace cpu
}  // namespace fusedopt
