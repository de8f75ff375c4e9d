// The CPU kernels, written once and compiled once per instruction set by
// kernels_<isa>.cpp, which include this file inside a `#pragma GCC target`
// region with FUSEDOPT_ISA naming the namespace. Everything here has internal
// or ISA-specific linkage, so no function built for AVX2 can be picked by the
// linker for a caller built for the baseline.
//
// Each piece of a tensor is one `#pragma omp simd` loop that loads every
// stream once, runs the algorithm's update functor in the math type (float,
// or double for float64), and stores every state once: one pass over memory.

#ifndef FUSEDOPT_ISA
#error "kernels_impl.h is included by kernels_<isa>.cpp with FUSEDOPT_ISA set"
#endif

#include <cstring>
#include <type_traits>
#include <utility>

#include "kernel_api.h"
#include "partition.h"

namespace fusedopt {
namespace cpu {
namespace FUSEDOPT_ISA {
namespace {

struct BFloat16 { uint16_t bits; };
using Half = _Float16;

template <typename T> struct MathType { using type = float; };
template <> struct MathType<double> { using type = double; };

#define FUSEDOPT_ALWAYS_INLINE inline __attribute__((always_inline))

FUSEDOPT_ALWAYS_INLINE float to_math(float x) { return x; }
FUSEDOPT_ALWAYS_INLINE double to_math(double x) { return x; }
FUSEDOPT_ALWAYS_INLINE float to_math(Half x) { return static_cast<float>(x); }
FUSEDOPT_ALWAYS_INLINE float to_math(BFloat16 x) {
  const uint32_t bits = static_cast<uint32_t>(x.bits) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

template <typename T> FUSEDOPT_ALWAYS_INLINE T from_math(float x);
template <> FUSEDOPT_ALWAYS_INLINE float from_math<float>(float x) { return x; }
template <> FUSEDOPT_ALWAYS_INLINE Half from_math<Half>(float x) { return static_cast<Half>(x); }
// Round to nearest even, NaN to the canonical quiet NaN, as c10::BFloat16.
template <> FUSEDOPT_ALWAYS_INLINE BFloat16 from_math<BFloat16>(float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  const uint32_t rounded = (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
  return BFloat16{static_cast<uint16_t>(x != x ? 0x7FC0u : rounded)};
}
FUSEDOPT_ALWAYS_INLINE double from_math_double(double x) { return x; }

template <typename T, typename M>
FUSEDOPT_ALWAYS_INLINE T store_as(M x) {
  if constexpr (std::is_same_v<T, double>) return from_math_double(x);
  else return from_math<T>(x);
}

// The inner loop over one dense run. Each stream is its own restrict pointer
// parameter so GCC vectorizes without alias checks; `#pragma omp simd` is not
// used because its privatized copy of `s` blocks vectorization in GCC 12.
// The functor is copied so its scalars live in registers, not behind a
// pointer that the stores might alias.
template <typename T, class Update, typename... Ptr>
void update_run(const Update& update, const T* __restrict grad, int64_t n, Ptr __restrict... state) {
  using M = typename MathType<T>::type;
  const Update u = update;
  for (int64_t i = 0; i < n; ++i) {
    M s[sizeof...(Ptr)] = {to_math(state[i])...};
    u(to_math(grad[i]), s);
    int k = 0;
    ((state[i] = store_as<T>(s[k++])), ...);
  }
}

template <typename T, class Update, std::size_t... K>
void update_piece(const Update& u, const TensorLists& l, int64_t t, int64_t begin, int64_t end,
                  std::index_sequence<K...>) {
  update_run<T>(u, static_cast<const T*>(l.grads[t]) + begin, end - begin,
                (static_cast<T*>(l.states[K][t]) + begin)...);
}

// One dense piece [begin, end) of tensor t.
template <typename T, class Update>
void update_piece(const Update& u, const TensorLists& l, int64_t t, int64_t begin, int64_t end) {
  update_piece<T>(u, l, t, begin, end, std::make_index_sequence<Update::kStates>{});
}

// Runtime choices become template arguments here, once per call, so the
// inner loop has no branches.
template <class Fn>
void with_dtype(Dtype d, Fn&& fn) {
  switch (d) {
    case Dtype::kFloat32: fn(float{}); break;
    case Dtype::kFloat64: fn(double{}); break;
    case Dtype::kBFloat16: fn(BFloat16{}); break;
    case Dtype::kFloat16: fn(Half{}); break;
  }
}

template <class Fn>
void with_bool(bool b, Fn&& fn) {
  if (b) fn(std::true_type{}); else fn(std::false_type{});
}

template <auto... Values, typename E, class Fn>
void with_enum(E value, Fn&& fn) {
  ((value == Values ? (fn(std::integral_constant<E, Values>{}), 0) : 0), ...);
}

using math::Decay;
using math::Momentum;

void adam(const TensorLists& l, const AdamArgs& a, int64_t slot_begin, int64_t slot_end) {
  with_dtype(l.dtype, [&](auto tag) {
    using T = decltype(tag);
    using M = typename MathType<T>::type;
    with_bool(a.maximize, [&](auto maximize) {
      with_bool(a.amsgrad, [&](auto amsgrad) {
        with_enum<Decay::kNone, Decay::kL2, Decay::kDecoupled>(a.decay, [&](auto decay) {
          using Update = math::AdamUpdate<M, maximize.value, decay.value, amsgrad.value>;
          for_each_piece(l, slot_begin, slot_end, [&](int64_t t, int64_t b, int64_t e) {
            const math::AdamStep<M> step{static_cast<M>(a.step[t].neg_step_size),
                                         static_cast<M>(a.step[t].bias_correction2_sqrt)};
            update_piece<T>(Update(a.hyper, step), l, t, b, e);
          });
        });
      });
    });
  });
}

void sgd(const TensorLists& l, const SgdArgs& a, int64_t slot_begin, int64_t slot_end) {
  with_dtype(l.dtype, [&](auto tag) {
    using T = decltype(tag);
    using M = typename MathType<T>::type;
    with_bool(a.maximize, [&](auto maximize) {
      with_bool(a.weight_decay, [&](auto decay) {
        with_enum<Momentum::kNone, Momentum::kClassic, Momentum::kNesterov>(a.momentum, [&](auto mom) {
          using Later = math::SgdUpdate<M, maximize.value, decay.value, mom.value, false>;
          using First = math::SgdUpdate<M, maximize.value, decay.value, mom.value, true>;
          for_each_piece(l, slot_begin, slot_end, [&](int64_t t, int64_t b, int64_t e) {
            if (mom.value != Momentum::kNone && a.first_step[t]) {
              update_piece<T>(First(a.hyper), l, t, b, e);
            } else {
              update_piece<T>(Later(a.hyper), l, t, b, e);
            }
          });
        });
      });
    });
  });
}

void adagrad(const TensorLists& l, const AdagradArgs& a, int64_t slot_begin, int64_t slot_end) {
  with_dtype(l.dtype, [&](auto tag) {
    using T = decltype(tag);
    using M = typename MathType<T>::type;
    with_bool(a.maximize, [&](auto maximize) {
      with_bool(a.weight_decay, [&](auto decay) {
        using Update = math::AdagradUpdate<M, maximize.value, decay.value>;
        for_each_piece(l, slot_begin, slot_end, [&](int64_t t, int64_t b, int64_t e) {
          update_piece<T>(Update(a.hyper, static_cast<M>(a.neg_clr[t])), l, t, b, e);
        });
      });
    });
  });
}

void rmsprop(const TensorLists& l, const RmspropArgs& a, int64_t slot_begin, int64_t slot_end) {
  with_dtype(l.dtype, [&](auto tag) {
    using T = decltype(tag);
    using M = typename MathType<T>::type;
    with_bool(a.maximize, [&](auto maximize) {
      with_bool(a.weight_decay, [&](auto decay) {
        with_bool(a.centered, [&](auto centered) {
          with_bool(a.momentum, [&](auto momentum) {
            using Update = math::RmspropUpdate<M, maximize.value, decay.value, centered.value, momentum.value>;
            const Update update(a.hyper);
            for_each_piece(l, slot_begin, slot_end, [&](int64_t t, int64_t b, int64_t e) {
              update_piece<T>(update, l, t, b, e);
            });
          });
        });
      });
    });
  });
}

void traffic(const TensorLists& l, const TrafficArgs& a, int64_t slot_begin, int64_t slot_end) {
  with_dtype(l.dtype, [&](auto tag) {
    using T = decltype(tag);
    using M = typename MathType<T>::type;
    with_enum<1, 2, 3, 4>(a.states, [&](auto states) {
      using Update = math::TrafficUpdate<M, states.value>;
      for_each_piece(l, slot_begin, slot_end, [&](int64_t t, int64_t b, int64_t e) {
        update_piece<T>(Update{}, l, t, b, e);
      });
    });
  });
}

}  // namespace

const KernelTable& table() {
  static const KernelTable t{FUSEDOPT_ISA_NAME, &adam, &sgd, &adagrad, &rmsprop, &traffic};
  return t;
}

}  // namespace FUSEDOPT_ISA
}  // namespace cpu
}  // namespace fusedopt
