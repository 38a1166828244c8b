/* fakenccl.c: a stand-in for NCCL (libnccl.so.2) for GPU-less tests, to go with fakecuda.c.
 *
 *     cc -O2 -shared -fPIC -o DIR/libnccl.so.2 fakenccl.c -lpthread -ldl
 *
 * What it imitates: NCCL's exported C API with the real x86-64 prototypes (ncclUniqueId is a
 * 128-byte struct passed BY VALUE, gpu.md section 2), its return codes, a communicator per
 * (id, rank) made by a TCP rendezvous on 127.0.0.1, one progress thread per communicator named
 * `NCCL Progress 0` that does all data exchanges, group semantics (calls between
 * ncclGroupStart and ncclGroupEnd run at the outer GroupEnd), and the GPU time of each
 * operation: one cuLaunchKernel on the caller's stream into the stand-in driver, costing
 * 20000 + bytes/50 ns (fakecuda's convention: sharedMemBytes = cost in ns), which adds nothing
 * while the stream captures.
 * What it does not: data (buffers are never touched and may be NULL), rings/trees/channels,
 * NCCL's bootstrap protocol, the socket transport's threads and ports, non-blocking comms
 * (config is ignored), ncclCommSplit. Unlike NCCL, a call BLOCKS its caller until every rank
 * (for Send/Recv: the peer) has reached it, instead of enqueueing a kernel that waits on the GPU.
 *
 * Rendezvous: rank 0 listens on the id's port and accepts nranks-1 peers (star); every peer
 * also listens on a port of its own, which rank 0 hands round, so each pair has a connection
 * (Send/Recv). Collectives: each peer sends {seq, func, count} to rank 0, which answers all once
 * all have arrived (a mismatched seq or func answers ncclInvalidUsage). Send/Recv: the sender
 * sends SEND to its peer and waits for ACK. Every wait is bounded by 30 s (ncclSystemError). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#if defined(__GNUC__) && !defined(__clang__)
#define API __attribute__((visibility("default"), noipa, used))
#else
#define API __attribute__((visibility("default"), noinline, used))
#endif

typedef struct { char internal[128]; } ncclUniqueId;
typedef struct comm *ncclComm_t;
enum { ncclSuccess, ncclUnhandledCudaError, ncclSystemError, ncclInternalError,
       ncclInvalidArgument, ncclInvalidUsage };
enum { F_ALLREDUCE, F_ALLGATHER, F_REDUCESCATTER, F_BROADCAST, F_SEND, F_RECV };
enum { M_COLL = 1, M_DONE, M_SEND, M_ACK }; /* message types after init */

#define ID_MAGIC 0x4c43434e454b4146ULL /* "FAKENCCL" */
#define MAX_RANKS 64
#define TIMEOUT_MS 30000

struct msg { uint32_t type; int32_t func, status, pad; uint64_t seq, count; }; /* 32 bytes */
struct hello { uint64_t magic; int32_t rank, port; uint8_t nonce[16]; };
struct table { uint64_t magic; uint16_t port[MAX_RANKS]; };
struct op { struct comm *comm; int func, dtype, peer; size_t count; void *stream; uint64_t seq; };

struct comm {
    uint64_t magic;
    int rank, nranks, fds[MAX_RANKS];
    uint64_t seq;                              /* collectives issued on this comm */
    int pend_send[MAX_RANKS], pend_ack[MAX_RANKS]; /* P2P messages read ahead, per peer */
    struct msg slot[MAX_RANKS];                /* a COLL/DONE read ahead, per peer */
    int have[MAX_RANKS];
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct op *job;                            /* handed to the progress thread */
    int njob, state, rc, quit;                 /* state: 0 idle, 1 posted, 2 done */
};

static int64_t now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

/* Moves exactly n bytes (wr: send, else recv) before the deadline; -1 on error, EOF, timeout. */
static int io_full(int fd, void *buf, size_t n, int wr, int64_t deadline) {
    char *p = buf;
    while (n) {
        struct pollfd pf = {.fd = fd, .events = wr ? POLLOUT : POLLIN};
        int64_t left = deadline - now_ms();
        if (left <= 0) { errno = ETIMEDOUT; return -1; }
        int k = poll(&pf, 1, (int)left);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) { if (k == 0) errno = ETIMEDOUT; return -1; }
        ssize_t m = wr ? send(fd, p, n, MSG_NOSIGNAL) : recv(fd, p, n, 0);
        if (m < 0 && (errno == EINTR || errno == EAGAIN)) continue;
        if (m <= 0) { if (m == 0) errno = ECONNRESET; return -1; }
        p += m;
        n -= (size_t)m;
    }
    return 0;
}

static struct sockaddr_in loopback(int port) {
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return a;
}

/* A listening socket on 127.0.0.1:port (0: any); *bound gets the port. */
static int tcp_listen(int port, int backlog, int *bound) {
    int one = 1, fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = loopback(port);
    socklen_t len = sizeof a;
    if (fd < 0) return -1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, (struct sockaddr *)&a, sizeof a) || listen(fd, backlog) ||
        getsockname(fd, (struct sockaddr *)&a, &len)) { close(fd); return -1; }
    if (bound) *bound = ntohs(a.sin_port);
    return fd;
}

static int nodelay(int fd) {
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

static int accept_by(int lfd, int64_t deadline) {
    struct pollfd pf = {.fd = lfd, .events = POLLIN};
    for (;;) {
        int64_t left = deadline - now_ms();
        if (left <= 0) { errno = ETIMEDOUT; return -1; }
        int k = poll(&pf, 1, (int)left);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) { if (k == 0) errno = ETIMEDOUT; return -1; }
        int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
        if (fd >= 0) return nodelay(fd);
        if (errno != EINTR && errno != ECONNABORTED) return -1;
    }
}

/* Connects to 127.0.0.1:port, retrying (the listener may not be up yet) until the deadline. */
static int connect_by(int port, int64_t deadline) {
    struct sockaddr_in a = loopback(port);
    for (;;) {
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0) return -1;
        if (connect(fd, (struct sockaddr *)&a, sizeof a) == 0) return nodelay(fd);
        close(fd);
        if (now_ms() >= deadline) { errno = ETIMEDOUT; return -1; }
        usleep(20000);
    }
}

/* ---- version, unique id ---------------------------------------------------------------- */

API int ncclGetVersion(int *version) {
    if (!version) return ncclInvalidArgument;
    *version = 22907; /* 2.29.7 */
    return ncclSuccess;
}

/* Layout: [0,8) magic, [8,10) the root's port, [16,32) random bytes; the rest zero. */
API int ncclGetUniqueId(ncclUniqueId *id) {
    uint64_t magic = ID_MAGIC;
    int port = 0, fd, lfd;
    if (!id) return ncclInvalidArgument;
    memset(id, 0, sizeof *id);
    if ((lfd = tcp_listen(0, 1, &port)) < 0) {
        fprintf(stderr, "fakenccl: ncclGetUniqueId: no port: %s\n", strerror(errno));
        return ncclSystemError;
    }
    close(lfd); /* rank 0 binds it again (SO_REUSEADDR) in ncclCommInitRank */
    uint16_t p16 = (uint16_t)port;
    memcpy(id->internal, &magic, 8);
    memcpy(id->internal + 8, &p16, 2);
    if ((fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC)) < 0 ||
        read(fd, id->internal + 16, 16) != 16) {
        int64_t x = now_ms() ^ ((int64_t)getpid() << 32);
        memcpy(id->internal + 16, &x, 8);
    }
    if (fd >= 0) close(fd);
    return ncclSuccess;
}

/* ---- communicators ----------------------------------------------------------------------- */

static int p2p(int func) { return func == F_SEND || func == F_RECV; }
static int run_ops(struct comm *c, struct op *ops, int n);

/* The progress thread: runs the jobs the callers post, one at a time. */
static void *progress(void *arg) {
    struct comm *c = arg;
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL); /* signals stay with the application's threads */
    pthread_setname_np(pthread_self(), "NCCL Progress 0");
    pthread_mutex_lock(&c->mu);
    for (;;) {
        while (c->state != 1 && !c->quit) pthread_cond_wait(&c->cv, &c->mu);
        if (c->quit) break;
        pthread_mutex_unlock(&c->mu);
        int rc = run_ops(c, c->job, c->njob);
        pthread_mutex_lock(&c->mu);
        c->rc = rc;
        c->state = 2;
        pthread_cond_broadcast(&c->cv);
    }
    pthread_mutex_unlock(&c->mu);
    return NULL;
}

static void comm_free(struct comm *c) {
    for (int r = 0; r < MAX_RANKS; r++)
        if (c->fds[r] >= 0) close(c->fds[r]);
    free(c);
}

static int rendezvous(struct comm *c, int port, const uint8_t *nonce) {
    int64_t dl = now_ms() + TIMEOUT_MS;
    int n = c->nranks, me = c->rank, myport = 0, lfd, fd;
    struct hello h = {.magic = ID_MAGIC, .rank = me};
    struct table t = {.magic = ID_MAGIC};
    memcpy(h.nonce, nonce, 16);
    /* rank 0 listens on the id's port; others on their own, for the peers above them */
    if ((lfd = tcp_listen(me == 0 ? port : 0, n, &myport)) < 0) return -1;
    h.port = myport;
    if (me > 0) { /* join rank 0, learn the others' ports, connect to the ranks below */
        if ((fd = c->fds[0] = connect_by(port, dl)) < 0 || io_full(fd, &h, sizeof h, 1, dl) ||
            io_full(fd, &t, sizeof t, 0, dl) || t.magic != ID_MAGIC)
            goto fail;
        for (int s = 1; s < me; s++)
            if ((c->fds[s] = connect_by(t.port[s], dl)) < 0 ||
                io_full(c->fds[s], &h, sizeof h, 1, dl))
                goto fail;
    }
    for (int k = me == 0 ? 1 : me + 1; k < n; k++) { /* accept the ranks above */
        struct hello in;
        if ((fd = accept_by(lfd, dl)) < 0) goto fail;
        if (io_full(fd, &in, sizeof in, 0, dl) || in.magic != ID_MAGIC || in.rank <= me ||
            in.rank >= n || c->fds[in.rank] >= 0 || memcmp(in.nonce, nonce, 16)) {
            close(fd);
            errno = EPROTO;
            goto fail;
        }
        c->fds[in.rank] = fd;
        t.port[in.rank] = (uint16_t)in.port;
    }
    if (me == 0)
        for (int r = 1; r < n; r++)
            if (io_full(c->fds[r], &t, sizeof t, 1, dl)) goto fail;
    close(lfd);
    return 0;
fail:
    close(lfd);
    return -1;
}

static int init_rank(ncclComm_t *out, int nranks, const ncclUniqueId *id, int rank) {
    uint64_t magic;
    uint16_t port;
    memcpy(&magic, id->internal, 8);
    memcpy(&port, id->internal + 8, 2);
    if (!out || nranks < 1 || nranks > MAX_RANKS || rank < 0 || rank >= nranks ||
        magic != ID_MAGIC) {
        fprintf(stderr, "fakenccl: ncclCommInitRank: bad arguments (rank %d of %d)\n", rank,
                nranks);
        return ncclInvalidArgument;
    }
    struct comm *c = calloc(1, sizeof *c);
    if (!c) return ncclSystemError;
    c->magic = ID_MAGIC;
    c->rank = rank;
    c->nranks = nranks;
    for (int r = 0; r < MAX_RANKS; r++) c->fds[r] = -1;
    if (nranks > 1 && rendezvous(c, port, (const uint8_t *)id->internal + 16)) {
        fprintf(stderr, "fakenccl: ncclCommInitRank: rank %d of %d, port %u: %s\n", rank,
                nranks, port, strerror(errno));
        comm_free(c);
        return ncclSystemError;
    }
    pthread_mutex_init(&c->mu, NULL);
    pthread_cond_init(&c->cv, NULL);
    if (pthread_create(&c->thread, NULL, progress, c)) { comm_free(c); return ncclSystemError; }
    *out = c;
    return ncclSuccess;
}

API int ncclCommInitRank(ncclComm_t *comm, int nranks, ncclUniqueId id, int rank) {
    return init_rank(comm, nranks, &id, rank);
}
API int ncclCommInitRankConfig(ncclComm_t *comm, int nranks, ncclUniqueId id, int rank,
                               void *config) {
    (void)config; /* blocking comm whatever config says */
    return init_rank(comm, nranks, &id, rank);
}

static int valid(const struct comm *c) { return c && c->magic == ID_MAGIC; }

API int ncclCommUserRank(const ncclComm_t comm, int *rank) {
    if (!valid(comm) || !rank) return ncclInvalidArgument;
    *rank = comm->rank;
    return ncclSuccess;
}
API int ncclCommCount(const ncclComm_t comm, int *count) {
    if (!valid(comm) || !count) return ncclInvalidArgument;
    *count = comm->nranks;
    return ncclSuccess;
}

static int comm_end(ncclComm_t c, int abort) {
    if (!valid(c)) return ncclInvalidArgument;
    if (abort) /* wakes a progress thread blocked on a peer */
        for (int r = 0; r < MAX_RANKS; r++)
            if (c->fds[r] >= 0) shutdown(c->fds[r], SHUT_RDWR);
    pthread_mutex_lock(&c->mu);
    c->quit = 1;
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
    pthread_join(c->thread, NULL);
    c->magic = 0;
    comm_free(c);
    return ncclSuccess;
}
API int ncclCommDestroy(ncclComm_t comm) { return comm_end(comm, 0); }
API int ncclCommAbort(ncclComm_t comm) { return comm_end(comm, 1); }

/* ---- the exchanges (progress thread only) ------------------------------------------------ */

/* Keeps a message read ahead of the one wanted; -1 if it cannot be kept (misuse). */
static int stash(struct comm *c, int peer, const struct msg *m) {
    if (m->type == M_SEND) c->pend_send[peer]++;
    else if (m->type == M_ACK) c->pend_ack[peer]++;
    else if ((m->type == M_COLL || m->type == M_DONE) && !c->have[peer]) {
        c->slot[peer] = *m;
        c->have[peer] = 1;
    } else return -1;
    return 0;
}

static int take(struct comm *c, int peer, uint32_t want, struct msg *out) {
    int *pend = want == M_SEND ? c->pend_send : want == M_ACK ? c->pend_ack : NULL;
    if (pend && pend[peer] > 0) { pend[peer]--; return 1; }
    if (!pend && c->have[peer] && c->slot[peer].type == want) {
        *out = c->slot[peer];
        c->have[peer] = 0;
        return 1;
    }
    return 0;
}

/* ncclSuccess, ncclSystemError (I/O, timeout) or ncclInvalidUsage (unexpected message). */
static int put_msg(struct comm *c, int peer, struct msg m, int64_t dl) {
    if (peer == c->rank) return stash(c, peer, &m) ? ncclInvalidUsage : ncclSuccess;
    if (!io_full(c->fds[peer], &m, sizeof m, 1, dl)) return ncclSuccess;
    fprintf(stderr, "fakenccl: rank %d: send to rank %d: %s\n", c->rank, peer, strerror(errno));
    return ncclSystemError;
}

static int get_msg(struct comm *c, int peer, uint32_t want, struct msg *out, int64_t dl) {
    struct msg m;
    while (!take(c, peer, want, out)) {
        if (peer == c->rank) return ncclInvalidUsage; /* e.g. a recv from self with no send */
        if (io_full(c->fds[peer], &m, sizeof m, 0, dl)) {
            fprintf(stderr, "fakenccl: rank %d: waiting for rank %d: %s\n", c->rank, peer,
                    strerror(errno));
            return ncclSystemError;
        }
        if (stash(c, peer, &m)) return ncclInvalidUsage;
    }
    return ncclSuccess;
}

/* One job: announce every op, then collectives in order, receives, sends. Writes never wait
 * on a peer, so ops grouped in any order on each rank meet. */
static int run_ops(struct comm *c, struct op *ops, int n) {
    int64_t dl = now_ms() + TIMEOUT_MS;
    int rc = ncclSuccess, me = c->rank;
    struct msg m;
    for (int i = 0; i < n && !rc; i++) {
        struct msg a = {.type = p2p(ops[i].func) ? M_SEND : M_COLL, .func = ops[i].func,
                        .count = ops[i].count};
        if (!p2p(ops[i].func)) a.seq = ops[i].seq = ++c->seq;
        if (ops[i].func == F_SEND || (a.type == M_COLL && me > 0 && c->nranks > 1))
            rc = put_msg(c, a.type == M_SEND ? ops[i].peer : 0, a, dl);
    }
    for (int i = 0; i < n && !rc; i++) {
        if (p2p(ops[i].func) || c->nranks == 1) continue;
        if (me > 0) { /* rank 0's answer carries the verdict */
            rc = get_msg(c, 0, M_DONE, &m, dl);
            if (!rc) rc = m.seq != ops[i].seq ? ncclInvalidUsage : m.status;
            continue;
        }
        struct msg d = {.type = M_DONE, .seq = ops[i].seq, .func = ops[i].func};
        for (int r = 1; r < c->nranks && !rc; r++) {
            rc = get_msg(c, r, M_COLL, &m, dl);
            if (!rc && (m.seq != ops[i].seq || m.func != ops[i].func)) {
                fprintf(stderr, "fakenccl: rank %d: seq %lu func %d, but rank 0 is at seq %lu "
                        "func %d\n", r, (unsigned long)m.seq, m.func,
                        (unsigned long)ops[i].seq, ops[i].func);
                d.status = ncclInvalidUsage;
            }
        }
        for (int r = 1; r < c->nranks && !rc; r++) rc = put_msg(c, r, d, dl);
        if (!rc) rc = d.status;
    }
    for (int i = 0; i < n && !rc; i++)
        if (ops[i].func == F_RECV && !(rc = get_msg(c, ops[i].peer, M_SEND, &m, dl)))
            rc = put_msg(c, ops[i].peer, (struct msg){.type = M_ACK}, dl);
    for (int i = 0; i < n && !rc; i++)
        if (ops[i].func == F_SEND) rc = get_msg(c, ops[i].peer, M_ACK, &m, dl);
    return rc;
}

/* ---- the caller's side: groups, GPU time ------------------------------------------------- */

typedef int (*launch_fn)(void *, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned,
                         unsigned, void *, void **, void **);
static launch_fn cu_launch;
static pthread_once_t resolve_once = PTHREAD_ONCE_INIT;

static void resolve(void) { /* the driver already loaded (RTLD_GLOBAL), else none */
    void *p = dlsym(RTLD_DEFAULT, "cuLaunchKernel"), *h;
    if (!p && (h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_NOLOAD)))
        p = dlsym(h, "cuLaunchKernel");
    cu_launch = (launch_fn)p;
}

static size_t dtype_size(int t) {
    static const size_t sz[] = {1, 1, 4, 4, 8, 8, 2, 4, 8, 2, 1, 1};
    return t >= 0 && t < 12 ? sz[t] : 1;
}

/* The operation's kernel: one launch on its stream, costing 20000 + bytes/50 ns. */
static void model_gpu(const struct op *o) {
    pthread_once(&resolve_once, resolve);
    if (!cu_launch) return;
    uint64_t cost = 20000 + (uint64_t)o->count * dtype_size(o->dtype) / 50;
    cu_launch((void *)(uintptr_t)(0x4e43434c0000ULL + (unsigned)o->func), 1, 1, 1, 256, 1, 1,
              cost > 0xffffffffULL ? 0xffffffffU : (unsigned)cost, o->stream, NULL, NULL);
}

static int post(struct comm *c, struct op *ops, int n) {
    pthread_mutex_lock(&c->mu);
    c->job = ops;
    c->njob = n;
    c->state = 1;
    pthread_cond_broadcast(&c->cv);
    while (c->state != 2) pthread_cond_wait(&c->cv, &c->mu); /* run_ops is bounded */
    c->state = 0;
    int rc = c->rc;
    pthread_mutex_unlock(&c->mu);
    return rc;
}

/* Runs ops (of one or several comms: one job per comm, in order), then their kernels. */
static int execute(struct op *ops, int n) {
    int rc = ncclSuccess, k;
    struct op *mine = malloc(sizeof *mine * (size_t)n);
    char *done = calloc((size_t)n, 1);
    if (!mine || !done) { free(mine); free(done); return ncclSystemError; }
    for (int i = 0; i < n && !rc; i++) {
        if (done[i]) continue;
        k = 0;
        for (int j = i; j < n; j++)
            if (ops[j].comm == ops[i].comm) { mine[k++] = ops[j]; done[j] = 1; }
        rc = post(ops[i].comm, mine, k);
    }
    for (int i = 0; i < n && !rc; i++) model_gpu(&ops[i]);
    free(mine);
    free(done);
    return rc;
}

static __thread int group_depth, group_n, group_cap, group_rc;
static __thread struct op *group_ops;

static int submit(struct op o) {
    if (!valid(o.comm)) return ncclInvalidArgument;
    if (p2p(o.func) && (o.peer < 0 || o.peer >= o.comm->nranks)) return ncclInvalidArgument;
    if (group_depth == 0) return execute(&o, 1);
    if (group_n == group_cap) {
        int cap = group_cap ? 2 * group_cap : 16;
        struct op *p = realloc(group_ops, sizeof *p * (size_t)cap);
        if (!p) return group_rc = ncclSystemError;
        group_ops = p;
        group_cap = cap;
    }
    group_ops[group_n++] = o;
    return ncclSuccess;
}

API int ncclGroupStart(void) { group_depth++; return ncclSuccess; }
API int ncclGroupEnd(void) {
    if (group_depth == 0) return ncclInvalidUsage;
    if (--group_depth > 0) return ncclSuccess;
    int rc = group_rc ? group_rc : group_n ? execute(group_ops, group_n) : ncclSuccess;
    group_n = group_rc = 0;
    return rc;
}

/* ---- collectives, point-to-point (NCCL's prototypes; dtype, op: ncclDataType_t, ncclRedOp_t) */

API int ncclAllReduce(const void *send, void *recv, size_t count, int dtype, int op,
                      ncclComm_t comm, void *stream) {
    (void)send; (void)recv; (void)op;
    return submit((struct op){.comm = comm, .func = F_ALLREDUCE, .dtype = dtype,
                              .count = count, .stream = stream});
}
API int ncclAllGather(const void *send, void *recv, size_t sendcount, int dtype,
                      ncclComm_t comm, void *stream) {
    (void)send; (void)recv;
    return submit((struct op){.comm = comm, .func = F_ALLGATHER, .dtype = dtype,
                              .count = sendcount, .stream = stream});
}
API int ncclReduceScatter(const void *send, void *recv, size_t recvcount, int dtype, int op,
                          ncclComm_t comm, void *stream) {
    (void)send; (void)recv; (void)op;
    return submit((struct op){.comm = comm, .func = F_REDUCESCATTER, .dtype = dtype,
                              .count = recvcount, .stream = stream});
}
API int ncclBroadcast(const void *send, void *recv, size_t count, int dtype, int root,
                      ncclComm_t comm, void *stream) {
    (void)send; (void)recv;
    if (valid(comm) && (root < 0 || root >= comm->nranks)) return ncclInvalidArgument;
    return submit((struct op){.comm = comm, .func = F_BROADCAST, .dtype = dtype,
                              .count = count, .stream = stream});
}
API int ncclSend(const void *buf, size_t count, int dtype, int peer, ncclComm_t comm,
                 void *stream) {
    (void)buf;
    return submit((struct op){.comm = comm, .func = F_SEND, .dtype = dtype, .peer = peer,
                              .count = count, .stream = stream});
}
API int ncclRecv(void *buf, size_t count, int dtype, int peer, ncclComm_t comm, void *stream) {
    (void)buf;
    return submit((struct op){.comm = comm, .func = F_RECV, .dtype = dtype, .peer = peer,
                              .count = count, .stream = stream});
}

API const char *ncclGetErrorString(int rc) {
    static const char *s[] = {"no error", "unhandled cuda error", "unhandled system error",
                              "internal error", "invalid argument", "invalid usage"};
    return rc >= 0 && rc < 6 ? s[rc] : "unknown result code";
}
