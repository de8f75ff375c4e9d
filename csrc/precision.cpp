#include "precision.h"

#include <cstdlib>
#include <string>

#include "message.h"

namespace fusedopt {
namespace {

bool is_16_bit(at::ScalarType t) { return t == at::kBFloat16 || t == at::kHalf; }

}  // namespace

Precision::Precision(const char* op, c10::string_view param_precision, std::optional<at::ScalarType> state_dtype,
                     bool stochastic_states, int64_t seed, at::IntArrayRef rng_ids, at::IntArrayRef index_map,
                     at::TensorList companions)
    : state_dtype_(state_dtype),
      state_stochastic_(stochastic_states),
      seed_(seed),
      rng_ids_(rng_ids),
      index_map_(index_map),
      companions_(companions) {
  if (param_precision == "stochastic") {
    param_stochastic_ = true;
  } else if (param_precision == "compensated") {
    param_ = cpu::ParamStorage::kCompensated;
  } else if (param_precision == "master") {
    param_ = cpu::ParamStorage::kMaster;
  } else {
    FUSEDOPT_CHECK_VALUE(param_precision == "nearest", "fusedopt.", op, ": param_precision must be 'nearest', ",
                         "'stochastic', 'compensated' or 'master', got '", std::string(param_precision), "'");
  }
  FUSEDOPT_CHECK_VALUE(!state_dtype.has_value() || *state_dtype == at::kBFloat16 || *state_dtype == at::kFloat ||
                           *state_dtype == at::kByte,
                       "fusedopt.", op, ": state_dtype must be bfloat16, float32 or uint8 (blockwise 8-bit), ",
                       "or None (the params'), got ", *state_dtype);
}

PreparedLists Precision::prepare(const char* op, c10::DeviceType device, at::TensorList params,
                                 at::TensorList grads, std::initializer_list<NamedList> states,
                                 bool grads_mutable) const {
  ListDtypes dtypes;
  dtypes.states = state_dtype_;
  // The CUDA kernel for these (cuda/precision_apply.cuh) compiles but has not
  // yet run on a GPU: it stays behind a switch until tests/test_cuda_precision.py
  // has passed on one (tools/gpu_session.sh sets it).
  const bool plain = param_ == cpu::ParamStorage::kPlain && !param_stochastic_ && !state_stochastic_ &&
                     (!state_dtype_.has_value() || params.empty() || *state_dtype_ == params[0].scalar_type());
  const char* unverified = std::getenv("FUSEDOPT_CUDA_MODES");
  FUSEDOPT_CHECK(plain || device == c10::DeviceType::CPU || (unverified != nullptr && std::string(unverified) == "1"),
                 "fusedopt.", op,
                 ": the low-precision modes (param_precision, state_dtype, stochastic_states) run on the CPU only "
                 "so far (their CUDA kernel is not yet verified on a GPU; FUSEDOPT_CUDA_MODES=1 enables it)");
  if (param_ != cpu::ParamStorage::kPlain && !params.empty()) {
    FUSEDOPT_CHECK(params[0].defined() && is_16_bit(params[0].scalar_type()), "fusedopt.", op,
                   ": compensated and master params are for bfloat16 and float16 params, got ",
                   params[0].defined() ? params[0].scalar_type() : at::kFloat);
  }
  if (param_ == cpu::ParamStorage::kMaster) {
    // The kernel updates the masters; the params are written from them.
    FUSEDOPT_CHECK(companions_.size() == params.size(), "fusedopt.", op, ": got ", params.size(),
                   " params but ", companions_.size(), " master params");
    FUSEDOPT_CHECK(companions_.empty() || (companions_[0].defined() && companions_[0].scalar_type() == at::kFloat),
                   "fusedopt.", op, ": master params must be float32");
    if (!params.empty()) {
      dtypes.grads = params[0].scalar_type();
      dtypes.companion_dtype = params[0].scalar_type();
    }
    dtypes.companion = {"params", params, true};
    return PreparedLists(op, device, companions_, grads, states, {}, grads_mutable, dtypes);
  }
  if (param_ == cpu::ParamStorage::kCompensated) {
    dtypes.companion = {"param_residuals", companions_, true};
    dtypes.companion_dtype = at::kBFloat16;
  }
  return PreparedLists(op, device, params, grads, states, {}, grads_mutable, dtypes);
}

void Precision::quant_slots(PreparedLists& prepared, std::initializer_list<cpu::Quant> slots) {
  cpu::TensorLists& l = prepared.lists();
  if (l.storage.state_dtype != cpu::Dtype::kQuant8) return;
  int k = 1;
  for (cpu::Quant q : slots) {
    if (q != cpu::Quant::kNone) l.storage.quant[k++] = q;
  }
}

void Precision::apply(const char* op, PreparedLists& prepared, const std::vector<double>& host_steps,
                      bool device_steps) {
  cpu::TensorLists& l = prepared.lists();
  const size_t n = static_cast<size_t>(l.count);
  l.storage.param = param_;
  l.storage.param_stochastic = param_stochastic_;
  l.storage.state_stochastic = state_stochastic_;
  // 8-bit non-negative states round stochastically (fusedopt/quantize.h).
  bool stochastic_codes = false;
  for (cpu::Quant q : l.storage.quant) stochastic_codes = stochastic_codes || q == cpu::Quant::kUnsigned;
  if (!param_stochastic_ && !state_stochastic_ && !stochastic_codes) return;
  FUSEDOPT_CHECK(!device_steps, "fusedopt.", op,
                 ": stochastic rounding with step counts on the device (capturable) is not supported yet");
  FUSEDOPT_CHECK(rng_ids_.size() == n, "fusedopt.", op, ": stochastic rounding needs one rng_id per param, got ",
                 rng_ids_.size(), " for ", n, " params");
  FUSEDOPT_CHECK(host_steps.size() == n, "fusedopt.", op, ": stochastic rounding needs a step count per param");
  keys_.resize(n);
  for (size_t i = 0; i < n; ++i) {
    keys_[i] = math::stream_key(static_cast<uint64_t>(seed_), static_cast<uint64_t>(rng_ids_[i]),
                                static_cast<uint64_t>(host_steps[i]), math::kParamStream);
  }
  l.storage.keys = keys_.data();
  if (!index_map_.empty()) {
    FUSEDOPT_CHECK(index_map_.size() == 3 * n, "fusedopt.", op, ": index_map holds ", index_map_.size(),
                   " numbers for ", n, " params; it takes three per param");
    index_.resize(n);
    for (size_t i = 0; i < n; ++i) {
      index_[i] = {index_map_[3 * i], index_map_[3 * i + 1], index_map_[3 * i + 2]};
      FUSEDOPT_CHECK(index_[i].row_local > 0 && index_[i].row_global >= index_[i].row_local, "fusedopt.", op,
                     ": index_map of param ", i, " needs 0 < row_local <= row_global");
    }
    l.storage.index = index_.data();
  }
}

}  // namespace fusedopt
