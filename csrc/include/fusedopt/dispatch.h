// Turning runtime options into template arguments, once per call, so inner
// loops never test an option. Host code shared by the CPU and CUDA drivers.
#pragma once

#include <type_traits>

namespace fusedopt {

template <class Fn>
inline void with_bool(bool b, Fn&& fn) {
  if (b) fn(std::true_type{}); else fn(std::false_type{});
}

// Calls fn(std::integral_constant<E, v>) for the one listed v equal to value.
template <auto... Values, typename E, class Fn>
inline void with_enum(E value, Fn&& fn) {
  ((value == Values ? (fn(std::integral_constant<E, Values>{}), 0) : 0), ...);
}

}  // namespace fusedopt
