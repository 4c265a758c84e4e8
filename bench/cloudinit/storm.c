/* cloud-init storm client: N nodes, each bound to its own source address, fetch
 * PREFIX{meta-data,user-data,vendor-data} one after another, each on a new TCP
 * connection (as cloud-init's read_seeded does); all nodes start together.
 * Built and run by bench/cloudinit; a C epoll loop so the client costs far less
 * per request than either server.
 *
 * usage: storm HOST PORT PREFIX IPFILE [SPREAD_MS]
 *   IPFILE: one source IPv4 per line; SPREAD_MS (default 0): node i starts at
 *   i*SPREAD_MS/N ms instead of all at once.
 * stdout: one line per fetch: "node doc status usec bodylen fnv1a64(body)",
 *         then "wall usec".
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define NDOCS 3
#define BUFMAX (256 * 1024)
static const char *DOCS[NDOCS] = {"meta-data", "user-data", "vendor-data"};

struct fetch {
    int node, doc, fd, sent;
    double t0;
    size_t len;
    char *buf;
};

static double now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

static int nnodes, live, epfd;
static struct in_addr *srcs;
static struct sockaddr_in dst;
static const char *host, *prefix;
static int port;

static void start(struct fetch *f, int node, int doc);

static void report(struct fetch *f, int status, double us, const char *body, size_t blen) {
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < blen; i++) { h ^= (unsigned char)body[i]; h *= 0x100000001b3ULL; }
    printf("%d %s %d %.0f %zu %016llx\n", f->node, DOCS[f->doc], status, us, blen,
           (unsigned long long)h);
}

static void finish(struct fetch *f, int status, const char *body, size_t blen) {
    report(f, status, now_us() - f->t0, body, blen);
    epoll_ctl(epfd, EPOLL_CTL_DEL, f->fd, NULL);
    close(f->fd);
    live--;
    if (f->doc + 1 < NDOCS) start(f, f->node, f->doc + 1);
}

static void start(struct fetch *f, int node, int doc) {
    f->node = node; f->doc = doc; f->sent = 0; f->len = 0; f->t0 = now_us();
    f->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    struct sockaddr_in src = {.sin_family = AF_INET, .sin_addr = srcs[node]};
    if (f->fd < 0 || bind(f->fd, (struct sockaddr *)&src, sizeof src) < 0) {
        perror("socket/bind"); exit(2);
    }
    if (connect(f->fd, (struct sockaddr *)&dst, sizeof dst) < 0 && errno != EINPROGRESS) {
        report(f, -errno, now_us() - f->t0, "", 0);
        close(f->fd);
        if (doc + 1 < NDOCS) start(f, node, doc + 1);
        return;
    }
    struct epoll_event ev = {.events = EPOLLOUT, .data.ptr = f};
    epoll_ctl(epfd, EPOLL_CTL_ADD, f->fd, &ev);
    live++;
}

int main(int argc, char **argv) {
    if (argc != 5 && argc != 6) { fprintf(stderr, "usage: storm HOST PORT PREFIX IPFILE [SPREAD_MS]\n"); return 2; }
    double spread_us = argc == 6 ? atof(argv[5]) * 1000.0 : 0.0;
    host = argv[1]; port = atoi(argv[2]); prefix = argv[3];
    FILE *ipf = fopen(argv[4], "r");
    if (!ipf) { perror(argv[4]); return 2; }
    srcs = calloc(65536, sizeof *srcs);
    char line[64];
    while (nnodes < 65536 && fgets(line, sizeof line, ipf)) {
        line[strcspn(line, "\r\n")] = 0;
        if (*line && inet_pton(AF_INET, line, &srcs[nnodes]) == 1) nnodes++;
    }
    fclose(ipf);
    dst.sin_family = AF_INET; dst.sin_port = htons(port);
    inet_pton(AF_INET, host, &dst.sin_addr);
    epfd = epoll_create1(0);
    struct fetch *fs = calloc(nnodes, sizeof *fs);
    for (int i = 0; i < nnodes; i++) fs[i].buf = malloc(BUFMAX);
    double t = now_us();
    int next = 0; /* next node to start */
    struct epoll_event evs[1024];
    char req[512];
    while (live > 0 || next < nnodes) {
        double el = now_us() - t;
        while (next < nnodes && (spread_us <= 0 || next * spread_us / nnodes <= el)) {
            start(&fs[next], next, 0);
            next++;
        }
        int wait_ms = 30000;
        if (next < nnodes) {
            wait_ms = (int)((next * spread_us / nnodes - (now_us() - t)) / 1000.0);
            if (wait_ms < 0) wait_ms = 0;
        }
        int n = epoll_wait(epfd, evs, 1024, wait_ms);
        if (n < 0 || (n == 0 && next >= nnodes)) { fprintf(stderr, "timeout with %d fetches in flight\n", live); break; }
        for (int k = 0; k < n; k++) {
            struct fetch *f = evs[k].data.ptr;
            if (!f->sent) {
                int err = 0; socklen_t el = sizeof err;
                getsockopt(f->fd, SOL_SOCKET, SO_ERROR, &err, &el);
                if (err) { finish(f, -err, "", 0); continue; }
                int rl = snprintf(req, sizeof req,
                    "GET %s%s HTTP/1.1\r\nHost: %s:%d\r\nUser-Agent: Cloud-Init/22.4.2\r\n"
                    "Accept: */*\r\nConnection: close\r\n\r\n", prefix, DOCS[f->doc], host, port);
                if (send(f->fd, req, rl, MSG_NOSIGNAL) != rl) { finish(f, -EIO, "", 0); continue; }
                f->sent = 1;
                struct epoll_event ev = {.events = EPOLLIN, .data.ptr = f};
                epoll_ctl(epfd, EPOLL_CTL_MOD, f->fd, &ev);
                continue;
            }
            ssize_t r = recv(f->fd, f->buf + f->len, BUFMAX - f->len, 0);
            if (r > 0) { f->len += r; if (f->len < BUFMAX) continue; }
            if (r < 0 && errno == EAGAIN) continue;
            int status = 0;
            if (f->len > 12 && memcmp(f->buf, "HTTP/", 5) == 0) status = atoi(f->buf + 9);
            char *body = memmem(f->buf, f->len, "\r\n\r\n", 4);
            size_t blen = body ? f->len - (body + 4 - f->buf) : 0;
            finish(f, r < 0 ? -errno : status, body ? body + 4 : "", blen);
        }
    }
    printf("wall %.0f\n", now_us() - t);
    return 0;
}
