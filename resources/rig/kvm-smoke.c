// Minimal KVM smoke test for the kiln test rig (see README.md).
//
// Opens /dev/kvm, checks the API version, creates a VM with one memory slot
// and one vCPU in real mode running:
//     mov $0x42, %al ; out %al, $0x10 ; hlt
// and checks for KVM_EXIT_IO (port 0x10, value 0x42) then KVM_EXIT_HLT.
// Prints "KVM-SMOKE OK" and exits 0 on success.
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#define GUEST_ADDR 0x1000
#define MEM_SIZE 0x1000

static void die(const char *what) {
    fprintf(stderr, "KVM-SMOKE FAIL: %s: %s\n", what, strerror(errno));
    exit(1);
}

static void fail(const char *msg) {
    fprintf(stderr, "KVM-SMOKE FAIL: %s\n", msg);
    exit(1);
}

int main(void) {
    static const uint8_t code[] = {
        0xb0, 0x42, /* mov $0x42, %al */
        0xe6, 0x10, /* out %al, $0x10 */
        0xf4,       /* hlt */
    };

    int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (kvm < 0)
        die("open /dev/kvm");

    int api = ioctl(kvm, KVM_GET_API_VERSION, 0);
    if (api != KVM_API_VERSION) {
        fprintf(stderr, "KVM-SMOKE FAIL: KVM_GET_API_VERSION=%d, want %d\n", api, KVM_API_VERSION);
        return 1;
    }

    int vm = ioctl(kvm, KVM_CREATE_VM, 0UL);
    if (vm < 0)
        die("KVM_CREATE_VM");

    uint8_t *mem = mmap(NULL, MEM_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED)
        die("mmap guest memory");
    memcpy(mem, code, sizeof(code));

    struct kvm_userspace_memory_region region = {
        .slot = 0,
        .guest_phys_addr = GUEST_ADDR,
        .memory_size = MEM_SIZE,
        .userspace_addr = (uint64_t)(uintptr_t)mem,
    };
    if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region) < 0)
        die("KVM_SET_USER_MEMORY_REGION");

    int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0UL);
    if (vcpu < 0)
        die("KVM_CREATE_VCPU");

    int run_size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, NULL);
    if (run_size < (int)sizeof(struct kvm_run))
        die("KVM_GET_VCPU_MMAP_SIZE");
    struct kvm_run *run = mmap(NULL, (size_t)run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
    if (run == MAP_FAILED)
        die("mmap kvm_run");

    struct kvm_sregs sregs;
    if (ioctl(vcpu, KVM_GET_SREGS, &sregs) < 0)
        die("KVM_GET_SREGS");
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    if (ioctl(vcpu, KVM_SET_SREGS, &sregs) < 0)
        die("KVM_SET_SREGS");

    struct kvm_regs regs = {
        .rip = GUEST_ADDR,
        .rax = 0,
        .rflags = 0x2,
    };
    if (ioctl(vcpu, KVM_SET_REGS, &regs) < 0)
        die("KVM_SET_REGS");

    int got_io = 0;
    for (int i = 0; i < 16; i++) {
        if (ioctl(vcpu, KVM_RUN, NULL) < 0) {
            if (errno == EINTR)
                continue;
            die("KVM_RUN");
        }
        switch (run->exit_reason) {
        case KVM_EXIT_IO: {
            uint8_t *data = (uint8_t *)run + run->io.data_offset;
            if (run->io.direction != KVM_EXIT_IO_OUT || run->io.port != 0x10 || run->io.size != 1 ||
                run->io.count != 1 || data[0] != 0x42) {
                fprintf(stderr, "KVM-SMOKE FAIL: unexpected I/O dir=%u port=0x%x size=%u count=%u data=0x%x\n",
                        run->io.direction, run->io.port, run->io.size, run->io.count, data[0]);
                return 1;
            }
            printf("KVM-SMOKE: KVM_EXIT_IO port 0x10 value 0x%02x\n", data[0]);
            got_io = 1;
            break;
        }
        case KVM_EXIT_HLT:
            if (!got_io)
                fail("KVM_EXIT_HLT before KVM_EXIT_IO");
            printf("KVM-SMOKE: KVM_EXIT_HLT\n");
            printf("KVM-SMOKE OK (api %d)\n", api);
            return 0;
        case KVM_EXIT_FAIL_ENTRY:
            fprintf(stderr, "KVM-SMOKE FAIL: KVM_EXIT_FAIL_ENTRY reason 0x%llx\n",
                    (unsigned long long)run->fail_entry.hardware_entry_failure_reason);
            return 1;
        case KVM_EXIT_INTERNAL_ERROR:
            fprintf(stderr, "KVM-SMOKE FAIL: KVM_EXIT_INTERNAL_ERROR suberror %u\n", run->internal.suberror);
            return 1;
        default:
            fprintf(stderr, "KVM-SMOKE FAIL: unexpected exit reason %u\n", run->exit_reason);
            return 1;
        }
    }
    fail("no KVM_EXIT_HLT after 16 runs");
    return 1;
}
