/* A FUSE file system that stops answering: the trap an unprivileged user
 * sets for a scanner. Written for Quarry's tests, on the raw /dev/fuse
 * protocol (include/uapi/linux/fuse.h; no libfuse on the test machines).
 *
 *   fusetrap MOUNTPOINT UID
 *
 * Mounts (as root, the way fusermount3 mounts for a user: user_id=UID,
 * allow_other so any process may use it) a directory holding
 *   xmrig        this program's own executable, padded with zeros to 40 MiB
 *   config.json  a miner configuration
 * and serves it. Prints "ready PID" once mounted. After SIGUSR1 it reads
 * every request and answers none: whatever touches a page or a name there
 * not yet in the kernel's caches waits for as long as this program lives.
 *
 * Run as `xmrig` (its name from the mount), the program is the miner: it
 * maps its own executable privately and writably at 32 MiB (a region no
 * page of which was ever read), prints "ready PID" and burns a CPU.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/fuse.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#define PADDED (40u << 20)
#define MAP_AT (32u << 20)

static volatile sig_atomic_t trapped;
static unsigned char *exe;
static size_t exe_len;
static unsigned uid;
static const char config[] =
    "{\"pools\": [{\"url\": \"pool.supportxmr.com:3333\", "
    "\"user\": \"44AFFq5kSiGBoZ4NMDwYtN18obc8AemS33DBLWs3H7otXft3XjrpDtQGv7SqSsaBYBb98uNbr2VBBEt7f2wfn3RVGQBEP3A\", "
    "\"pass\": \"x\"}], \"cpu\": {\"enabled\": true}}\n";

static void die(const char *what) {
    perror(what);
    _exit(111);
}

static void on_usr1(int sig) {
    (void)sig;
    trapped = 1;
}

static int miner(void) {
    int fd = open("/proc/self/exe", O_RDONLY);
    if (fd < 0) die("open /proc/self/exe");
    void *p = mmap(NULL, 1 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, MAP_AT);
    if (p == MAP_FAILED) die("mmap");
    printf("ready %d\n", (int)getpid());
    fflush(stdout);
    volatile unsigned long x = 0;
    for (;;) x++;
    return 0;
}

static void attr(uint64_t node, struct fuse_attr *a) {
    memset(a, 0, sizeof *a);
    a->ino = node;
    a->nlink = 1;
    a->uid = uid;
    a->gid = uid;
    a->blksize = 4096;
    if (node == 1) {
        a->mode = S_IFDIR | 0755;
        a->nlink = 2;
    } else if (node == 2) {
        a->mode = S_IFREG | 0755;
        a->size = PADDED;
    } else {
        a->mode = S_IFREG | 0644;
        a->size = sizeof config - 1;
    }
    a->blocks = (a->size + 511) / 512;
}

static void reply(int fd, uint64_t unique, int error, const void *data, size_t len) {
    struct fuse_out_header h = {.len = sizeof h + len, .error = error, .unique = unique};
    unsigned char buf[sizeof h + 131072];
    if (len > sizeof buf - sizeof h) len = sizeof buf - sizeof h;
    memcpy(buf, &h, sizeof h);
    if (len) memcpy(buf + sizeof h, data, len);
    if (write(fd, buf, sizeof h + len) < 0 && errno != ENOENT) perror("write /dev/fuse");
}

/* Bytes of node 2 or 3 at [off, off+size). */
static size_t content(uint64_t node, uint64_t off, uint32_t size, unsigned char *out) {
    size_t total = node == 2 ? PADDED : sizeof config - 1;
    if (off >= total) return 0;
    size_t n = total - off < size ? total - off : size;
    memset(out, 0, n);
    if (node == 3) {
        memcpy(out, config + off, n);
    } else if (off < exe_len) {
        size_t m = exe_len - off < n ? exe_len - off : n;
        memcpy(out, exe + off, m);
    }
    return n;
}

static size_t dirent(unsigned char *out, uint64_t ino, uint64_t off, const char *name, uint32_t type) {
    struct fuse_dirent *d = (struct fuse_dirent *)out;
    d->ino = ino;
    d->off = off;
    d->namelen = strlen(name);
    d->type = type;
    memcpy(d->name, name, d->namelen);
    size_t len = FUSE_DIRENT_ALIGN(FUSE_NAME_OFFSET + d->namelen);
    memset(out + FUSE_NAME_OFFSET + d->namelen, 0, len - FUSE_NAME_OFFSET - d->namelen);
    return len;
}

static void serve(int fd) {
    static unsigned char buf[(1 << 20) + 8192];
    static unsigned char out[131072];
    for (;;) {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n < 0) {
            if (errno == EINTR || errno == EAGAIN) continue;
            if (errno == ENODEV) _exit(0); /* unmounted */
            die("read /dev/fuse");
        }
        if ((size_t)n < sizeof(struct fuse_in_header)) continue;
        struct fuse_in_header *in = (struct fuse_in_header *)buf;
        void *arg = buf + sizeof *in;
        if (trapped) continue; /* the trap: never answer */
        switch (in->opcode) {
        case FUSE_INIT: {
            struct fuse_init_in *i = arg;
            struct fuse_init_out o = {0};
            o.major = FUSE_KERNEL_VERSION;
            o.minor = FUSE_KERNEL_MINOR_VERSION;
            o.max_readahead = i->max_readahead;
            o.max_background = 16;
            o.congestion_threshold = 12;
            o.max_write = 131072;
            o.time_gran = 1;
            reply(fd, in->unique, 0, &o, sizeof o);
            break;
        }
        case FUSE_LOOKUP: {
            const char *name = arg;
            uint64_t node = 0;
            if (in->nodeid == 1 && strcmp(name, "xmrig") == 0) node = 2;
            if (in->nodeid == 1 && strcmp(name, "config.json") == 0) node = 3;
            if (!node) {
                reply(fd, in->unique, -ENOENT, NULL, 0);
                break;
            }
            struct fuse_entry_out e = {0};
            e.nodeid = node;
            e.generation = 1;
            e.entry_valid = 3600;
            e.attr_valid = 3600;
            attr(node, &e.attr);
            reply(fd, in->unique, 0, &e, sizeof e);
            break;
        }
        case FUSE_GETATTR: {
            struct fuse_attr_out a = {0};
            a.attr_valid = 3600;
            attr(in->nodeid, &a.attr);
            reply(fd, in->unique, 0, &a, sizeof a);
            break;
        }
        case FUSE_OPEN:
        case FUSE_OPENDIR: {
            struct fuse_open_out o = {0};
            o.open_flags = FOPEN_KEEP_CACHE;
            reply(fd, in->unique, 0, &o, sizeof o);
            break;
        }
        case FUSE_READ: {
            struct fuse_read_in *r = arg;
            uint32_t size = r->size < sizeof out ? r->size : sizeof out;
            size_t got = content(in->nodeid, r->offset, size, out);
            reply(fd, in->unique, 0, out, got);
            break;
        }
        case FUSE_READDIR: {
            struct fuse_read_in *r = arg;
            size_t len = 0;
            if (r->offset == 0) {
                len += dirent(out + len, 1, 1, ".", DT_DIR);
                len += dirent(out + len, 1, 2, "..", DT_DIR);
                len += dirent(out + len, 2, 3, "xmrig", DT_REG);
                len += dirent(out + len, 3, 4, "config.json", DT_REG);
            }
            reply(fd, in->unique, 0, out, len <= r->size ? len : 0);
            break;
        }
        case FUSE_STATFS: {
            struct fuse_statfs_out s = {0};
            s.st.bsize = 4096;
            s.st.frsize = 4096;
            s.st.namelen = 255;
            reply(fd, in->unique, 0, &s, sizeof s);
            break;
        }
        case FUSE_RELEASE:
        case FUSE_RELEASEDIR:
        case FUSE_FLUSH:
        case FUSE_ACCESS:
            reply(fd, in->unique, 0, NULL, 0);
            break;
        case FUSE_FORGET:
        case FUSE_BATCH_FORGET:
        case FUSE_INTERRUPT:
            break; /* no answer expected */
        case FUSE_GETXATTR:
        case FUSE_LISTXATTR:
            reply(fd, in->unique, -ENODATA, NULL, 0);
            break;
        default:
            reply(fd, in->unique, -ENOSYS, NULL, 0);
        }
    }
}

int main(int argc, char **argv) {
    const char *base = strrchr(argv[0], '/');
    base = base ? base + 1 : argv[0];
    if (strcmp(base, "xmrig") == 0) return miner();
    if (argc != 3) {
        fprintf(stderr, "usage: fusetrap MOUNTPOINT UID\n");
        return 2;
    }
    uid = (unsigned)atoi(argv[2]);
    /* This program's own bytes, served as xmrig. */
    int self = open("/proc/self/exe", O_RDONLY);
    if (self < 0) die("open /proc/self/exe");
    struct stat st;
    if (fstat(self, &st) != 0) die("fstat");
    exe_len = st.st_size;
    exe = malloc(exe_len);
    if (!exe || read(self, exe, exe_len) != (ssize_t)exe_len) die("read /proc/self/exe");
    close(self);

    struct sigaction sa = {0};
    sa.sa_handler = on_usr1; /* no SA_RESTART: a blocked read returns */
    if (sigaction(SIGUSR1, &sa, NULL) != 0) die("sigaction");

    int fd = open("/dev/fuse", O_RDWR | O_CLOEXEC);
    if (fd < 0) die("open /dev/fuse");
    char opts[256];
    snprintf(opts, sizeof opts, "fd=%d,rootmode=40000,user_id=%u,group_id=%u,allow_other", fd, uid, uid);
    if (mount("fusetrap", argv[1], "fuse.fusetrap", MS_NOSUID | MS_NODEV, opts) != 0) die("mount");
    printf("ready %d\n", (int)getpid());
    fflush(stdout);
    serve(fd);
    return 0;
}
