#include "cuda/kernels.h"
#include "cuda/multi_tensor_apply.cuh"

namespace fusedopt {
namespace cuda {

void rmsprop(cpu::TensorLists& l, const cpu::RmspropArgs& a) {
  with_dtype(l.dtype, [&](auto tag) {
    using T = decltype(tag);
    using M = typename MathOf<T>::type;
    with_rmsprop_update<M>(a, [&](auto variant) {
      using Update = typename decltype(variant)::Update;
      multi_tensor_apply<T, Update>(l, a.hyper, [&](int64_t) { return Update(a.hyper); });
    });
  });
}

}  // namespace cuda
}  // namespace fusedopt
