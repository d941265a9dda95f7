#!/bin/sh
# What a process sees of the kernel it runs on: run it on the host, in a runc container and in
# a vmpod container (busybox sh is enough), then compare (scripts/isolation.py does).
#
#   sh scripts/isolation-probe.sh
#
# One line per probe: NAME<TAB>VALUE, where VALUE is `absent` (no such file), `denied` (it
# exists but cannot be read), `empty` (readable, nothing to learn in it: a masked path, or only zero addresses) or
# `ok:` and what was read, several items separated by ` | `. It never writes anything.

probe() { printf '%s\t%s\n' "$1" "$2"; }
# Lines on stdin as one value: "a | b | c".
join() { awk 'NR > 1 { printf " | " } { printf "%s", $0 }'; }

# The file's state, or ok: and what `summary` (a command reading stdin) makes of it; a file
# of which the summary keeps nothing (only zero addresses) reads as empty.
read_file() {
	name=$1 file=$2 summary=$3
	if [ ! -e "$file" ]; then
		probe "$name" absent
	elif ! head -c 1 "$file" >/dev/null 2>&1; then
		probe "$name" denied
	else
		value=$(eval "$summary" <"$file" | join)
		if [ -z "$value" ]; then
			probe "$name" empty
		else
			probe "$name" "ok:$value"
		fi
	fi
}

# Kernel identity.
probe uname_r "ok:$(uname -r)"
read_file proc_version /proc/version 'cat'
read_file boot_id /proc/sys/kernel/random/boot_id 'cat'
read_file uptime /proc/uptime "cut -d' ' -f1"
read_file mem_total /proc/meminfo "awk '/^MemTotal:/ {print \$2 \" kB\"}'"
read_file cpu_model /proc/cpuinfo "awk -F': ' '/^model name/ {print \$2; exit}'"

# Host information: the first 20 non-zero symbol addresses (zeros: hidden from this reader).
read_file kallsyms /proc/kallsyms "awk '\$1 !~ /^0+\$/ {print \$1, \$3; if (++n == 20) exit}'"
if out=$(dmesg 2>/dev/null) && [ -n "$out" ]; then
	probe dmesg "ok:$(echo "$out" | head -n 20 | join)"
elif dmesg >/dev/null 2>&1; then
	probe dmesg empty
else
	probe dmesg denied
fi
read_file keys /proc/keys "awk '{print \$1}'"
# Interrupt sources by device name (the counts change, the names are the machine's devices).
read_file interrupts /proc/interrupts \
	"awk '\$1 ~ /^[0-9]+:\$/ {print \$NF}' | sort -u"
if [ -d /sys/class/net ]; then
	probe net_devices "ok:$(ls /sys/class/net | sort | join)"
else
	probe net_devices absent
fi
# Every path a mount names: its root in the source filesystem and overlayfs's layer dirs.
read_file mount_paths /proc/self/mountinfo \
	"awk '{print \$4; for (i = 1; i <= NF; i++) if (\$i == \"-\") print \$(i + 3)}' |
	 tr ',:' '\n\n' | sed -n 's/^[a-z]*dir=//; /^\//p' | sort -u"
read_file sched_debug /proc/sched_debug 'head -n 3'
read_file timer_list /proc/timer_list 'head -n 3'

# How this process itself is confined.
probe seccomp "ok:$(awk '/^Seccomp:/ {print $2}' /proc/self/status)"
probe cap_eff "ok:$(awk '/^CapEff:/ {print $2}' /proc/self/status)"
