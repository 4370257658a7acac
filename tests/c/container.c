/* A minimal container for Quarry's tests: runs a program in a new mount and
 * PID namespace whose root is ROOT (pivot_root, as container runtimes do), so
 * the program's paths name files in ROOT, not the host's files of the same
 * name. Written for Quarry's tests.
 *
 *   container ROOT PROGRAM [ARGS...]
 *
 * The program's standard output is read up to its first newline (the test
 * programs print "ready PID" with their PID inside the namespace); the
 * launcher then prints "ready HOSTPID" with the program's PID as the host
 * sees it, and waits for it.
 */
#define _GNU_SOURCE
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static void die(const char *what) {
    perror(what);
    _exit(111);
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: container ROOT PROGRAM [ARGS...]\n");
        return 2;
    }
    int p[2];
    if (pipe(p) != 0) die("pipe");
    if (unshare(CLONE_NEWNS | CLONE_NEWPID) != 0) die("unshare");
    pid_t child = fork();
    if (child < 0) die("fork");
    if (child == 0) {
        /* PID 1 of the new namespace. */
        close(p[0]);
        if (dup2(p[1], 1) < 0) die("dup2");
        close(p[1]);
        if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0) die("mount private");
        if (mount(argv[1], argv[1], NULL, MS_BIND | MS_REC, NULL) != 0) die("bind root");
        if (chdir(argv[1]) != 0) die("chdir root");
        if (syscall(SYS_pivot_root, ".", ".") != 0) die("pivot_root");
        if (umount2(".", MNT_DETACH) != 0) die("umount old root");
        if (chdir("/") != 0) die("chdir /");
        execv(argv[2], argv + 2);
        die("execv");
    }
    close(p[1]);
    char line[128];
    size_t n = 0;
    while (n + 1 < sizeof line) {
        ssize_t r = read(p[0], line + n, 1);
        if (r <= 0 || line[n] == '\n') break;
        n++;
    }
    printf("ready %d\n", (int)child);
    fflush(stdout);
    int st;
    waitpid(child, &st, 0);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}
