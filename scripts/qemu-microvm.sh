#!/usr/bin/env bash
# Boots a vmpod guest on QEMU's microvm machine: TCG where this host's KVM can't run the guest
# at speed, or KVM. The same kernel command-line conventions as vmpod-vmm: serial on ttyS0, and
# the guest stops the VM by rebooting (reboot=t with -no-reboot makes QEMU exit).
#
#   qemu-microvm.sh --kernel VMLINUX [--initrd FILE] [--cmdline STR] [--cpus N] [--memory MIB]
#                   [--accel tcg|kvm] [--console stdout|PATH] [-- EXTRA QEMU ARGS...]
#
# Guest memory is a shared memfd so that vhost-user device backends can map it.
set -euo pipefail

kernel= initrd= cmdline="console=ttyS0" cpus=1 memory=128 accel=tcg console=stdout
while [ $# -gt 0 ]; do
    case "$1" in
        --kernel) kernel=$2; shift 2 ;;
        --initrd) initrd=$2; shift 2 ;;
        --cmdline) cmdline=$2; shift 2 ;;
        --cpus) cpus=$2; shift 2 ;;
        --memory) memory=$2; shift 2 ;;
        --accel) accel=$2; shift 2 ;;
        --console) console=$2; shift 2 ;;
        --) shift; break ;;
        *) echo "qemu-microvm: unknown argument '$1'" >&2; exit 2 ;;
    esac
done
[ -n "$kernel" ] || { echo "qemu-microvm: --kernel is required" >&2; exit 2; }
[ -f "$kernel" ] || { echo "qemu-microvm: kernel $kernel: no such file" >&2; exit 2; }
[ -z "$initrd" ] || [ -f "$initrd" ] || { echo "qemu-microvm: initrd $initrd: no such file" >&2; exit 2; }

machine_cmdline="reboot=t panic=-1 pci=off"
case "$accel" in
    tcg) cpu=max ;;
    kvm)
        # Debian's QEMU aborts on plain "-cpu host" here; arch-capabilities must go.
        cpu=host,-arch-capabilities
        if [ -d /sys/module/kvm_pvm ]; then
            # The same mask and workarounds vmpod-vmm applies on kvm-pvm (guest-kernel/README.md).
            hidden="cx16 popcnt xsave avx rdrand fsgsbase bmi1 avx2 bmi2 invpcid rdseed smap pku"
            for f in $hidden; do
                cpu="$cpu,-$f"
            done
            machine_cmdline="$machine_cmdline noxsave mitigations=off vmpod_no_int3_selftest vmpod_no_fpu_drop_fwait vmpod_syscall_fault_fallback clearcpuid=${hidden// /,}"
        fi ;;
    *) echo "qemu-microvm: --accel must be tcg or kvm, not '$accel'" >&2; exit 2 ;;
esac

case "$console" in
    stdout) serial=(-serial stdio) ;;
    *) serial=(-serial "file:$console") ;;
esac

args=(
    -M "microvm,acpi=off,x-option-roms=off,memory-backend=mem"
    -accel "$accel" -cpu "$cpu" -smp "$cpus"
    -object "memory-backend-memfd,id=mem,size=${memory}M,share=on" -m "${memory}M"
    -global virtio-mmio.force-legacy=false
    -nodefaults -no-user-config -nographic -no-reboot
    "${serial[@]}"
    -kernel "$kernel" -append "$machine_cmdline $cmdline"
)
[ -z "$initrd" ] || args+=(-initrd "$initrd")
exec qemu-system-x86_64 "${args[@]}" "$@"
