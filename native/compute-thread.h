// The addon's compute thread: where every kernel call runs, and how a call made from JS ends (finish): on the
// calling thread's behalf, or queued with a Promise of its result. Included by napi-glue.h.
#pragma once

#include <node_api.h>
#include <omp.h>

#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <future>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace glue {

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

}  // namespace glue
