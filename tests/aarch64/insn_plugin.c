/*
 * A QEMU TCG plugin (user mode) that counts the guest instructions a program executes:
 * the A64 instruction counts of `spikewire bench cpu --aarch64` (runtime/bench_cpu.py).
 *
 * Every translated block adds its instruction count to one counter when it runs (inline,
 * no callback). The guest marks phase boundaries with getpgid(0) (os.getpgid(0) in Python):
 * at each such syscall the plugin writes "mark N COUNT" to the output file, and
 * "total COUNT" at exit. Counts are of instructions executed, not cycles; a single-threaded
 * guest is assumed (one counter, no atomics).
 *
 * Usage: qemu-aarch64 -plugin ./insn_plugin.so,out=FILE ... PROGRAM
 *
 * QEMU 7.2 (Debian bookworm) ships no plugin header, so the few declarations of its plugin
 * API (version 1) used here are written out below.
 */
#include <inttypes.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

typedef uint64_t qemu_plugin_id_t;
typedef struct qemu_info qemu_info_t; /* only passed through */
struct qemu_plugin_tb;
enum qemu_plugin_op { QEMU_PLUGIN_INLINE_ADD_U64 };

typedef void (*tb_trans_cb)(qemu_plugin_id_t id, struct qemu_plugin_tb *tb);
typedef void (*syscall_cb)(qemu_plugin_id_t id, unsigned int vcpu, int64_t num, uint64_t a1, uint64_t a2,
                           uint64_t a3, uint64_t a4, uint64_t a5, uint64_t a6, uint64_t a7, uint64_t a8);
typedef void (*atexit_cb)(qemu_plugin_id_t id, void *userdata);

size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *tb);
void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t id, tb_trans_cb cb);
void qemu_plugin_register_vcpu_tb_exec_inline(struct qemu_plugin_tb *tb, enum qemu_plugin_op op, void *ptr,
                                              uint64_t imm);
void qemu_plugin_register_vcpu_syscall_cb(qemu_plugin_id_t id, syscall_cb cb);
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t id, atexit_cb cb, void *userdata);

#define EXPORT __attribute__((visibility("default")))
EXPORT int qemu_plugin_version = 1;

#define AARCH64_SYS_GETPGID 155

static uint64_t insns;
static unsigned marks;
static FILE *out;

static void on_tb(qemu_plugin_id_t id, struct qemu_plugin_tb *tb) {
    (void)id;
    qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &insns, qemu_plugin_tb_n_insns(tb));
}

static void on_syscall(qemu_plugin_id_t id, unsigned int vcpu, int64_t num, uint64_t a1, uint64_t a2,
                       uint64_t a3, uint64_t a4, uint64_t a5, uint64_t a6, uint64_t a7, uint64_t a8) {
    (void)id; (void)vcpu; (void)a2; (void)a3; (void)a4; (void)a5; (void)a6; (void)a7; (void)a8;
    if (num == AARCH64_SYS_GETPGID && a1 == 0) {
        fprintf(out, "mark %u %" PRIu64 "\n", marks++, insns);
        fflush(out);
    }
}

static void on_atexit(qemu_plugin_id_t id, void *userdata) {
    (void)id; (void)userdata;
    fprintf(out, "total %" PRIu64 "\n", insns);
    if (out != stderr) fclose(out);
}

EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc, char **argv) {
    (void)info;
    out = stderr;
    for (int i = 0; i < argc; i++) {
        if (strncmp(argv[i], "out=", 4) == 0) {
            out = fopen(argv[i] + 4, "w");
            if (!out) { perror(argv[i] + 4); return -1; }
        } else {
            fprintf(stderr, "insn_plugin: unknown argument %s (expected out=FILE)\n", argv[i]);
            return -1;
        }
    }
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_tb);
    qemu_plugin_register_vcpu_syscall_cb(id, on_syscall);
    qemu_plugin_register_atexit_cb(id, on_atexit, NULL);
    return 0;
}
