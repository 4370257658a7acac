/* A stand-in for a cryptominer, used by Quarry's tests: it burns CPU (or
 * idles), and can rename itself, re-execute itself from a memfd, and connect
 * to a fake pool on 127.0.0.1. It prints "ready" when set up.
 *
 *   burner [--name NAME] [--memfd NAME] [--connect PORT] [--idle] [--fork-storm N]
 *          [--thread-storm N] [--listen PORT] [--regions N] [--reaped-storm MS]
 *          [ignored args...]
 *
 * --reaped-storm MS ignores SIGCHLD (the kernel reaps its children, so their
 * time reaches no parent's counters) and starts a child every MS
 * milliseconds that burns MS milliseconds of CPU and exits: a fork loop
 * whose CPU only /proc/stat and its cgroup keep.
 *
 * --regions N maps N separate one-page private regions (each written, so it
 * is resident; a no-access page between each keeps the kernel from merging
 * them), as a miner with thousands of small allocations has.
 *
 * Unknown arguments are ignored, so tests can add miner-looking ones
 * (stratum URLs, wallets) to the command line.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <time.h>

extern char **environ;

static int memfd_reexec(const char *name, int argc, char **argv) {
    int src = open("/proc/self/exe", O_RDONLY);
    if (src < 0) return -1;
    int mfd = memfd_create(name, 0);
    if (mfd < 0) return -1;
    char buf[65536];
    ssize_t n;
    while ((n = read(src, buf, sizeof buf)) > 0)
        if (write(mfd, buf, n) != n) return -1;
    close(src);
    /* Same argv without "--memfd NAME". */
    char **nargv = calloc(argc + 1, sizeof *nargv);
    int j = 0;
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--memfd") == 0) { i++; continue; }
        nargv[j++] = argv[i];
    }
    nargv[j] = NULL;
    fexecve(mfd, nargv, environ);
    return -1;
}

static void *short_thread(void *arg) { return arg; }

int main(int argc, char **argv) {
    const char *name = NULL, *memfd = NULL;
    int port = 0, idle = 0, storm = 0, tstorm = 0, listen_port = 0, regions = 0, reaped = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--name") == 0 && i + 1 < argc) name = argv[++i];
        else if (strcmp(argv[i], "--memfd") == 0 && i + 1 < argc) memfd = argv[++i];
        else if (strcmp(argv[i], "--connect") == 0 && i + 1 < argc) port = atoi(argv[++i]);
        else if (strcmp(argv[i], "--idle") == 0) idle = 1;
        else if (strcmp(argv[i], "--listen") == 0 && i + 1 < argc) listen_port = atoi(argv[++i]);
        else if (strcmp(argv[i], "--fork-storm") == 0 && i + 1 < argc) storm = atoi(argv[++i]);
        else if (strcmp(argv[i], "--thread-storm") == 0 && i + 1 < argc) tstorm = atoi(argv[++i]);
        else if (strcmp(argv[i], "--regions") == 0 && i + 1 < argc) regions = atoi(argv[++i]);
        else if (strcmp(argv[i], "--reaped-storm") == 0 && i + 1 < argc) reaped = atoi(argv[++i]);
    }
    for (int i = 0; i < regions; i++) {
        long pg = sysconf(_SC_PAGESIZE);
        char *r = mmap(NULL, 2 * pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (r == MAP_FAILED) { perror("mmap"); return 1; }
        if (mprotect(r + pg, pg, PROT_NONE) != 0) { perror("mprotect"); return 1; }
        memset(r, 'a' + i % 26, pg);
    }
    if (memfd) {
        memfd_reexec(memfd, argc, argv);
        perror("memfd re-exec");
        return 1;
    }
    if (name) prctl(PR_SET_NAME, name, 0, 0, 0);
    if (listen_port) {
        /* A fake pool: accept connections on 127.0.0.1 and keep them open. */
        struct sockaddr_in a = {0};
        a.sin_family = AF_INET;
        a.sin_port = htons(listen_port);
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        int ls = socket(AF_INET, SOCK_STREAM, 0);
        int one = 1;
        setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(ls, (struct sockaddr *)&a, sizeof a) != 0 || listen(ls, 16) != 0) { perror("listen"); return 1; }
        printf("ready %d\n", (int)getpid());
        fflush(stdout);
        for (;;) {
            int c = accept(ls, NULL, NULL);
            (void)c;
        }
    }
    int sock = -1;
    if (port) {
        struct sockaddr_in a = {0};
        a.sin_family = AF_INET;
        a.sin_port = htons(port);
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        sock = socket(AF_INET, SOCK_STREAM, 0);
        if (connect(sock, (struct sockaddr *)&a, sizeof a) != 0) { perror("connect"); return 1; }
        const char *hello = "{\"id\":1,\"method\":\"mining.subscribe\",\"params\":[]}\n";
        if (write(sock, hello, strlen(hello)) < 0) { perror("write"); return 1; }
    }
    printf("ready %d\n", (int)getpid());
    fflush(stdout);
    if (tstorm) {
        /* A storm of short-lived threads: create, join, forever. */
        pthread_t t[64];
        if (tstorm > 64) tstorm = 64;
        for (;;) {
            for (int i = 0; i < tstorm; i++) pthread_create(&t[i], NULL, short_thread, NULL);
            for (int i = 0; i < tstorm; i++) pthread_join(t[i], NULL);
        }
    }
    if (reaped > 0) {
        signal(SIGCHLD, SIG_IGN);
        for (;;) {
            pid_t p = fork();
            if (p == 0) {
                struct timespec t0, t;
                clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t0);
                volatile unsigned long x = 0;
                do {
                    for (int k = 0; k < 10000; k++) x++;
                    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
                } while ((t.tv_sec - t0.tv_sec) * 1000 + (t.tv_nsec - t0.tv_nsec) / 1000000 < reaped);
                _exit(0);
            }
            usleep(reaped * 1000);
        }
    }
    if (storm) {
        /* A storm of short-lived processes: fork, exit, reap, forever. */
        for (;;) {
            for (int i = 0; i < storm; i++) {
                pid_t p = fork();
                if (p == 0) _exit(0);
            }
            while (waitpid(-1, NULL, WNOHANG) > 0) {}
            usleep(1000);
        }
    }
    if (idle) for (;;) pause();
    volatile unsigned long x = 0;
    for (;;) x++;
}
