/* Starts a program with its code replaced under ptrace, as an attacker
 * hides a miner inside a trusted executable. Written for Quarry's tests.
 *
 *   hijack FILE PROGRAM [ARGS...]
 *
 * FILE is opened (without close-on-exec, so the program holds it open, as a
 * miner holds its config); PROGRAM is started traced, and at its first
 * instruction the launcher writes `jmp .` there and lets it go: the process
 * runs PROGRAM's executable and burns a CPU. Prints "ready PID" and waits.
 * x86-64 and aarch64.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/ptrace.h>
#include <sys/uio.h>
#include <sys/user.h>
#include <sys/wait.h>
#include <elf.h>
#include <errno.h>
#include <unistd.h>

static void die(const char *what) {
    perror(what);
    exit(111);
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: hijack FILE PROGRAM [ARGS...]\n");
        return 2;
    }
    if (open(argv[1], O_RDONLY) < 0) die(argv[1]);
    pid_t child = fork();
    if (child < 0) die("fork");
    if (child == 0) {
        if (ptrace(PTRACE_TRACEME, 0, NULL, NULL) != 0) die("PTRACE_TRACEME");
        execv(argv[2], argv + 2);
        die("execv");
    }
    int st;
    if (waitpid(child, &st, 0) != child || !WIFSTOPPED(st)) die("waitpid");
    struct user_regs_struct regs;
    struct iovec iov = {&regs, sizeof regs};
    if (ptrace(PTRACE_GETREGSET, child, (void *)NT_PRSTATUS, &iov) != 0) die("GETREGSET");
#if defined(__x86_64__)
    unsigned long pc = regs.rip;
    unsigned long loop = 0xfeeb; /* jmp . */
    unsigned long mask = 0xffff;
#elif defined(__aarch64__)
    unsigned long pc = regs.pc;
    unsigned long loop = 0x14000000; /* b . */
    unsigned long mask = 0xffffffff;
#else
#error "hijack: x86-64 or aarch64 only"
#endif
    errno = 0;
    long word = ptrace(PTRACE_PEEKTEXT, child, (void *)pc, NULL);
    if (word == -1 && errno) die("PEEKTEXT");
    word = (long)(((unsigned long)word & ~mask) | loop);
    if (ptrace(PTRACE_POKETEXT, child, (void *)pc, (void *)word) != 0) die("POKETEXT");
    if (ptrace(PTRACE_DETACH, child, NULL, NULL) != 0) die("DETACH");
    printf("ready %d\n", (int)child);
    fflush(stdout);
    waitpid(child, &st, 0);
    return 0;
}
