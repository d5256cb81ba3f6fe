/*
 * relay_floor.c — the least any proxy can add: a TCP relay that does no work at all.
 *
 *   relay_floor LISTEN_PORT UPSTREAM_PORT [busy]
 *
 * Every connection accepted on 127.0.0.1:LISTEN_PORT gets its own connection to 127.0.0.1:UPSTREAM_PORT, and
 * bytes are copied both ways as they arrive: no HTTP parsing, no authentication, no JSON, no log. With "busy"
 * the loop polls without blocking (epoll_wait with a zero timeout), as the gateway does with busy_poll_us;
 * otherwise it sleeps in epoll_wait like the gateway as shipped. compare.sh runs it pinned to the gateway's
 * core to measure what the placement alone costs a proxied request at one connection (the rows floor_c1 and
 * floor_block_c1). A benchmark tool, not part of the product.
 */
#define _GNU_SOURCE /* accept4 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_FDS 4096

static int peer[MAX_FDS]; /* the other end of each relayed descriptor, -1 when none */

static int tcp_socket(void)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || fd >= MAX_FDS) {
        perror("relay_floor: socket");
        exit(1);
    }
    return fd;
}

static struct sockaddr_in loopback(int port)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((unsigned short)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return a;
}

static void watch(int ep, int fd)
{
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = fd};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) != 0) {
        perror("relay_floor: epoll_ctl");
        exit(1);
    }
}

static void close_pair(int fd)
{
    int other = peer[fd];
    peer[fd] = -1;
    close(fd); /* closing removes it from the epoll set */
    if (other >= 0) {
        peer[other] = -1;
        close(other);
    }
}

/* Writes all of buf to fd (blocking until the peer has taken it: the relayed messages are small). */
static int write_all(int fd, const char *buf, size_t len)
{
    while (len > 0) {
        ssize_t n = send(fd, buf, len, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN) {
            fd_set w;
            FD_ZERO(&w);
            FD_SET(fd, &w);
            select(fd + 1, NULL, &w, NULL, NULL);
            continue;
        }
        if (n <= 0)
            return -1;
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

static int port_arg(const char *s)
{
    char *end;
    long v = strtol(s, &end, 10);
    if (*s == '\0' || *end != '\0' || v < 1 || v > 65535) {
        fprintf(stderr, "relay_floor: \"%s\" is not a port\n", s);
        exit(2);
    }
    return (int)v;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: relay_floor LISTEN_PORT UPSTREAM_PORT [busy]\n");
        return 2;
    }
    int lport = port_arg(argv[1]), uport = port_arg(argv[2]);
    int busy = argc > 3 && strcmp(argv[3], "busy") == 0;
    signal(SIGPIPE, SIG_IGN);
    for (int i = 0; i < MAX_FDS; i++)
        peer[i] = -1;

    int one = 1;
    int ls = tcp_socket();
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    struct sockaddr_in la = loopback(lport);
    if (bind(ls, (struct sockaddr *)&la, sizeof(la)) != 0 || listen(ls, 128) != 0) {
        perror("relay_floor: listen");
        return 1;
    }
    int ep = epoll_create1(EPOLL_CLOEXEC);
    watch(ep, ls);

    static char buf[65536];
    struct epoll_event evs[64];
    for (;;) {
        int n = epoll_wait(ep, evs, 64, busy ? 0 : -1);
        if (n < 0 && errno != EINTR) {
            perror("relay_floor: epoll_wait");
            return 1;
        }
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == ls) {
                int c = accept4(ls, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
                if (c < 0)
                    continue;
                int u = tcp_socket();
                struct sockaddr_in ua = loopback(uport);
                if (c >= MAX_FDS || connect(u, (struct sockaddr *)&ua, sizeof(ua)) != 0) {
                    perror("relay_floor: connect to the upstream");
                    close(c);
                    close(u);
                    continue;
                }
                setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
                setsockopt(u, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
                peer[c] = u;
                peer[u] = c;
                watch(ep, c);
                watch(ep, u);
                continue;
            }
            if (peer[fd] < 0)
                continue; /* closed earlier in this batch */
            ssize_t r = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
            if (r < 0 && (errno == EAGAIN || errno == EINTR))
                continue;
            if (r <= 0 || write_all(peer[fd], buf, (size_t)r) != 0)
                close_pair(fd);
        }
    }
}
