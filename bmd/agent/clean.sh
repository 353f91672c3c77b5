# shellcheck shell=sh
# Cleaning between tenants: sourced by bmd-agent.sh when bmd's lookup answer says mode=clean (the kernel
# command line of a clean boot is the deploy's: bmd says "clean" only to the holder of the boot's token).
#
#   bmd_clean <metadata|full>
#
# Erases every disk of the node ($SYSFS/block, as choose_disk sees them: not ram, loop, sr, zram, fd, nbd):
#   metadata  the first and the last MiB of the disk (MBR, GPT header and its backup at the end, md/LVM/
#             filesystem signatures at either end) and the first and last MiB of every partition the
#             kernel knows of ($SYSFS/block/<disk>/<part>/start, size): filesystem superblocks;
#   full      every byte, in 64 MiB chunks with a heartbeat every 1 GiB.
# Each region written is read back and must be zeros. Any failure ends the agent through `fail` (the
# callback carries the reason; bmd puts the node in maintenance). Uses log, run, heartbeat, fail, attr,
# size_of from bmd-agent.sh.

MIB=1048576

# Zero $3 bytes of $1 from byte $2 (both multiples of 512), then check they read back as zeros.
bmd_clean_zero() {
	run dd if=/dev/zero of="$1" bs=512 seek=$(($2 / 512)) count=$(($3 / 512)) conv=notrunc,fsync ||
		fail "erasing $1 (bytes $2-$(($2 + $3 - 1))) failed"
	left=$(dd if="$1" bs=512 skip=$(($2 / 512)) count=$(($3 / 512)) 2>/dev/null | tr -d '\000' | wc -c | tr -d ' ')
	[ "$left" = 0 ] || fail "$1 still holds $left non-zero bytes in bytes $2-$(($2 + $3 - 1)) after erasing"
}

# The first and last MiB of the region [$2, $2 + $3) of disk $1 (all of it when it is smaller than 2 MiB).
bmd_clean_ends() {
	if [ "$3" -le $((2 * MIB)) ]; then
		bmd_clean_zero "$1" "$2" "$3"
	else
		bmd_clean_zero "$1" "$2" "$MIB"
		bmd_clean_zero "$1" $(($2 + $3 - MIB)) "$MIB"
	fi
}

bmd_clean_full() { # $1 device, $2 bytes
	done_bytes=0
	chunk=$((64 * MIB))
	next_beat=$((1024 * MIB))
	while [ "$done_bytes" -lt "$2" ]; do
		n=$chunk
		[ $((done_bytes + n)) -le "$2" ] || n=$(($2 - done_bytes))
		run dd if=/dev/zero of="$1" bs=512 seek=$((done_bytes / 512)) count=$((n / 512)) conv=notrunc ||
			fail "erasing $1 at byte $done_bytes failed"
		done_bytes=$((done_bytes + n))
		if [ "$done_bytes" -ge "$next_beat" ] && [ "$done_bytes" -lt "$2" ]; then
			heartbeat "erasing $1: $((done_bytes / MIB)) of $(($2 / MIB)) MiB zeroed"
			next_beat=$((next_beat + 1024 * MIB))
		fi
	done
	sync
	left=$(tr -d '\000' <"$1" | head -c 1 | wc -c | tr -d ' ')
	[ "$left" = 0 ] || fail "$1 still holds non-zero bytes after a full erase"
}

bmd_clean() {
	mode=$1
	case $mode in
	metadata | full) ;;
	*) fail "unknown erase mode '$mode' (metadata or full)" ;;
	esac
	disks=""
	n=0
	while :; do
		disks=$(list_disks) # bmd-agent.sh's
		[ -n "$disks" ] && break
		[ "$n" -ge "$DISK_WAIT" ] && fail "no disk found to clean"
		n=$((n + 1))
		sleep 1 # the disk driver may still be probing
	done
	for name in $disks; do
		b="$SYSFS/block/$name"
		dev="$DEVDIR/$name"
		bytes=$(($(attr "$b/size") * 512))
		[ -w "$dev" ] || fail "cannot write to $dev"
		if [ "$mode" = full ]; then
			heartbeat "erasing $dev: all $bytes bytes"
			bmd_clean_full "$dev" "$bytes"
		else
			heartbeat "erasing $dev: partition tables and signatures ($bytes bytes)"
			for p in "$b/$name"*; do # the partitions the kernel read from the old table, before it goes
				[ -r "$p/start" ] && [ -r "$p/size" ] || continue
				start=$(attr "$p/start")
				psize=$(attr "$p/size")
				case "$start$psize" in '' | *[!0-9]*) continue ;; esac
				[ $(((start + psize) * 512)) -le "$bytes" ] || continue
				bmd_clean_ends "$dev" $((start * 512)) $((psize * 512))
			done
			bmd_clean_ends "$dev" 0 "$bytes"
		fi
		sync
		log "erased $dev ($mode)"
	done
	CLEANED_DISKS=$disks
}
