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
    std::vector<void*> p, b, companions;
    std::vector<uint64_t> keys;
    std::vector<cpu::IndexMap> index;
    for (int64_t t = 0; t < all.count; ++t) {
      if ((a.first_step[t] != 0) != first) continue;
      offset.push_back(offset.back() + all.offset[t + 1] - all.offset[t]);
      g.push_back(all.grads[t]);
      p.push_back(all.states[0][t]);
      b.push_back(all.states[1][t]);
      // the per-tensor storage of the low-precision modes follows its tensor
      if (all.storage.companions != nullptr) companions.push_back(all.storage.companions[t]);
      if (all.storage.keys != nullptr) keys.push_back(all.storage.keys[t]);
      if (all.storage.index != nullptr) index.push_back(all.storage.index[t]);
    }
    if (g.empty()) continue;
    cpu::TensorLists l = all;
    l.count = static_cast<int64_t>(g.size());
    l.offset = offset.data();
    l.grads = g.data();
    l.states[0] = p.data();
    l.states[1] = b.data();
    if (all.storage.companions != nullptr) l.storage.companions = companions.data();
    if (all.storage.keys != nullptr) l.storage.keys = keys.data();
    if (all.storage.index != nullptr) l.storage.index = index.data();
    if (first) sgd_lists<true>(l, a); else sgd_lists<false>(l, a);
  }
}

}  // namespace cuda
}  // namespace fusedopt
