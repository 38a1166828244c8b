/* fakecuda.c: a stand-in for the CUDA driver library (libcuda.so.1) that models ONE GPU.
 *
 * Build it under the real file name, since the tracer attaches its uprobes by library file
 * name and symbol:
 *     cc -O2 -shared -fPIC -o DIR/libcuda.so.1 fakecuda.c -lpthread
 *
 * Model: one GPU timeline with every stream serialised on it. `gpu_busy_until`
 * (CLOCK_MONOTONIC ns, under a mutex) is when the last queued work finishes. Queuing work that
 * costs C ns sets  busy_until = max(now, busy_until) + C.  Synchronizes *sleep* until the
 * modelled completion, so the host really blocks as long as it would on a GPU.
 *
 * Cost conventions (test conventions, not CUDA semantics):
 *   cuLaunchKernel[_ptsz]        cost = sharedMemBytes (ns)
 *   cuLaunchKernelEx[_ptsz]      cost = cfg->sharedMemBytes (ns)
 *   cuGraphLaunch[_ptsz]         cost = exec->cost_ns (exec made by fakegpu_graph_create)
 *   cuMemcpy*Async*              cost = 2000 + bytes/16 ns; memory is never touched
 *   cuEventRecord*               ev->ts_ns = max(now, busy_until); queues no work
 *   cuStreamBeginCapture_v2, cuStreamEndCapture[_ptsz]: while a stream captures, work queued
 *                                on it is recorded, not run (no GPU time); the end returns a
 *                                new graph of cost 0 (as fakegpu_graph_create(0))
 * Prototypes are the real x86-64 driver ones (gpu.md section 2); int return = CUresult.
 * The exported functions are `noipa` so that gcc neither inlines them nor folds identical
 * bodies (X and X_ptsz must keep their own addresses for the uprobes); each also bumps its own
 * call counter, which keeps the bodies different anyway. */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>

#if defined(__GNUC__) && !defined(__clang__)
#define API __attribute__((visibility("default"), noipa, used))
#else
#define API __attribute__((visibility("default"), noinline, used))
#endif

#define CUDA_SUCCESS 0
#define CUDA_ERROR_INVALID_VALUE 1
#define CUDA_ERROR_OUT_OF_MEMORY 2
#define CUDA_ERROR_INVALID_HANDLE 400
#define CUDA_ERROR_ILLEGAL_STATE 401
#define GRAPH_MAGIC 0x4850415247454b46ULL /* "FKEGRAPH" */
#define EVENT_MAGIC 0x544e455645454b46ULL /* "FKEEVENT" */

struct fake_graph { uint64_t magic; uint64_t cost_ns; };
struct fake_event { uint64_t magic; int64_t ts_ns; };

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static int64_t gpu_busy_until;  /* CLOCK_MONOTONIC ns */
static int64_t gpu_last_start;  /* when the GPU began the most recently queued work */
static volatile uint64_t calls[32];  /* per-function call counters (fakegpu_calls) */
/* The caller's clock at the entry of its last call into this library and at the return of
 * its last synchronize (per thread): the truth a tracer's entry and return probes are checked
 * against, free of the caller's own scheduling delays (fakegpu_last_entry/_return). */
static __thread int64_t last_entry, last_return;
int64_t fakegpu_now(void);
#define STAMP(i) (calls[i]++, last_entry = fakegpu_now())

API int64_t fakegpu_now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000LL + t.tv_nsec;
}

/* Queues `cost` ns of work on the one GPU timeline. */
static void enqueue(uint64_t cost) {
    int64_t now = fakegpu_now();
    pthread_mutex_lock(&mu);
    int64_t start = gpu_busy_until > now ? gpu_busy_until : now;
    gpu_last_start = start;
    gpu_busy_until = start + (int64_t)cost;
    pthread_mutex_unlock(&mu);
}

static int64_t busy_until(void) {
    pthread_mutex_lock(&mu);
    int64_t b = gpu_busy_until;
    pthread_mutex_unlock(&mu);
    return b;
}

/* Sleeps until CLOCK_MONOTONIC reaches `t` (returns at once if it has). */
static void sleep_until(int64_t t) {
    struct timespec ts = {.tv_sec = t / 1000000000LL, .tv_nsec = t % 1000000000LL};
    if (t <= 0) return;
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {}
}

static uint64_t copy_cost(size_t bytes) { return 2000 + (uint64_t)bytes / 16; }

/* Streams in capture (cuStreamBeginCapture_v2 .. cuStreamEndCapture), under `mu`;
 * `ncapturing` lets launches skip the lock when nothing captures (the usual case). */
#define MAX_CAPTURING 16
static void *capturing[MAX_CAPTURING];
static int ncapturing;

static int capture_slot(const void *stream) { /* call with mu held; -1 if not capturing */
    for (int i = 0; i < MAX_CAPTURING; i++)
        if (capturing[i] && capturing[i] == stream) return i;
    return -1;
}

/* Queues `cost` ns of work issued on `stream`: none while the stream captures, since captured
 * work is recorded into the graph and runs only when the graph is launched. */
static void enqueue_on(const void *stream, uint64_t cost) {
    if (stream && __atomic_load_n(&ncapturing, __ATOMIC_ACQUIRE) > 0) {
        pthread_mutex_lock(&mu);
        int cap = capture_slot(stream);
        pthread_mutex_unlock(&mu);
        if (cap >= 0) return;
    }
    enqueue(cost);
}

/* ---- driver API --------------------------------------------------------------------------- */

API int cuInit(unsigned flags) { (void)flags; STAMP(0); return CUDA_SUCCESS; }

API int cuLaunchKernel(void *f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                       unsigned bz, unsigned sharedMemBytes, void *hStream, void **params,
                       void **extra) {
    (void)f; (void)gx; (void)gy; (void)gz; (void)bx; (void)by; (void)bz;
    (void)params; (void)extra;
    STAMP(1);
    enqueue_on(hStream, sharedMemBytes); /* test convention: the kernel's GPU time in ns */
    return CUDA_SUCCESS;
}

API int cuLaunchKernel_ptsz(void *f, unsigned gx, unsigned gy, unsigned gz, unsigned bx,
                            unsigned by, unsigned bz, unsigned sharedMemBytes, void *hStream,
                            void **params, void **extra) {
    (void)f; (void)gx; (void)gy; (void)gz; (void)bx; (void)by; (void)bz;
    (void)params; (void)extra;
    STAMP(2);
    enqueue_on(hStream, sharedMemBytes);
    return CUDA_SUCCESS;
}

/* CUlaunchConfig: gridDimX/Y/Z @0,4,8; blockDimX/Y/Z @12,16,20; sharedMemBytes @24;
 * hStream @32; attrs @40; numAttrs @48. */
static int launch_ex(const void *cfg) {
    if (!cfg) return CUDA_ERROR_INVALID_VALUE;
    const char *c = cfg;
    enqueue_on(*(void *const *)(c + 32), *(const uint32_t *)(c + 24));
    return CUDA_SUCCESS;
}
API int cuLaunchKernelEx(const void *cfg, void *f, void **params, void **extra) {
    (void)f; (void)params; (void)extra; STAMP(3); return launch_ex(cfg);
}
API int cuLaunchKernelEx_ptsz(const void *cfg, void *f, void **params, void **extra) {
    (void)f; (void)params; (void)extra; STAMP(4); return launch_ex(cfg);
}

static int graph_launch(void *exec, void *stream) {
    const struct fake_graph *g = exec;
    if (!g || g->magic != GRAPH_MAGIC) return CUDA_ERROR_INVALID_HANDLE;
    enqueue_on(stream, g->cost_ns);
    return CUDA_SUCCESS;
}
API int cuGraphLaunch(void *exec, void *stream) { STAMP(5); return graph_launch(exec, stream); }
API int cuGraphLaunch_ptsz(void *exec, void *stream) { STAMP(6); return graph_launch(exec, stream); }

API int cuMemcpyDtoHAsync_v2(void *dst, uint64_t src, size_t bytes, void *stream) {
    (void)dst; (void)src; STAMP(7); enqueue_on(stream, copy_cost(bytes)); return 0;
}
API int cuMemcpyDtoHAsync_v2_ptsz(void *dst, uint64_t src, size_t bytes, void *stream) {
    (void)dst; (void)src; STAMP(8); enqueue_on(stream, copy_cost(bytes)); return 0;
}
API int cuMemcpyHtoDAsync_v2(uint64_t dst, const void *src, size_t bytes, void *stream) {
    (void)dst; (void)src; STAMP(9); enqueue_on(stream, copy_cost(bytes)); return 0;
}
API int cuMemcpyHtoDAsync_v2_ptsz(uint64_t dst, const void *src, size_t bytes, void *stream) {
    (void)dst; (void)src; STAMP(10); enqueue_on(stream, copy_cost(bytes)); return 0;
}
API int cuMemcpyDtoDAsync_v2(uint64_t dst, uint64_t src, size_t bytes, void *stream) {
    (void)dst; (void)src; STAMP(11); enqueue_on(stream, copy_cost(bytes)); return 0;
}
API int cuMemcpyAsync(uint64_t dst, uint64_t src, size_t bytes, void *stream) {
    (void)dst; (void)src; STAMP(12); enqueue_on(stream, copy_cost(bytes)); return 0;
}

static int event_record(void *ev) {
    struct fake_event *e = ev;
    if (!e || e->magic != EVENT_MAGIC) return CUDA_ERROR_INVALID_HANDLE;
    int64_t now = fakegpu_now(), b = busy_until();
    e->ts_ns = b > now ? b : now;
    return CUDA_SUCCESS;
}
API int cuEventRecord(void *ev, void *stream) { (void)stream; STAMP(13); return event_record(ev); }
API int cuEventRecord_ptsz(void *ev, void *stream) { (void)stream; STAMP(14); return event_record(ev); }
API int cuEventRecordWithFlags(void *ev, void *stream, unsigned flags) {
    (void)stream; (void)flags; STAMP(15); return event_record(ev);
}
API int cuEventRecordWithFlags_ptsz(void *ev, void *stream, unsigned flags) {
    (void)stream; (void)flags; STAMP(16); return event_record(ev);
}

API int cuEventSynchronize(void *ev) {
    const struct fake_event *e = ev;
    STAMP(17);
    if (!e || e->magic != EVENT_MAGIC) return CUDA_ERROR_INVALID_HANDLE;
    sleep_until(e->ts_ns);
    last_return = fakegpu_now();
    return CUDA_SUCCESS;
}

API int cuStreamSynchronize(void *s) { (void)s; STAMP(18); sleep_until(busy_until()); return 0; }
API int cuStreamSynchronize_ptsz(void *s) { (void)s; STAMP(19); sleep_until(busy_until()); return 0; }
API int cuCtxSynchronize(void) { STAMP(20); sleep_until(busy_until()); return 0; }

API int cuStreamWaitEvent(void *s, void *ev, unsigned flags) { (void)s; (void)ev; (void)flags; STAMP(21); return 0; }
API int cuStreamWaitEvent_ptsz(void *s, void *ev, unsigned flags) { (void)s; (void)ev; (void)flags; STAMP(22); return 0; }

/* Stream capture (CUstreamCaptureMode: 0 global, 1 thread-local, 2 relaxed; not enforced).
 * Capturing the legacy stream (NULL) is refused, as by the driver; beginning twice or ending a
 * stream that does not capture is CUDA_ERROR_ILLEGAL_STATE. */
static int begin_capture(void *s, int mode) {
    if (!s || mode < 0 || mode > 2) return CUDA_ERROR_INVALID_VALUE;
    int rc = CUDA_ERROR_ILLEGAL_STATE, free_slot = -1;
    pthread_mutex_lock(&mu);
    if (capture_slot(s) < 0) {
        for (int i = 0; i < MAX_CAPTURING && free_slot < 0; i++)
            if (!capturing[i]) free_slot = i;
        if (free_slot >= 0) {
            capturing[free_slot] = s;
            __atomic_add_fetch(&ncapturing, 1, __ATOMIC_RELEASE);
            rc = CUDA_SUCCESS;
        } else {
            rc = CUDA_ERROR_OUT_OF_MEMORY;
        }
    }
    pthread_mutex_unlock(&mu);
    return rc;
}
void *fakegpu_graph_create(uint64_t cost_ns);
static int end_capture(void *s, void **graph) {
    if (!s || !graph) return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&mu);
    int i = capture_slot(s);
    if (i >= 0) {
        capturing[i] = NULL;
        __atomic_sub_fetch(&ncapturing, 1, __ATOMIC_RELEASE);
    }
    pthread_mutex_unlock(&mu);
    if (i < 0) return CUDA_ERROR_ILLEGAL_STATE;
    *graph = fakegpu_graph_create(0); /* the recorded work is not kept: replays cost what the
                                          simulator sets with fakegpu_graph_set_cost */
    return *graph ? CUDA_SUCCESS : CUDA_ERROR_OUT_OF_MEMORY;
}
API int cuStreamBeginCapture_v2(void *s, int mode) {
    STAMP(23); return begin_capture(s, mode);
}
API int cuStreamBeginCapture_v2_ptsz(void *s, int mode) {
    STAMP(24); return begin_capture(s, mode);
}
API int cuStreamEndCapture(void *s, void **graph) { STAMP(25); return end_capture(s, graph); }
API int cuStreamEndCapture_ptsz(void *s, void **graph) { STAMP(26); return end_capture(s, graph); }

/* ---- helpers for the simulator (not CUDA names, never probed) ---------------------------- */

API void *fakegpu_graph_create(uint64_t cost_ns) {
    struct fake_graph *g = calloc(1, sizeof *g);
    if (g) { g->magic = GRAPH_MAGIC; g->cost_ns = cost_ns; }
    return g;
}
/* A replay of a captured graph costs what its size says; the simulator sets it per launch. */
API void fakegpu_graph_set_cost(void *graph, uint64_t cost_ns) {
    struct fake_graph *g = graph;
    if (g && g->magic == GRAPH_MAGIC) g->cost_ns = cost_ns;
}
API void *fakegpu_event_create(void) {
    struct fake_event *e = calloc(1, sizeof *e);
    if (e) e->magic = EVENT_MAGIC;
    return e;
}
API int64_t fakegpu_event_ts(void *ev) {
    const struct fake_event *e = ev;
    return e && e->magic == EVENT_MAGIC ? e->ts_ns : -1;
}
API int64_t fakegpu_busy_until(void) { return busy_until(); }
/* When the GPU began the most recently queued work (max of its queue time and busy_until). */
API int64_t fakegpu_last_start(void) {
    pthread_mutex_lock(&mu);
    int64_t s = gpu_last_start;
    pthread_mutex_unlock(&mu);
    return s;
}
/* Calls made to the function with counter index i (see the calls[i]++ lines), 0 if unknown. */
API uint64_t fakegpu_calls(unsigned i) { return i < 32 ? calls[i] : 0; }
API int64_t fakegpu_last_entry(void) { return last_entry; }
API int64_t fakegpu_last_return(void) { return last_return; }
