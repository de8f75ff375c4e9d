// The CPU kernels built for the avx512 instruction set (see kernels_impl.h),
// and, included by kernels_avx512bf16.cpp with FUSEDOPT_AVX512_BF16 set, for
// avx512 plus AVX512_BF16, whose bfloat16 stores round with VCVTNE2PS2BF16
// (lanes_avx512.h). Every header is included before the target pragma, so only
// code defined in kernels_impl.h is compiled for this ISA.
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

#if defined(FUSEDOPT_AVX512_BF16)
#define FUSEDOPT_ISA avx512bf16
#define FUSEDOPT_ISA_NAME "avx512bf16"
#else
#define FUSEDOPT_ISA avx512
#define FUSEDOPT_ISA_NAME "avx512"
#endif
#define FUSEDOPT_LANES_AVX512 1
#include "lanes.h"  // before the pragma: see there

#pragma GCC push_options
// GCC 12 takes the undefined register that its AVX-512 intrinsics start from
// for an uninitialized read (GCC bug 105593, fixed in GCC 13).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#if defined(FUSEDOPT_AVX512_BF16)
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c,avx512bf16")
#else
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")
#endif
#define FUSEDOPT_AVX512 1  // 16-lane loops with mask registers where written (quant_codes.h, lanes_avx512.h)
#define FUSEDOPT_AVX2_F16C 1  // float16 via vcvtph2ps/vcvtps2ph, bfloat16 rounded with AVX2 intrinsics
#include "kernels_impl.h"
#pragma GCC diagnostic pop
#pragma GCC pop_options

namespace fusedopt {
namespace cpu {
// Call only where the CPU runs this ISA's code: the table is built on first use.
#if defined(FUSEDOPT_AVX512_BF16)
const KernelTable& kernels_avx512bf16() { return avx512bf16::table(); }
#else
const KernelTable& kernels_avx512() { return avx512::table(); }
#endif
}  // namespace cpu
}  // namespace fusedopt
#endif  // __x86_64__
