// The avx512 kernels once more, for CPUs that also have AVX512_BF16 (Zen 4,
// Sapphire Rapids and later): see kernels_avx512.cpp.
#define FUSEDOPT_AVX512_BF16 1
#include "kernels_avx512.cpp"
