/*
 * Both ends of resources/bench/net.sh (the host and, from a drive, the guest): one TCP transfer,
 * timed on this side.
 *
 *   tcpbench recv PORT              listen on 0.0.0.0:PORT, accept one connection, read until
 *                                   EOF; prints  BENCH-G2H bytes=N seconds=S
 *                                   with S from the first byte received to EOF.
 *   tcpbench send HOST PORT BYTES   connect to HOST:PORT (retrying for up to 120 s until the
 *                                   peer listens), write BYTES zero bytes in 1 MiB chunks,
 *                                   shutdown(SHUT_WR), read until EOF (the peer closes after it
 *                                   has seen ours); prints  BENCH-H2G bytes=N seconds=S
 *                                   with S from the established connection to EOF.
 *
 * Times are CLOCK_MONOTONIC. So that a broken run ends on its own, `recv` waits at most 300 s
 * for the connection, and both modes give up when the connection makes no progress for 60 s.
 * Exit status 0 on success, 1 on a failed transfer, 2 on a usage error.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define CHUNK (1 << 20)
#define ACCEPT_TIMEOUT_S 300
#define CONNECT_RETRY_S 120
#define STALL_TIMEOUT_S 60

static char buf[CHUNK];

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Fails reads and writes that make no progress for STALL_TIMEOUT_S. */
static void set_stall_timeout(int fd) {
    struct timeval tv = {.tv_sec = STALL_TIMEOUT_S};
    if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) != 0 ||
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)) != 0)
        perror("tcpbench: setsockopt(SO_RCVTIMEO/SO_SNDTIMEO)");
}

/* Reads fd until EOF. Returns the byte count, or -1 on error; *first gets the time of the
 * first byte read (untouched if none). */
static long long drain(int fd, double *first) {
    long long total = 0;
    for (;;) {
        ssize_t n = read(fd, buf, sizeof(buf));
        if (n == 0)
            return total;
        if (n < 0) {
            if (errno == EINTR)
                continue;
            perror(errno == EAGAIN ? "tcpbench: read (stalled)" : "tcpbench: read");
            return -1;
        }
        if (total == 0)
            *first = now_s();
        total += n;
    }
}

static int parse_port(const char *s) {
    char *end;
    long port = strtol(s, &end, 10);
    return (*s && !*end && port > 0 && port < 65536) ? (int)port : -1;
}

static int do_recv(int port) {
    int ls = socket(AF_INET, SOCK_STREAM, 0);
    if (ls < 0) {
        perror("tcpbench: socket");
        return 1;
    }
    int one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    struct sockaddr_in addr = {.sin_family = AF_INET,
                               .sin_port = htons((unsigned short)port),
                               .sin_addr.s_addr = htonl(INADDR_ANY)};
    if (bind(ls, (struct sockaddr *)&addr, sizeof(addr)) != 0 || listen(ls, 1) != 0) {
        perror("tcpbench: bind/listen");
        return 1;
    }
    struct pollfd pfd = {.fd = ls, .events = POLLIN};
    int ready = poll(&pfd, 1, ACCEPT_TIMEOUT_S * 1000);
    if (ready <= 0) {
        fprintf(stderr, "tcpbench: no connection on port %d within %d s\n", port,
                ACCEPT_TIMEOUT_S);
        return 1;
    }
    int fd = accept(ls, NULL, NULL);
    if (fd < 0) {
        perror("tcpbench: accept");
        return 1;
    }
    close(ls);
    set_stall_timeout(fd);
    double first = 0;
    long long total = drain(fd, &first);
    double end = now_s();
    close(fd);
    if (total <= 0) {
        fprintf(stderr, "tcpbench: recv: %s\n", total == 0 ? "no data" : "transfer failed");
        return 1;
    }
    printf("BENCH-G2H bytes=%lld seconds=%.6f\n", total, end - first);
    return 0;
}

static int do_send(const char *host, int port, long long bytes) {
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((unsigned short)port)};
    if (inet_pton(AF_INET, host, &addr.sin_addr) != 1) {
        fprintf(stderr, "tcpbench: not an IPv4 address: %s\n", host);
        return 2;
    }
    double deadline = now_s() + CONNECT_RETRY_S;
    int fd;
    for (;;) {
        fd = socket(AF_INET, SOCK_STREAM, 0);
        if (fd < 0) {
            perror("tcpbench: socket");
            return 1;
        }
        if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) == 0)
            break;
        int err = errno;
        close(fd);
        if (now_s() >= deadline) {
            fprintf(stderr, "tcpbench: connect to %s:%d: %s (gave up after %d s)\n", host, port,
                    strerror(err), CONNECT_RETRY_S);
            return 1;
        }
        usleep(200 * 1000);
    }
    set_stall_timeout(fd);
    double start = now_s();
    memset(buf, 0, sizeof(buf));
    long long sent = 0;
    while (sent < bytes) {
        size_t want = (size_t)(bytes - sent < CHUNK ? bytes - sent : CHUNK);
        ssize_t n = write(fd, buf, want);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            perror(errno == EAGAIN ? "tcpbench: write (stalled)" : "tcpbench: write");
            return 1;
        }
        sent += n;
    }
    if (shutdown(fd, SHUT_WR) != 0) {
        perror("tcpbench: shutdown");
        return 1;
    }
    double first = 0;
    long long back = drain(fd, &first);
    double end = now_s();
    close(fd);
    if (back < 0)
        return 1;
    if (back > 0)
        fprintf(stderr, "tcpbench: send: the peer sent %lld unexpected bytes\n", back);
    printf("BENCH-H2G bytes=%lld seconds=%.6f\n", sent, end - start);
    return 0;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc == 3 && strcmp(argv[1], "recv") == 0) {
        int port = parse_port(argv[2]);
        if (port > 0)
            return do_recv(port);
    } else if (argc == 5 && strcmp(argv[1], "send") == 0) {
        int port = parse_port(argv[3]);
        char *end;
        long long bytes = strtoll(argv[4], &end, 10);
        if (port > 0 && *argv[4] && !*end && bytes > 0)
            return do_send(argv[2], port, bytes);
    }
    fprintf(stderr, "usage: %s recv PORT | %s send HOST PORT BYTES\n", argv[0], argv[0]);
    return 2;
}
