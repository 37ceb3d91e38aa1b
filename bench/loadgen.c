// Load generator for bench_daemon.py: a redis-benchmark-like client for the daemon's frames.
// One thread, epoll, C connections to a Unix socket; each connection keeps P copies of one
// pre-encoded request frame (read from a file) in flight (P = 1: send, wait for the reply,
// send the next, as redis-benchmark does by default; P > 1: pipelined, as redis-benchmark -P),
// records each reply's latency from its request's send, for S seconds after a short warm-up.
// Replies of one connection are taken in order (true of identical single-row requests).
// Prints: requests errors seconds p50_us p99_us.
// MODE "frame" (default): the daemon's length-prefixed frames; a reply counts as an error when
// its MessagePack body is not tagged "detect". MODE "resp": the frame file holds a RESP command
// (e.g. `*2\r\n$3\r\nGET\r\n$3\r\nkey\r\n`) and each reply is one RESP value; anything but a
// non-nil bulk string (`$N\r\n...\r\n`) counts as an error. One client for both servers, so
// neither side's ratio is flattered by a heavier client (redis-benchmark costs more per request).
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define BUCKETS 1000000 /* 0.1 us resolution up to 100 ms */

static double now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

typedef struct {
    int fd;
    double t0[256]; /* send times of the requests in flight, a ring */
    int head, tail;
    unsigned char *buf;
    size_t cap, len;
} conn_t;

static uint64_t hist[BUCKETS + 1];

static void send_all(int fd, const unsigned char *p, size_t n) {
    while (n) {
        ssize_t k = write(fd, p, n);
        if (k < 0) {
            if (errno == EAGAIN || errno == EINTR) continue;
            perror("write");
            exit(2);
        }
        p += k;
        n -= (size_t)k;
    }
}

int main(int argc, char **argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: %s SOCKET FRAME_FILE CONNECTIONS SECONDS [WARMUP_SECONDS [PIPELINE [frame|resp]]]\n",
                argv[0]);
        return 2;
    }
    const char *path = argv[1];
    int nconn = atoi(argv[3]);
    double seconds = atof(argv[4]), warmup = argc > 5 ? atof(argv[5]) : 0.5;
    int pipeline = argc > 6 ? atoi(argv[6]) : 1;
    if (pipeline < 1 || pipeline > 256) { fprintf(stderr, "PIPELINE must be 1..256\n"); return 2; }
    int resp = argc > 7 && strcmp(argv[7], "resp") == 0;
    if (argc > 7 && !resp && strcmp(argv[7], "frame") != 0) { fprintf(stderr, "MODE must be frame or resp\n"); return 2; }
    FILE *f = fopen(argv[2], "rb");
    if (!f) { perror("frame file"); return 2; }
    unsigned char frame[1 << 16];
    size_t flen = fread(frame, 1, sizeof frame, f);
    fclose(f);

    int ep = epoll_create1(0);
    conn_t *cs = calloc((size_t)nconn, sizeof(conn_t));
    for (int i = 0; i < nconn; i++) {
        int fd = socket(AF_UNIX, SOCK_STREAM, 0);
        struct sockaddr_un a = {.sun_family = AF_UNIX};
        strncpy(a.sun_path, path, sizeof a.sun_path - 1);
        if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) { perror("connect"); return 2; }
        cs[i].fd = fd;
        cs[i].cap = 1 << 16;
        cs[i].buf = malloc(cs[i].cap);
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
        epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
    }
    double start = now_us(), measure_from = start + warmup * 1e6, stop = measure_from + seconds * 1e6;
    for (int i = 0; i < nconn; i++)
        for (int k = 0; k < pipeline; k++) { cs[i].t0[cs[i].tail++ % 256] = now_us(); send_all(cs[i].fd, frame, flen); }
    uint64_t done = 0, errors = 0;
    struct epoll_event evs[1024];
    int active = nconn;
    while (active > 0) {
        int n = epoll_wait(ep, evs, 1024, 1000);
        if (n < 0) { if (errno == EINTR) continue; perror("epoll"); return 2; }
        if (n == 0) { fprintf(stderr, "stalled: no reply for 1 s\n"); return 3; }
        for (int e = 0; e < n; e++) {
            conn_t *c = &cs[evs[e].data.u32];
            ssize_t k = read(c->fd, c->buf + c->len, c->cap - c->len);
            if (k <= 0) { fprintf(stderr, "connection closed by the daemon\n"); return 3; }
            c->len += (size_t)k;
            for (;;) {
                /* One whole reply at the front of the buffer: its size, and whether it is an error. */
                size_t rlen = 0;
                int bad = 0;
                if (!resp) {
                    if (c->len < 4) break;
                    uint32_t blen = ((uint32_t)c->buf[0] << 24) | ((uint32_t)c->buf[1] << 16) | ((uint32_t)c->buf[2] << 8) | c->buf[3];
                    if (c->len < 4 + (size_t)blen) {
                        if (4 + (size_t)blen > c->cap) { c->cap = 4 + blen; c->buf = realloc(c->buf, c->cap); }
                        break;
                    }
                    rlen = 4 + (size_t)blen;
                    // Body: a map whose first key is "op" (0xa2 'o' 'p') then the tag string.
                    bad = blen < 10 || memcmp(c->buf + 5, "\xa2op\xa6" "detect", 10) != 0;
                } else {
                    unsigned char *nl = c->len ? memchr(c->buf, '\n', c->len) : NULL;
                    if (!nl) break;
                    size_t line = (size_t)(nl - c->buf) + 1;
                    if (c->buf[0] == '$' && c->buf[1] != '-') {
                        size_t blen = (size_t)strtoul((char *)c->buf + 1, NULL, 10);
                        if (c->len < line + blen + 2) {
                            if (line + blen + 2 > c->cap) { c->cap = line + blen + 2; c->buf = realloc(c->buf, c->cap); }
                            break;
                        }
                        rlen = line + blen + 2;
                    } else {
                        rlen = line;  /* +OK, -ERR, :n, $-1: one line, and not what GET of a set key answers */
                        bad = 1;
                    }
                }
                double t = now_us();
                if (bad) errors++;
                if (t >= measure_from && t < stop) {
                    double us = t - c->t0[c->head % 256];
                    long b = (long)(us * 10);
                    hist[b > BUCKETS ? BUCKETS : b]++;
                    done++;
                }
                memmove(c->buf, c->buf + rlen, c->len - rlen);
                c->len -= rlen;
                c->head++;
                if (t < stop) {
                    c->t0[c->tail++ % 256] = now_us();
                    send_all(c->fd, frame, flen);
                } else if (c->head == c->tail) {
                    active--;
                }
            }
        }
    }
    uint64_t acc = 0;
    double p50 = -1, p99 = -1;
    for (long b = 0; b <= BUCKETS; b++) {
        acc += hist[b];
        if (p50 < 0 && acc * 2 >= done) p50 = b / 10.0;
        if (p99 < 0 && acc * 100 >= done * 99) { p99 = b / 10.0; break; }
    }
    printf("%llu %llu %.3f %.1f %.1f\n", (unsigned long long)done, (unsigned long long)errors, seconds, p50, p99);
    return 0;
}
