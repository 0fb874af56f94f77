// Node-API argument helpers shared by the addon's bindings (addon.cc, addon-gemma4.cc).
#pragma once

#include <node_api.h>
#include <omp.h>

#include <atomic>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>
#include <cstdint>
#include <cmath>
#include <exception>
#include <functional>
#include <future>
#include <string>
#include <vector>

#include "kernels.h"

namespace glue {

inline bool check(napi_env env, napi_status s, const char* what) {
  if (s == napi_ok) return true;
  napi_throw_error(env, nullptr, what);
  return false;
}

template <typename T>
inline bool typedArray(napi_env env, napi_value v, napi_typedarray_type want, T** data, size_t* length) {
  napi_typedarray_type type;
  void* ptr;
  napi_value buffer;
  size_t offset;
  if (napi_get_typedarray_info(env, v, &type, length, &ptr, &buffer, &offset) != napi_ok || type != want) {
    napi_throw_type_error(env, nullptr, want == napi_float32_array ? "expected a Float32Array" : "expected an Int32Array");
    return false;
  }
  *data = static_cast<T*>(ptr);
  return true;
}

// The call's first N arguments into argv; throws (and returns false) when fewer were passed.
template <size_t N>
inline bool args(napi_env env, napi_callback_info info, napi_value (&argv)[N], const char* name) {
  size_t argc = N;
  napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr);
  if (argc >= N) return true;
  const std::string message = std::string(name) + ": expected " + std::to_string(N) + " arguments";
  napi_throw_type_error(env, nullptr, message.c_str());
  return false;
}

inline bool integer(napi_env env, napi_value v, int64_t* out) {
  return check(env, napi_get_value_int64(env, v, out), "expected an integer");
}

inline bool boolean(napi_env env, napi_value v, bool* out) {
  return check(env, napi_get_value_bool(env, v, out), "expected a boolean");
}

inline bool matrix(napi_env env, napi_value v, gemma::Matrix** out) {
  void* handle;
  if (!check(env, napi_get_value_external(env, v, &handle), "expected a packed matrix")) return false;
  *out = static_cast<gemma::Matrix*>(handle);
  return true;
}

inline napi_value element(napi_env env, napi_value array, uint32_t i) {
  napi_value v = nullptr;
  napi_get_element(env, array, i, &v);
  return v;
}

inline bool isNull(napi_env env, napi_value v) {
  napi_valuetype t;
  napi_typeof(env, v, &t);
  return t == napi_null || t == napi_undefined;
}

// A layer's shape: a Float64Array of at least n numbers, else a TypeError naming `name` (and null).
inline const double* shapeArray(napi_env env, napi_value v, size_t n, const char* name) {
  napi_typedarray_type type;
  size_t length;
  void* data;
  napi_value buffer;
  size_t offset;
  if (napi_get_typedarray_info(env, v, &type, &length, &data, &buffer, &offset) == napi_ok && type == napi_float64_array && length >= n)
    return static_cast<const double*>(data);
  const std::string message = std::string(name) + ": shape must be a Float64Array of " + std::to_string(n);
  napi_throw_type_error(env, nullptr, message.c_str());
  return nullptr;
}

// Head shapes the attention kernels take: an even head size up to 1024 (its scratch), whole query groups per K/V head.
inline bool headsSupported(int64_t heads, int64_t kvHeads, int64_t headDim) {
  return headDim <= 1024 && headDim % 2 == 0 && kvHeads > 0 && heads % kvHeads == 0;
}

// A layer call's rows: x [B * T, hidden] (updated in place), B, T, and the rope tables cos and sin [B * T, headDim].
struct LayerRows {
  float *x, *cos, *sin;
  int64_t B, T;
};

// LayerRows from argv[0..4]; throws (false) on a bad or short one.
inline bool layerRows(napi_env env, const napi_value* argv, int64_t hidden, int64_t headDim, const char* name, LayerRows* out) {
  size_t xl, cl, sl;
  if (!typedArray(env, argv[0], napi_float32_array, &out->x, &xl) || !integer(env, argv[1], &out->B) || !integer(env, argv[2], &out->T) ||
      !typedArray(env, argv[3], napi_float32_array, &out->cos, &cl) || !typedArray(env, argv[4], napi_float32_array, &out->sin, &sl))
    return false;
  const size_t M = static_cast<size_t>(out->B * out->T);
  const bool positive = out->B > 0 && out->T > 0;
  if (positive && xl >= M * hidden && cl >= M * headDim && sl >= M * headDim) return true;
  const std::string message = std::string(name) + (positive ? ": x, cos or sin is shorter than B * T rows" : ": B and T must be positive");
  napi_throw_range_error(env, nullptr, message.c_str());
  return false;
}

// caches: B x (null | [k, vT: Float32Array, positions: Int32Array, entries, start]) into out; throws (false) on a bad one.
inline bool rowCaches(napi_env env, napi_value list, int64_t B, int64_t kvHeads, int64_t headDim, std::vector<gemma::RowCache>& out) {
  out.assign(static_cast<size_t>(B), gemma::RowCache{nullptr, nullptr, nullptr, 0, 0});
  for (uint32_t b = 0; b < B; b++) {
    napi_value c = element(env, list, b);
    if (!c || isNull(env, c)) continue;
    gemma::RowCache& r = out[b];
    size_t kl, vl, pl;
    int32_t* positions;
    if (!typedArray(env, element(env, c, 0), napi_float32_array, &r.k, &kl) || !typedArray(env, element(env, c, 1), napi_float32_array, &r.vT, &vl) ||
        !typedArray(env, element(env, c, 2), napi_int32_array, &positions, &pl) || !integer(env, element(env, c, 3), &r.entries) ||
        !integer(env, element(env, c, 4), &r.start))
      return false;
    r.positions = positions;
    const size_t need = static_cast<size_t>(kvHeads * r.entries * headDim);
    if (r.entries <= 0 || kl < need || vl < need || pl < static_cast<size_t>(r.entries) || r.start < 0) {
      napi_throw_range_error(env, nullptr, "layer: a cache is shorter than its entries");
      return false;
    }
  }
  return true;
}

// The kernels' thread count (setThreads). OpenMP keeps it per calling thread, so a job on a libuv worker sets it again.
inline std::atomic<int>& threadCount() {
  static std::atomic<int> n{0};
  return n;
}

// A compute binding is exported twice: `name` runs it on the calling thread, `nameAsync` (created with a non-null
// data pointer) on the compute thread below and returns a Promise, so the event loop keeps serving while it runs.
inline void* const kAsync = reinterpret_cast<void*>(uintptr_t{1});

inline bool wantsAsync(napi_env env, napi_callback_info info) {
  void* data = nullptr;
  size_t argc = 0;
  napi_get_cb_info(env, info, &argc, nullptr, nullptr, &data);
  return data != nullptr;
}

// The work of a compute call, its arguments already checked; returns the call's result (NaN: none).
using Job = std::function<double()>;

// One thread runs every queued call, in order. One thread, not libuv's pool: OpenMP keeps a team of threads per
// thread that opens parallel regions, and teams on several pool threads would spin against each other for the cores.
// Never destroyed: it outlives every environment and waits for work at exit.
class ComputeThread {
 public:
  static ComputeThread& get() {
    static ComputeThread* thread = new ComputeThread();
    return *thread;
  }
  // Runs work on the compute thread and waits for it. Every parallel region opens there: OpenMP counts the threads
  // of all its teams, and with more than there are cores its workers stop spinning between regions and each region
  // pays for waking them (a decode step ~20% slower with a second, idle team).
  void run(const std::function<void()>& work) {
    std::promise<void> done;
    post([&] {
      work();
      done.set_value();
    });
    done.get_future().wait();
  }
  void post(std::function<void()> work) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      queue_.push_back(std::move(work));
    }
    ready_.notify_one();
  }

 private:
  ComputeThread() : thread_([this] { loop(); }) { thread_.detach(); }
  void loop() {
    for (;;) {
      std::function<void()> work;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        ready_.wait(lock, [this] { return !queue_.empty(); });
        work = std::move(queue_.front());
        queue_.pop_front();
      }
      // setThreads may have changed the count since the last call.
      if (threadCount() > 0 && threadCount() != omp_get_max_threads()) omp_set_num_threads(threadCount());
      work();
    }
  }
  std::mutex mutex_;
  std::condition_variable ready_;
  std::deque<std::function<void()>> queue_;
  std::thread thread_;
};

struct AsyncCall {
  napi_deferred deferred = nullptr;
  std::vector<napi_ref> keep;
  Job job;
  double result = 0;
  std::string error;
};

inline napi_value resultValue(napi_env env, double result) {
  napi_value out;
  if (std::isnan(result)) napi_get_undefined(env, &out);
  else napi_create_double(env, result, &out);
  return out;
}

// Per environment: the thread-safe function that settles a finished call's promise on the JS thread, and how many
// calls are in flight (while any is, it keeps the event loop alive).
struct Settler {
  napi_threadsafe_function fn = nullptr;
  size_t inFlight = 0;
};

inline void settle(napi_env env, napi_value, void* context, void* data) {
  auto* settler = static_cast<Settler*>(context);
  auto* c = static_cast<AsyncCall*>(data);
  if (env) {
    for (napi_ref ref : c->keep) napi_delete_reference(env, ref);
    if (c->error.empty()) {
      napi_resolve_deferred(env, c->deferred, resultValue(env, c->result));
    } else {
      napi_value message, err;
      napi_create_string_utf8(env, c->error.c_str(), NAPI_AUTO_LENGTH, &message);
      napi_create_error(env, nullptr, message, &err);
      napi_reject_deferred(env, c->deferred, err);
    }
    if (--settler->inFlight == 0) napi_unref_threadsafe_function(env, settler->fn);
  }
  delete c;
}

inline Settler* settlerOf(napi_env env) {
  Settler* settler = nullptr;
  if (napi_get_instance_data(env, reinterpret_cast<void**>(&settler)) == napi_ok && settler) return settler;
  settler = new Settler();
  napi_value name;
  napi_create_string_utf8(env, "gemma_cpu", NAPI_AUTO_LENGTH, &name);
  napi_create_threadsafe_function(env, nullptr, nullptr, name, 0, 1, nullptr, nullptr, settler, settle, &settler->fn);
  napi_unref_threadsafe_function(env, settler->fn);
  napi_set_instance_data(
      env, settler,
      [](napi_env, void* data, void*) {
        auto* s = static_cast<Settler*>(data);
        napi_release_threadsafe_function(s->fn, napi_tsfn_abort);
        delete s;
      },
      nullptr);
  return settler;
}

// How a compute binding ends: the job now (its result, or undefined), or, for `nameAsync`, queued on the compute
// thread with a Promise of its result. The call's object arguments (the typed arrays and the arrays holding them,
// whose memory the job reads and writes) are referenced until the job is done, so none is collected.
inline napi_value finish(napi_env env, napi_callback_info info, const napi_value* argv, size_t argc, Job job) {
  if (!wantsAsync(env, info)) {
    double result = 0;
    std::string error;
    ComputeThread::get().run([&] {
      try {
        result = job();
      } catch (const std::exception& e) {
        error = e.what();
      }
    });
    if (!error.empty()) {
      napi_throw_error(env, nullptr, error.c_str());
      return nullptr;
    }
    return resultValue(env, result);
  }
  Settler* settler = settlerOf(env);
  auto* call = new AsyncCall();
  call->job = std::move(job);
  for (size_t i = 0; i < argc; i++) {
    napi_valuetype t;
    napi_typeof(env, argv[i], &t);
    if (t != napi_object) continue;
    napi_ref ref;
    napi_create_reference(env, argv[i], 1, &ref);
    call->keep.push_back(ref);
  }
  napi_value promise;
  napi_create_promise(env, &call->deferred, &promise);
  if (settler->inFlight++ == 0) napi_ref_threadsafe_function(env, settler->fn);
  napi_threadsafe_function fn = settler->fn;
  ComputeThread::get().post([call, fn] {
    try {
      call->result = call->job();
    } catch (const std::exception& e) {
      call->error = e.what();
    }
    napi_call_threadsafe_function(fn, call, napi_tsfn_blocking);
  });
  return promise;
}

// A compute binding's argument checks: true and the job to run, or false with a pending exception.
using Parse = bool (*)(napi_env, const napi_value*, Job*);

// A compute binding of N arguments: checked by P, then run now or queued (finish).
template <size_t N, Parse P>
napi_value call(napi_env env, napi_callback_info info, const char* name) {
  napi_value argv[N];
  if (!args(env, info, argv, name)) return nullptr;
  Job job;
  if (!P(env, argv, &job)) return nullptr;
  return finish(env, info, argv, N, std::move(job));
}

// The Gemma 4 calls' checks (addon-gemma4.cc), for sequence in addon.cc.
bool parseGemma4Layer(napi_env env, const napi_value* argv, Job* job);
bool parseWriteKv(napi_env env, const napi_value* argv, Job* job);

// Defines the Gemma 4 bindings (addon-gemma4.cc) on exports.
void defineGemma4(napi_env env, napi_value exports);

}  // namespace glue
