// SPDX-License-Identifier: GPL-2.0
/*
 * qtest_hider: a harmless test module for Quarry's VM test (tests/vm/run.sh).
 *
 * It imitates the single trick that LKM rootkits (Diamorphine, Reptile, ...)
 * use to hide: on load it unlinks itself from the kernel's module list, so it
 * vanishes from /proc/modules and lsmod. It does nothing else. Its other
 * traces (/sys/module/qtest_hider, its symbols in /proc/kallsyms, its memory
 * in /proc/vmallocinfo, the taint flags, the load message in the kernel log)
 * stay, and those are what Quarry's `module.hidden` rule must notice.
 *
 * Once unlinked it can no longer be unloaded; it is only ever loaded inside a
 * throw-away QEMU guest.
 */
#include <linux/init.h>
#include <linux/kernel.h>
#include <linux/list.h>
#include <linux/module.h>

static int __init qtest_hider_init(void)
{
	list_del_init(&THIS_MODULE->list);
	return 0;
}

static void __exit qtest_hider_exit(void)
{
}

module_init(qtest_hider_init);
module_exit(qtest_hider_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("Quarry test module: hides itself from the module list, nothing else");
