// The CUDA kernels' per-item code (csrc/include/davae_ext/*.h), run on the CPU.
//
//   kernel_items SECTION
//   SECTION: divmod | concat | project | align | patch_tile | pos_grad
//
// Each section runs the functions a CUDA thread runs, for every index of the launch, and compares
// the result with a direct computation written here; patch_tile runs each tile as a block of 256
// threads would (thread t takes work items t, t + 256, ...), which is not how the CPU kernel runs
// it (one thread, items in order); pos_grad runs every thread of every block of the d_pos / d_bias
// pass and the kernel's fixed-order combination of their column sums. The latents are given both
// as contiguous tensors and as the two channel ranges of one latent (views read and written in
// place through their strides, planes.h). Prints one line per failure and a summary; exit status
// 1 on any failure. tests/test_kernel_items.py compiles and runs it.
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "davae_ext/divmod.h"
#include "davae_ext/index_math.h"
#include "davae_ext/patch_tile.h"
#include "davae_ext/planes.h"
#include "davae_ext/plane_vectors.h"
#include "davae_ext/pos_grad.h"
#include "davae_ext/vec.h"

using namespace davae;

namespace {

int64_t g_checks = 0, g_failures = 0;

void check(bool ok, const std::string& what) {
  ++g_checks;
  if (!ok && ++g_failures <= 20) std::printf("FAIL %s\n", what.c_str());
}

template <typename T>
const char* type_name() {
  if constexpr (std::is_same_v<T, float>) return "float32";
  if constexpr (std::is_same_v<T, c10::Half>) return "float16";
  return "bfloat16";
}

template <typename T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0);
}

// Values exactly representable in every dtype (multiples of 1/8 in [-4, 4)), so a 16-bit copy is
// exact and a float sum in a fixed order is the same wherever it is computed.
template <typename T>
std::vector<T> random_values(size_t n, std::mt19937& rng) {
  std::uniform_int_distribution<int> dist(-32, 31);
  std::vector<T> v(n);
  for (auto& x : v) x = static_cast<T>(dist(rng) / 8.f);
  return v;
}

// A 16-byte aligned copy (std::vector<T> of 2-byte T guarantees only 2), plus an offset so that
// the VEC = 1 path also sees misaligned data.
template <typename T>
struct Buffer {
  std::vector<unsigned char> raw;
  T* data;
  size_t n;
  Buffer(const std::vector<T>& v, size_t misalign_elems = 0) : raw((v.size() + misalign_elems) * sizeof(T) + 16), n(v.size()) {
    auto addr = reinterpret_cast<std::uintptr_t>(raw.data());
    data = reinterpret_cast<T*>((addr + 15) / 16 * 16) + misalign_elems;
    if (!v.empty()) std::memcpy(data, v.data(), v.size() * sizeof(T));
  }
  std::vector<T> values() const { return std::vector<T>(data, data + n); }
};

template <typename T>
Planes<const T> readonly(const Planes<T>& p) {
  return Planes<const T>{p.data, p.batch_stride, p.channel_stride};
}

// Contiguous [B, channels, HW] planes over `data`.
template <typename T>
Planes<T> contiguous_planes(T* data, int64_t channels, int64_t HW) {
  return Planes<T>{data, channels * HW, HW};
}

// A base [B, C, HW] and detail [B, D, HW] pair, stored either as two contiguous tensors or, with
// `views`, as the channel ranges [0, C) and [C, C + D) of one [B, C + D, HW] latent (batch stride
// (C + D) HW: what latent[:, :C] and latent[:, C:] are). D = 0: base alone.
template <typename T>
struct LatentPair {
  int64_t B, C, D, HW;
  Buffer<T> first, second;
  Planes<T> base, detail;

  LatentPair(const std::vector<T>& base_v, const std::vector<T>& detail_v, int64_t B_, int64_t C_, int64_t D_,
             int64_t HW_, bool views, size_t misalign = 0)
      : B(B_), C(C_), D(D_), HW(HW_),
        first(views ? interleave(base_v, detail_v, B_, C_, D_, HW_) : base_v, misalign),
        second(views ? std::vector<T>() : detail_v, misalign) {
    if (views) {
      base = Planes<T>{first.data, (C + D) * HW, HW};
      detail = Planes<T>{first.data + C * HW, (C + D) * HW, HW};
    } else {
      base = contiguous_planes(first.data, C, HW);
      detail = contiguous_planes(second.data, D, HW);
    }
  }

  static std::vector<T> interleave(const std::vector<T>& base_v, const std::vector<T>& detail_v, int64_t B,
                                   int64_t C, int64_t D, int64_t HW) {
    std::vector<T> latent(B * (C + D) * HW);
    for (int64_t b = 0; b < B; ++b) {
      std::copy(base_v.begin() + b * C * HW, base_v.begin() + (b + 1) * C * HW, latent.begin() + b * (C + D) * HW);
      std::copy(detail_v.begin() + b * D * HW, detail_v.begin() + (b + 1) * D * HW,
                latent.begin() + (b * (C + D) + C) * HW);
    }
    return latent;
  }

  static std::vector<T> read(const Planes<T>& p, int64_t B, int64_t channels, int64_t HW) {
    std::vector<T> v(B * channels * HW);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t c = 0; c < channels; ++c) std::copy(p.plane(b, c), p.plane(b, c) + HW, v.begin() + (b * channels + c) * HW);
    return v;
  }
  std::vector<T> base_values() const { return read(base, B, C, HW); }
  std::vector<T> detail_values() const { return read(detail, B, D, HW); }
};

// ---------------------------------------------------------------------------------------------
// divmod.h
void test_divmod() {
  std::mt19937 rng(1);
  std::vector<int64_t> divisors;
  for (int64_t d = 1; d <= 4096; ++d) divisors.push_back(d);
  for (int s = 12; s < 31; ++s) {
    for (int64_t delta : {-1, 0, 1}) divisors.push_back((int64_t{1} << s) + delta);
  }
  divisors.push_back((int64_t{1} << 31) - 1);
  std::uniform_int_distribution<int64_t> any(1, (int64_t{1} << 31) - 1);
  for (int i = 0; i < 2000; ++i) divisors.push_back(any(rng));
  const int64_t top = (int64_t{1} << 31) - 1;
  for (int64_t d : divisors) {
    const FastDivmod fast(d);
    const Divmod64 slow(d);
    std::vector<int64_t> xs = {0, 1, d - 1, d, d + 1, 2 * d - 1, 2 * d, top, top - 1, top - d, top / d * d,
                               top / d * d - 1};
    for (int i = 0; i < 64; ++i) xs.push_back(any(rng));
    for (int i = 0; i < 64; ++i) xs.push_back(any(rng) % (64 * d + 1));
    for (int64_t x : xs) {
      if (x < 0 || x > top) continue;
      uint32_t q, r;
      fast.divmod(static_cast<uint32_t>(x), q, r);
      int64_t q64, r64;
      slow.divmod(x, q64, r64);
      const bool ok = q == x / d && r == x % d && q64 == x / d && r64 == x % d;
      check(ok, "divmod " + std::to_string(x) + " / " + std::to_string(d) + " gave " + std::to_string(q) + " r " +
                    std::to_string(r));
    }
  }
  // Every dividend below 2^20 for a few divisors (the range of most vector indices).
  for (int64_t d : {3, 7, 12, 48, 96, 255, 1000, 4095}) {
    const FastDivmod fast(d);
    bool ok = true;
    for (uint32_t x = 0; x < (1u << 20); ++x) ok = ok && fast.div(x) == x / d;
    check(ok, "divmod: all x < 2^20 by " + std::to_string(d));
  }
}

// ---------------------------------------------------------------------------------------------
// plane_vectors.h: the elementwise ops for one shape, dtype, vector width and divider.
struct Shape {
  int64_t B, C, D, H, W;
};

std::string label(const char* op, const Shape& s, const char* dtype, int vec, bool fast, bool views,
                  bool detail_first = false) {
  char b[220];
  std::snprintf(b, sizeof(b), "%s %s B=%lld C=%lld D=%lld H=%lld W=%lld VEC=%d %s%s%s", op, dtype, (long long)s.B,
                (long long)s.C, (long long)s.D, (long long)s.H, (long long)s.W, vec, fast ? "FastDivmod" : "Divmod64",
                views ? " views" : "", detail_first ? " detail_first" : "");
  return b;
}

template <int VEC, typename T, typename Div>
void concat_case(const Shape& s, bool views, bool detail_first, std::mt19937& rng) {
  using I = typename Div::index_t;
  const int64_t HW = s.H * s.W, CD = s.C + s.D;
  const size_t misalign = VEC == 1 ? 1 : 0;
  const auto base_v = random_values<T>(s.B * s.C * HW, rng), detail_v = random_values<T>(s.B * s.D * HW, rng);
  std::vector<T> expect(s.B * CD * HW);
  for (int64_t b = 0; b < s.B; ++b)
    for (int64_t ch = 0; ch < CD; ++ch) {
      const bool from_base = detail_first ? ch >= s.D : ch < s.C;
      const int64_t c = detail_first ? (from_base ? ch - s.D : ch) : (from_base ? ch : ch - s.C);
      const T* src = from_base ? &base_v[(b * s.C + c) * HW] : &detail_v[(b * s.D + c) * HW];
      std::copy(src, src + HW, &expect[(b * CD + ch) * HW]);
    }
  const auto g = plane_vectors<Div>(s.B, CD, HW, VEC);
  const LatentPair<T> in(base_v, detail_v, s.B, s.C, s.D, HW, views, misalign);
  Buffer<T> latent(std::vector<T>(expect.size(), T(-99.f)), misalign);
  for (I i = 0; i < g.total; ++i)
    concat_vector<VEC>(latent.data, readonly(in.base), readonly(in.detail), g, i, I(s.C), I(s.D), detail_first);
  check(same_bits(latent.values(), expect),
        label("concat", s, type_name<T>(), VEC, std::is_same_v<Div, FastDivmod>, views, detail_first));
}

// The direct Proj: float mean over each group, channels in order.
template <typename T>
std::vector<float> direct_proj(const std::vector<T>& detail, const Shape& s) {
  const int64_t HW = s.H * s.W, r = s.D / s.C;
  std::vector<float> out(s.B * s.C * HW);
  for (int64_t b = 0; b < s.B; ++b)
    for (int64_t c = 0; c < s.C; ++c)
      for (int64_t x = 0; x < HW; ++x) {
        float acc = 0.f;
        for (int64_t j = 0; j < r; ++j) acc += static_cast<float>(detail[(b * s.D + c * r + j) * HW + x]);
        out[(b * s.C + c) * HW + x] = acc / static_cast<float>(r);
      }
  return out;
}

// project and align read base-shaped inputs (base, the gradient) and detail: with `views` both
// come from one latent's channel ranges. Their outputs are contiguous, as the ops allocate them.
template <int VEC, typename T, typename Div>
void project_case(const Shape& s, bool views, std::mt19937& rng) {
  using I = typename Div::index_t;
  const int64_t HW = s.H * s.W, r = s.D / s.C;
  const size_t misalign = VEC == 1 ? 1 : 0;
  const auto detail_v = random_values<T>(s.B * s.D * HW, rng), grad_v = random_values<T>(s.B * s.C * HW, rng);
  const auto proj = direct_proj(detail_v, s);
  std::vector<T> expect(proj.size()), expect_back(detail_v.size());
  for (size_t e = 0; e < proj.size(); ++e) expect[e] = static_cast<T>(proj[e]);
  for (int64_t b = 0; b < s.B; ++b)
    for (int64_t d = 0; d < s.D; ++d)
      for (int64_t x = 0; x < HW; ++x)
        expect_back[(b * s.D + d) * HW + x] =
            static_cast<T>(static_cast<float>(grad_v[(b * s.C + d / r) * HW + x]) * (1.f / static_cast<float>(r)));
  const auto g = plane_vectors<Div>(s.B, s.C, HW, VEC);
  const std::string what = label("project", s, type_name<T>(), VEC, std::is_same_v<Div, FastDivmod>, views);
  const LatentPair<T> in(grad_v, detail_v, s.B, s.C, s.D, HW, views, misalign);  // (grad, detail)
  Buffer<T> out(std::vector<T>(expect.size(), T(-99.f)), misalign);
  for (I i = 0; i < g.total; ++i) project_vector<VEC>(readonly(in.detail), out.data, g, I(r), i);
  check(same_bits(out.values(), expect), what + " forward");
  Buffer<T> d_detail(std::vector<T>(detail_v.size(), T(-99.f)), misalign);
  for (I i = 0; i < g.total; ++i)
    project_backward_vector<VEC>(readonly(in.base), contiguous_planes(d_detail.data, s.D, HW), g, I(r), i);
  check(same_bits(d_detail.values(), expect_back), what + " backward");
}

template <int VEC, typename T, typename Div>
void align_case(const Shape& s, bool views, std::mt19937& rng) {
  using I = typename Div::index_t;
  const int64_t HW = s.H * s.W, r = s.D / s.C;
  const size_t misalign = VEC == 1 ? 1 : 0;
  const auto detail_v = random_values<T>(s.B * s.D * HW, rng), base_v = random_values<T>(s.B * s.C * HW, rng);
  const auto grad_v = random_values<T>(base_v.size(), rng);
  const auto proj = direct_proj(detail_v, s);
  const auto g = plane_vectors<Div>(s.B, s.C, HW, VEC);
  const std::string what = label("align", s, type_name<T>(), VEC, std::is_same_v<Div, FastDivmod>, views);
  const LatentPair<T> in(base_v, detail_v, s.B, s.C, s.D, HW, views, misalign);
  const LatentPair<T> grad(grad_v, detail_v, s.B, s.C, s.D, HW, views, misalign);  // the gradient as a view too
  const Planes<const T> detail = readonly(in.detail), base = readonly(in.base);
  // align_diff against the direct difference, element by element (exact: same float operations).
  bool diff_ok = true;
  for (I i = 0; i < g.total; ++i) {
    float diff[VEC];
    align_diff<VEC>(detail, base, g, I(r), i, diff);
    for (int k = 0; k < VEC; ++k) {
      const int64_t e = static_cast<int64_t>(i) * VEC + k;
      diff_ok = diff_ok && diff[k] == proj[e] - static_cast<float>(base_v[e]);
    }
  }
  check(diff_ok, what + " diff");
  // Backward, per-element grad (reduction none) and a scalar grad with the mean's scale.
  for (bool elementwise : {true, false}) {
    const float g0 = 0.75f, scale = elementwise ? 2.f : 2.f / static_cast<float>(base_v.size());
    std::vector<T> expect_base(base_v.size()), expect_detail(detail_v.size());
    for (int64_t b = 0; b < s.B; ++b)
      for (int64_t c = 0; c < s.C; ++c)
        for (int64_t x = 0; x < HW; ++x) {
          const int64_t e = (b * s.C + c) * HW + x;
          const float gk = elementwise ? static_cast<float>(grad_v[e]) : g0;
          const float d_proj = scale * gk * (proj[e] - static_cast<float>(base_v[e]));
          expect_base[e] = static_cast<T>(-d_proj);
          for (int64_t j = 0; j < r; ++j)
            expect_detail[(b * s.D + c * r + j) * HW + x] = static_cast<T>(d_proj * (1.f / static_cast<float>(r)));
        }
    Buffer<T> d_base(std::vector<T>(base_v.size(), T(-99.f)), misalign),
        d_detail(std::vector<T>(detail_v.size(), T(-99.f)), misalign);
    const Planes<const T> per_element = elementwise ? readonly(grad.base) : Planes<const T>{nullptr, 0, 0};
    for (I i = 0; i < g.total; ++i)
      align_loss_backward_vector<VEC>(per_element, g0, scale, detail, base, contiguous_planes(d_detail.data, s.D, HW),
                                      d_base.data, g, I(r), i);
    check(same_bits(d_base.values(), expect_base) && same_bits(d_detail.values(), expect_detail),
          what + (elementwise ? " backward (per-element grad)" : " backward (scalar grad)"));
  }
}

const std::vector<Shape> kLatentShapes = {
    {2, 4, 8, 5, 7},     // odd plane: VEC = 1 only
    {3, 16, 16, 8, 8},   // whole vectors, r = 1
    {2, 3, 9, 4, 6},     // r = 3, HW = 24 (whole float32 and 16-bit vectors)
    {1, 32, 96, 16, 16}, // ImageNet's channels
    {4, 2, 4, 1, 8},
};

template <typename T, typename Div>
void elementwise_all(const char* section, std::mt19937& rng) {
  constexpr int kVec = vec16<T>();
  for (const Shape& s : kLatentShapes) {
    const bool whole = (s.H * s.W) % kVec == 0;
    for (bool views : {false, true}) {
      if (!std::strcmp(section, "concat")) {
        for (bool df : {false, true}) {
          concat_case<1, T, Div>(s, views, df, rng);
          if (whole) concat_case<kVec, T, Div>(s, views, df, rng);
        }
      } else if (!std::strcmp(section, "project")) {
        project_case<1, T, Div>(s, views, rng);
        if (whole) project_case<kVec, T, Div>(s, views, rng);
      } else {
        align_case<1, T, Div>(s, views, rng);
        if (whole) align_case<kVec, T, Div>(s, views, rng);
      }
    }
  }
}

void test_elementwise(const char* section) {
  std::mt19937 rng(2);
  elementwise_all<float, FastDivmod>(section, rng);
  elementwise_all<float, Divmod64>(section, rng);
  elementwise_all<c10::Half, FastDivmod>(section, rng);
  elementwise_all<c10::BFloat16, FastDivmod>(section, rng);
  elementwise_all<c10::BFloat16, Divmod64>(section, rng);
}

// ---------------------------------------------------------------------------------------------
// patch_tile.h, as a CUDA block runs it: 256 threads, thread t taking items t, t + 256, ...
constexpr int kBlock = 256;

struct PatchCase {
  int64_t B, C, D, H, W, p, max_tokens;
};

// The direct im2col of the concatenated latent: A[m, k], k = ch * p^2 + py * p + px.
template <typename T>
std::vector<T> direct_im2col(const PatchCase& pc, const std::vector<T>& base_v, const std::vector<T>& detail_v,
                             bool detail_first) {
  const int64_t HW = pc.H * pc.W, p = pc.p, Hp = pc.H / p, Wp = pc.W / p, CD = pc.C + pc.D, K = CD * p * p;
  std::vector<T> expect(pc.B * Hp * Wp * K);
  for (int64_t b = 0; b < pc.B; ++b)
    for (int64_t ty = 0; ty < Hp; ++ty)
      for (int64_t tx = 0; tx < Wp; ++tx)
        for (int64_t ch = 0; ch < CD; ++ch)
          for (int64_t py = 0; py < p; ++py)
            for (int64_t px = 0; px < p; ++px) {
              const bool from_base = detail_first ? ch >= pc.D : ch < pc.C;
              const int64_t c = detail_first ? (from_base ? ch - pc.D : ch) : (from_base ? ch : ch - pc.C);
              const int64_t yx = (ty * p + py) * pc.W + tx * p + px;
              expect[((b * Hp + ty) * Wp + tx) * K + (ch * p + py) * p + px] =
                  from_base ? base_v[(b * pc.C + c) * HW + yx] : detail_v[(b * pc.D + c) * HW + yx];
            }
  return expect;
}

// Random base and detail latents of a patch case and their direct im2col.
template <typename T>
struct PatchData {
  std::vector<T> base, detail, A;
  PatchData(const PatchCase& pc, bool detail_first, std::mt19937& rng)
      : base(random_values<T>(pc.B * pc.C * pc.H * pc.W, rng)),
        detail(random_values<T>(pc.B * pc.D * pc.H * pc.W, rng)),
        A(direct_im2col(pc, base, detail, detail_first)) {}
};

std::string patch_label(const char* kind, const char* dtype, const PatchCase& pc, bool detail_first) {
  char what[200];
  std::snprintf(what, sizeof(what), "%s %s B=%lld C=%lld D=%lld H=%lld W=%lld p=%lld tokens<=%lld%s", kind, dtype,
                (long long)pc.B, (long long)pc.C, (long long)pc.D, (long long)pc.H, (long long)pc.W, (long long)pc.p,
                (long long)pc.max_tokens, detail_first ? " detail_first" : "");
  return what;
}

template <typename T>
void patch_tile_case(const PatchCase& pc, bool detail_first, bool views, std::mt19937& rng) {
  const int64_t p = pc.p, HW = pc.H * pc.W;
  const PatchData<T> data(pc, detail_first, rng);
  const std::vector<T>& expect = data.A;
  const LatentPair<T> in(data.base, data.detail, pc.B, pc.C, pc.D, HW, views);
  Buffer<T> A(std::vector<T>(expect.size(), T(-99.f)));
  PatchTilePlan plan{};
  const bool aligned = planes_aligned16(in.base) && (pc.D == 0 || planes_aligned16(in.detail));
  const bool planned = plan_patch_tiles(pc.B, pc.C, pc.D, pc.H, pc.W, p, detail_first, sizeof(T), aligned,
                                        pc.max_tokens, 32 * 1024, plan);
  const std::string what = patch_label("patch_tile", type_name<T>(), pc, detail_first) + (views ? " views" : "");
  check(planned, what + ": planned");
  if (!planned) return;
  std::vector<T> buf(plan.buffer_elems);
  bool vec_used = false;
  // D = 0: base is the one latent and detail is never read (the ops pass base twice).
  const Planes<const T> base = readonly(in.base), detail = pc.D > 0 ? readonly(in.detail) : base;
  with_patch_size(p, [&](auto patch) {
    constexpr int P = decltype(patch)::value;
    with_tile_vec<T>(plan, [&](auto vec) {
      constexpr int VEC = decltype(vec)::value;
      vec_used = VEC > 1;
      for (int64_t tile = 0; tile < plan.tiles; ++tile) {  // gather: latent phase, barrier, rows phase
        const PatchTile t = patch_tile(tile, plan.args);
        std::fill(buf.begin(), buf.end(), T(-77.f));
        for (int tid = 0; tid < kBlock; ++tid)
          patch_tile_latent_phase<false, P, VEC>(base, detail, buf.data(), plan.args, t, tid, kBlock);
        for (int tid = 0; tid < kBlock; ++tid) patch_tile_rows_phase<false, VEC>(A.data, buf.data(), plan.args, t, tid, kBlock);
      }
    });
  });
  const std::string how = vec_used ? " (16-byte)" : " (scalar)";
  check(same_bits(A.values(), expect), what + how + " gather");
  // Scatter into a pair of the same layout filled with a marker: every element must be written.
  Buffer<T> expect_A(expect);
  LatentPair<T> out(std::vector<T>(data.base.size(), T(-99.f)), std::vector<T>(data.detail.size(), T(-99.f)), pc.B,
                    pc.C, pc.D, HW, views);
  const Planes<T> d_detail = pc.D > 0 ? out.detail : out.base;
  with_patch_size(p, [&](auto patch) {
    constexpr int P = decltype(patch)::value;
    with_tile_vec<T>(plan, [&](auto vec) {
      constexpr int VEC = decltype(vec)::value;
      for (int64_t tile = 0; tile < plan.tiles; ++tile) {  // scatter: rows phase, barrier, latent phase
        const PatchTile t = patch_tile(tile, plan.args);
        std::fill(buf.begin(), buf.end(), T(-77.f));
        for (int tid = 0; tid < kBlock; ++tid) patch_tile_rows_phase<true, VEC>(expect_A.data, buf.data(), plan.args, t, tid, kBlock);
        for (int tid = 0; tid < kBlock; ++tid)
          patch_tile_latent_phase<true, P, VEC>(out.base, d_detail, buf.data(), plan.args, t, tid, kBlock);
      }
    });
  });
  check(same_bits(out.base_values(), data.base) && same_bits(out.detail_values(), data.detail),
        what + how + " scatter");
}

const std::vector<PatchCase> kPatchCases = {
      {2, 16, 16, 16, 16, 2, 64},   // SD3's channels and patch, one tile per token row
      {1, 16, 16, 32, 64, 2, 8},    // several tiles per row (the CPU kernel's tile size)
      {2, 16, 16, 16, 40, 2, 8},    // a partial last tile of a row
      {3, 32, 96, 4, 8, 1, 64},     // ImageNet's channels, p = 1
      {1, 2, 4, 9, 9, 3, 64},       // p = 3 (runtime patch size), odd sizes: scalar
      {2, 1, 2, 8, 12, 4, 2},       // p = 4
      {1, 16, 16, 8, 56, 2, 64},    // 28 tokens a row
      {2, 32, 0, 16, 16, 2, 64},    // one latent (patch_embed: D = 0)
      {3, 5, 0, 6, 10, 2, 8},       // one latent, odd channel count
};

void test_patch_tile() {
  std::mt19937 rng(3);
  for (const PatchCase& pc : kPatchCases)
    for (bool detail_first : {false, true}) {
      if (pc.D == 0 && detail_first) continue;  // one latent has no order
      for (bool views : {false, true}) {
        if (pc.D == 0 && views) continue;
        patch_tile_case<float>(pc, detail_first, views, rng);
        patch_tile_case<c10::Half>(pc, detail_first, views, rng);
        patch_tile_case<c10::BFloat16>(pc, detail_first, views, rng);
      }
    }
}

// ---------------------------------------------------------------------------------------------
// pos_grad.h: every thread of every block of the d_pos / d_bias pass, then the kernel's
// combination (row groups in order into per-chunk partials, partials in chunk order into d_bias).
// The values are multiples of 1/8 and the sums small, so every float sum is exact in any order:
// a missed or doubled row shows, and the expected values are exact.
template <int VEC, typename T>
void pos_grad_case(int64_t B, int64_t T_, int64_t N, int rows, bool with_pos, std::mt19937& rng) {
  const auto grad_v = random_values<T>(B * T_ * N, rng);
  Buffer<T> grad(grad_v), d_pos(std::vector<T>(T_ * N, T(-99.f)));
  const int64_t column_blocks = (N + 32 * VEC - 1) / (32 * VEC), chunks = (T_ + rows - 1) / rows;
  std::vector<float> partial(chunks * N, -99.f), red(kPosGroups * 32 * VEC);
  for (int64_t cy = 0; cy < chunks; ++cy)
    for (int64_t cx = 0; cx < column_blocks; ++cx) {
      for (int y = 0; y < kPosGroups; ++y)
        for (int x = 0; x < 32; ++x) {
          float col[VEC];
          pos_grad_thread<VEC>(grad.data, with_pos ? d_pos.data : nullptr, B, T_, N, (cx * 32 + x) * VEC, cy * rows,
                               rows, y, col);
          for (int j = 0; j < VEC; ++j) red[(y * 32 + x) * VEC + j] = col[j];
        }
      for (int x = 0; x < 32; ++x) {
        const int64_t n = (cx * 32 + x) * VEC;
        if (n >= N) continue;
        for (int j = 0; j < VEC; ++j) {
          float sum = 0.f;
          for (int y = 0; y < kPosGroups; ++y) sum += red[(y * 32 + x) * VEC + j];
          partial[cy * N + n + j] = sum;
        }
      }
    }
  std::vector<T> d_bias(N), expect_bias(N), expect_pos(T_ * N);
  for (int64_t n = 0; n < N; ++n) {
    float v = 0.f;
    for (int64_t c = 0; c < chunks; ++c) v += partial[c * N + n];
    d_bias[n] = static_cast<T>(v);
    double total = 0;
    for (int64_t t = 0; t < T_; ++t) {
      double pos = 0;
      for (int64_t b = 0; b < B; ++b) pos += static_cast<float>(grad_v[(b * T_ + t) * N + n]);
      expect_pos[t * N + n] = static_cast<T>(static_cast<float>(pos));
      total += pos;
    }
    expect_bias[n] = static_cast<T>(static_cast<float>(total));
  }
  char what[160];
  std::snprintf(what, sizeof(what), "pos_grad %s VEC=%d B=%lld T=%lld N=%lld rows=%d%s", type_name<T>(), VEC,
                (long long)B, (long long)T_, (long long)N, rows, with_pos ? "" : " (no d_pos)");
  check(same_bits(d_bias, expect_bias), std::string(what) + " d_bias");
  if (with_pos) check(same_bits(d_pos.values(), expect_pos), std::string(what) + " d_pos");
}

void test_pos_grad() {
  std::mt19937 rng(5);
  struct Case { int64_t B, T, N; int rows; };
  for (const Case& c : {Case{4, 37, 48, 8}, Case{3, 64, 96, 16}, Case{2, 130, 40, 64}, Case{1, 9, 264, 8},
                        Case{5, 256, 72, 8}, Case{4, 100, 8, 32}}) {
    for (bool with_pos : {true, false}) {
      pos_grad_case<1, float>(c.B, c.T, c.N, c.rows, with_pos, rng);
      pos_grad_case<4, float>(c.B, c.T, c.N, c.rows, with_pos, rng);
      pos_grad_case<1, c10::BFloat16>(c.B, c.T, c.N, c.rows, with_pos, rng);
      if (c.N % 8 == 0) pos_grad_case<8, c10::BFloat16>(c.B, c.T, c.N, c.rows, with_pos, rng);
      if (c.N % 8 == 0) pos_grad_case<8, c10::Half>(c.B, c.T, c.N, c.rows, with_pos, rng);
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::printf("usage: %s divmod|concat|project|align|patch_tile|pos_grad\n", argv[0]);
    return 2;
  }
  const std::string section = argv[1];
  if (section == "divmod") {
    test_divmod();
  } else if (section == "concat" || section == "project" || section == "align") {
    test_elementwise(section.c_str());
  } else if (section == "patch_tile") {
    test_patch_tile();
  } else if (section == "pos_grad") {
    test_pos_grad();
  } else {
    std::printf("unknown section %s\n", section.c_str());
    return 2;
  }
  std::printf("%s: %lld checks, %lld failures\n", section.c_str(), (long long)g_checks, (long long)g_failures);
  return g_failures == 0 ? 0 : 1;
}
