// The CPU kernels built for the avx2 instruction set (see kernels_impl.h).
// Every header is included before the target pragma, so only code defined in
// kernels_impl.h is compiled for this ISA.
#if defined(__x86_64__)
// Vector lanes (lanes.h) never pass by value out of line: everything on them
// is inlined into loops built for this ISA, so the ABI note does not apply.
// From the top: the warning points into the shared headers (math::mix32).
#pragma GCC diagnostic ignored "-Wpsabi"
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

#include "fusedopt/dispatch.h"
#include "kernel_api.h"
#include "partition.h"
#include "update_variants.h"

#define FUSEDOPT_ISA avx2
#define FUSEDOPT_LANES_AVX2 1
#include "lanes.h"  // before the pragma: see there

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#define FUSEDOPT_ISA_NAME "avx2"
#define FUSEDOPT_AVX2_F16C 1  // float16 via vcvtph2ps/vcvtps2ph, bfloat16 rounded with AVX2 intrinsics
#include "kernels_impl.h"
#pragma GCC pop_options

namespace fusedopt {
namespace cpu {
// Call only where the CPU runs avx2 code: the table is built on first use.
const KernelTable& kernels_avx2() { return avx2::table(); }
}  // namespace cpu
}  // namespace fusedopt
#endif  // __x86_64__
