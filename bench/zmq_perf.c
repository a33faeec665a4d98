/* ZeroMQ anchors for bench/compare, measured as libzmq's perf tools do
 * (local_thr/remote_thr, local_lat/remote_lat):
 *
 *   zmq_perf pull ENDPOINT SIZE COUNT   bind PULL, receive COUNT messages; the clock starts
 *                                       at the first message; prints {"msgs_per_s": ...}
 *   zmq_perf push ENDPOINT SIZE COUNT   connect PUSH, send COUNT messages of SIZE bytes
 *   zmq_perf rep  ENDPOINT SIZE COUNT   bind REP, echo COUNT messages
 *   zmq_perf req  ENDPOINT SIZE COUNT   connect REQ, COUNT round trips, timing each one;
 *                                       prints {"rps":..., "p50_us":..., ...}
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zmq.h>

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void check(int rc, const char *what) {
    if (rc < 0) {
        fprintf(stderr, "zmq_perf: %s: %s\n", what, zmq_strerror(zmq_errno()));
        exit(1);
    }
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: zmq_perf pull|push|rep|req ENDPOINT SIZE COUNT\n");
        return 2;
    }
    const char *mode = argv[1], *endpoint = argv[2];
    size_t size = strtoul(argv[3], NULL, 10);
    long count = strtol(argv[4], NULL, 10);
    void *ctx = zmq_ctx_new();
    if (size > ((size_t)1 << 30)) { fprintf(stderr, "zmq_perf: SIZE over 1 GiB\n"); return 2; }
    /* At the start of a page, as bench/floor.c's buffer (why: there). */
    size_t pages = (size + 4095) / 4096 * 4096;
    char *buf = aligned_alloc(4096, pages ? pages : 4096);
    if (!buf) { perror("zmq_perf"); return 1; }
    memset(buf, 0, pages ? pages : 4096);

    if (!strcmp(mode, "pull") || !strcmp(mode, "rep")) {
        void *s = zmq_socket(ctx, !strcmp(mode, "pull") ? ZMQ_PULL : ZMQ_REP);
        check(zmq_bind(s, endpoint), "bind");
        double start = 0;
        for (long i = 0; i < count; i++) {
            int n = zmq_recv(s, buf, size, 0);
            check(n, "recv");
            if ((size_t)n != size) { fprintf(stderr, "zmq_perf: wrong size %d\n", n); return 1; }
            if (i == 0) start = now_s();
            if (!strcmp(mode, "rep")) check(zmq_send(s, buf, size, 0), "send");
        }
        double elapsed = now_s() - start;
        if (!strcmp(mode, "pull"))
            printf("{\"msgs_per_s\": %.1f, \"count\": %ld, \"seconds\": %.3f}\n",
                   (count - 1) / elapsed, count, elapsed);
        zmq_close(s);
    } else {
        void *s = zmq_socket(ctx, !strcmp(mode, "push") ? ZMQ_PUSH : ZMQ_REQ);
        check(zmq_connect(s, endpoint), "connect");
        if (!strcmp(mode, "push")) {
            for (long i = 0; i < count; i++) check(zmq_send(s, buf, size, 0), "send");
        } else {
            double *rtt = malloc(sizeof(double) * count);
            double start = now_s();
            for (long i = 0; i < count; i++) {
                double t0 = now_s();
                check(zmq_send(s, buf, size, 0), "send");
                check(zmq_recv(s, buf, size, 0), "recv");
                rtt[i] = (now_s() - t0) * 1e6;
            }
            double elapsed = now_s() - start;
            qsort(rtt, count, sizeof(double), cmp);
            printf("{\"rps\": %.1f, \"p50_us\": %.1f, \"p90_us\": %.1f, \"p99_us\": %.1f, "
                   "\"p999_us\": %.1f, \"max_us\": %.1f}\n",
                   count / elapsed, rtt[count / 2], rtt[count * 9 / 10], rtt[count * 99 / 100],
                   rtt[count * 999 / 1000], rtt[count - 1]);
        }
        /* Let PUSH deliver everything before the context goes. */
        int linger = -1;
        zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof linger);
        zmq_close(s);
    }
    zmq_ctx_term(ctx);
    return 0;
}
