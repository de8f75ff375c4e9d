// fusedopt's own host threads: a help-if-available split of work cut into
// slots.
//
// Why not torch's pool (at::parallel_for, an OpenMP region): it gives each
// thread a fixed share, and the caller waits at the closing barrier for every
// thread of the team, also one that has no work left. On a busy host a worker
// that the scheduler has not run yet holds the whole step until it gets a
// core, once per region. Measured on the 2-core dev VM with other jobs
// running (2026-11-28), Adam on 2000 x 1024: at::parallel_for 14-36 ms median,
// 47-72 ms with 2 more busy processes; an OpenMP region whose threads claim
// slots from an atomic counter, 29 and 76 ms (the barrier still waits for the
// late thread); this pool 2.7-3.5 and 3-20 ms. Here the caller and the
// helpers claim slots one at a time, each from its own region first and then
// from the back of the others': a helper that wakes late finds its region
// taken, and the caller waits only for slots that were claimed and are still
// running. Right after torch's own parallel work the slots go to torch's
// OpenMP team instead, whose threads are still spinning then (slot_pool.cpp).
#pragma once

#include <cstdint>

namespace fusedopt {
namespace cpu {

using SlotFn = void (*)(void* context, int64_t slot);

// The most slots one call may have (a claim's cursors are 16 bits wide).
constexpr int64_t kMaxSlots = 65535;

// Calls fn(context, s) exactly once for every s in [0, slots), on the
// calling thread and on up to `helpers` pool threads that are free to help
// (or threads of torch's OpenMP team).
// Which thread runs which slot varies from call to call, so fn must give the
// same result whichever thread runs a slot and in whatever order. Runs on the
// caller alone when helpers < 1, slots < 2 or > kMaxSlots, or the pool is
// busy with another caller's work. An exception thrown by fn is rethrown here
// (the first one; the other slots still run).
void run_slots(int64_t slots, int helpers, SlotFn fn, void* context);

template <class Fn>
void run_slots(int64_t slots, int helpers, Fn& fn) {
  run_slots(slots, helpers, [](void* context, int64_t slot) { (*static_cast<Fn*>(context))(slot); }, &fn);
}

// The threads a host loop may use, the caller included: torch's thread count
// (torch.set_num_threads), or 1 inside someone's parallel region (a step
// called from at::parallel_for), whose threads are already in use, as
// at::parallel_for itself would run.
int host_threads();

// How many run_slots calls so far had helpers; for tests.
int64_t helped_runs();

}  // namespace cpu
}  // namespace fusedopt
