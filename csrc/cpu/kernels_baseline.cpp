// The CPU kernels built for the baseline instruction set (see kernels_impl.h).
// Every header is included before the target pragma, so only code defined in
// kernels_impl.h is compiled for this ISA.
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

#pragma GCC push_options
#define FUSEDOPT_ISA baseline
#define FUSEDOPT_ISA_NAME "baseline"
#include "kernels_impl.h"
#pragma GCC pop_options

namespace fusedopt {
namespace cpu {
// Call only where the CPU runs baseline code: the table is built on first use.
const KernelTable& kernels_baseline() { return baseline::table(); }
}  // namespace cpu
}  // namespace fusedopt
