/* pidprobe: a diagnostic for the VM test's guest (tests/vm/init). For each
 * PID on the command line it prints, on one line, what the kernel's PID
 * interfaces answer, so that the console log shows exactly which views a
 * test module (tests/vm/module/qtest_ftrace.c) lies in:
 *
 *   pidprobe PID... ->
 *   pid 1001: listed=0 stat=ENOENT kill0=ESRCH getpgid=ESRCH getsid=ESRCH
 *             affinity=ESRCH pidfd_open=ESRCH cgroup_procs=0 children_of_1=1
 *
 *   listed       the PID is a directory entry of /proc (getdents64)
 *   stat         open+read /proc/PID/stat: "ok" or the errno name
 *   kill0...     the syscalls kill(pid, 0), getpgid, getsid,
 *                sched_getaffinity, pidfd_open: "ok" or the errno name
 *   cgroup_procs the PID is in /sys/fs/cgroup/cgroup.procs (-1: unreadable)
 *   children_of_1, children_of_2
 *                the PID is in /proc/1/task/1/children, /proc/2/task/2/children
 *
 * Build: gcc -O2 -static -o pidprobe pidprobe.c
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

static const char *res(long rc) {
    static char buf[8][32];
    static int n;
    char *b = buf[n++ % 8];
    if (rc >= 0) return "ok";
    switch (errno) {
    case ESRCH: return "ESRCH";
    case ENOENT: return "ENOENT";
    case EPERM: return "EPERM";
    case EINVAL: return "EINVAL";
    case EACCES: return "EACCES";
    }
    snprintf(b, 32, "errno%d", errno);
    return b;
}

static int listed(int pid) {
    DIR *d = opendir("/proc");
    struct dirent *e;
    int found = 0;
    if (!d) return -1;
    while ((e = readdir(d)))
        if (atoi(e->d_name) == pid) found = 1;
    closedir(d);
    return found;
}

/* Is `pid` one of the whitespace-separated numbers in `path`? */
static int in_file(const char *path, int pid) {
    FILE *f = fopen(path, "r");
    int v, found = 0;
    if (!f) return -1;
    while (fscanf(f, "%d", &v) == 1)
        if (v == pid) found = 1;
    fclose(f);
    return found;
}

static long read_stat(int pid) {
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    int fd = open(path, O_RDONLY);
    if (fd < 0) return -1;
    long n = read(fd, buf, sizeof buf);
    int e = errno;
    close(fd);
    errno = e;
    return n > 0 ? 0 : -1;
}

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        int pid = atoi(argv[i]);
        if (pid <= 0) continue;
        /* One call at a time: res() reads errno. */
        cpu_set_t set;
        int in_proc = listed(pid);
        const char *stat = res(read_stat(pid));
        const char *k = res(kill(pid, 0));
        const char *pg = res(getpgid(pid));
        const char *sid = res(getsid(pid));
        const char *aff = res(sched_getaffinity(pid, sizeof set, &set));
        long pfd = syscall(SYS_pidfd_open, pid, 0);
        const char *pidfd = res(pfd);
        if (pfd >= 0) close((int)pfd);
        printf("pid %d: listed=%d stat=%s kill0=%s getpgid=%s getsid=%s affinity=%s"
               " pidfd_open=%s cgroup_procs=%d children_of_1=%d children_of_2=%d\n",
               pid, in_proc, stat, k, pg, sid, aff, pidfd,
               in_file("/sys/fs/cgroup/cgroup.procs", pid),
               in_file("/proc/1/task/1/children", pid),
               in_file("/proc/2/task/2/children", pid));
    }
    return 0;
}
