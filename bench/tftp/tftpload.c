/*
 * tftpload: N concurrent TFTP reads of one file from one process, for bench/tftp.
 *
 * The Python storm client spends as much CPU per block as the servers it measures,
 * so on a 2-core machine its MB/s mostly measured itself. This client does the same
 * protocol work (RFC 1350 lock-step, RFC 2347 OACK, RFC 2348 blksize, RFC 7440
 * windowsize with the once-per-gap ACK of section 4) with one epoll loop and one
 * connected socket per transfer, and checks every block against the original file.
 *
 * Output: one JSON object on stdout (the same fields bench/tftp reads from the
 * Python client, plus "correct").
 *
 * Build: cc -O2 -o tftpload tftpload.c
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
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

enum { OP_RRQ = 1, OP_DATA = 3, OP_ACK = 4, OP_ERROR = 5, OP_OACK = 6 };
enum { MAX_ERRORS = 16 };

struct transfer {
    int fd;
    int connected;
    int done;       /* 0 running, 1 ok, -1 failed */
    int error_slot; /* index into the error table when failed */
    unsigned blksize, window;
    unsigned long expect; /* next block number, not wrapped */
    unsigned in_window;
    unsigned long nak_at;
    unsigned long long bytes;
    int mismatched;
    double last_rx, started, finished;
    int silent; /* timeouts since the last packet arrived */
    unsigned char last[600];
    size_t last_len;
};

static struct {
    char text[128];
    int count;
} errors[MAX_ERRORS];
static int n_errors;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int error_slot(const char *text) {
    for (int i = 0; i < n_errors; i++)
        if (strcmp(errors[i].text, text) == 0) return i;
    if (n_errors == MAX_ERRORS) return MAX_ERRORS - 1;
    snprintf(errors[n_errors].text, sizeof errors[n_errors].text, "%s", text);
    return n_errors++;
}

static void fail(struct transfer *t, const char *why) {
    if (t->done) return;
    t->done = -1;
    t->error_slot = error_slot(why);
    errors[t->error_slot].count++;
    t->finished = now();
}

static struct sockaddr_in server;
static const unsigned char *want; /* the original file, to check every block against */
static size_t want_len;
static unsigned long long total_resends;
static char granted_blksize[16] = "", granted_window[16] = "";

static void send_last(struct transfer *t) {
    if (t->connected)
        send(t->fd, t->last, t->last_len, 0);
    else
        sendto(t->fd, t->last, t->last_len, 0, (struct sockaddr *)&server, sizeof server);
}

static void send_ack(struct transfer *t, unsigned long block) {
    t->last[0] = 0;
    t->last[1] = OP_ACK;
    t->last[2] = (block >> 8) & 0xff;
    t->last[3] = block & 0xff;
    t->last_len = 4;
    send_last(t);
}

static void on_oack(struct transfer *t, const unsigned char *p, ssize_t n) {
    /* name\0value\0 pairs after the opcode */
    const char *s = (const char *)p + 2, *end = (const char *)p + n;
    while (s < end) {
        const char *name = s;
        const char *value = memchr(name, 0, end - name);
        if (!value) break;
        value++;
        const char *next = memchr(value, 0, end - value);
        if (!next) break;
        if (strcasecmp(name, "blksize") == 0) {
            t->blksize = (unsigned)atoi(value);
            snprintf(granted_blksize, sizeof granted_blksize, "%s", value);
        } else if (strcasecmp(name, "windowsize") == 0) {
            t->window = (unsigned)atoi(value);
            snprintf(granted_window, sizeof granted_window, "%s", value);
        }
        s = next + 1;
    }
    send_ack(t, 0);
}

static void on_data(struct transfer *t, const unsigned char *p, ssize_t n) {
    unsigned block = (p[2] << 8) | p[3];
    if (block == (t->expect & 0xffff)) {
        size_t len = (size_t)n - 4;
        size_t off = (size_t)(t->expect - 1) * t->blksize;
        if (off + len > want_len || memcmp(want + off, p + 4, len) != 0) t->mismatched = 1;
        t->bytes += len;
        t->expect++;
        t->in_window++;
        t->last_rx = now();
        t->silent = 0;
        if (len < t->blksize) {
            send_ack(t, t->expect - 1);
            t->done = 1;
            t->finished = t->last_rx;
        } else if (t->in_window >= t->window) {
            t->in_window = 0;
            send_ack(t, t->expect - 1);
        }
    } else if (((block - t->expect) & 0xffff) < 0x8000) {
        /* RFC 7440 section 4: a gap; acknowledge the last in-order block, once per gap. */
        if (t->nak_at != t->expect) {
            t->nak_at = t->expect;
            t->in_window = 0;
            send_ack(t, t->expect - 1);
        }
    }
    /* else an old duplicate: ignored (no Sorcerer's Apprentice) */
}

static void on_readable(struct transfer *t) {
    unsigned char buf[65536];
    for (int i = 0; i < 256 && !t->done; i++) {
        ssize_t n;
        if (t->connected) {
            n = recv(t->fd, buf, sizeof buf, 0);
        } else {
            struct sockaddr_in from;
            socklen_t fl = sizeof from;
            n = recvfrom(t->fd, buf, sizeof buf, 0, (struct sockaddr *)&from, &fl);
            if (n >= 0) {
                if (from.sin_addr.s_addr != server.sin_addr.s_addr) continue;
                /* Lock onto the server's TID (RFC 1350 section 4). */
                connect(t->fd, (struct sockaddr *)&from, sizeof from);
                t->connected = 1;
            }
        }
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR) return;
            if (errno == ECONNREFUSED) {
                fail(t, "server transfer port closed");
                return;
            }
            fail(t, strerror(errno));
            return;
        }
        if (n < 4) continue;
        switch (buf[1]) {
        case OP_DATA:
            on_data(t, buf, n);
            break;
        case OP_OACK:
            if (t->expect == 1) on_oack(t, buf, n);
            break;
        case OP_ERROR: {
            char why[120];
            snprintf(why, sizeof why, "error %d: %.*s", (buf[2] << 8) | buf[3], (int)(n - 4),
                     (const char *)buf + 4);
            why[strcspn(why, "\n")] = 0;
            fail(t, why);
            break;
        }
        }
    }
}

static void retire(int ep, struct transfer *t, int *running) {
    epoll_ctl(ep, EPOLL_CTL_DEL, t->fd, NULL);
    close(t->fd);
    t->fd = -1;
    (*running)--;
}

static void json_string(const char *s) {
    putchar('"');
    for (; *s; s++) {
        if (*s == '"' || *s == '\\')
            printf("\\%c", *s);
        else if ((unsigned char)*s < 0x20)
            printf("\\u%04x", *s);
        else
            putchar(*s);
    }
    putchar('"');
}

static void usage(void) {
    fprintf(stderr, "usage: tftpload -s SERVER [-p PORT] -f FILE -e EXPECTED_PATH [-n N]\n"
                    "                [-b BLKSIZE] [-w WINDOWSIZE] [-t TIMEOUT_S] [-r RETRIES]\n");
    exit(2);
}

int main(int argc, char **argv) {
    const char *server_ip = NULL, *file = NULL, *expect_path = NULL;
    int port = 69, n = 640, blksize = 0, window = 0, retries = 10, opt;
    double timeout = 1.0;
    while ((opt = getopt(argc, argv, "s:p:f:e:n:b:w:t:r:")) != -1) {
        switch (opt) {
        case 's': server_ip = optarg; break;
        case 'p': port = atoi(optarg); break;
        case 'f': file = optarg; break;
        case 'e': expect_path = optarg; break;
        case 'n': n = atoi(optarg); break;
        case 'b': blksize = atoi(optarg); break;
        case 'w': window = atoi(optarg); break;
        case 't': timeout = atof(optarg); break;
        case 'r': retries = atoi(optarg); break;
        default: usage();
        }
    }
    if (!server_ip || !file || !expect_path || n <= 0) usage();
    if (strlen(file) > 400) {
        fprintf(stderr, "tftpload: file name too long for one request\n");
        return 2;
    }

    int efd = open(expect_path, O_RDONLY);
    struct stat st;
    if (efd < 0 || fstat(efd, &st) < 0) {
        perror(expect_path);
        return 2;
    }
    want_len = (size_t)st.st_size;
    want = want_len ? mmap(NULL, want_len, PROT_READ, MAP_PRIVATE, efd, 0) : (void *)"";
    if (want == MAP_FAILED) {
        perror("mmap");
        return 2;
    }

    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    if (rl.rlim_cur < (rlim_t)n + 64) {
        rl.rlim_cur = rl.rlim_max < (rlim_t)n + 64 ? rl.rlim_max : (rlim_t)n + 64;
        setrlimit(RLIMIT_NOFILE, &rl);
    }

    memset(&server, 0, sizeof server);
    server.sin_family = AF_INET;
    server.sin_port = htons(port);
    if (inet_pton(AF_INET, server_ip, &server.sin_addr) != 1) usage();

    /* The read request, with the options asked for. */
    unsigned char rrq[512];
    size_t rl_len = 0;
    rrq[rl_len++] = 0;
    rrq[rl_len++] = OP_RRQ;
    rl_len += (size_t)snprintf((char *)rrq + rl_len, sizeof rrq - rl_len, "%s", file) + 1;
    rl_len += (size_t)snprintf((char *)rrq + rl_len, sizeof rrq - rl_len, "octet") + 1;
    if (blksize) {
        rl_len += (size_t)snprintf((char *)rrq + rl_len, sizeof rrq - rl_len, "blksize") + 1;
        rl_len += (size_t)snprintf((char *)rrq + rl_len, sizeof rrq - rl_len, "%d", blksize) + 1;
    }
    if (window) {
        rl_len += (size_t)snprintf((char *)rrq + rl_len, sizeof rrq - rl_len, "windowsize") + 1;
        rl_len += (size_t)snprintf((char *)rrq + rl_len, sizeof rrq - rl_len, "%d", window) + 1;
    }

    int ep = epoll_create1(0);
    int running = n;
    struct transfer *ts = calloc((size_t)n, sizeof *ts);
    double t0 = now();
    for (int i = 0; i < n; i++) {
        struct transfer *t = &ts[i];
        t->blksize = 512;
        t->window = 1;
        t->expect = 1;
        t->started = t->last_rx = t0;
        t->fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (t->fd < 0) {
            fail(t, "socket() failed");
            running--;
            continue;
        }
        int rcv = 1 << 20;
        setsockopt(t->fd, SOL_SOCKET, SO_RCVBUF, &rcv, sizeof rcv);
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
        epoll_ctl(ep, EPOLL_CTL_ADD, t->fd, &ev);
        memcpy(t->last, rrq, rl_len);
        t->last_len = rl_len;
        send_last(t);
    }

    struct epoll_event evs[256];
    double next_scan = t0 + 0.05;
    while (running > 0) {
        int k = epoll_wait(ep, evs, 256, 50);
        for (int j = 0; j < k; j++) {
            struct transfer *t = &ts[evs[j].data.u32];
            if (t->done) continue;
            on_readable(t);
            if (t->done) retire(ep, t, &running);
        }
        double now_s = now();
        if (now_s >= next_scan) {
            next_scan = now_s + 0.05;
            for (int i = 0; i < n; i++) {
                struct transfer *t = &ts[i];
                if (t->done || now_s - t->last_rx < timeout) continue;
                /* Read what is queued first: a busy client is not a lost packet. */
                on_readable(t);
                if (!t->done && now_s - t->last_rx >= timeout) {
                    if (++t->silent > retries) {
                        fail(t, "timeout");
                    } else {
                        total_resends++;
                        t->in_window = 0;
                        t->last_rx = now_s;
                        send_last(t);
                    }
                }
                if (t->done) retire(ep, t, &running);
            }
        }
    }
    double wall = now() - t0;

    int ok = 0, correct = 1;
    unsigned long long bytes = 0;
    double slowest = 0;
    for (int i = 0; i < n; i++) {
        struct transfer *t = &ts[i];
        if (t->finished - t->started > slowest) slowest = t->finished - t->started;
        if (t->done != 1) continue;
        ok++;
        bytes += t->bytes;
        if (t->mismatched || t->bytes != want_len) correct = 0;
    }
    printf("{\"n\": %d, \"ok\": %d, \"wall\": %.6f, \"bytes\": %llu, \"correct\": %s, "
           "\"client_resends\": %llu, \"slowest\": %.6f, \"options\": {",
           n, ok, wall, bytes, ok && correct ? "true" : "false", total_resends, slowest);
    int comma = 0;
    if (granted_blksize[0]) {
        printf("\"blksize\": ");
        json_string(granted_blksize);
        comma = 1;
    }
    if (granted_window[0]) {
        printf("%s\"windowsize\": ", comma ? ", " : "");
        json_string(granted_window);
    }
    printf("}, \"errors\": {");
    for (int i = 0; i < n_errors; i++) {
        if (i) printf(", ");
        json_string(errors[i].text);
        printf(": %d", errors[i].count);
    }
    printf("}}\n");
    return 0;
}
