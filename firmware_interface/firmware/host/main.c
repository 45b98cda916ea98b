/* The host port: serves the protocol on a pseudo-terminal (--pty) or on loopback TCP (--tcp PORT). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>

#include "board.h"
#include "port.h"
#include "protocol.h"

#ifndef EP_HOST_ARENA_MAX
#define EP_HOST_ARENA_MAX (64u << 20)
#endif
#ifndef EP_HOST_ARENA_DEFAULT
#define EP_HOST_ARENA_DEFAULT (16u << 20)
#endif

static _Alignas(16) uint8_t arena[EP_HOST_ARENA_MAX];
static volatile sig_atomic_t stop;
static int io_fd = -1;     /* where responses go: the pty master or the TCP client */
static int pty_slave = -1; /* held open so the master never reads EIO and can flush stale output */
static int reset_requested;
static uint32_t last_boot_id;

static void on_signal(int sig) { (void)sig; stop = 1; }

uint32_t port_millis(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint32_t)((uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u);
}

uint32_t port_boot_id(void)
{
    uint32_t id = 0;
    if (getrandom(&id, sizeof id, GRND_NONBLOCK) != (ssize_t)sizeof id)
        id = (uint32_t)time(NULL) * 2654435761u ^ (uint32_t)getpid() ^ port_millis();
    if (id == last_boot_id)
        id ^= 0x9E3779B9u;
    last_boot_id = id;
    return id;
}

void port_reset(void) { reset_requested = 1; }

int port_read_byte(void) { return -1; } /* unused: the loop below reads in blocks */

void port_write(const uint8_t *data, size_t len)
{
    int flushed = 0;
    while (len > 0 && io_fd >= 0 && !stop) {
        ssize_t w = write(io_fd, data, len);
        if (w > 0) {
            data += w;
            len -= (size_t)w;
            continue;
        }
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK)
            return; /* the peer went away: the output is lost, as on a real line */
        struct pollfd p = {.fd = io_fd, .events = POLLOUT};
        if (poll(&p, 1, 1000) <= 0) {
            /* nobody reads the pty: drop what waits in it rather than block forever */
            if (pty_slave >= 0 && !flushed) {
                tcflush(pty_slave, TCIFLUSH);
                flushed = 1;
                continue;
            }
            return;
        }
    }
}

static void usage(const char *argv0)
{
    fprintf(stderr, "usage: %s (--pty | --tcp PORT) [--arena BYTES] [--device-id N] [--max-batch N]\n", argv0);
    exit(2);
}

static unsigned long parse_num(const char *s, unsigned long max, const char *argv0)
{
    char *end;
    errno = 0;
    unsigned long v = strtoul(s, &end, 0);
    if (errno || *end || end == s || v > max)
        usage(argv0);
    return v;
}

static void set_raw(int fd)
{
    struct termios t;
    if (tcgetattr(fd, &t) == 0) {
        cfmakeraw(&t);
        tcsetattr(fd, TCSANOW, &t);
    }
}

/* Serves fd until it closes (TCP) or a signal; returns after a RESET too (the caller re-inits). */
static int serve(int fd, int is_pty)
{
    uint8_t buf[4096];
    while (!stop) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int r = poll(&p, 1, 200);
        if (r < 0 && errno != EINTR)
            return -1;
        if (r <= 0)
            continue;
        ssize_t n = read(fd, buf, sizeof buf);
        if (n < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        if (n <= 0) {
            if (!is_pty)
                return 0; /* the client disconnected */
            usleep(10000); /* EIO: no slave open right now; keep serving */
            continue;
        }
        if (board_feed(buf, (size_t)n))
            return 1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    board_config_t cfg = {arena, EP_HOST_ARENA_DEFAULT, 0, EP_DEFAULT_MAX_BATCH};
    int use_pty = 0, tcp_port = -1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--pty"))
            use_pty = 1;
        else if (!strcmp(a, "--tcp") && i + 1 < argc)
            tcp_port = (int)parse_num(argv[++i], 65535, argv[0]);
        else if (!strcmp(a, "--arena") && i + 1 < argc)
            cfg.arena_size = (uint32_t)parse_num(argv[++i], EP_HOST_ARENA_MAX, argv[0]);
        else if (!strcmp(a, "--device-id") && i + 1 < argc)
            cfg.device_id = (uint32_t)parse_num(argv[++i], 0xFFFFFFFFul, argv[0]);
        else if (!strcmp(a, "--max-batch") && i + 1 < argc)
            cfg.max_batch = (uint16_t)parse_num(argv[++i], 65535, argv[0]);
        else
            usage(argv[0]);
    }
    if (use_pty == (tcp_port >= 0) || cfg.max_batch == 0)
        usage(argv[0]);

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal; /* no SA_RESTART: poll returns EINTR */
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    if (use_pty) {
        int m = posix_openpt(O_RDWR | O_NOCTTY);
        if (m < 0 || grantpt(m) || unlockpt(m)) {
            perror("posix_openpt");
            return 1;
        }
        const char *name = ptsname(m);
        pty_slave = open(name, O_RDWR | O_NOCTTY);
        if (pty_slave < 0) {
            perror(name);
            return 1;
        }
        set_raw(pty_slave);
        fcntl(m, F_SETFL, fcntl(m, F_GETFL) | O_NONBLOCK);
        io_fd = m;
        printf("PTY %s\n", name);
        fflush(stdout);
        board_init(&cfg);
        while (!stop) {
            if (serve(m, 1) == 1) {
                reset_requested = 0;
                board_init(&cfg);
            }
        }
        return 0;
    }

    int s = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)tcp_port)};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    socklen_t alen = sizeof addr;
    if (s < 0 || bind(s, (struct sockaddr *)&addr, sizeof addr) || listen(s, 1) ||
        getsockname(s, (struct sockaddr *)&addr, &alen)) {
        perror("tcp");
        return 1;
    }
    printf("TCP 127.0.0.1:%u\n", ntohs(addr.sin_port));
    fflush(stdout);
    board_init(&cfg); /* the BOOT event goes nowhere until a client connects */
    while (!stop) {
        struct pollfd p = {.fd = s, .events = POLLIN};
        if (poll(&p, 1, 200) <= 0)
            continue;
        int c = accept(s, NULL, NULL);
        if (c < 0)
            continue;
        setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        fcntl(c, F_SETFL, fcntl(c, F_GETFL) | O_NONBLOCK);
        io_fd = c;
        int r;
        while ((r = serve(c, 0)) == 1) {
            reset_requested = 0;
            board_init(&cfg);
        }
        io_fd = -1;
        close(c);
    }
    close(s);
    return 0;
}
