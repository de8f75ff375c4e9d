#include <type_traits>
#include <vector>

#include "cuda/kernels.h"
#include "cuda/multi_tensor_apply.cuh"

namespace fusedopt {
namespace cuda {

namespace {

template <bool First>
void sgd_lists(cpu::TensorLists& l, const cpu::SgdArgs& a) {
  with_dtype(l.dtype, [&](auto tag) {
    using T = decltype(tag);
    using M = typename MathOf<T>::type;
    with_sgd_update<M>(a, [&](auto later, auto first) {
      using Update = typename std::conditional_t<First, decltype(first), decltype(later)>::Update;
      multi_tensor_apply<T, Update>(l, a.hyper, [&](int64_t) { return Update(a.hyper); });
    });
  });
}

}  // namespace

void sgd(cpu::TensorLists& all, const cpu::SgdArgs& a) {
  const bool torch_momentum = a.momentum == math::Momentum::kClassic || a.momentum == math::Momentum::kNesterov;
  if (!torch_momentum || a.first_step == nullptr) return sgd_lists<false>(all, a);
  // Tensors whose momentum buffer is new take the First variant: one sub-list each.
  for (const bool first : {true, false}) {
    std::vector<int64_t> offset{0};
    std::vector<const void*> g;
    std::vector<void*> p, b;
    for (int64_t t = 0; t < all.count; ++t) {
      if ((a.first_step[t] != 0) != first) continue;
      offset.push_back(offset.back() + all.offset[t + 1] - all.offset[t]);
      g.push_back(all.grads[t]);
      p.push_back(all.states[0][t]);
      b.push_back(all.states[1][t]);
    }
    if (g.empty()) continue;
    cpu::TensorLists l = all;
    l.count = static_cast<int64_t>(g.size());
    l.offset = offset.data();
    l.grads = g.data();
    l.states[0] = p.data();
    l.states[1] = b.data();
    if (first) sgd_lists<true>(l, a); else sgd_lists<false>(l, a);
  }
}

}  // namespace cuda
}  // namespace fusedopt
