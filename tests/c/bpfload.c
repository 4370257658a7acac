/* bpfload: loads one BPF program for Quarry's VM test (tests/vm/init and tests/hiding.rs) and
 * holds it until killed. Written for the test; BPF bytecode by hand, no libbpf.
 *
 *   bpfload pwu      a raw_tracepoint program that calls bpf_probe_write_user
 *                    (helper 36), as eBPF process hiders do to patch
 *                    getdents64 results. Loading alone makes the kernel log
 *                    "... is installing a program with bpf_probe_write_user
 *                    helper that may corrupt user memory!". Quarry must report
 *                    it critical and name this process as its holder.
 *   bpfload benign   a raw_tracepoint program that only reads the current PID
 *                    (bpf_get_current_pid_tgid, helper 14), like a tracer
 *                    counting system calls. Quarry must stay quiet about it.
 *
 * It prints "ready PID" (what the tests' start() waits for) and sleeps. The
 * program is not attached: the kernel lists a loaded program either way.
 *
 * Build: gcc -O2 -static -o bpfload tests/c/bpfload.c
 */
#define _GNU_SOURCE
#include <linux/bpf.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

static struct bpf_insn ins(uint8_t code, uint8_t dst, uint8_t src, int16_t off, int32_t imm)
{
	struct bpf_insn i;
	memset(&i, 0, sizeof(i));
	i.code = code;
	i.dst_reg = dst;
	i.src_reg = src;
	i.off = off;
	i.imm = imm;
	return i;
}

int main(int argc, char **argv)
{
	int pwu = argc > 1 && strcmp(argv[1], "pwu") == 0;
	struct bpf_insn prog[16];
	int n = 0;
	if (pwu) {
		/* *(u64 *)(r10 - 8) = 0; bpf_probe_write_user(0, r10 - 8, 8) */
		prog[n++] = ins(BPF_ST | BPF_MEM | BPF_DW, 10, 0, -8, 0);
		prog[n++] = ins(BPF_ALU64 | BPF_MOV | BPF_K, 1, 0, 0, 0);
		prog[n++] = ins(BPF_ALU64 | BPF_MOV | BPF_X, 2, 10, 0, 0);
		prog[n++] = ins(BPF_ALU64 | BPF_ADD | BPF_K, 2, 0, 0, -8);
		prog[n++] = ins(BPF_ALU64 | BPF_MOV | BPF_K, 3, 0, 0, 8);
		prog[n++] = ins(BPF_JMP | BPF_CALL, 0, 0, 0, BPF_FUNC_probe_write_user);
	} else {
		prog[n++] = ins(BPF_JMP | BPF_CALL, 0, 0, 0, BPF_FUNC_get_current_pid_tgid);
	}
	prog[n++] = ins(BPF_ALU64 | BPF_MOV | BPF_K, 0, 0, 0, 0);
	prog[n++] = ins(BPF_JMP | BPF_EXIT, 0, 0, 0, 0);

	static char log[65536];
	union bpf_attr attr;
	memset(&attr, 0, sizeof(attr));
	attr.prog_type = BPF_PROG_TYPE_RAW_TRACEPOINT;
	attr.insn_cnt = n;
	attr.insns = (uint64_t)(uintptr_t)prog;
	attr.license = (uint64_t)(uintptr_t)"GPL";
	attr.log_level = 1;
	attr.log_size = sizeof(log);
	attr.log_buf = (uint64_t)(uintptr_t)log;
	strncpy(attr.prog_name, pwu ? "qtest_pwu" : "qtest_count", sizeof(attr.prog_name) - 1);
	int fd = syscall(SYS_bpf, BPF_PROG_LOAD, &attr, sizeof(attr));
	if (fd < 0) {
		perror("bpfload: BPF_PROG_LOAD");
		fprintf(stderr, "%s\n", log);
		return 1;
	}
	fprintf(stderr, "bpfload: loaded %s program, fd %d\n", pwu ? "pwu" : "benign", fd);
	printf("ready %d\n", (int)getpid());
	fflush(stdout);
	for (;;)
		pause();
}
