/* A relocatable ELF object with a .modinfo section: what `file` and
 * `modinfo` recognise as a kernel module, without being loadable anywhere.
 * Build: cc -c -DMODNAME='"iptable_mac"' -o iptable_mac.ko fakemod.c */
#ifndef MODNAME
#define MODNAME "fakemod"
#endif
/* -DVERMAGIC='"6.12.0-x"' builds it "for" that kernel release. */
#ifndef VERMAGIC
#define VERMAGIC "6.1.0-quarry-test"
#endif
__attribute__((section(".modinfo"), used, aligned(1)))
static const char quarry_modinfo[] =
    "license=GPL\0"
    "author=quarry test suite\0"
    "description=test object named like a rootkit module\0"
    "depends=\0"
    "name=" MODNAME "\0"
    "vermagic=" VERMAGIC " SMP preempt mod_unload modversions \0";

int init_module(void) { return 0; }
void cleanup_module(void) {}
