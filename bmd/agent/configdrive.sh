# bmd deploy agent: write a config drive ISO into a new primary partition at the end of the disk.
#
# Sourced by bmd-agent.sh (". "$BMD_AGENT_LIB/configdrive.sh"); defines one public function:
#
#   bmd_configdrive_write <disk> <iso>
#
# <disk> is a block device (/dev/sda) or, in tests, a regular file standing for one. The function puts
# <iso> (the config-2 volume bmd built) into a new primary MBR partition (type 0x83) placed at the end of
# the disk, aligned down to 1 MiB when there is room, as Ironic does, so cloud-init finds it by its label.
# The ISO is written first and the partition entry last: a failure in between leaves the image's own
# partitions untouched. Returns 0 on success; otherwise non-zero with a message on stderr:
#   - GPT disks (protective MBR, type 0xee) are refused: their backup header at the end of the disk
#     would have to move, which this writer does not do;
#   - no free primary slot (all four used), no room after the last partition, a disk past MBR's 2 TiB;
#   - a disk with neither an MBR nor an empty first sector (an unpartitioned image that is not blank).
# An unpartitioned disk whose first sector is all zeros gets a fresh MBR holding just this partition.
#
# POSIX sh (plus ``local``, which busybox ash and dash have) with busybox applets only (dd, od, printf,
# stat, blockdev, tr, wc): the ramdisk has nothing else.

_bmd_cd_err() {
	echo "configdrive: $*" >&2
	return 1
}

# Size of <disk> in 512-byte sectors: a regular file by its length, a block device by blockdev or sysfs.
_bmd_cd_sectors() {
	local _s _n
	if [ -f "$1" ]; then
		_s=$(stat -c %s "$1" 2>/dev/null) || _s=$(wc -c <"$1")
		echo $((_s / 512))
		return 0
	fi
	if [ -b "$1" ]; then
		_s=$(blockdev --getsz "$1" 2>/dev/null) && [ -n "$_s" ] && {
			echo "$_s"
			return 0
		}
		_n=$(basename "$(readlink -f "$1")")
		[ -r "/sys/class/block/$_n/size" ] && {
			cat "/sys/class/block/$_n/size"
			return 0
		}
	fi
	return 1
}

# Unsigned little-endian integer of <count> bytes at byte <offset> of <file>.
_bmd_cd_le() {
	local _v _m _b
	_v=0
	_m=1
	for _b in $(od -An -tu1 -j "$2" -N "$3" "$1"); do
		_v=$((_v + _b * _m))
		_m=$((_m * 256))
	done
	echo "$_v"
}

# printf format of the 4 little-endian bytes of <n> as octal escapes (for printf "$fmt").
_bmd_cd_le32() {
	local _f _sh
	_f=""
	for _sh in 0 8 16 24; do
		_f="$_f\\$(printf '%03o' $((($1 >> _sh) & 255)))"
	done
	echo "$_f"
}

bmd_configdrive_write() {
	local _disk _iso _total _isobytes _isosec _sig _fresh _slot _end _i _off _type _pstart _pcount _start _aligned _entry
	_disk=$1
	_iso=$2
	[ -n "$_disk" ] && [ -n "$_iso" ] || {
		_bmd_cd_err "usage: bmd_configdrive_write <disk> <iso>"
		return 2
	}
	[ -f "$_iso" ] || {
		_bmd_cd_err "config drive $_iso is not a file"
		return 1
	}
	[ -e "$_disk" ] || {
		_bmd_cd_err "disk $_disk does not exist"
		return 1
	}
	[ "$(dd if="$_iso" bs=1 skip=32769 count=5 2>/dev/null)" = "CD001" ] || {
		_bmd_cd_err "$_iso is not an ISO9660 image"
		return 1
	}
	_total=$(_bmd_cd_sectors "$_disk") || {
		_bmd_cd_err "cannot tell the size of $_disk"
		return 1
	}
	_isobytes=$(stat -c %s "$_iso" 2>/dev/null) || _isobytes=$(wc -c <"$_iso")
	_isosec=$(((_isobytes + 511) / 512))

	_sig=$(od -An -tx1 -j 510 -N 2 "$_disk" | tr -d ' \n')
	_fresh=0
	if [ "$_sig" != "55aa" ]; then
		if [ "$(dd if="$_disk" bs=512 count=1 2>/dev/null | tr -d '\000' | wc -c)" -ne 0 ]; then
			_bmd_cd_err "$_disk has no MBR partition table and its first sector is not empty: refusing to write one"
			return 1
		fi
		_fresh=1
	fi

	# The four primary entries: a free slot, the end of the last used sector, no GPT.
	_slot=""
	_end=1
	_i=0
	while [ "$_i" -lt 4 ]; do
		_off=$((446 + 16 * _i))
		_type=$(_bmd_cd_le "$_disk" $((_off + 4)) 1)
		if [ "$_type" -eq 0 ]; then
			[ -z "$_slot" ] && _slot=$_i
		else
			[ "$_type" -eq 238 ] && {
				_bmd_cd_err "$_disk has a GPT partition table (protective MBR): not supported, only MBR disks"
				return 1
			}
			_pstart=$(_bmd_cd_le "$_disk" $((_off + 8)) 4)
			_pcount=$(_bmd_cd_le "$_disk" $((_off + 12)) 4)
			[ $((_pstart + _pcount)) -gt "$_end" ] && _end=$((_pstart + _pcount))
		fi
		_i=$((_i + 1))
	done
	[ -n "$_slot" ] || {
		_bmd_cd_err "$_disk has no free primary partition slot (all four are used)"
		return 1
	}

	# At the end of the disk: aligned down to 1 MiB (2048 sectors) when that still fits, else unaligned.
	_start=$((_total - _isosec))
	_aligned=$((_start / 2048 * 2048))
	[ "$_aligned" -ge "$_end" ] && _start=$_aligned
	if [ "$_start" -lt "$_end" ] || [ "$_start" -lt 1 ]; then
		_bmd_cd_err "no room on $_disk for the config drive: $_isosec sectors needed after sector $_end, disk has $_total"
		return 1
	fi
	[ $((_start + _isosec)) -le 4294967295 ] || {
		_bmd_cd_err "$_disk is larger than an MBR can address (2 TiB): not supported"
		return 1
	}

	dd if="$_iso" of="$_disk" bs=512 seek="$_start" conv=notrunc 2>/dev/null || {
		_bmd_cd_err "writing the config drive to $_disk at sector $_start failed"
		return 1
	}
	# status 0, CHS "beyond 1024 cylinders" (fe ff ff), type 0x83, CHS end, LBA start, sector count
	_entry="\\000\\376\\377\\377\\203\\376\\377\\377$(_bmd_cd_le32 "$_start")$(_bmd_cd_le32 "$_isosec")"
	# shellcheck disable=SC2059 # the format is built of octal escapes on purpose
	printf "$_entry" | dd of="$_disk" bs=1 seek=$((446 + 16 * _slot)) conv=notrunc 2>/dev/null || {
		_bmd_cd_err "writing partition entry $((_slot + 1)) of $_disk failed"
		return 1
	}
	if [ "$_fresh" -eq 1 ]; then
		printf '\125\252' | dd of="$_disk" bs=1 seek=510 conv=notrunc 2>/dev/null || {
			_bmd_cd_err "writing the MBR signature of $_disk failed"
			return 1
		}
	fi
	sync
	if [ -b "$_disk" ]; then  # let the kernel see the new partition; harmless when it cannot
		blockdev --rereadpt "$_disk" 2>/dev/null || partprobe "$_disk" 2>/dev/null || true
	fi
	echo "configdrive: wrote $_isosec sectors at sector $_start of $_disk as partition $((_slot + 1))" >&2
	return 0
}
