/* The many-connection floor for bench/compare: a C epoll echo server and a C epoll
 * closed-loop client, one SIZE-byte message in flight per connection, no runtime and no
 * framing. What it measures is what this machine's kernel and CPUs allow at that shape:
 * its tail in particular is the machine's, whatever server sits on top.
 *
 *   epoll_floor server PORT [SPIN_NS [TOUCH]]       echo every byte back, any connections
 *   epoll_floor client PORT SIZE CONNS SECONDS [PROTO] [DEPTH] [RATE]
 *                                                   1 s warm-up, then SECONDS measured;
 *                                                   prints {"rps":..., "p50_us":..., ...}
 *
 * SPIN_NS and TOUCH (default 0) make the server costlier on purpose, to tell apart what a
 * server's tail owes to its CPU per request and to its memory per connection: after each
 * read it spins SPIN_NS nanoseconds, and touches TOUCH bytes of a region of its own for
 * that connection (one byte per 64, a cache line each). The floor itself is run without.
 *
 * DEPTH (default 1) is the requests each connection keeps in flight: as replies come in,
 * as many new requests go out, in one write.
 *
 * RATE (requests/s in all; 0 or absent for the closed loop above) makes it an open loop:
 * request n is due at n / RATE seconds and goes out on connection n % CONNS, whether or
 * not the replies before it came back, and its latency counts from when it was due, so a
 * server that stalls is charged for every request it held up. DEPTH is then the most one
 * connection may have outstanding; a connection that falls that far behind ends the run
 * with an error rather than quietly sending less. Between requests due less than 2 ms
 * apart the client spins (epoll_wait with no timeout) instead of sleeping, so that its own
 * wake-up is not in the figures: it keeps its CPU busy, and none of the server's.
 *
 * PROTO is what the client speaks, so that one C load generator drives every server:
 *   raw      SIZE bytes out, SIZE bytes back (the default; the C server above)
 *   courier  a HELLO exchange, then REQUEST frames of SIZE payload bytes, REPLY expected
 *   plain    a 4-byte big-endian length and SIZE bytes (courier --framing plain, the toys)
 *   redis    ECHO with a SIZE-byte argument, its bulk-string reply expected
 * Every reply is checked where it starts (its kind byte, or the reply's first byte);
 * replies that are not what the protocol says count as "errors".
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

static double now_us(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static int serve(struct sockaddr_in *addr, long spin_ns, long touch) {
    /* A region of TOUCH bytes per file descriptor, for descriptors up to 65,536. */
    enum { MAX_FD = 65536 };
    char *memory = touch > 0 ? calloc(MAX_FD, (size_t)touch) : NULL;
    if (touch > 0 && !memory) { perror("epoll_floor"); return 1; }
    int one = 1;
    int l = socket(AF_INET, SOCK_STREAM, 0);
    setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(l, (struct sockaddr *)addr, sizeof *addr) || listen(l, 1024)) { perror("epoll_floor"); return 1; }
    int ep = epoll_create1(0);
    struct epoll_event e = {.events = EPOLLIN, .data.fd = l};
    epoll_ctl(ep, EPOLL_CTL_ADD, l, &e);
    struct epoll_event events[64];
    static char buf[65536];
    for (;;) {
        int ready = epoll_wait(ep, events, 64, -1);
        for (int i = 0; i < ready; i++) {
            int fd = events[i].data.fd;
            if (fd == l) {
                int c = accept(l, NULL, NULL);
                if (c < 0) continue;
                setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                fcntl(c, F_SETFL, O_NONBLOCK);
                struct epoll_event ce = {.events = EPOLLIN, .data.fd = c};
                epoll_ctl(ep, EPOLL_CTL_ADD, c, &ce);
                continue;
            }
            ssize_t n = read(fd, buf, sizeof buf);
            if (n <= 0) { close(fd); continue; }
            if (memory && fd < MAX_FD) {
                volatile char *mine = memory + (size_t)fd * (size_t)touch;
                for (long at = 0; at < touch; at += 64) mine[at]++;
            }
            if (spin_ns > 0) {
                double until = now_us() + spin_ns / 1e3;
                while (now_us() < until) {}
            }
            /* Replies are small and the peer reads them: a short write does not happen
             * at this shape, and the floor stays as simple as a floor should be. */
            if (write(fd, buf, n) != n) close(fd);
        }
    }
}

/* The request every connection sends over and over, the length of its reply, and where
 * (offset) the reply carries which byte, for the check. */
struct proto {
    char *msg;
    size_t len, reply_len, check_at;
    char check;
};

static int make_proto(const char *name, size_t size, struct proto *p) {
    p->check_at = 0;
    p->check = 0;
    if (!strcmp(name, "raw")) {
        p->msg = calloc(size, 1);
        p->len = p->reply_len = size;
        p->check = 0;
    } else if (!strcmp(name, "courier") || !strcmp(name, "plain")) {
        int courier = !strcmp(name, "courier");
        size_t header = courier ? 9 : 4;
        uint32_t length = (uint32_t)(courier ? size + 5 : size);
        p->msg = calloc(header + size, 1);
        p->msg[0] = length >> 24; p->msg[1] = length >> 16; p->msg[2] = length >> 8; p->msg[3] = length;
        if (courier) { p->msg[4] = 0x02; p->msg[8] = 0x01; p->check_at = 4; p->check = 0x03; }
        p->len = p->reply_len = header + size;
    } else if (!strcmp(name, "redis")) {
        p->msg = malloc(size + 64);
        int n = sprintf(p->msg, "*2\r\n$4\r\nECHO\r\n$%zu\r\n", size);
        memset(p->msg + n, 'x', size);
        memcpy(p->msg + n + size, "\r\n", 2);
        p->len = n + size + 2;
        char head[32];
        p->reply_len = sprintf(head, "$%zu\r\n", size) + size + 2;
        p->check = '$';
    } else {
        fprintf(stderr, "epoll_floor: unknown protocol %s (raw, courier, plain, redis)\n", name);
        return 1;
    }
    return 0;
}

/* courier's HELLO exchange, on a blocking socket: our HELLO (version 1, max_frame 1 MiB),
 * then the server's whole HELLO frame, which must be a HELLO. */
static int courier_hello(int fd) {
    static const unsigned char hello[] = {0, 0, 0, 0x0f, 0x01, 0, 0, 0, 0, 'C', 'O', 'U', 'R',
                                          0, 1, 0, 0x10, 0, 0};
    if (write(fd, hello, sizeof hello) != sizeof hello) return 1;
    unsigned char head[5];
    if (recv(fd, head, 5, MSG_WAITALL) != 5 || head[4] != 0x01) return 1;
    size_t rest = ((size_t)head[0] << 24 | head[1] << 16 | head[2] << 8 | head[3]) - 1;
    char body[4096];
    if (rest > sizeof body) return 1;
    return recv(fd, body, rest, MSG_WAITALL) != (ssize_t)rest;
}

/* Writes the `k` requests that follow slot `head` of connection `fd`'s ring of `depth`
 * (one vectored write, two slices where the ring wraps). */
static int send_ring(int fd, const struct proto *p, const char *ring, int depth, int head, int k) {
    int first = k < depth - head ? k : depth - head;
    struct iovec v[2] = {{(void *)(ring + (size_t)head * p->len), (size_t)first * p->len},
                         {(void *)ring, (size_t)(k - first) * p->len}};
    ssize_t want = (ssize_t)k * p->len;
    return writev(fd, v, k > first ? 2 : 1) != want;
}

/* The ring of `depth` requests every connection sends from: request j with id j + 1 in
 * courier framing. Replies come back in order, so the oldest `k` in flight are the next
 * `k` in the ring, and resending those reuses only ids already answered. */
static char *make_ring(const struct proto *p, const char *name, int depth) {
    char *ring = malloc(p->len * depth);
    for (int j = 0; j < depth; j++) {
        memcpy(ring + (size_t)j * p->len, p->msg, p->len);
        if (!strcmp(name, "courier")) {
            uint32_t id = j + 1;
            char *m = ring + (size_t)j * p->len;
            m[5] = id >> 24; m[6] = id >> 16; m[7] = id >> 8; m[8] = id;
        }
    }
    return ring;
}

/* Opens `conns` connections (the HELLO exchange first in courier framing), non-blocking
 * and registered with `ep` under their index. Returns the sockets, or NULL after saying
 * why. */
static int *connect_all(struct sockaddr_in *addr, int conns, const char *name, int ep) {
    int one = 1;
    int *fds = malloc(sizeof(int) * conns);
    for (int i = 0; i < conns; i++) {
        fds[i] = socket(AF_INET, SOCK_STREAM, 0);
        for (int tries = 0; connect(fds[i], (struct sockaddr *)addr, sizeof *addr); tries++) {
            if (tries > 100) { perror("epoll_floor: connect"); return NULL; }
            usleep(20000);
        }
        setsockopt(fds[i], IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (!strcmp(name, "courier") && courier_hello(fds[i])) {
            fprintf(stderr, "epoll_floor: the courier HELLO exchange failed\n");
            return NULL;
        }
        fcntl(fds[i], F_SETFL, O_NONBLOCK);
        struct epoll_event e = {.events = EPOLLIN, .data.u32 = i};
        epoll_ctl(ep, EPOLL_CTL_ADD, fds[i], &e);
    }
    return fds;
}

/* Takes the `n` bytes of `buf` read from a connection that had `*got` bytes of its
 * current reply already: checks each reply's marker byte where this read holds it, and
 * returns how many replies this read completed. */
static int whole_replies(const struct proto *p, const char *buf, size_t n, size_t *got, long *errors) {
    int k = 0;
    for (size_t pos = 0; pos < n;) {
        size_t at = pos + p->check_at - *got;
        if (p->check && p->check_at >= *got && at < n && buf[at] != p->check) (*errors)++;
        size_t take = p->reply_len - *got < n - pos ? p->reply_len - *got : n - pos;
        *got += take;
        pos += take;
        if (*got < p->reply_len) break;
        *got = 0;
        k++;
    }
    return k;
}

/* Prints the run's figures as one JSON object: requests/s and latency percentiles from
 * `count` latencies (sorted here). */
static int report(double *lat, long count, long done, double seconds, long errors) {
    if (count == 0) { fprintf(stderr, "epoll_floor: no round trip measured\n"); return 1; }
    qsort(lat, count, sizeof(double), cmp);
    printf("{\"rps\": %.1f, \"p50_us\": %.1f, \"p90_us\": %.1f, \"p99_us\": %.1f, \"p999_us\": %.1f, \"max_us\": %.1f, \"errors\": %ld}\n",
           done / seconds, lat[count / 2], lat[count * 9 / 10], lat[count * 99 / 100],
           lat[count * 999 / 1000], lat[count - 1], errors);
    return 0;
}

static int load(struct sockaddr_in *addr, size_t size, int conns, double seconds, const char *name, int depth) {
    int ep = epoll_create1(0);
    struct proto p;
    if (make_proto(name, size, &p)) return 2;
    /* Every connection keeps `depth` requests in flight, from its ring. */
    char *ring = make_ring(&p, name, depth);
    double *sent = malloc(sizeof(double) * conns * depth);
    int *head = calloc(conns, sizeof(int));
    size_t *got = calloc(conns, sizeof(size_t));
    long errors = 0;
    /* One latency kept in every `depth` replies: enough samples, and bounded memory. */
    long cap = (long)(seconds * 2e6) + 1000;
    double *lat = malloc(sizeof(double) * cap);
    long count = 0, done = 0, answered = 0;
    int *fds = connect_all(addr, conns, name, ep);
    if (!fds) return 1;
    double start = now_us(), from = start + 1e6, until = from + seconds * 1e6;
    for (int i = 0; i < conns; i++) {
        double t = now_us();
        for (int j = 0; j < depth; j++) sent[i * depth + j] = t;
        if (send_ring(fds[i], &p, ring, depth, 0, depth)) { perror("epoll_floor: write"); return 1; }
    }
    struct epoll_event events[64];
    static char buf[65536];
    while (now_us() < until) {
        int ready = epoll_wait(ep, events, 64, 100);
        for (int j = 0; j < ready; j++) {
            int i = events[j].data.u32;
            ssize_t n = read(fds[i], buf, sizeof buf);
            if (n <= 0) { fprintf(stderr, "epoll_floor: server closed\n"); return 1; }
            double t = now_us();
            int k = whole_replies(&p, buf, (size_t)n, &got[i], &errors);
            for (int q = 0; q < k; q++) {
                double s = sent[i * depth + (head[i] + q) % depth];
                if (s >= from && t <= until) {
                    done++;
                    if (answered++ % depth == 0 && count < cap) lat[count++] = t - s;
                }
            }
            if (k == 0) continue;
            if (send_ring(fds[i], &p, ring, depth, head[i], k)) { perror("epoll_floor: write"); return 1; }
            for (int q = 0; q < k; q++) sent[i * depth + (head[i] + q) % depth] = t;
            head[i] = (head[i] + k) % depth;
        }
    }
    return report(lat, count, done, seconds, errors);
}

/* The open loop (RATE > 0): see the top of the file. Each connection's outstanding
 * requests are a ring of `depth` due times; replies come back in order, so the oldest
 * outstanding request is the one a reply answers, and request ids (courier framing) cycle
 * through the ring's slots as in the closed loop. */
static int open_loop(struct sockaddr_in *addr, size_t size, int conns, double seconds, const char *name,
                     int depth, double rate) {
    int ep = epoll_create1(0);
    struct proto p;
    if (make_proto(name, size, &p)) return 2;
    char *ring = make_ring(&p, name, depth);
    double *due = malloc(sizeof(double) * conns * depth);
    int *oldest = calloc(conns, sizeof(int)), *outstanding = calloc(conns, sizeof(int));
    size_t *got = calloc(conns, sizeof(size_t));
    long errors = 0;
    long cap = (long)(seconds * rate * 1.1) + 1000;
    double *lat = malloc(sizeof(double) * cap);
    long count = 0, done = 0;
    int *fds = connect_all(addr, conns, name, ep);
    if (!fds) return 1;
    double start = now_us(), from = start + 1e6, until = from + seconds * 1e6;
    double gap = 1e6 / rate;
    long next = 0;
    struct epoll_event events[64];
    static char buf[65536];
    for (;;) {
        double t = now_us();
        /* Everything due by now leaves now, each request on its own connection. */
        for (double d = start + next * gap; d <= t && d < until; d = start + ++next * gap) {
            int i = (int)(next % conns);
            if (outstanding[i] == depth) {
                fprintf(stderr, "epoll_floor: connection %d has %d requests outstanding (DEPTH); the server fell "
                        "too far behind for this open loop\n", i, depth);
                return 1;
            }
            int slot = (oldest[i] + outstanding[i]) % depth;
            due[(size_t)i * depth + slot] = d;
            outstanding[i]++;
            if (send_ring(fds[i], &p, ring, depth, slot, 1)) { perror("epoll_floor: write"); return 1; }
        }
        double wait = start + next * gap - t;
        if (t >= until) {
            /* Sending has stopped: wait for what is still outstanding, at most 1 s. */
            long left = 0;
            for (int i = 0; i < conns; i++) left += outstanding[i];
            if (left == 0 || t >= until + 1e6) break;
            wait = 1000;
        }
        int timeout = wait < 2000 ? 0 : (int)(wait / 1000) - 1;
        int ready = epoll_wait(ep, events, 64, timeout);
        t = now_us();
        for (int j = 0; j < ready; j++) {
            int i = events[j].data.u32;
            ssize_t n = read(fds[i], buf, sizeof buf);
            if (n < 0 && errno == EAGAIN) continue;
            if (n <= 0) { fprintf(stderr, "epoll_floor: server closed\n"); return 1; }
            for (int k = whole_replies(&p, buf, (size_t)n, &got[i], &errors); k > 0; k--) {
                if (outstanding[i] == 0) { errors++; continue; }
                double d = due[(size_t)i * depth + oldest[i]];
                oldest[i] = (oldest[i] + 1) % depth;
                outstanding[i]--;
                if (d >= from && d < until) {
                    done++;
                    if (count < cap) lat[count++] = t - d;
                }
            }
        }
    }
    long left = 0;
    for (int i = 0; i < conns; i++) left += outstanding[i];
    if (left) { fprintf(stderr, "epoll_floor: %ld requests had no reply 1 s after the last was sent\n", left); return 1; }
    return report(lat, count, done, seconds, errors);
}

int main(int argc, char **argv) {
    if (argc < 3 || (!strcmp(argv[1], "client") && argc < 6)) {
        fprintf(stderr, "usage: epoll_floor server PORT [SPIN_NS [TOUCH]] | epoll_floor client PORT SIZE CONNS SECONDS [raw|courier|plain|redis] [DEPTH] [RATE]\n");
        return 2;
    }
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
    inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
    if (!strcmp(argv[1], "server"))
        return serve(&addr, argc > 3 ? atol(argv[3]) : 0, argc > 4 ? atol(argv[4]) : 0);
    int depth = argc > 7 ? atoi(argv[7]) : 1;
    if (depth < 1 || depth > 1024) { fprintf(stderr, "epoll_floor: DEPTH must be 1 to 1024\n"); return 2; }
    double rate = argc > 8 ? atof(argv[8]) : 0;
    const char *proto = argc > 6 ? argv[6] : "raw";
    if (rate > 0) return open_loop(&addr, strtoul(argv[3], NULL, 10), atoi(argv[4]), atof(argv[5]), proto, depth, rate);
    return load(&addr, strtoul(argv[3], NULL, 10), atoi(argv[4]), atof(argv[5]), proto, depth);
}
