/*
 * The tiny 64-bit test guest: boots through the Linux 64-bit boot protocol (as a bzImage, or as
 * an ELF without PVH note), so the VMM's long-mode entry, page tables and zero page are tested
 * without Linux. It checks the zero page's "HdrS" magic, prints the command line the VMM placed
 * at hdr.cmd_line_ptr, and resets through the i8042.
 */
    .code64
    .section .text
    .globl _start
_start:
    /* A bzImage's 64-bit entry is 0x200 bytes into the protected-mode kernel. */
    .skip 0x200, 0x90
    .globl entry64
entry64:
    cli
    movq $0x80000, %rsp
    movw $0x3f0, %dx                /* boot timer */
    movb $123, %al
    outb %al, (%dx)
    movq %rsi, %rbx                 /* boot_params */
    leaq banner(%rip), %rax
    call puts
    cmpl $0x53726448, 0x202(%rbx)   /* "HdrS" */
    jne bad_zero_page
    leaq msg_ok(%rip), %rax
    call puts
    movl 0x228(%rbx), %eax          /* hdr.cmd_line_ptr */
    call puts
    leaq newline(%rip), %rax
    call puts
    movw $0, 0x472
    movb $0xfe, %al
    outb %al, $0x64
1:  hlt
    jmp 1b

bad_zero_page:
    leaq msg_bad(%rip), %rax
    call puts
2:  hlt
    jmp 2b

/* puts: writes the NUL-terminated string at %rax to COM1. */
puts:
    movq %rax, %rcx
    movw $0x3f8, %dx
3:  movb (%rcx), %al
    testb %al, %al
    jz 4f
    outb %al, (%dx)
    incq %rcx
    jmp 3b
4:  ret

    .section .rodata
banner:  .asciz "vmpod tiny64 guest: long mode\n"
msg_ok:  .asciz "tiny64: zero page ok, cmdline: "
msg_bad: .asciz "tiny64: no HdrS magic in the zero page\n"
newline: .asciz "\n"
