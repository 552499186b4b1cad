// Fused view renderer: crop + antialiased resize, flip, colour jitter, grayscale, Gaussian blur, uint8 out.
// Each thread renders whole views one at a time, so every intermediate of a view stays in cache. The threads are a
// persistent pool, asleep between calls. Built and called by view_env/render/native.py.
#include <pthread.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#if defined(__AVX__)
#include <immintrin.h>
#endif

namespace {

// SIMD through GCC/Clang vector extensions: 16 float lanes with AVX-512, else 8 (lowered to what the CPU has).
#if defined(__AVX512F__)
constexpr int kLanes = 16;
#else
constexpr int kLanes = 8;
#endif
typedef float vfloat __attribute__((vector_size(kLanes * sizeof(float))));

inline vfloat load(const float* p) {
  vfloat v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline vfloat load(const uint8_t* p) {
#if defined(__AVX512F__)
  return (vfloat)_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
#elif defined(__AVX2__)
  return (vfloat)_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
#else
  vfloat v;
  for (int l = 0; l < kLanes; ++l) v[l] = static_cast<float>(p[l]);
  return v;
#endif
}
inline void store(float* p, vfloat v) { std::memcpy(p, &v, sizeof v); }

// A 1-D linear map with k taps per output: output o = sum_t w[o * k + t] * input[idx[o * k + t]].
struct Taps {
  int k = 0;
  std::vector<int32_t> idx;
  std::vector<float> w;
  int lo = 0, hi = 0;  // the inputs [lo, hi) that carry weight
};

// PIL's and torchvision's antialiased bilinear resize of the input interval [start, stop) (pixels of an axis of
// n) onto out pixels: a triangle filter whose support grows with the downscale factor (plain bilinear when
// upscaling), renormalised where it leaves the image. reverse lists the outputs right to left (a flip).
void resize_taps(double start, double stop, int n, int out, bool reverse, Taps& t) {
  const double scale = (stop - start) / out;
  const double support = std::max(scale, 1.0);
  t.k = 2 * static_cast<int>(std::ceil(support)) + 1;
  t.idx.assign(static_cast<size_t>(out) * t.k, 0);
  t.w.assign(static_cast<size_t>(out) * t.k, 0.0f);
  t.lo = n;
  t.hi = 0;
  for (int o = 0; o < out; ++o) {
    const double center = start + (o + 0.5) * scale;
    const int first = std::max(static_cast<int>(std::floor(center - support + 0.5)), 0);
    const int last = std::min(static_cast<int>(std::floor(center + support + 0.5)), n);
    const int count = std::min(last - first, t.k);
    const size_t row = static_cast<size_t>(reverse ? out - 1 - o : o) * t.k;
    auto weight = [&](int i) { return std::max(0.0, 1.0 - std::fabs((first + i - center + 0.5) / support)); };
    double total = 0.0;
    for (int i = 0; i < count; ++i) total += weight(i);
    if (count <= 0 || total <= 0.0) {  // a box outside the image, which callers reject: nearest pixel
      const int nearest = std::min(std::max(static_cast<int>(std::floor(center)), 0), n - 1);
      t.idx[row] = nearest;
      t.w[row] = 1.0f;
      t.lo = std::min(t.lo, nearest);
      t.hi = std::max(t.hi, nearest + 1);
      continue;
    }
    for (int i = 0; i < count; ++i) {
      t.idx[row + i] = first + i;
      t.w[row + i] = static_cast<float>(weight(i) / total);
    }
    for (int i = count; i < t.k; ++i) t.idx[row + i] = first;  // zero weight, index kept in range
    t.lo = std::min(t.lo, first);
    t.hi = std::max(t.hi, first + count);
  }
}

// Gaussian taps of the given radius, with torch's "reflect" padding (the edge pixel is not repeated).
void blur_taps(int n, int radius, double sigma, Taps& t) {
  t.k = 2 * radius + 1;
  t.idx.assign(static_cast<size_t>(n) * t.k, 0);
  t.w.assign(static_cast<size_t>(n) * t.k, 0.0f);
  std::vector<double> g(t.k);
  double total = 0.0;
  for (int i = 0; i < t.k; ++i) {
    const double x = (i - radius) / sigma;
    g[i] = std::exp(-0.5 * x * x);
    total += g[i];
  }
  for (int o = 0; o < n; ++o) {
    for (int i = 0; i < t.k; ++i) {
      int j = o - radius + i;
      j = j < 0 ? -j : (j >= n ? 2 * (n - 1) - j : j);
      t.idx[static_cast<size_t>(o) * t.k + i] = j;
      t.w[static_cast<size_t>(o) * t.k + i] = static_cast<float>(g[i] / total);
    }
  }
}

// out[o][x] = sum_t w[o][t] * in[idx[o][t] - shift][x] for x < width: vectorised over the contiguous x, four
// vectors of outputs held in registers across the taps.
template <typename T>
void row_pass(const T* in, int64_t in_stride, int shift, int width, const Taps& t, int rows, float* out,
              int64_t out_stride) {
  for (int o = 0; o < rows; ++o) {
    float* dst = out + o * out_stride;
    const int32_t* idx = t.idx.data() + static_cast<size_t>(o) * t.k;
    const float* w = t.w.data() + static_cast<size_t>(o) * t.k;
    int taps = t.k;
    while (taps > 1 && w[taps - 1] == 0.0f) --taps;
    auto row = [&](int i) { return in + static_cast<int64_t>(idx[i] - shift) * in_stride; };
    int x = 0;
    for (; x + 4 * kLanes <= width; x += 4 * kLanes) {
      const T* s = row(0) + x;
      vfloat a0 = w[0] * load(s), a1 = w[0] * load(s + kLanes);
      vfloat a2 = w[0] * load(s + 2 * kLanes), a3 = w[0] * load(s + 3 * kLanes);
      for (int i = 1; i < taps; ++i) {
        s = row(i) + x;
        const float wi = w[i];
        a0 += wi * load(s);
        a1 += wi * load(s + kLanes);
        a2 += wi * load(s + 2 * kLanes);
        a3 += wi * load(s + 3 * kLanes);
      }
      store(dst + x, a0);
      store(dst + x + kLanes, a1);
      store(dst + x + 2 * kLanes, a2);
      store(dst + x + 3 * kLanes, a3);
    }
    for (; x + kLanes <= width; x += kLanes) {
      vfloat a = w[0] * load(row(0) + x);
      for (int i = 1; i < taps; ++i) a += w[i] * load(row(i) + x);
      store(dst + x, a);
    }
    for (; x < width; ++x) {
      float a = w[0] * static_cast<float>(row(0)[x]);
      for (int i = 1; i < taps; ++i) a += w[i] * static_cast<float>(row(i)[x]);
      dst[x] = a;
    }
  }
}

#if defined(__AVX__)
// One 8 x 8 block of out[c][r] = in[r][c], in registers.
inline void transpose_8x8(const float* in, int64_t in_stride, float* out, int64_t out_stride) {
  __m256 r[8], t[8];
  for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(in + i * in_stride);
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 8; i += 4) {
    r[i] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
    r[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
    r[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
    r[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  for (int i = 0; i < 4; ++i) {
    _mm256_storeu_ps(out + i * out_stride, _mm256_permute2f128_ps(r[i], r[i + 4], 0x20));
    _mm256_storeu_ps(out + (i + 4) * out_stride, _mm256_permute2f128_ps(r[i], r[i + 4], 0x31));
  }
}
#endif

// out[c][r] = in[r][c] for in of rows x cols.
void transpose(const float* __restrict in, int rows, int cols, float* __restrict out) {
  int r0 = 0;
#if defined(__AVX__)
  for (; r0 + 8 <= rows; r0 += 8) {
    const float* src = in + static_cast<int64_t>(r0) * cols;
    int c = 0;
    for (; c + 8 <= cols; c += 8) transpose_8x8(src + c, cols, out + static_cast<int64_t>(c) * rows + r0, rows);
    for (; c < cols; ++c) {
      for (int r = 0; r < 8; ++r) out[static_cast<int64_t>(c) * rows + r0 + r] = src[int64_t{r} * cols + c];
    }
  }
#endif
  for (int r = r0; r < rows; ++r) {
    for (int c = 0; c < cols; ++c) out[static_cast<int64_t>(c) * rows + r] = in[static_cast<int64_t>(r) * cols + c];
  }
}

inline float clamp255(float x) { return std::min(std::max(x, 0.0f), 255.0f); }
inline float luma(float r, float g, float b) { return 0.2989f * r + 0.587f * g + 0.114f * b; }

// Mean luma of the view after the brightness factor (what adjust_contrast sees), in lane-wise partial sums.
float mean_luma(const float* R, const float* G, const float* B, int64_t n, float f) {
  constexpr int L = 16;
  float acc[L] = {};
  int64_t p = 0;
  for (; p + L <= n; p += L) {
    for (int l = 0; l < L; ++l) acc[l] += luma(clamp255(f * R[p + l]), clamp255(f * G[p + l]), clamp255(f * B[p + l]));
  }
  double total = 0.0;
  for (int l = 0; l < L; ++l) total += acc[l];
  for (; p < n; ++p) total += luma(clamp255(f * R[p]), clamp255(f * G[p]), clamp255(f * B[p]));
  return static_cast<float>(total / static_cast<double>(n));
}

// One HSV -> RGB channel in closed form: v - v s clamp(min(k, 4 - k), 0, 1) with k = (n + 6 h) mod 6 and
// n = 5, 3, 1 for r, g, b. It equals torchvision's sector table and has no branches, so the loop vectorises.
inline float hsv_channel(float n, float h6, float v, float vs) {
  float k = n + h6;
  k = k >= 6.0f ? k - 6.0f : k;
  return v - vs * std::min(std::max(std::min(k, 4.0f - k), 0.0f), 1.0f);
}

// torchvision's adjust_hue on one pixel: RGB -> HSV (as PIL), rotate H, HSV -> RGB.
inline void shift_hue(float& r, float& g, float& b, float shift) {
  const float maxc = std::max(r, std::max(g, b)), minc = std::min(r, std::min(g, b));
  const bool flat = maxc == minc;
  const float s = (maxc - minc) / (flat ? 1.0f : maxc);
  const float spread = flat ? 1.0f : maxc - minc;
  const float rc = (maxc - r) / spread, gc = (maxc - g) / spread, bc = (maxc - b) / spread;
  float h = maxc == r ? bc - gc : (maxc == g ? 2.0f + rc - bc : 4.0f + gc - rc);
  h = h * (1.0f / 6.0f) + 1.0f;
  h -= std::floor(h);
  h += shift;
  h -= std::floor(h);
  const float h6 = h * 6.0f, vs = maxc * s;
  r = hsv_channel(5.0f, h6, maxc, vs);
  g = hsv_channel(3.0f, h6, maxc, vs);
  b = hsv_channel(1.0f, h6, maxc, vs);
}

// Brightness, contrast (towards the mean luma), saturation, hue and grayscale in one pass, each step clamped to
// [0, 255] as torchvision's _blend does. Factors at their identity values leave a pixel exactly as it was.
template <bool kHue, bool kGray>
void jitter(float* __restrict R, float* __restrict G, float* __restrict B, int64_t n, float brightness,
            float contrast, float mean, float saturation, float hue) {
  const float contrast_offset = (1.0f - contrast) * mean, desaturation = 1.0f - saturation;
  for (int64_t p = 0; p < n; ++p) {
    float r = clamp255(brightness * R[p]), g = clamp255(brightness * G[p]), b = clamp255(brightness * B[p]);
    r = clamp255(contrast * r + contrast_offset);
    g = clamp255(contrast * g + contrast_offset);
    b = clamp255(contrast * b + contrast_offset);
    const float y = desaturation * luma(r, g, b);
    r = clamp255(saturation * r + y);
    g = clamp255(saturation * g + y);
    b = clamp255(saturation * b + y);
    if (kHue) shift_hue(r, g, b, hue);
    if (kGray) r = g = b = luma(r, g, b);
    R[p] = r;
    G[p] = g;
    B[p] = b;
  }
}

// Round half up and saturate.
void quantise(const float* __restrict in, int64_t n, uint8_t* __restrict out) {
  for (int64_t p = 0; p < n; ++p) out[p] = static_cast<uint8_t>(clamp255(in[p]) + 0.5f);
}

struct Args {
  const uint8_t* bank;
  int64_t canvas;
  const int64_t* index;
  const float* boxes;
  int64_t size;
  const uint8_t* flip;
  const float* brightness;
  const float* contrast;
  const float* saturation;
  const float* hue;
  const uint8_t* grayscale;
  const float* blur_sigma;
  const int64_t* blur_radius;
  uint8_t* out;
};

struct Scratch {
  std::vector<float> a, b, c;
  Taps x, y, blur;
};

void render_one(const Args& p, int64_t v, Scratch& s) {
  const int C = static_cast<int>(p.canvas), S = static_cast<int>(p.size);
  const int64_t plane = static_cast<int64_t>(S) * S;
  const uint8_t* image = p.bank + p.index[v] * 3 * p.canvas * p.canvas;
  const float* box = p.boxes + 4 * v;
  const bool flip = p.flip != nullptr && p.flip[v] != 0;
  resize_taps(static_cast<double>(box[0]) * C, static_cast<double>(box[2]) * C, C, S, flip, s.x);
  resize_taps(static_cast<double>(box[1]) * C, static_cast<double>(box[3]) * C, C, S, false, s.y);
  const int x0 = s.x.lo, W = s.x.hi - s.x.lo;
  // a and b hold one channel at a time, c the whole view: the working set of a 224 px view fits in L2.
  s.a.resize(static_cast<size_t>(std::max<int64_t>(static_cast<int64_t>(S) * W, plane)));
  s.b.resize(s.a.size());
  s.c.resize(static_cast<size_t>(3 * plane));
  float* a = s.a.data();
  float* b = s.b.data();
  // Vertical pass over the columns under the box -> a[i][x]; transpose -> b[x][i]; horizontal pass -> c[c][j][i].
  // The view stays transposed (rows are output columns j, so reversed x taps flip it) until the end.
  for (int c = 0; c < 3; ++c) {
    row_pass<uint8_t>(image + static_cast<int64_t>(c) * C * C + x0, C, 0, W, s.y, S, a, W);
    transpose(a, S, W, b);
    row_pass<float>(b, S, x0, S, s.x, S, s.c.data() + c * plane, S);
  }
  float* R = s.c.data();
  float* G = R + plane;
  float* B = G + plane;
  const float brightness = p.brightness != nullptr ? p.brightness[v] : 1.0f;
  const float contrast = p.contrast != nullptr ? p.contrast[v] : 1.0f;
  const float saturation = p.saturation != nullptr ? p.saturation[v] : 1.0f;
  const float hue = p.hue != nullptr ? p.hue[v] : 0.0f;
  const bool gray = p.grayscale != nullptr && p.grayscale[v] != 0;
  if (brightness != 1.0f || contrast != 1.0f || saturation != 1.0f || hue != 0.0f || gray) {
    const float mean = contrast != 1.0f ? mean_luma(R, G, B, plane, brightness) : 0.0f;
    if (hue != 0.0f) {
      gray ? jitter<true, true>(R, G, B, plane, brightness, contrast, mean, saturation, hue)
           : jitter<true, false>(R, G, B, plane, brightness, contrast, mean, saturation, hue);
    } else {
      gray ? jitter<false, true>(R, G, B, plane, brightness, contrast, mean, saturation, hue)
           : jitter<false, false>(R, G, B, plane, brightness, contrast, mean, saturation, hue);
    }
  }
  uint8_t* out = p.out + v * 3 * plane;
  const int radius = p.blur_radius != nullptr ? static_cast<int>(p.blur_radius[v]) : 0;
  if (radius > 0) blur_taps(S, radius, p.blur_sigma[v], s.blur);
  for (int c = 0; c < 3; ++c) {
    if (radius > 0) {
      row_pass<float>(s.c.data() + c * plane, S, 0, S, s.blur, S, a, S);  // along j, the image's x
      transpose(a, S, S, b);
      row_pass<float>(b, S, 0, S, s.blur, S, a, S);  // along i, the image's y; now in [i][j] order
      quantise(a, plane, out + c * plane);
    } else {
      transpose(s.c.data() + c * plane, S, S, b);
      quantise(b, plane, out + c * plane);
    }
  }
}

// A persistent pool of worker threads: started on first use, asleep between jobs, resized when a job asks for a
// different number of threads (the caller passes torch.get_num_threads()). One job at a time: concurrent callers
// take turns, each job using all the threads.
class WorkerPool {
 public:
  explicit WorkerPool(pid_t owner) : owner_(owner) {}
  pid_t owner() const { return owner_; }

  // Runs job on the calling thread and on helpers of the pool's workers, which it first resizes to workers
  // threads; returns when all of them have finished. job must not throw.
  void run(int64_t workers, int64_t helpers, const std::function<void()>& job) {
    std::lock_guard<std::mutex> turn(turn_);
    resize(workers);
    helpers = std::min<int64_t>(helpers, static_cast<int64_t>(threads_.size()));
    if (helpers <= 0) {  // one view, or one thread: no worker is woken
      job();
      return;
    }
    {
      std::lock_guard<std::mutex> lock(mutex_);
      job_ = &job;
      active_ = helpers;
      running_ = helpers;
      ++generation_;
    }
    wake_.notify_all();
    job();
    std::unique_lock<std::mutex> lock(mutex_);
    done_.wait(lock, [&] { return running_ == 0; });
    job_ = nullptr;
  }

 private:
  // Called between jobs only (under turn_), so no worker is inside a job.
  void resize(int64_t workers) {
    if (workers == wanted_) return;
    wanted_ = workers;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      limit_ = workers;  // workers at this index or above leave
    }
    wake_.notify_all();
    while (static_cast<int64_t>(threads_.size()) > workers) {
      threads_.back().join();
      threads_.pop_back();
    }
    try {
      while (static_cast<int64_t>(threads_.size()) < workers) {
        threads_.emplace_back(&WorkerPool::work, this, static_cast<int64_t>(threads_.size()), generation_);
      }
    } catch (...) {
      // No more threads to be had: those there are share the views.
    }
  }

  void work(int64_t index, uint64_t seen) {
#if defined(__linux__)
    pthread_setname_np(pthread_self(), "view_env-render");  // what top -H and /proc/<pid>/task/*/comm show
#endif
    std::unique_lock<std::mutex> lock(mutex_);
    for (;;) {
      wake_.wait(lock, [&] { return index >= limit_ || generation_ != seen; });
      if (index >= limit_) return;
      seen = generation_;
      if (index >= active_) continue;  // a job with fewer views than threads
      const std::function<void()>& job = *job_;
      lock.unlock();
      job();
      lock.lock();
      if (--running_ == 0) done_.notify_one();
    }
  }

  const pid_t owner_;
  std::mutex turn_;   // held for a whole job
  std::mutex mutex_;  // guards the fields below
  std::condition_variable wake_, done_;
  std::vector<std::thread> threads_;
  int64_t wanted_ = 0, limit_ = 0, active_ = 0, running_ = 0;
  uint64_t generation_ = 0;  // counts jobs
  const std::function<void()>* job_ = nullptr;
};

// The pool of this process. A child made by fork() inherits the parent's pool object but none of its threads, so
// it starts a pool of its own; the parent's is leaked there (joining or destroying its threads is not possible).
WorkerPool& process_pool() {
  static std::atomic<WorkerPool*> pool{nullptr};
  const pid_t pid = getpid();
  WorkerPool* current = pool.load(std::memory_order_acquire);
  while (current == nullptr || current->owner() != pid) {
    auto* fresh = new WorkerPool(pid);
    if (pool.compare_exchange_strong(current, fresh, std::memory_order_acq_rel)) return *fresh;
    delete fresh;  // another thread of this process got there first: current is now its pool
  }
  return *current;
}

}  // namespace

// Renders views [0, n) into out (uint8 [n, 3, size, size]) on up to num_threads threads, the caller's included.
// Null augmentation pointers mean identity. Returns 0, or -1 when rendering failed (out of memory).
// native.py's RENDER_PARAMETERS states these parameters for ctypes; tests/test_render.py checks that they agree.
extern "C" int view_env_render(const uint8_t* bank, int64_t canvas, const int64_t* index, const float* boxes,
                               int64_t n, int64_t size, const uint8_t* flip, const float* brightness,
                               const float* contrast, const float* saturation, const float* hue,
                               const uint8_t* grayscale, const float* blur_sigma, const int64_t* blur_radius,
                               uint8_t* out, int64_t num_threads) {
  const Args args{bank, canvas, index, boxes, size, flip, brightness, contrast, saturation, hue, grayscale,
                  blur_sigma, blur_radius, out};
  std::atomic<int64_t> next{0};
  std::atomic<bool> failed{false};
  const std::function<void()> job = [&]() noexcept {
    try {
      Scratch scratch;
      for (int64_t v = next.fetch_add(1); v < n; v = next.fetch_add(1)) render_one(args, v, scratch);
    } catch (...) {
      failed = true;
      next = n;
    }
  };
  const int64_t threads = std::max<int64_t>(num_threads, 1);
  try {
    process_pool().run(threads - 1, std::min(threads, n) - 1, job);
  } catch (...) {  // no pool to be had (out of memory, or its lock failed): the caller renders alone
    if (next.load() == 0) job();
  }
  return failed ? -1 : 0;
}
