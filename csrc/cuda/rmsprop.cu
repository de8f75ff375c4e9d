#include "cuda/kernels.h"
#include "cuda/multi_tensor_apply.cuh"

namespace fusedopt {
namespace cuda {

void rmsprop(cpu::TensorLists& l, const cpu::RmspropArgs& a) {
  with_dtype(l.dtype, [&](auto tag) {
    using T = decltype(tag);
    using M = typename MathOf<T>::type;
    with_bool(a.maximize, [&](auto max) {
      with_bool(a.weight_decay, [&](auto wd) {
        with_bool(a.centered, [&](auto c) {
          with_bool(a.momentum, [&](auto m) {
            with_bool(a.seed_form, [&](auto seed) {
              using Update = math::RmspropUpdate<M, max.value, wd.value, c.value, m.value, seed.value>;
              multi_tensor_apply<T, Update>(l, a.hyper, [&](int64_t) { return Update(a.hyper); });
            });
          });
        });
      });
    });
  });
}

}  // namespace cuda
}  // namespace fusedopt
