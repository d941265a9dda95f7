/*
 * The tiny test guest: a few hundred bytes of 32-bit code booted through PVH, so the VMM's
 * tests need no Linux. What it does is chosen on the kernel command line with "tiny=<mode>":
 *
 *   tiny=reset   (default) boot-timer byte, banner, i8042 reset: the VMM exits 0
 *   tiny=panic   as reset, but flags a warm reboot at 0x472 the way a panicking Linux does
 *   tiny=triple  loads an empty IDT and raises an exception: triple fault
 *   tiny=wait    boot-timer byte, banner, then halts forever (for signal and memory tests)
 *   tiny=cpuid   prints CPUID leaf 1 ECX/EDX and leaf 7 EBX/ECX as the guest sees them, resets
 *   tiny=snap    puts 'K' in the UART's scratch register, counts 0..9 on the serial port
 *                (one line each, the count in memory) with the boot-timer byte after 4 (where
 *                a snapshot is taken), prints the scratch register back, resets
 */
    .code32
    .section .text
    .globl _start
_start:
    cli
    movl $0x80000, %esp
    movl %ebx, %esi                 /* hvm_start_info */
    movl 24(%esi), %edi             /* start_info.cmdline_paddr */
    movb $'r', %bl                  /* mode when none is given */
find:
    movb (%edi), %al
    testb %al, %al
    jz dispatch
    cmpl $0x796e6974, (%edi)        /* "tiny" */
    jne next
    cmpb $'=', 4(%edi)
    jne next
    movb 5(%edi), %bl
    jmp dispatch
next:
    incl %edi
    jmp find

dispatch:
    cmpb $'s', %bl
    je snap
    movw $0x3f0, %dx                /* boot timer: the first thing the guest does */
    movb $123, %al
    outb %al, (%dx)
    leal banner, %eax
    call puts
    cmpb $'p', %bl
    je panic
    cmpb $'t', %bl
    je triple
    cmpb $'w', %bl
    je wait
    cmpb $'c', %bl
    je cpuid_dump

reset:
    leal msg_reset, %eax
    call puts
    movw $0, 0x472
do_reset:
    movb $0xfe, %al
    outb %al, $0x64
halt_forever:
    hlt
    jmp halt_forever

panic:
    leal msg_panic, %eax
    call puts
    movw $0x1234, 0x472
    jmp do_reset

triple:
    leal msg_triple, %eax
    call puts
    lidt null_idt
    int3

cpuid_dump:
    leal msg_cpuid, %eax
    call puts
    movl $1, %eax
    xorl %ecx, %ecx
    cpuid
    pushl %edx
    movl %ecx, %eax
    call puthex
    popl %eax
    call puthex
    movl $7, %eax
    xorl %ecx, %ecx
    cpuid
    pushl %ecx
    movl %ebx, %eax
    call puthex
    popl %eax
    call puthex
    movw $0x3f8, %dx
    movb $10, %al
    outb %al, (%dx)
    jmp reset

snap:
    movb $'K', %al                  /* kept in the UART's scratch register across the snapshot */
    movw $0x3ff, %dx
    outb %al, (%dx)
    movl $0, count
1:  movl count, %eax
    addb $'0', %al
    movw $0x3f8, %dx
    outb %al, (%dx)
    movb $10, %al
    outb %al, (%dx)
    cmpl $4, count
    jne 2f
    movw $0x3f0, %dx                /* ready: a snapshot is taken here */
    movb $123, %al
    outb %al, (%dx)
2:  incl count
    cmpl $10, count
    jne 1b
    movw $0x3ff, %dx
    inb (%dx), %al
    movw $0x3f8, %dx
    outb %al, (%dx)
    movb $10, %al
    outb %al, (%dx)
    jmp reset

wait:
    leal msg_wait, %eax
    call puts
    jmp halt_forever

/* puts: writes the NUL-terminated string at %eax to COM1. */
puts:
    movl %eax, %ecx
    movw $0x3f8, %dx
1:  movb (%ecx), %al
    testb %al, %al
    jz 2f
    outb %al, (%dx)
    incl %ecx
    jmp 1b
2:  ret

/* puthex: writes %eax to COM1 as a space, "0x" and 8 hex digits. */
puthex:
    movl %eax, %ecx
    movw $0x3f8, %dx
    movb $32, %al
    outb %al, (%dx)
    movb $48, %al
    outb %al, (%dx)
    movb $120, %al
    outb %al, (%dx)
    movl $8, %edi
3:  roll $4, %ecx
    movl %ecx, %eax
    andl $0xf, %eax
    movb hexdigits(%eax), %al
    outb %al, (%dx)
    decl %edi
    jnz 3b
    ret

    .section .rodata
hexdigits:  .ascii "0123456789abcdef"
msg_cpuid:  .asciz "tiny: cpuid"
banner:     .asciz "vmpod tiny guest: hello, serial! ~`!@#$%^&*()_+-=[]{}|;':\",./<>?\n"
msg_reset:  .asciz "tiny: reset\n"
msg_panic:  .asciz "tiny: Kernel panic - not syncing: tiny guest asked for it\n"
msg_triple: .asciz "tiny: triple fault\n"
msg_wait:   .asciz "tiny: waiting\n"
    .align 8
null_idt:   .word 0
            .long 0

    .section .data
    .align 4
count:      .long 0

    /* PVH entry note: type XEN_ELFNOTE_PHYS32_ENTRY (18), name "Xen". */
    .section .note.Xen, "a"
    .align 4
    .long 4
    .long 4
    .long 18
    .asciz "Xen"
    .align 4
    .long _start
