/* The floor for bench/compare: the best round trip this machine allows over loopback TCP.
 * Blocking sockets, no runtime, no framing beyond a fixed message size.
 *
 *   floor server PORT SIZE [poll]   accept one connection, echo SIZE-byte messages until EOF;
 *                                   with "poll", read with MSG_DONTWAIT in a loop instead of
 *                                   blocking (the floor for a busy-polling server)
 *   floor client PORT SIZE COUNT    COUNT round trips; prints {"rps":..., "p50_us":..., ...}
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static int poll_reads = 0;

static int full(int fd, char *buf, size_t size, int writing) {
    size_t done = 0;
    while (done < size) {
        ssize_t n = writing ? write(fd, buf + done, size - done)
                            : recv(fd, buf + done, size - done, poll_reads ? MSG_DONTWAIT : 0);
        if (n < 0 && !writing && poll_reads && (errno == EAGAIN || errno == EWOULDBLOCK)) continue;
        if (n <= 0) return -1;
        done += n;
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: floor server PORT SIZE | floor client PORT SIZE COUNT\n");
        return 2;
    }
    int port = atoi(argv[2]);
    size_t size = strtoul(argv[3], NULL, 10);
    if (size > ((size_t)1 << 30)) { fprintf(stderr, "floor: SIZE over 1 GiB\n"); return 2; }
    /* At the start of a page: where a received message's offset in its page and the
     * kernel's differ by a few bytes, the kernel's copy runs at a third of its speed on
     * some CPUs (AMD EPYC: 49 us for a 64 KiB recv 16 bytes past a page's start, 15 us at
     * it), and calloc puts a buffer of 128 KiB or more 16 bytes past one. */
    size_t pages = (size + 4095) / 4096 * 4096;
    char *buf = aligned_alloc(4096, pages ? pages : 4096);
    if (!buf) { perror("floor"); return 1; }
    memset(buf, 0, pages ? pages : 4096);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
    int one = 1;
    if (!strcmp(argv[1], "server")) {
        poll_reads = argc > 4 && !strcmp(argv[4], "poll");
        int l = socket(AF_INET, SOCK_STREAM, 0);
        setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(l, (struct sockaddr *)&addr, sizeof addr) || listen(l, 1)) { perror("floor"); return 1; }
        int fd = accept(l, NULL, NULL);
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        while (full(fd, buf, size, 0) == 0 && full(fd, buf, size, 1) == 0) {}
        return 0;
    }
    long count = strtol(argv[4], NULL, 10);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    for (int tries = 0; connect(fd, (struct sockaddr *)&addr, sizeof addr); tries++) {
        if (tries > 100) { perror("floor: connect"); return 1; }
        usleep(20000);
    }
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    double *rtt = malloc(sizeof(double) * count);
    double start = now_s();
    for (long i = 0; i < count; i++) {
        double t0 = now_s();
        if (full(fd, buf, size, 1) || full(fd, buf, size, 0)) { fprintf(stderr, "floor: peer closed\n"); return 1; }
        rtt[i] = (now_s() - t0) * 1e6;
    }
    double elapsed = now_s() - start;
    qsort(rtt, count, sizeof(double), cmp);
    printf("{\"rps\": %.1f, \"p50_us\": %.1f, \"p90_us\": %.1f, \"p99_us\": %.1f, \"p999_us\": %.1f, \"max_us\": %.1f}\n",
           count / elapsed, rtt[count / 2], rtt[count * 9 / 10], rtt[count * 99 / 100],
           rtt[count * 999 / 1000], rtt[count - 1]);
    return 0;
}
