// no-io-uring: runs a command in which the kernel refuses io_uring, the way a kernel built
// without it (ENOSYS) or one with kernel.io_uring_disabled=2 (EPERM) does, for this process
// and its children only: a seccomp filter fails io_uring_setup, _enter and _register.
//   no-io-uring ENOSYS|EPERM COMMAND [ARGS...]
// Exits 77 when the kernel has no seccomp filters, 2 on a usage error, 127 when COMMAND
// cannot be run.
#include <errno.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#if defined(__x86_64__)
#define NATIVE_ARCH AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define NATIVE_ARCH AUDIT_ARCH_AARCH64
#else
#error "no-io-uring: add this architecture's AUDIT_ARCH_* value"
#endif

#ifndef __NR_io_uring_setup  // older headers: the numbers are the same on every architecture
#define __NR_io_uring_setup 425
#define __NR_io_uring_enter 426
#define __NR_io_uring_register 427
#endif

static int install_filter(unsigned err) {
  struct sock_filter code[] = {
      // Another architecture's system calls (a 32-bit child) pass untouched.
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, NATIVE_ARCH, 0, 4),
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
      BPF_JUMP(BPF_JMP | BPF_JGE | BPF_K, __NR_io_uring_setup, 0, 2),
      BPF_JUMP(BPF_JMP | BPF_JGT | BPF_K, __NR_io_uring_register, 1, 0),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (err & SECCOMP_RET_DATA)),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
  };
  struct sock_fprog prog = {sizeof code / sizeof code[0], code};
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return -1;
  return prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog);
}

int main(int argc, char** argv) {
  unsigned err;
  if (argc < 3) {
    fprintf(stderr, "usage: no-io-uring ENOSYS|EPERM COMMAND [ARGS...]\n");
    return 2;
  }
  if (strcmp(argv[1], "ENOSYS") == 0) {
    err = ENOSYS;
  } else if (strcmp(argv[1], "EPERM") == 0) {
    err = EPERM;
  } else {
    fprintf(stderr, "no-io-uring: %s: expected ENOSYS or EPERM\n", argv[1]);
    return 2;
  }
  if (install_filter(err) != 0) {
    fprintf(stderr, "no-io-uring: seccomp filter: %s\n", strerror(errno));
    return errno == EINVAL ? 77 : 1;
  }
  execvp(argv[2], argv + 2);
  fprintf(stderr, "no-io-uring: %s: %s\n", argv[2], strerror(errno));
  return 127;
}
