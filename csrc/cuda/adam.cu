#include "cuda/kernels.h"
#include "cuda/multi_tensor_apply.cuh"

namespace fusedopt {
namespace cuda {

void adam(cpu::TensorLists& l, const cpu::AdamArgs& a) {
  with_dtype(l.dtype, [&](auto tag) {
    using T = decltype(tag);
    using M = typename MathOf<T>::type;
    with_adam_update<M>(a, [&](auto variant) {
      using Update = typename decltype(variant)::Update;
      multi_tensor_apply<T, Update>(l, a.hyper, [&](int64_t t) {
        return Update(a.hyper, math::AdamStep<M>{static_cast<M>(a.step[t].neg_step_size),
                                                 static_cast<M>(a.step[t].inv_bias_correction2_sqrt)});
      });
    });
  });
}

}  // namespace cuda
}  // namespace fusedopt
