#include "cuda/kernels.h"
#include "cuda/multi_tensor_apply.cuh"

namespace fusedopt {
namespace cuda {

void adagrad(cpu::TensorLists& l, const cpu::AdagradArgs& a) {
  with_dtype(l.dtype, [&](auto tag) {
    using T = decltype(tag);
    using M = typename MathOf<T>::type;
    with_adagrad_update<M>(a, [&](auto variant) {
      using Update = typename decltype(variant)::Update;
      multi_tensor_apply<T, Update>(l, a.hyper,
                                    [&](int64_t t) { return Update(a.hyper, static_cast<M>(a.neg_clr[t])); });
    });
  });
}

}  // namespace cuda
}  // namespace fusedopt
