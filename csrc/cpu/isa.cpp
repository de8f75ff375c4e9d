// Picks the kernel table at run time, so one build runs on any x86-64 and
// still uses the widest vector unit the CPU has.
#include <atomic>
#include <cstdlib>
#include <cstring>

#include "kernel_api.h"

namespace fusedopt {
namespace cpu {
namespace {

// avx512bf16: the avx512 kernels built again with AVX512_BF16 (Zen 4,
// Sapphire Rapids and later), whose instruction rounds their bfloat16 stores.
enum Isa { kBaseline = 0, kAvx2 = 1, kAvx512 = 2, kAvx512Bf16 = 3 };
constexpr const char* kNames[] = {"baseline", "avx2", "avx512", "avx512bf16"};

Isa best_supported() {
#if defined(__x86_64__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq")) {
    return __builtin_cpu_supports("avx512bf16") ? kAvx512Bf16 : kAvx512;
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
      __builtin_cpu_supports("f16c")) {
    return kAvx2;
  }
#endif
  return kBaseline;
}

const KernelTable& table_for(Isa isa) {
#if defined(__x86_64__)
  if (isa == kAvx512Bf16) return kernels_avx512bf16();
  if (isa == kAvx512) return kernels_avx512();
  if (isa == kAvx2) return kernels_avx2();
#endif
  return kernels_baseline();
}

int parse(const char* name) {
  if (name == nullptr) return -1;
  if (std::strcmp(name, "auto") == 0 || name[0] == '\0') return best_supported();
  for (int i = 0; i <= kAvx512Bf16; ++i) {
    if (std::strcmp(name, kNames[i]) == 0) return i;
  }
  return -1;
}

Isa initial() {
  const int forced = parse(std::getenv("FUSEDOPT_CPU_ISA"));
  return (forced >= 0 && forced <= best_supported()) ? static_cast<Isa>(forced) : best_supported();
}

std::atomic<const KernelTable*> active{nullptr};

}  // namespace

const KernelTable& active_kernels() {
  const KernelTable* t = active.load();
  if (t == nullptr) {
    t = &table_for(initial());
    active.store(t);
  }
  return *t;
}

bool set_kernel_isa(const char* name) {
  const int isa = parse(name);
  if (isa < 0 || isa > best_supported()) return false;
  active.store(&table_for(static_cast<Isa>(isa)));
  return true;
}

const char* supported_isas() {
  static const char* names[] = {"baseline", "avx2,baseline", "avx512,avx2,baseline",
                                "avx512bf16,avx512,avx2,baseline"};
  return names[best_supported()];
}

}  // namespace cpu
}  // namespace fusedopt
