/* A realistic imitation of a renamed Monero miner, written for Quarry's tests
 * (no third-party miner code). Like XMRig it:
 *   - reads its pool and wallet from a JSON config: `-c FILE`, `--config=FILE`,
 *     or `config.json` beside its own executable;
 *   - speaks stratum (newline-delimited JSON-RPC) to the pool: it sends
 *     `login` with the wallet and keeps the job the pool answers in memory;
 *   - burns CPU in N hashing threads (`"threads"` in the config, default 1);
 *   - carries an algorithm table and the protocol's method names.
 * It only connects to 127.0.0.1. It prints "ready PID" when set up.
 *
 *   fakeminer [-c FILE | --config=FILE] [--memfd NAME] [--hold-config] [--rss MIB]
 *
 * --memfd NAME: copy itself into an unsealed memfd and fexecve it (fileless).
 * --hold-config: keep the config file open (as some miners do).
 * --rss MIB: also hold MIB MiB of touched heap memory in 1 MiB blocks (for
 *   measuring the cost of reading a large miner's memory).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <libgen.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

extern char **environ;

/* The algorithm table a CPU miner carries (names only). */
static const char *const ALGOS[] = {"rx/0",    "rx/wow",        "rx/arq",  "cn/r",
                                    "cn/half", "argon2/chukwa", "cn-pico", NULL};
static const char *const METHODS[] = {"\"method\":\"login\"", "\"method\":\"submit\"",
                                      "\"method\":\"keepalived\"", NULL};

static volatile unsigned long long sink;

static void *hash_thread(void *arg) {
    (void)arg;
    unsigned long long x = 88172645463325252ULL;
    for (;;) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        sink = x;
    }
    return NULL;
}

/* The string value of "key" in a JSON text (no escapes): a naive reader is
 * enough for the imitation's own config. */
static char *json_str(const char *text, const char *key) {
    char pat[64];
    snprintf(pat, sizeof pat, "\"%s\"", key);
    const char *p = strstr(text, pat);
    if (!p) return NULL;
    p = strchr(p + strlen(pat), ':');
    if (!p) return NULL;
    p = strchr(p, '"');
    if (!p) return NULL;
    const char *e = strchr(p + 1, '"');
    if (!e) return NULL;
    return strndup(p + 1, e - p - 1);
}

static int memfd_reexec(const char *name, char **argv) {
    int src = open("/proc/self/exe", O_RDONLY);
    int mfd = memfd_create(name, 0); /* unsealed, as loaders do */
    if (src < 0 || mfd < 0) return -1;
    char buf[65536];
    ssize_t n;
    while ((n = read(src, buf, sizeof buf)) > 0)
        if (write(mfd, buf, n) != n) return -1;
    close(src);
    int argc = 0;
    while (argv[argc]) argc++;
    char **nargv = calloc(argc + 1, sizeof *nargv);
    int j = 0;
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--memfd") == 0) {
            i++;
            continue;
        }
        nargv[j++] = argv[i];
    }
    return fexecve(mfd, nargv, environ);
}

int main(int argc, char **argv) {
    const char *cfg_path = NULL;
    int hold = 0;
    long rss_mib = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-c") == 0 && i + 1 < argc)
            cfg_path = argv[++i];
        else if (strncmp(argv[i], "--config=", 9) == 0)
            cfg_path = argv[i] + 9;
        else if (strcmp(argv[i], "--memfd") == 0 && i + 1 < argc)
            return memfd_reexec(argv[i + 1], argv) == 0 ? 0 : 1;
        else if (strcmp(argv[i], "--hold-config") == 0)
            hold = 1;
        else if (strcmp(argv[i], "--rss") == 0 && i + 1 < argc)
            rss_mib = atol(argv[++i]);
    }
    char self[4096] = "";
    char beside[4200];
    if (!cfg_path) {
        ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
        if (n > 0) self[n] = 0;
        snprintf(beside, sizeof beside, "%s/config.json", dirname(self));
        cfg_path = beside;
    }
    FILE *f = fopen(cfg_path, "r");
    char *cfg = calloc(1, 65536);
    if (f) {
        size_t n = fread(cfg, 1, 65535, f);
        cfg[n] = 0;
        if (!hold) fclose(f);
    }
    char *url = json_str(cfg, "url");
    char *user = json_str(cfg, "user");
    char *threads_s = strstr(cfg, "\"threads\"");
    int threads = threads_s ? atoi(strchr(threads_s, ':') + 1) : 1;
    if (threads < 1 || threads > 8) threads = 1;

    /* The pool: 127.0.0.1:PORT only. */
    char *job = NULL;
    int sock = -1;
    if (url && user) {
        const char *colon = strrchr(url, ':');
        int port = colon ? atoi(colon + 1) : 0;
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        sock = socket(AF_INET, SOCK_STREAM, 0);
        if (port > 0 && connect(sock, (struct sockaddr *)&a, sizeof a) == 0) {
            char algos[256] = "";
            for (int i = 0; ALGOS[i]; i++) {
                strcat(algos, i ? ",\"" : "\"");
                strcat(algos, ALGOS[i]);
                strcat(algos, "\"");
            }
            char *req = malloc(8192);
            snprintf(req, 8192,
                     "{\"id\":1,\"jsonrpc\":\"2.0\",%s,\"params\":{\"login\":\"%s\",\"pass\":\"x\","
                     "\"agent\":\"quarry-test-miner/1.0\",\"algo\":[%s]}}\n",
                     METHODS[0], user, algos);
            if (write(sock, req, strlen(req)) < 0) perror("write");
            /* The job: kept in memory, as a miner keeps its current job. */
            job = calloc(1, 65536);
            size_t got = 0;
            while (got < 65535) {
                ssize_t r = read(sock, job + got, 65535 - got);
                if (r <= 0) break;
                got += r;
                if (memchr(job, '\n', got)) break;
            }
        }
    }
    for (long i = 0; i < rss_mib; i++) {
        char *b = malloc(1 << 20);
        if (b) memset(b, (int)i, 1 << 20);
    }
    for (int i = 0; i < threads; i++) {
        pthread_t t;
        pthread_create(&t, NULL, hash_thread, NULL);
    }
    printf("ready %d\n", getpid());
    fflush(stdout);
    for (;;) {
        sleep(30);
        if (sock >= 0 && job) {
            char ka[128];
            snprintf(ka, sizeof ka, "{\"id\":2,%s}\n", METHODS[2]);
            if (write(sock, ka, strlen(ka)) < 0) break;
        }
    }
    return 0;
}
