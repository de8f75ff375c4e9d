// The CUDA DeviceKernels' functions, one file per algorithm (they compile in
// parallel), and the dtype switch they share.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "cpu/kernel_api.h"
#include "cpu/update_variants.h"
#include "fusedopt/dispatch.h"

namespace fusedopt {
namespace cuda {

void adam(cpu::TensorLists& l, const cpu::AdamArgs& a);
void sgd(cpu::TensorLists& l, const cpu::SgdArgs& a);
void adagrad(cpu::TensorLists& l, const cpu::AdagradArgs& a);
void rmsprop(cpu::TensorLists& l, const cpu::RmspropArgs& a);

template <class Fn>
void with_dtype(cpu::Dtype d, Fn&& fn) {
  switch (d) {
    case cpu::Dtype::kFloat32: fn(float{}); break;
    case cpu::Dtype::kFloat64: fn(double{}); break;
    case cpu::Dtype::kBFloat16: fn(c10::BFloat16{}); break;
    case cpu::Dtype::kFloat16: fn(c10::Half{}); break;
  }
}

}  // namespace cuda
}  // namespace fusedopt
