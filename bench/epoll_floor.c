/* The many-connection floor for bench/compare: a C epoll echo server and a C epoll
 * closed-loop client, one SIZE-byte message in flight per connection, no runtime and no
 * framing. What it measures is what this machine's kernel and CPUs allow at that shape:
 * its tail in particular is the machine's, whatever server sits on top.
 *
 *   epoll_floor server PORT                         echo every byte back, any connections
 *   epoll_floor client PORT SIZE CONNS SECONDS      1 s warm-up, then SECONDS measured;
 *                                                   prints {"rps":..., "p50_us":..., ...}
 */
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
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

static int serve(struct sockaddr_in *addr) {
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
            /* Replies are small and the peer reads them: a short write does not happen
             * at this shape, and the floor stays as simple as a floor should be. */
            if (write(fd, buf, n) != n) close(fd);
        }
    }
}

static int load(struct sockaddr_in *addr, size_t size, int conns, double seconds) {
    int one = 1;
    int ep = epoll_create1(0);
    int *fds = malloc(sizeof(int) * conns);
    double *sent = malloc(sizeof(double) * conns);
    size_t *got = calloc(conns, sizeof(size_t));
    char *msg = calloc(size, 1);
    long cap = (long)(seconds * 2e6) + 1000;
    double *lat = malloc(sizeof(double) * cap);
    long count = 0;
    for (int i = 0; i < conns; i++) {
        fds[i] = socket(AF_INET, SOCK_STREAM, 0);
        for (int tries = 0; connect(fds[i], (struct sockaddr *)addr, sizeof *addr); tries++) {
            if (tries > 100) { perror("epoll_floor: connect"); return 1; }
            usleep(20000);
        }
        setsockopt(fds[i], IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        fcntl(fds[i], F_SETFL, O_NONBLOCK);
        struct epoll_event e = {.events = EPOLLIN, .data.u32 = i};
        epoll_ctl(ep, EPOLL_CTL_ADD, fds[i], &e);
    }
    double start = now_us(), from = start + 1e6, until = from + seconds * 1e6;
    for (int i = 0; i < conns; i++) {
        sent[i] = now_us();
        if (write(fds[i], msg, size) != (ssize_t)size) { perror("epoll_floor: write"); return 1; }
    }
    struct epoll_event events[64];
    static char buf[65536];
    while (now_us() < until) {
        int ready = epoll_wait(ep, events, 64, 100);
        for (int j = 0; j < ready; j++) {
            int i = events[j].data.u32;
            ssize_t n = read(fds[i], buf, sizeof buf);
            if (n <= 0) { fprintf(stderr, "epoll_floor: server closed\n"); return 1; }
            got[i] += n;
            while (got[i] >= size) {
                got[i] -= size;
                double t = now_us();
                if (sent[i] >= from && t <= until && count < cap) lat[count++] = t - sent[i];
                sent[i] = t;
                if (write(fds[i], msg, size) != (ssize_t)size) { perror("epoll_floor: write"); return 1; }
            }
        }
    }
    if (count == 0) { fprintf(stderr, "epoll_floor: no round trip measured\n"); return 1; }
    qsort(lat, count, sizeof(double), cmp);
    printf("{\"rps\": %.1f, \"p50_us\": %.1f, \"p90_us\": %.1f, \"p99_us\": %.1f, \"p999_us\": %.1f, \"max_us\": %.1f}\n",
           count / seconds, lat[count / 2], lat[count * 9 / 10], lat[count * 99 / 100],
           lat[count * 999 / 1000], lat[count - 1]);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 3 || (!strcmp(argv[1], "client") && argc < 6)) {
        fprintf(stderr, "usage: epoll_floor server PORT | epoll_floor client PORT SIZE CONNS SECONDS\n");
        return 2;
    }
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
    inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
    if (!strcmp(argv[1], "server")) return serve(&addr);
    return load(&addr, strtoul(argv[3], NULL, 10), atoi(argv[4]), atof(argv[5]));
}
