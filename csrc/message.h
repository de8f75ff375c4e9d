// Error messages built as std::string, never through std::ostream.
//
// On the GPU image (torch 2.11 built with gcc-toolset-13, the extension with
// Ubuntu g++ 13.3) any number that code compiled into the extension formats
// through an ostream kills the process (DESIGN.md, "Facts about the build").
// TORCH_CHECK(cond, "a", 5) does exactly that (c10::str streams its
// arguments), while TORCH_CHECK(cond, one_std_string) passes the string
// through untouched. So every check here goes through FUSEDOPT_CHECK, whose
// message is concatenated below from std::to_string, snprintf and the names
// c10 already holds as strings. tools/check_stream_numbers.py fails CI if
// the built library imports an ostream number inserter again.
#pragma once

#include <c10/core/Device.h>
#include <c10/core/DeviceType.h>
#include <c10/core/ScalarType.h>
#include <c10/util/ArrayRef.h>
#include <c10/util/Exception.h>

#include <cstdio>
#include <string>
#include <type_traits>

namespace fusedopt {
namespace detail {

inline void append(std::string& s, const char* x) { s += x; }
inline void append(std::string& s, const std::string& x) { s += x; }
inline void append(std::string& s, char x) { s += x; }
inline void append(std::string& s, bool x) { s += x ? "True" : "False"; }

template <typename I, std::enable_if_t<std::is_integral_v<I>, int> = 0>
inline void append(std::string& s, I x) {
  s += std::to_string(x);
}

inline void append(std::string& s, double x) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.9g", x);
  s += buf;
}

inline void append(std::string& s, c10::ScalarType x) { s += c10::toString(x); }
inline void append(std::string& s, c10::DeviceType x) { s += c10::DeviceTypeName(x, /*lower_case=*/true); }
inline void append(std::string& s, const c10::Device& x) { s += x.str(); }

inline void append(std::string& s, c10::IntArrayRef sizes) {
  s += '[';
  for (size_t i = 0; i < sizes.size(); ++i) {
    if (i > 0) s += ", ";
    s += std::to_string(sizes[i]);
  }
  s += ']';
}

}  // namespace detail

template <typename... Args>
std::string message(const Args&... args) {
  std::string s;
  (detail::append(s, args), ...);
  return s;
}

}  // namespace fusedopt

// TORCH_CHECK / TORCH_CHECK_VALUE (RuntimeError / ValueError in Python) with
// the message built by fusedopt::message, only when the check fails.
#define FUSEDOPT_CHECK(cond, ...) TORCH_CHECK(cond, ::fusedopt::message(__VA_ARGS__))
#define FUSEDOPT_CHECK_VALUE(cond, ...) TORCH_CHECK_VALUE(cond, ::fusedopt::message(__VA_ARGS__))
