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
#   - MBR: no free primary slot (all four used), no room after the last partition, a disk past 2 TiB;
#   - GPT: no free entry, no room, a header that does not check out (signature, CRC, sizes);
#   - a disk with neither an MBR nor an empty first sector (an unpartitioned image that is not blank).
# An unpartitioned disk whose first sector is all zeros gets a fresh MBR holding just this partition.
#
# GPT disks (protective MBR, type 0xee): the image was usually made smaller than the disk, so its backup
# header is not at the disk's end. The new entry (type "Linux filesystem data", name "config-2") goes into
# the entry array; the backup entries and header are rewritten at the very end of the disk, then the
# primary ones (last usable LBA, backup LBA, both CRC32s via busybox crc32), then the protective MBR's size.
# Until the primary header is rewritten the disk reads as before.
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

# Let the kernel see the new partition of a block device; harmless when it cannot.
_bmd_cd_reread() {
	if [ -b "$1" ]; then
		blockdev --rereadpt "$1" 2>/dev/null || partprobe "$1" 2>/dev/null || true
	fi
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

# Write <count> bytes of stdin at byte <offset> of <file> without truncating it.
_bmd_cd_put() {
	dd of="$1" bs=1 seek="$2" conv=notrunc 2>/dev/null
}

# CRC32 (IEEE, as GPT uses) of <count> bytes at byte <offset> of <file>, as a number.
_bmd_cd_crc() {
	local _t _c
	_t=$(mktemp) || return 1
	if [ $(($2 % 512)) -eq 0 ] && [ $(($3 % 512)) -eq 0 ]; then
		dd if="$1" of="$_t" bs=512 skip=$(($2 / 512)) count=$(($3 / 512)) 2>/dev/null
	else
		dd if="$1" of="$_t" bs=1 skip="$2" count="$3" 2>/dev/null
	fi
	[ "$(stat -c %s "$_t")" -eq "$3" ] || {
		rm -f "$_t"
		return 1
	}
	_c=$(crc32 "$_t" 2>/dev/null || busybox crc32 "$_t")
	rm -f "$_t"
	_c=${_c%% *}
	echo $((0x$_c))
}

# printf format of the 8 little-endian bytes of <n> as octal escapes.
_bmd_cd_le64() {
	printf "%s\n" "$(_bmd_cd_le32 $(($1 & 4294967295)))$(_bmd_cd_le32 $((($1 >> 32) & 4294967295)))"
}

# printf format of the 4 little-endian bytes of <n> as octal escapes (for printf "$fmt").
_bmd_cd_le32() {
	local _f _sh
	_f=""
	for _sh in 0 8 16 24; do
		_f="$_f\\$(printf '%03o' $((($1 >> _sh) & 255)))"
	done
	printf "%s\n" "$_f"
}

# The GPT path of bmd_configdrive_write (the protective MBR was seen): see the header of this file.
_bmd_cd_gpt() {
	local _disk _iso _total _isosec _hdr _hsize _nent _esize _elba _ebytes _esec _i _eoff _t1 _t2 _first _last
	local _maxend _free _lastuse _start _aligned _blba _bentries _crc _name _j _oldbackup
	_disk=$1
	_iso=$2
	_total=$3
	_isosec=$4
	_hdr=512
	[ "$(dd if="$_disk" bs=1 skip=$_hdr count=8 2>/dev/null)" = "EFI PART" ] || {
		_bmd_cd_err "$_disk has a protective MBR but no GPT header at LBA 1"
		return 1
	}
	_hsize=$(_bmd_cd_le "$_disk" $((_hdr + 12)) 4)
	_elba=$(_bmd_cd_le "$_disk" $((_hdr + 72)) 8)
	_nent=$(_bmd_cd_le "$_disk" $((_hdr + 80)) 4)
	_esize=$(_bmd_cd_le "$_disk" $((_hdr + 84)) 4)
	_first=$(_bmd_cd_le "$_disk" $((_hdr + 40)) 8)
	_oldbackup=$(_bmd_cd_le "$_disk" $((_hdr + 32)) 8)
	if [ "$_hsize" -lt 92 ] || [ "$_hsize" -gt 512 ] || [ "$_esize" -lt 128 ] || [ "$_nent" -lt 1 ] ||
		[ "$_nent" -gt 1024 ] || [ "$_elba" -ne 2 ]; then
		_bmd_cd_err "$_disk: unsupported GPT header (size $_hsize, $_nent entries of $_esize bytes at LBA $_elba)"
		return 1
	fi
	_ebytes=$((_nent * _esize))
	_esec=$(((_ebytes + 511) / 512))
	# The header's own CRC (computed with its CRC field zeroed) and the entries' CRC must check out.
	_crc=$(_bmd_cd_le "$_disk" $((_hdr + 16)) 4)
	_t1=$(mktemp) || return 1
	dd if="$_disk" of="$_t1" bs=1 skip=$_hdr count="$_hsize" 2>/dev/null
	printf '\000\000\000\000' | _bmd_cd_put "$_t1" 16
	_t2=$(_bmd_cd_crc "$_t1" 0 "$_hsize")
	rm -f "$_t1"
	[ "$_t2" = "$_crc" ] || {
		_bmd_cd_err "$_disk: the primary GPT header's CRC does not match"
		return 1
	}
	[ "$(_bmd_cd_crc "$_disk" $((_elba * 512)) "$_ebytes")" = "$(_bmd_cd_le "$_disk" $((_hdr + 88)) 4)" ] || {
		_bmd_cd_err "$_disk: the GPT partition entries' CRC does not match"
		return 1
	}

	# A free entry (type GUID all zeros) and the end of the last partition.
	_free=""
	_maxend=$((_first - 1))
	_i=0
	while [ "$_i" -lt "$_nent" ]; do
		_eoff=$((_elba * 512 + _i * _esize))
		if [ -z "$(od -An -tx1 -j "$_eoff" -N 16 "$_disk" | tr -d ' 0\n')" ]; then
			[ -z "$_free" ] && _free=$_i
		else
			_last=$(_bmd_cd_le "$_disk" $((_eoff + 40)) 8)
			[ "$_last" -gt "$_maxend" ] && _maxend=$_last
		fi
		_i=$((_i + 1))
	done
	[ -n "$_free" ] || {
		_bmd_cd_err "$_disk has no free GPT partition entry (all $_nent are used)"
		return 1
	}

	# The backup entries and header go to the disk's very end; the drive just before them.
	_blba=$((_total - 1))
	_bentries=$((_blba - _esec))
	_lastuse=$((_bentries - 1))
	_start=$((_lastuse + 1 - _isosec))
	_aligned=$((_start / 2048 * 2048))
	[ "$_aligned" -gt "$_maxend" ] && _start=$_aligned
	if [ "$_start" -le "$_maxend" ] || [ "$_start" -lt "$_first" ]; then
		_bmd_cd_err "no room on $_disk for the config drive: $_isosec sectors needed after sector $_maxend, last usable $_lastuse"
		return 1
	fi

	dd if="$_iso" of="$_disk" bs=512 seek="$_start" conv=notrunc 2>/dev/null || {
		_bmd_cd_err "writing the config drive to $_disk at sector $_start failed"
		return 1
	}

	# The new entry, built in the primary array: type GUID 0FC63DAF-8483-4772-8E79-3D69D8477DE4 (Linux
	# filesystem data, mixed-endian), a random unique GUID, first/last LBA, no attributes, name "config-2".
	_eoff=$((_elba * 512 + _free * _esize))
	printf '\257\075\306\017\203\204\162\107\216\171\075\151\330\107\175\344' | _bmd_cd_put "$_disk" "$_eoff"
	dd if=/dev/urandom bs=16 count=1 2>/dev/null | _bmd_cd_put "$_disk" $((_eoff + 16))
	# shellcheck disable=SC2059 # formats of octal escapes
	printf "$(_bmd_cd_le64 "$_start")$(_bmd_cd_le64 $((_start + _isosec - 1)))$(_bmd_cd_le64 0)" |
		_bmd_cd_put "$_disk" $((_eoff + 32))
	_name=""
	for _j in c o n f i g - 2; do
		_name="$_name$_j\\000"
	done
	# shellcheck disable=SC2059
	printf "$_name" | _bmd_cd_put "$_disk" $((_eoff + 56))
	_crc=$(_bmd_cd_crc "$_disk" $((_elba * 512)) "$_ebytes") || {
		_bmd_cd_err "cannot compute the CRC32 of $_disk's GPT entries"
		return 1
	}

	# Build the new primary header in a temp file; the backup one from it; write backup first.
	_t1=$(mktemp) || return 1
	dd if="$_disk" of="$_t1" bs=1 skip=$_hdr count="$_hsize" 2>/dev/null
	# shellcheck disable=SC2059
	{
		printf "$(_bmd_cd_le64 "$_blba")" | _bmd_cd_put "$_t1" 32
		printf "$(_bmd_cd_le64 "$_lastuse")" | _bmd_cd_put "$_t1" 48
		printf "$(_bmd_cd_le32 "$_crc")" | _bmd_cd_put "$_t1" 88
	}
	_t2=$(mktemp) || {
		rm -f "$_t1"
		return 1
	}
	cp "$_t1" "$_t2"
	# shellcheck disable=SC2059
	{
		printf "$(_bmd_cd_le64 "$_blba")" | _bmd_cd_put "$_t2" 24
		printf "$(_bmd_cd_le64 1)" | _bmd_cd_put "$_t2" 32
		printf "$(_bmd_cd_le64 "$_bentries")" | _bmd_cd_put "$_t2" 72
	}
	for _j in "$_t1" "$_t2"; do
		printf '\000\000\000\000' | _bmd_cd_put "$_j" 16
		# shellcheck disable=SC2059
		printf "$(_bmd_cd_le32 "$(_bmd_cd_crc "$_j" 0 "$_hsize")")" | _bmd_cd_put "$_j" 16
	done
	# Backup: entries (a copy of the primary array, new entry included), then its header.
	if ! dd if="$_disk" of="$_disk" bs=512 skip="$_elba" seek="$_bentries" count="$_esec" conv=notrunc 2>/dev/null ||
		! dd if=/dev/zero of="$_disk" bs=512 seek="$_blba" count=1 conv=notrunc 2>/dev/null ||
		! dd if="$_t2" of="$_disk" bs=512 seek="$_blba" conv=notrunc 2>/dev/null; then
		rm -f "$_t1" "$_t2"
		_bmd_cd_err "writing the backup GPT of $_disk failed"
		return 1
	fi
	# Primary header, then the protective MBR's size; the old backup header (mid-disk now) is wiped.
	if ! dd if="$_t1" of="$_disk" bs=1 seek=$_hdr conv=notrunc 2>/dev/null; then
		rm -f "$_t1" "$_t2"
		_bmd_cd_err "writing the primary GPT header of $_disk failed"
		return 1
	fi
	rm -f "$_t1" "$_t2"
	_j=$((_total - 1))
	[ "$_j" -gt 4294967295 ] && _j=4294967295
	# shellcheck disable=SC2059
	printf "$(_bmd_cd_le32 "$_j")" | _bmd_cd_put "$_disk" $((446 + 12))
	if [ "$_oldbackup" -ne "$_blba" ] && [ "$_oldbackup" -gt "$_maxend" ] && [ "$_oldbackup" -lt "$_start" ]; then
		dd if=/dev/zero of="$_disk" bs=512 seek="$_oldbackup" count=1 conv=notrunc 2>/dev/null
	fi
	sync
	echo "configdrive: wrote $_isosec sectors at sector $_start of $_disk as GPT partition $((_free + 1))" >&2
	return 0
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
	if [ -b "$_disk" ] && [ "$(blockdev --getss "$_disk" 2>/dev/null || echo 512)" != "512" ]; then
		_bmd_cd_err "$_disk has $(blockdev --getss "$_disk")-byte logical sectors: only 512-byte sectors are supported"
		return 1
	fi
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
			if [ "$_type" -eq 238 ]; then
				[ "$_fresh" -eq 0 ] && _bmd_cd_gpt "$_disk" "$_iso" "$_total" "$_isosec" || return 1
				_bmd_cd_reread "$_disk"
				return 0
			fi
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
	_bmd_cd_reread "$_disk"
	echo "configdrive: wrote $_isosec sectors at sector $_start of $_disk as partition $((_slot + 1))" >&2
	return 0
}
